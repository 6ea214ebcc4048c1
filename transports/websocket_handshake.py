"""The WebSocket opening handshake (RFC 6455 section 4), sans-IO, on h11.

h11 parses and writes the HTTP; this module adds the WebSocket rules: which requests
are upgrades, the accept token, subprotocol choice, rejections with a plain-text body,
and the bytes that arrived after the handshake (``trailing``), which belong to the
frame codec. No sockets, no Trio.
"""

from __future__ import annotations

import base64
import dataclasses
import http
from typing import NoReturn

import h11
from wsproto.utilities import generate_accept_token, generate_nonce

from wsnic_trio.util.text import printable

__all__ = ["ClientHandshake", "HandshakeError", "HandshakeRequest", "ServerHandshake"]

#: The most bytes an upgrade request's head (request line, headers and the blank line
#: that ends them) may take; one more gets 431.
MAX_HANDSHAKE = 16 * 1024
_TOO_LARGE = f"request line and headers over the {MAX_HANDSHAKE}-byte limit"
#: How much of a refusal's body a client keeps as the server's reason.
_REASON_LIMIT = 1024


class HandshakeError(Exception):
    """The handshake failed; ``status`` is the HTTP status the server answers with (or got)."""

    def __init__(
        self, status: int, message: str, *, plain_http: bool = False, answered: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        #: Client side: the server itself answered with this status (a refusal), as
        #: opposed to a 502 for an answer that was not HTTP or not there at all.
        self.answered = answered
        #: A well-formed HTTP request that is simply not an upgrade (a browser opening
        #: the URL as a page): answered with a page, not an error.
        self.plain_http = plain_http


@dataclasses.dataclass(frozen=True)
class HandshakeRequest:
    """What a client asked for in its upgrade request."""

    path: str
    subprotocols: tuple[str, ...]
    headers: tuple[tuple[bytes, bytes], ...]


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _tokens(value: bytes) -> list[str]:
    return [t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip()]


def _plain(
    status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *(extra or []),
    ]


class ServerHandshake:
    """Server side: feed bytes until :meth:`receive` returns the request, then accept or reject."""

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HANDSHAKE)
        self._key: bytes | None = None
        self.request: HandshakeRequest | None = None
        self.trailing = b""
        self._fed = 0

    def receive(self, data: bytes) -> HandshakeRequest | None:
        """Feed bytes (``b""`` at EOF); the request once complete. Raises HandshakeError."""
        self._fed += len(data)
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:  # the head is incomplete and over the limit
                    raise HandshakeError(431, _TOO_LARGE) from None
                # h11's message may quote the client's bytes: keep only its first words.
                what = str(exc).split(":", 1)[0]
                raise HandshakeError(exc.error_status_hint, f"bad HTTP request: {what}") from None
            if event is h11.NEED_DATA:
                return None
            if event is h11.PAUSED:
                # The request is complete and proposes the upgrade: h11 waits for our 101.
                return self.request
            if isinstance(event, h11.ConnectionClosed):
                raise HandshakeError(400, "connection closed during the handshake")
            if isinstance(event, h11.Request):
                # h11 limits only a head that is still incomplete, so one that arrives
                # whole (or completes in the read after the one that reached the limit)
                # could be up to twice as big: count what the head took.
                head = self._fed - len(self._h11.trailing_data[0])
                if head > MAX_HANDSHAKE:
                    raise HandshakeError(431, _TOO_LARGE)
                self._check(event)

    def _check(self, req: h11.Request) -> None:
        headers = {k.lower(): v for k, v in req.headers}
        upgrade = "websocket" in _tokens(headers.get(b"upgrade", b""))
        connection = "upgrade" in _tokens(headers.get(b"connection", b""))
        if not (upgrade and connection):
            raise HandshakeError(
                200, "plain HTTP request (not a WebSocket upgrade)", plain_http=True
            )
        if req.method != b"GET":
            raise HandshakeError(400, "the upgrade request must use GET")
        if headers.get(b"sec-websocket-version", b"").strip() != b"13":
            raise HandshakeError(426, "only WebSocket version 13 is supported")
        key = headers.get(b"sec-websocket-key", b"").strip()
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        if not valid_key:
            raise HandshakeError(400, "missing or malformed Sec-WebSocket-Key")
        self._key = key
        protocols = tuple(
            p.strip()
            for k, v in req.headers
            if k.lower() == b"sec-websocket-protocol"
            for p in v.decode("latin-1").split(",")
            if p.strip()
        )
        self.request = HandshakeRequest(
            path=req.target.decode("latin-1"),
            subprotocols=protocols,
            headers=tuple((bytes(k), bytes(v)) for k, v in req.headers),
        )

    def accept(self, subprotocol: str | None = None) -> bytes:
        """The 101 response; afterwards :attr:`trailing` holds any early frame bytes."""
        assert self._key is not None
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", generate_accept_token(self._key)),
        ]
        if subprotocol is not None:
            headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
        data = self._h11.send(
            h11.InformationalResponse(
                status_code=101, headers=headers, reason=b"Switching Protocols"
            )
        )
        self.trailing = bytes(self._h11.trailing_data[0])
        return data or b""

    def reject(self, status: int, body: bytes) -> bytes:
        """A plain-text response that ends the connection (works even after a parse error)."""
        extra = [(b"sec-websocket-version", b"13")] if status == 426 else []
        headers = _plain(status, body, extra)
        try:
            response = h11.Response(status_code=status, headers=headers, reason=_phrase(status))
            data = self._h11.send(response) or b""
            data += self._h11.send(h11.Data(data=body)) or b""
            data += self._h11.send(h11.EndOfMessage()) or b""
            return data
        except h11.LocalProtocolError:
            # The request was too broken for h11 to answer in order; say it plainly.
            reason = _phrase(status)
            lines = b"".join(b"%s: %s\r\n" % h for h in headers)
            return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (status, reason, lines, body)


class ClientHandshake:
    """Client side: :meth:`request` to send, then feed the response to :meth:`receive`."""

    def __init__(self, host: str, target: str, subprotocols: list[str] | None = None) -> None:
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HANDSHAKE)
        self._key = generate_nonce()
        self.host = host
        self.target = target
        self.subprotocols = subprotocols or []
        self.subprotocol: str | None = None
        self.trailing = b""
        #: A refusal's status while its body (the server's reason) is read.
        self._refused: int | None = None
        self._reason = bytearray()

    def request(self) -> bytes:
        headers = [
            (b"host", self.host.encode("latin-1")),
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-key", self._key),
            (b"sec-websocket-version", b"13"),
        ]
        if self.subprotocols:
            headers.append((b"sec-websocket-protocol", ", ".join(self.subprotocols).encode()))
        req = h11.Request(method="GET", target=self.target.encode("latin-1"), headers=headers)
        return self._h11.send(req) or b""

    def receive(self, data: bytes) -> bool:
        """Feed the server's bytes; True once upgraded. Raises HandshakeError (with the status).

        A refusal is read to the end of its body (or of the connection), since the body
        is the server's reason, and "HTTP 403" alone does not say which LAN or token.
        """
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._refused is not None:
                    self._refuse()
                raise HandshakeError(502, f"bad HTTP response: {exc}") from None
            if event is h11.NEED_DATA:
                return False
            if self._refused is not None:
                if isinstance(event, h11.Data):
                    self._reason += event.data[: _REASON_LIMIT - len(self._reason)]
                    continue
                self._refuse()  # the end of the body, or of the connection
            if isinstance(event, h11.ConnectionClosed):
                raise HandshakeError(502, "connection closed during the handshake")
            if isinstance(event, h11.Response | h11.InformationalResponse):
                if event.status_code != 101:
                    self._refused = event.status_code
                    continue
                headers = {k.lower(): v for k, v in event.headers}
                if headers.get(b"sec-websocket-accept") != generate_accept_token(self._key):
                    raise HandshakeError(502, "wrong Sec-WebSocket-Accept from the server")
                proto = headers.get(b"sec-websocket-protocol")
                self.subprotocol = proto.decode("latin-1") if proto else None
                self.trailing = bytes(self._h11.trailing_data[0])
                return True

    def _refuse(self) -> NoReturn:
        assert self._refused is not None
        lines = bytes(self._reason).decode("utf-8", "replace").strip().splitlines()
        # Our own server starts its reasons with its name, for a browser's sake.
        reason = printable(lines[0].removeprefix("wsnic-trio: ")) if lines else ""
        raise HandshakeError(
            self._refused,
            f"server answered HTTP {self._refused}" + (f": {reason}" if reason else ""),
            answered=True,
        )
