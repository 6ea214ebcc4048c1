"""Sans-IO WebSocket framing for Ethernet frames: bytes in, frames out, bytes to send.

wsproto (the engine under trio-websocket) does the RFC 6455 work; this class adds what
is specific to carrying Ethernet: one *binary* message is one frame, text is refused,
messages are reassembled up to the frame limit and no further, runts are dropped and
counted, pings are answered, and every way a connection can end is recorded in
:attr:`WebSocketProtocol.closed`. No sockets and no Trio here, so every rule is unit-tested
by feeding bytes.

Why wsproto directly instead of trio-websocket's message API: that API costs about
50 µs per frame (a channel hand-off and several checkpoints per message, no batching);
wsproto fed big reads is several times cheaper (see docs/performance.md).
"""

from __future__ import annotations

import collections
import dataclasses
import enum

import wsproto
import wsproto.events as ev
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .base import FrameCheck

__all__ = ["CloseInfo", "HandshakeRequest", "Phase", "WebSocketProtocol"]

PLAIN_PAGE = (
    b"wsnic-trio: this is a WebSocket endpoint that carries Ethernet frames "
    b"(for v86 and other emulators). Point your emulator's network relay URL here.\n"
)
TLS_PAGE = (
    b"wsnic-trio: the TLS set-up works. This is a wss:// endpoint that carries Ethernet "
    b"frames (for v86 and other emulators); now use wss:// with this host and port in "
    b"your emulator's network relay URL.\n"
)


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class CloseInfo:
    """How the connection ended: the close code, a reason, and who ended it."""

    code: int
    reason: str
    by_peer: bool
    #: True when the peer broke the protocol (as opposed to an orderly close).
    protocol_error: bool = False


@dataclasses.dataclass(frozen=True)
class HandshakeRequest:
    """What a client asked for in its upgrade request (server side)."""

    path: str
    subprotocols: tuple[str, ...]
    headers: tuple[tuple[bytes, bytes], ...]


class WebSocketProtocol:
    """One WebSocket connection, either side, carrying Ethernet frames."""

    def __init__(self, *, client: bool, check: FrameCheck, plain_page: bytes = PLAIN_PAGE) -> None:
        self.client = client
        self.plain_page = plain_page
        self.check = check
        self.phase = Phase.HANDSHAKE
        self.closed: CloseInfo | None = None
        self.request: HandshakeRequest | None = None
        #: Set on the client side when the server answered with a non-101 response.
        self.rejected_status: int | None = None
        self.drops: collections.Counter[str] = collections.Counter()
        self._ws = wsproto.WSConnection(
            wsproto.ConnectionType.CLIENT if client else wsproto.ConnectionType.SERVER
        )
        self._out = bytearray()
        self._partial: bytearray | None = None

    # -- output ---------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes queued by the protocol itself (handshake, pongs, close frames)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def encode_frames(self, frames: list[bytes]) -> bytes:
        """One write's worth of binary messages, one per frame."""
        if self.phase is not Phase.OPEN:
            return b""
        send = self._ws.send
        return b"".join([send(ev.BytesMessage(data=frame)) for frame in frames])

    def ping(self, payload: bytes = b"wsnic") -> bytes:
        if self.phase is not Phase.OPEN:
            return b""
        return self._ws.send(ev.Ping(payload=payload))

    def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> bytes:
        """Start an orderly close from our side (no-op when already closing or closed)."""
        if self.phase is Phase.OPEN and self._ws.state is ConnectionState.OPEN:
            self._end(code, reason, by_peer=False)
            return self._ws.send(ev.CloseConnection(code=code, reason=reason[:120]))
        if self.closed is None:
            self._end(code, reason, by_peer=False)
        return b""

    # -- handshake --------------------------------------------------------------------

    def start_client(self, host: str, target: str, subprotocols: list[str] | None = None) -> bytes:
        """Client side: the upgrade request to send first."""
        return self._ws.send(
            ev.Request(host=host, target=target, subprotocols=subprotocols or [], extensions=[])
        )

    def accept(self, subprotocol: str | None = None) -> bytes:
        """Server side: accept the pending request; extensions (deflate) are declined."""
        data = self._ws.send(ev.AcceptConnection(subprotocol=subprotocol, extensions=[]))
        self.phase = Phase.OPEN
        return data

    def reject(self, status: int, body: bytes) -> bytes:
        """Server side: answer the request with a plain HTTP response and end."""
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            data = self._ws.send(
                ev.RejectConnection(status_code=status, headers=headers, has_body=True)
            )
            data += self._ws.send(ev.RejectData(data=body, body_finished=True))
        except LocalProtocolError:
            # The request was too broken for h11 to answer it in order; say it plainly.
            data = (
                b"HTTP/1.1 %d Bad Request\r\n" % status
                + b"".join(b"%s: %s\r\n" % h for h in headers)
                + b"\r\n"
                + body
            )
        self._end(status, "rejected", by_peer=False, protocol_error=status >= 400)
        return data

    # -- input ----------------------------------------------------------------------

    def receive(self, data: bytes | None) -> list[bytes]:
        """Feed bytes from the peer and return the complete frames.

        ``b""`` means EOF; ``None`` only processes what is already buffered (bytes that
        arrived together with the handshake).
        """
        if self.phase is Phase.CLOSED:
            return []
        if data is None:
            pass
        elif not data:
            if self.phase is Phase.HANDSHAKE:
                self._end(1006, "connection closed during the handshake", by_peer=True)
                return []
            self._ws.receive_data(None)
        else:
            try:
                self._ws.receive_data(data)
            except RemoteProtocolError as exc:
                self._bad_handshake(str(exc))
                return []
        frames: list[bytes] = []
        try:
            for event in self._ws.events():
                self._handle(event, frames)
                if self.closed is not None:
                    break
        except RemoteProtocolError as exc:
            self._bad_handshake(str(exc))
        return frames

    def _bad_handshake(self, message: str) -> None:
        if self.client:
            self._end(1002, f"bad handshake response: {message}", by_peer=True, protocol_error=True)
            return
        if "Missing header, 'Upgrade" in message or "Missing header, 'Connection" in message:
            # A browser opening the URL as a page (e.g. to accept a TLS certificate).
            self._out += self.reject(200, self.plain_page)
            self.closed = CloseInfo(200, "plain HTTP request answered", by_peer=True)
        else:
            self._out += self.reject(400, f"bad WebSocket handshake: {message}\n".encode())
            self.closed = CloseInfo(
                400, f"bad handshake: {message}", by_peer=True, protocol_error=True
            )

    def _handle(self, event: ev.Event, frames: list[bytes]) -> None:
        if isinstance(event, ev.BytesMessage):
            self._message(event, frames)
        elif isinstance(event, ev.Ping):
            self._out += self._ws.send(event.response())
        elif isinstance(event, ev.TextMessage):
            self._protocol_error(
                CloseReason.UNSUPPORTED_DATA, "text messages are not Ethernet frames"
            )
        elif isinstance(event, ev.CloseConnection):
            self._peer_close(event)
        elif isinstance(event, ev.Request):
            self.request = HandshakeRequest(
                path=event.target,
                subprotocols=tuple(event.subprotocols),
                headers=tuple((bytes(k), bytes(v)) for k, v in event.extra_headers),
            )
        elif isinstance(event, ev.AcceptConnection):
            self.phase = Phase.OPEN
        elif isinstance(event, ev.RejectConnection):
            self.rejected_status = event.status_code
            self._end(
                event.status_code,
                f"server answered HTTP {event.status_code}",
                by_peer=True,
                protocol_error=True,
            )
        # Pong, RejectData: nothing to do (the I/O layer notes that bytes arrived).

    def _message(self, event: ev.BytesMessage, frames: list[bytes]) -> None:
        data = event.data
        if self._partial is None and event.message_finished:
            frame = bytes(data)
        else:
            if self._partial is None:
                self._partial = bytearray()
            self._partial += data
            if len(self._partial) > self.check.max_frame:
                self._protocol_error(
                    CloseReason.MESSAGE_TOO_BIG,
                    f"message larger than the {self.check.max_frame}-byte frame limit",
                )
                return
            if not event.message_finished:
                return
            frame = bytes(self._partial)
            self._partial = None
        problem = self.check.problem(frame)
        if problem is None:
            frames.append(frame)
        elif problem == "oversize":
            self._protocol_error(
                CloseReason.MESSAGE_TOO_BIG,
                f"frame of {len(frame)} bytes is over the {self.check.max_frame}-byte limit",
            )
        else:
            self.drops[problem] += 1

    def _protocol_error(self, code: int, reason: str) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._out += self._ws.send(ev.CloseConnection(code=code, reason=reason))
        self._end(code, reason, by_peer=True, protocol_error=True)

    def _peer_close(self, event: ev.CloseConnection) -> None:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            self._out += self._ws.send(event.response())
            self._end(event.code, event.reason or "", by_peer=True)
        elif state is ConnectionState.OPEN:
            # wsproto found a framing error (bad mask, bad opcode, bad UTF-8 ...).
            self._protocol_error(event.code, event.reason or "invalid frame")
        elif event.code == CloseReason.ABNORMAL_CLOSURE:
            self._end(event.code, "connection lost without a close frame", by_peer=True)
        else:
            self._end(event.code, event.reason or "closed", by_peer=True)

    def _end(self, code: int, reason: str, *, by_peer: bool, protocol_error: bool = False) -> None:
        if self.closed is None:
            self.closed = CloseInfo(int(code), reason, by_peer, protocol_error)
        self.phase = Phase.CLOSED
