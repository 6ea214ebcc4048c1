"""Sans-IO WebSocket for Ethernet frames: bytes in, frames out, bytes to send.

Two layers: the opening handshake (:mod:`wsnic_trio.transports.websocket_handshake`, HTTP by h11)
and the framing after it (:mod:`wsnic_trio.transports.websocket_frames`). This class adds what is
specific to carrying Ethernet: one *binary* message is one frame, text is refused,
messages are limited to the frame size, runts are dropped and counted, pings are
answered, and every way a connection can end is recorded in :attr:`closed`. No sockets
and no Trio here, so every rule is unit-tested by feeding bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import enum

from wsnic_trio.transports.base import ETH_HEADER, FrameCheck
from wsnic_trio.transports.websocket_frames import CloseCode, FrameCodec, FrameError
from wsnic_trio.transports.websocket_handshake import (
    ClientHandshake,
    HandshakeError,
    HandshakeRequest,
    ServerHandshake,
)

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


class WebSocketProtocol:
    """One WebSocket connection, either side, carrying Ethernet frames."""

    def __init__(self, *, client: bool, check: FrameCheck, plain_page: bytes = PLAIN_PAGE) -> None:
        self.client = client
        self.check = check
        self.plain_page = plain_page
        self.phase = Phase.HANDSHAKE
        self.closed: CloseInfo | None = None
        self.request: HandshakeRequest | None = None
        #: Client side: the HTTP status the server refused the handshake with (None for
        #: an answer that was not HTTP, or none).
        self.rejected_status: int | None = None
        #: Client side: the subprotocol the server chose.
        self.subprotocol: str | None = None
        self.drops: collections.Counter[str] = collections.Counter()
        self._server_hs = None if client else ServerHandshake()
        self._client_hs: ClientHandshake | None = None
        self._codec = FrameCodec(client=client, max_message=check.max_frame)
        self._out = bytearray()
        self._pending = b""  # frame bytes that arrived together with the handshake

    # -- output ---------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes queued by the protocol itself (handshake, pongs, close frames)."""
        replies = self._codec.replies
        if replies:
            self._out += b"".join(replies)
            replies.clear()
        out = bytes(self._out)
        self._out.clear()
        return out

    def encode_frames(self, frames: list[bytes]) -> bytes:
        """One write's worth of binary messages, one per frame."""
        if self.phase is not Phase.OPEN:
            return b""
        return self._codec.encode(frames)

    def ping(self, payload: bytes = b"wsnic") -> bytes:
        if self.phase is not Phase.OPEN:
            return b""
        return self._codec.ping(payload)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Start an orderly close from our side (no-op when already closing or closed)."""
        if self.phase is Phase.OPEN:
            self._end(code, reason, by_peer=False)
            return self._codec.close(code, reason)
        if self.closed is None:
            self._end(code, reason, by_peer=False)
        return b""

    # -- handshake --------------------------------------------------------------------

    def start_client(self, host: str, target: str, subprotocols: list[str] | None = None) -> bytes:
        """Client side: the upgrade request to send first."""
        self._client_hs = ClientHandshake(host, target, subprotocols)
        return self._client_hs.request()

    def accept(self, subprotocol: str | None = None) -> bytes:
        """Server side: accept the pending request; extensions (deflate) are declined."""
        assert self._server_hs is not None
        data = self._server_hs.accept(subprotocol)
        self._pending = self._server_hs.trailing
        self.phase = Phase.OPEN
        return data

    def reject(self, status: int, body: bytes) -> bytes:
        """Server side: answer the request with a plain HTTP response and end."""
        assert self._server_hs is not None
        data = self._server_hs.reject(status, body)
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
        if self.phase is Phase.HANDSHAKE:
            if data is None:
                return []
            self._handshake(data)
            return []
        if data is None:
            data, self._pending = self._pending, b""
            if not data:
                return []
        elif not data:
            self._end(CloseCode.ABNORMAL, "connection lost without a close frame", by_peer=True)
            return []
        try:
            frames = self._codec.receive(data)
        except FrameError as exc:
            self._protocol_error(exc.code, str(exc))
            return []
        if self._codec.peer_close is not None:
            code, reason = self._codec.peer_close
            self._out += self._codec.close(code, reason)  # echo it, as RFC 6455 suggests
            self._end(code, reason, by_peer=True)
        # Oversized messages never get here: the codec refuses them at the header.
        good = [f for f in frames if len(f) >= ETH_HEADER]
        if len(good) != len(frames):
            self.drops["runt"] += len(frames) - len(good)
        return good

    def _handshake(self, data: bytes) -> None:
        if self._client_hs is not None:
            try:
                done = self._client_hs.receive(data)
            except HandshakeError as exc:
                self.rejected_status = exc.status if exc.answered else None
                self._end(exc.status, str(exc), by_peer=True, protocol_error=True)
                return
            if done:
                self.phase = Phase.OPEN
                self.subprotocol = self._client_hs.subprotocol
                self._pending = self._client_hs.trailing
            return
        assert self._server_hs is not None
        if not data:
            self._end(1006, "connection closed during the handshake", by_peer=True)
            return
        try:
            self.request = self._server_hs.receive(data)
        except HandshakeError as exc:
            if exc.plain_http:
                # A browser opening the URL as a page (e.g. to accept a TLS certificate).
                self._out += self.reject(200, self.plain_page)
                self.closed = CloseInfo(200, "plain HTTP request answered", by_peer=True)
            else:
                self._out += self.reject(exc.status, f"bad WebSocket handshake: {exc}\n".encode())
                self.closed = CloseInfo(
                    exc.status, f"bad handshake: {exc}", by_peer=True, protocol_error=True
                )

    def _protocol_error(self, code: int, reason: str) -> None:
        if self.phase is Phase.OPEN:
            self._out += self._codec.close(code, reason)
        self._end(code, reason, by_peer=True, protocol_error=True)

    def _end(self, code: int, reason: str, *, by_peer: bool, protocol_error: bool = False) -> None:
        if self.closed is None:
            self.closed = CloseInfo(int(code), reason, by_peer, protocol_error)
        self.phase = Phase.CLOSED
