"""The syntax of browser origins and of ``--allow-origin`` patterns (RFC 6454).

Checking a connection's Origin against the patterns is the admission's work
(:mod:`wsnic_trio.core.admission`); the settings only need to read and show them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

__all__ = ["ANY_PORT", "OriginPattern", "parse_origin", "parse_origin_pattern"]

#: The port of an origin that names none: its scheme's default (RFC 6454).
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*"
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_ORIGIN = re.compile(rf"({_SCHEME})://(\[[^\]]*\]|[^:/\[\]]*)(?::([0-9]{{1,5}}))?")
_PATTERN = re.compile(rf"(?:({_SCHEME})://)?(\*\.)?(\[[^\]]*\]|[^:/\[\]]*)(?::([0-9]{{1,5}}|\*))?")
_PATTERN_SYNTAX = (
    "write SCHEME://HOST[:PORT] (https://lab.example.org), HOST[:PORT] for both http and "
    "https, *.DOMAIN for every subdomain of DOMAIN, or null"
)
ANY_PORT = -1


def _host(text: str) -> str | None:
    """A host as a serialized origin spells it (lower case; IPv6 bracketed, compressed)."""
    text = text.lower()
    if text.startswith("[") and text.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1])}]"
        except ValueError:
            return None
    return text if _HOST_NAME.fullmatch(text) else None


def parse_origin(value: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of an ``Origin`` header; None for ``null`` or garbage.

    The port is the one named, else the scheme's default (None for schemes without one).
    """
    m = _ORIGIN.fullmatch(value.strip())
    host = _host(m[2]) if m else None
    if m is None or host is None:
        return None
    scheme = m[1].lower()
    return scheme, host, int(m[3]) if m[3] else _DEFAULT_PORTS.get(scheme)


@dataclasses.dataclass(frozen=True)
class OriginPattern:
    """One ``--allow-origin`` value (docs/security.md#browser-origins); see :meth:`matches`."""

    #: The canonical spelling (lower case), as ``--help`` and the logs show it.
    text: str
    #: None: http or https.
    scheme: str | None
    #: The host, or for a wildcard the domain after ``*.``.
    host: str
    wildcard: bool
    #: None: the scheme's default port; :data:`ANY_PORT`: any.
    port: int | None

    def __str__(self) -> str:
        return self.text

    def matches(self, origin: str) -> bool:
        """Whether a browser's ``Origin`` header value is one this pattern allows."""
        if self.text == "null":
            return origin.strip() == "null"
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        scheme, host, port = parsed
        schemes = (self.scheme,) if self.scheme else ("http", "https")
        if scheme not in schemes:
            return False
        if not (host.endswith("." + self.host) if self.wildcard else host == self.host):
            return False
        if self.port == ANY_PORT:
            return True
        wanted = self.port if self.port is not None else _DEFAULT_PORTS.get(scheme)
        return port == wanted


def parse_origin_pattern(text: str) -> OriginPattern:
    """Check one ``--allow-origin`` value; ValueError says what is wrong and how to write it."""
    raw = text.strip()
    if raw.lower() == "null":
        return OriginPattern("null", None, "null", False, None)
    scheme_part, _, rest = raw.rpartition("://")
    if "/" in rest:
        base = (scheme_part + "://" if scheme_part else "") + rest.split("/", 1)[0]
        raise ValueError(f"{text!r} is not an origin: an origin has no path (write {base})")
    m = _PATTERN.fullmatch(raw)
    if m is None:
        raise ValueError(f"{text!r} is not an origin pattern: {_PATTERN_SYNTAX}")
    scheme = m[1].lower() if m[1] else None
    wildcard = bool(m[2])
    if "*" in m[3] or (wildcard and m[3].startswith("[")):
        raise ValueError(
            f"{text!r}: a wildcard may only stand for the leading labels of a name "
            "(*.example.org); to accept every origin, give no --allow-origin"
        )
    host = _host(m[3])
    if host is None:
        raise ValueError(f"{text!r}: {m[3]!r} is not a host name or [IPv6] address")
    port: int | None = None
    if m[4] == "*":
        port = ANY_PORT
    elif m[4]:
        port = int(m[4])
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: {port} is not a TCP port (1-65535)")
    canonical = (
        (f"{scheme}://" if scheme else "")
        + ("*." if wildcard else "")
        + host
        + (f":{m[4]}" if m[4] else "")
    )
    return OriginPattern(canonical, scheme, host, wildcard, port)
