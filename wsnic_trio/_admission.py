"""Who may join the LAN: tokens, client limits, and a brake on guessing.

All decisions are made before a TAP exists, and all of them are synchronous and cheap:
an attacker's connection costs a socket and a few microseconds, never a device. Nothing
here does I/O except :meth:`TokenStore.load`, which the server calls at start and on
SIGHUP.
"""

from __future__ import annotations

import collections
import hmac
import time
from collections.abc import Callable
from pathlib import Path

from transports.base import AdmissionRequest, Rejection

from ._exceptions import ConfigError

__all__ = ["Admission", "FailureLimiter", "TokenStore"]


class TokenStore:
    """Accepted tokens, one per line in a file (``#`` starts a comment)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._tokens: tuple[bytes, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self) -> int:
        """(Re-)read the file; on any problem keep the old tokens and raise ConfigError."""
        if self.path is None:
            return 0
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read token file {self.path}: {exc.strerror}") from None
        tokens = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if any(c.isspace() for c in line) or not line.isprintable():
                raise ConfigError(f"{self.path}:{number}: a token may not contain spaces")
            tokens.append(line.encode())
        if not tokens:
            raise ConfigError(f"{self.path}: no tokens in the file (one per line)")
        self._tokens = tuple(tokens)
        return len(tokens)

    def valid(self, token: str) -> bool:
        """Constant-time comparison against every token (no early exit)."""
        given = token.encode()
        ok = False
        for known in self._tokens:
            ok |= hmac.compare_digest(given, known)
        return ok


class FailureLimiter:
    """Per source address: after ``burst`` failed logins, one try per ``refill`` seconds.

    A token bucket per address; the table is bounded so a spray from many addresses
    cannot grow memory (the least recently failed addresses are forgotten first).
    """

    def __init__(
        self,
        burst: int = 5,
        refill: float = 10.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill = refill
        self.max_entries = max_entries
        self.clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def _level(self, addr: str, now: float) -> float:
        entry = self._buckets.get(addr)
        if entry is None:
            return float(self.burst)
        level, when = entry
        return min(float(self.burst), level + (now - when) / self.refill)

    def blocked(self, addr: str) -> bool:
        return self._level(addr, self.clock()) < 1.0

    def failed(self, addr: str) -> None:
        now = self.clock()
        level = self._level(addr, now) - 1.0
        self._buckets[addr] = (max(level, 0.0), now)
        self._buckets.move_to_end(addr)
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)


class Admission:
    """The server's admission policy: authentication, then client limits."""

    def __init__(
        self,
        tokens: TokenStore,
        *,
        max_clients: int = 0,
        max_clients_per_ip: int = 0,
        limiter: FailureLimiter | None = None,
    ) -> None:
        self.tokens = tokens
        self.max_clients = max_clients
        self.max_clients_per_ip = max_clients_per_ip
        self.limiter = limiter or FailureLimiter()
        self.clients = 0
        self.per_ip: collections.Counter[str] = collections.Counter()

    def check(self, request: AdmissionRequest, *, authenticate: bool = True) -> Rejection | None:
        ip = request.remote_ip
        if authenticate and self.tokens.enabled:
            if ip is not None and self.limiter.blocked(ip):
                return Rejection(429, "too many failed logins from this address; try later", 1008)
            if not request.tokens:
                if ip is not None:
                    self.limiter.failed(ip)
                return Rejection(
                    401, "a token is required (?token=..., subprotocol or Bearer)", 1008
                )
            # Check every candidate (no short cut), so timing says nothing about which.
            valid = [self.tokens.valid(token) for token in request.tokens]
            if not any(valid):
                if ip is not None:
                    self.limiter.failed(ip)
                return Rejection(403, "invalid token", 1008)
        if self.max_clients and self.clients >= self.max_clients:
            return Rejection(503, f"server full ({self.max_clients} clients)", 1013)
        if (
            ip is not None
            and self.max_clients_per_ip
            and self.per_ip[ip] >= self.max_clients_per_ip
        ):
            return Rejection(
                503, f"too many clients from {ip} (limit {self.max_clients_per_ip})", 1013
            )
        return None

    def join(self, ip: str | None) -> None:
        self.clients += 1
        if ip is not None:
            self.per_ip[ip] += 1

    def leave(self, ip: str | None) -> None:
        self.clients -= 1
        if ip is not None:
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
