"""Who may join the LAN: browser origins, tokens, client limits, and a brake on guessing.

All decisions are made before a TAP exists, and all of them are synchronous and cheap:
an attacker's connection costs a socket and a few microseconds, never a device. Nothing
here does I/O except :meth:`TokenStore.load`, which the server calls at start and on
SIGHUP. The one wait, the login brake's (:meth:`FailureLimiter.delay`), is for the
caller to sleep.
"""

from __future__ import annotations

import collections
import hmac
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from wsnic_trio.config.lans import DEFAULT_LAN, check_lan_name
from wsnic_trio.config.origins import OriginPattern
from wsnic_trio.errors import ConfigError
from wsnic_trio.transports.base import AdmissionRequest, Rejection
from wsnic_trio.util.text import printable

__all__ = ["Admission", "FailureLimiter", "TokenStore"]


#: The scope of a token that names no LANs: it opens every LAN.
EVERY_LAN: frozenset[str] = frozenset({"*"})


class TokenStore:
    """Accepted tokens, one per line in a file (``#`` starts a comment).

    A line may name the LANs its token opens after it: ``TOKEN class3,class4``. A token
    without a list opens every LAN (and is what a one-LAN server's file holds).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._tokens: tuple[tuple[bytes, frozenset[str]], ...] = ()

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
            where = f"{self.path}:{number}"
            if not line.isprintable():
                raise ConfigError(f"{where}: a token may not contain control characters")
            token, *rest = line.split()
            if len(rest) > 1:
                raise ConfigError(
                    f"{where}: a token may not contain spaces; write TOKEN or TOKEN LAN,LAN"
                )
            scope = EVERY_LAN
            if rest:
                try:
                    scope = frozenset(check_lan_name(n) for n in rest[0].split(","))
                except ValueError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
            tokens.append((token.encode(), scope))
        if not tokens:
            raise ConfigError(f"{self.path}: no tokens in the file (one per line)")
        self._tokens = tuple(tokens)
        return len(tokens)

    def scope(self, token: str) -> frozenset[str] | None:
        """The LANs a token opens (:data:`EVERY_LAN` for all), None for no valid token.

        Constant-time comparison against every token (no early exit).
        """
        given = token.encode()
        found: frozenset[str] | None = None
        for known, scope in self._tokens:
            if hmac.compare_digest(given, known):
                found = scope if found is None else found | scope
        return found

    def valid(self, token: str) -> bool:
        return self.scope(token) is not None


def opens(scope: frozenset[str], lan: str) -> bool:
    return "*" in scope or lan in scope


#: How long each login from a braked address waits for its verdict, in seconds.
BRAKE_DELAY = 2.0


class FailureLimiter:
    """The login brake, per source address: after ``burst`` failed logins the address
    is braked until it has failed none for ``refill`` seconds (a token bucket: one
    try comes back per ``refill`` seconds, and each failure takes one).

    A braked address is not locked out: every login from it is answered only after
    ``delay`` seconds, whether its token is valid or not, and a valid token is let in.
    Refusing every login from a braked address, valid tokens too, would let anybody
    behind the same address (a classroom's NAT, a relay's users after a token change)
    keep everyone else there out by failing on purpose. Letting valid tokens in at once
    and delaying the rest would undo the brake: a guess that is not answered at once
    would be known to be wrong, and the next could follow without waiting. So both
    wait the same, and how fast an address can guess depends on how many logins it can
    have waiting at once: the cap on connections in their handshake
    (``--max-handshakes-per-ip``, 16 by default: 8 guesses a second). That is no
    protection for a guessable token, and none is needed for a random one (the docs
    ask for 128 random bits); the brake keeps guessing slow, visible and cheap for the
    server, without letting one user lock out the others (docs/security.md#tokens).

    The table is bounded so a spray from many addresses cannot grow memory (the least
    recently failed addresses are forgotten first).
    """

    def __init__(
        self,
        burst: int = 5,
        refill: float = 10.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        delay: float = BRAKE_DELAY,
    ) -> None:
        self.burst = burst
        self.refill = refill
        self.max_entries = max_entries
        self.clock = clock
        self.braked_delay = delay
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def _level(self, addr: str, now: float) -> float:
        entry = self._buckets.get(addr)
        if entry is None:
            return float(self.burst)
        level, when = entry
        return min(float(self.burst), level + (now - when) / self.refill)

    def blocked(self, addr: str) -> bool:
        """Whether the address is braked (out of tries)."""
        return self._level(addr, self.clock()) < 1.0

    def delay(self, addr: str | None) -> float:
        """How long a login from ``addr`` must wait before its token is checked."""
        return self.braked_delay if addr is not None and self.blocked(addr) else 0.0

    def failed(self, addr: str) -> None:
        now = self.clock()
        level = self._level(addr, now) - 1.0
        self._buckets[addr] = (max(level, 0.0), now)
        self._buckets.move_to_end(addr)
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)


class Admission:
    """The server's admission policy: the browser origin, authentication, client limits."""

    def __init__(
        self,
        tokens: TokenStore,
        *,
        max_clients: int = 0,
        max_clients_per_ip: int = 0,
        limiter: FailureLimiter | None = None,
        origins: Sequence[OriginPattern] = (),
    ) -> None:
        self.tokens = tokens
        self.max_clients = max_clients
        self.max_clients_per_ip = max_clients_per_ip
        self.limiter = limiter or FailureLimiter()
        #: ``--allow-origin``; empty: every origin.
        self.origins = tuple(origins)
        self.clients = 0
        self.per_ip: collections.Counter[str] = collections.Counter()

    def origin_refused(self, origin: str | None) -> Rejection | None:
        """A page of another site must not join (cross-site WebSocket).

        Only browsers send ``Origin``, and a page cannot leave it out or change it; a
        client without one is a program, which could send any Origin it liked, so a
        missing header passes: the check protects browsers' users, tokens protect the LAN.
        The check comes before the token's, and a refusal costs no login try.
        """
        if not self.origins or origin is None:
            return None
        if any(pattern.matches(origin) for pattern in self.origins):
            return None
        shown = printable(origin, 100)
        return Rejection(403, f"origin {shown} is not allowed on this server", 1008, "origin")

    def login_delay(self, request: AdmissionRequest) -> float:
        """How long the transport waits before :meth:`check` (the login brake): only for
        a request whose token would be checked; see :class:`FailureLimiter`."""
        if not self.tokens.enabled or not request.tokens:
            return 0.0  # nothing to guess: the answer may come at once
        if self.origin_refused(request.origin) is not None:
            return 0.0
        return self.limiter.delay(request.remote_ip)

    def check(self, request: AdmissionRequest, *, authenticate: bool = True) -> Rejection | None:
        ip = request.remote_ip
        refused = self.origin_refused(request.origin)
        if refused is not None:
            return refused
        if authenticate and self.tokens.enabled:
            braked = ip is not None and self.limiter.blocked(ip)
            if not request.tokens:
                if ip is not None:
                    self.limiter.failed(ip)
                return Rejection(
                    401, "a token is required (?token=..., subprotocol or Bearer)", 1008
                )
            # Check every candidate (no short cut), so timing says nothing about which.
            # A valid one is let in even from a braked address: others' failures there
            # must not keep it out (the wait before this check is the brake).
            scopes = [self.tokens.scope(token) for token in request.tokens]
            valid = [scope for scope in scopes if scope is not None]
            if not valid:
                if ip is not None:
                    self.limiter.failed(ip)
                if braked:
                    return Rejection(
                        429,
                        "invalid token, and too many failed logins from this address: "
                        f"each login from it waits {self.limiter.braked_delay:g} s until "
                        "they stop",
                        1008,
                    )
                return Rejection(403, "invalid token", 1008)
            lan = request.lan or DEFAULT_LAN
            if not any(opens(scope, lan) for scope in valid):
                # A valid token on the wrong LAN: not a guess, so no login try is spent.
                return Rejection(403, f"this token does not open LAN {lan}", 1008, "lan")
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
