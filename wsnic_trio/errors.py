"""Errors of wsnic-trio, split by who is at fault and what happens next.

WsnicError
├── ConfigError        the user's settings are unusable: one line on stderr, exit code 2
├── SetupError         the host refused to give us something (a device name is taken,
│   │                  a port is in use, /dev/net/tun is missing): exit code 2, host restored
│   └── TapUnavailable no TAP for one more peer (the bridge is full, out of fds or
│                      memory): that peer is refused with the reason, the server goes on
└── PeerError          one peer misbehaved or went away: that peer alone is closed
    ├── PeerClosed     orderly end (EOF, WebSocket close)
    │   └── PeerRefused    a server refused our link before it began; ``status`` is its
    │                      HTTP status (a client's dial: ``wsnic-trio connect``)
    ├── PeerTimeout    no sign of life within the configured time
    └── PeerProtocolError  the peer broke the wire format; ``close_code`` says how to
                           tell a WebSocket peer why
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "PeerClosed",
    "PeerError",
    "PeerProtocolError",
    "PeerRefused",
    "PeerTimeout",
    "SetupError",
    "TapUnavailable",
    "WsnicError",
    "first_error",
]


class WsnicError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(WsnicError):
    """Settings that cannot work; raised before the host is touched."""


class SetupError(WsnicError):
    """The host could not give us a resource we need to run."""


class TapUnavailable(SetupError):
    """A peer cannot have a TAP right now; raised per peer, never at start-up.

    The message is the one line the refused peer (HTTP 503 body) and the log get.
    """


class PeerError(WsnicError):
    """Something ended one peer; never escapes that peer's nursery."""


class PeerClosed(PeerError):
    """The peer ended the connection in an orderly way."""


class PeerRefused(PeerClosed):
    """The server answered our handshake with a refusal (the message has its reason)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class PeerTimeout(PeerError):
    """The peer showed no sign of life in time."""


class PeerProtocolError(PeerError):
    """The peer sent something its wire format does not allow."""

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (the error itself otherwise): the one a log
    line or an answer names."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
