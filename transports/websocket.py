"""WebSocket front end (v86 and wsnic clients): ws:// listener, peer link and dialer.

Wire format (wsnic-compatible): any path; each binary message is one Ethernet frame in
either direction; nothing else is ever sent as data. The handshake and framing rules
live in :mod:`transports.websocket_protocol`; this module only moves bytes.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
import urllib.parse
from typing import TYPE_CHECKING

import trio

from wsnic_trio._exceptions import (
    PeerClosed,
    PeerError,
    PeerProtocolError,
    PeerTimeout,
    SetupError,
)

from ._sockio import SocketIO, is_disconnect
from .base import FrameCheck, Liveness, PeerHandler
from .websocket_protocol import Phase, WebSocketProtocol

if TYPE_CHECKING:
    from wsnic_trio._config import Config

__all__ = ["WebSocketLink", "WebSocketTransport", "dial_websocket", "tcp_listener"]

log = logging.getLogger("wsnic_trio.ws")

_CLOSE_TIMEOUT = 1.0
_HANDSHAKE_READ = 16 * 1024


class WebSocketLink:
    """A peer whose frames travel as binary WebSocket messages."""

    transport = "ws"

    def __init__(
        self, io: SocketIO, proto: WebSocketProtocol, remote: str, liveness: Liveness
    ) -> None:
        self.io = io
        self.proto = proto
        self.remote = remote
        self.liveness = liveness
        self.last_received = trio.current_time()
        self.drops: collections.Counter[str] = proto.drops
        self._pending = True  # bytes that came with the handshake still to be parsed

    async def receive_frames(self) -> list[bytes]:
        proto = self.proto
        if self._pending:
            self._pending = False
            frames = proto.receive(None)
            if frames:
                return frames
        while True:
            closed = proto.closed
            if closed is not None:
                await self.io.send_all(proto.data_to_send())
                if closed.protocol_error:
                    raise PeerProtocolError(closed.reason, closed.code)
                detail = f", {closed.reason}" if closed.reason else ""
                raise PeerClosed(f"closed by peer (code {closed.code}{detail})")
            data = await self.io.recv_some()
            self.last_received = trio.current_time()
            frames = proto.receive(data)
            out = proto.data_to_send()
            if out:
                await self.io.send_all(out)
            if frames:
                return frames

    async def send_frames(self, frames: list[bytes]) -> None:
        await self.io.send_all(self.proto.encode_frames(frames))

    async def ping(self) -> None:
        await self.io.send_all(self.proto.ping())

    async def aclose(self, reason: BaseException | None = None) -> None:
        """Send a close frame that says why, wait briefly for the peer's, then close."""
        if isinstance(reason, PeerProtocolError):
            code, text = reason.close_code, str(reason)
        elif isinstance(reason, PeerTimeout):
            code, text = 1001, str(reason)
        elif reason is None or isinstance(reason, PeerClosed):
            code, text = 1000, ""
        else:
            code, text = 1001, "server is closing this connection"
        data = self.proto.close(code, text) + self.proto.data_to_send()
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            try:
                if not self.io.torn:
                    await self.io.send_all(data)
                self.io.sock.shutdown(socket.SHUT_WR)
                while await self.io.recv_some():
                    pass
            except (OSError, PeerError):
                pass
        self.io.close()


def tcp_listener(address: str, port: int, what: str) -> socket.socket:
    """Bind a listening TCP socket now, so a taken port fails before the host is touched."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SetupError(f"{what}: cannot resolve address {address!r}: {exc.strerror}") from None
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        hint = {
            errno.EADDRINUSE: " (another program is listening there; pick another port)",
            errno.EADDRNOTAVAIL: " (no interface of this host has that address)",
            errno.EACCES: " (permission denied)",
        }.get(exc.errno or 0, "")
        raise SetupError(
            f"{what}: cannot listen on {address} port {port}: {exc.strerror}{hint}"
        ) from None
    sock.setblocking(False)
    return sock


def _peer_name(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


class WebSocketTransport:
    """The ws:// listener. Every accepted connection becomes one peer after its handshake."""

    name = "ws"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.check = FrameCheck(config.max_frame)
        self.liveness = Liveness(ping_interval=config.ping_interval, timeout=config.ping_timeout)
        self.sock = tcp_listener(config.ws_address, config.ws_port, "WebSocket listener")
        self.address = self.sock.getsockname()

    @classmethod
    def from_config(cls, config: Config) -> list[WebSocketTransport]:
        return [cls(config)] if config.ws_port else []

    def describe(self) -> str:
        return f"ws://{_peer_name(self.address)}/"

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.sock.close()

    async def serve(
        self, handler: PeerHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    await trio.lowlevel.wait_readable(self.sock)
                    try:
                        conn, addr = self.sock.accept()
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        # Out of fds or memory: say so, back off, keep serving the others.
                        log.error("accept failed: %s", exc.strerror)
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(self._connection, conn, _peer_name(addr), handler)
        finally:
            trio.lowlevel.notify_closing(self.sock)
            self.close()

    async def _connection(self, conn: socket.socket, remote: str, handler: PeerHandler) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        io = SocketIO(conn, send_stall_timeout=self.config.ping_timeout)
        proto = WebSocketProtocol(client=False, check=self.check)
        link: WebSocketLink | None = None
        try:
            with trio.move_on_after(self.config.handshake_timeout) as scope:
                await _server_handshake(io, proto)
            if scope.cancelled_caught:
                log.info(
                    "%s: no complete WebSocket handshake within %g s; closed",
                    remote,
                    self.config.handshake_timeout,
                )
                return
            if proto.phase is not Phase.OPEN:
                closed = proto.closed
                log.info("%s: %s", remote, closed.reason if closed else "closed during handshake")
                return
            link = WebSocketLink(io, proto, remote, self.liveness)
            await handler(link)
        except* (OSError, PeerError) as group:
            for exc in group.exceptions:
                log.debug("%s: connection ended: %r", remote, exc)
        finally:
            if link is not None:
                await link.aclose()
            else:
                io.close()


async def _server_handshake(io: SocketIO, proto: WebSocketProtocol) -> None:
    while proto.phase is Phase.HANDSHAKE:
        data = await io.recv_some(_HANDSHAKE_READ)
        proto.receive(data)
        if proto.request is not None and proto.phase is Phase.HANDSHAKE:
            offered = proto.request.subprotocols
            # Browsers fail the connection when they offered subprotocols and none is
            # chosen, so echo the first one; the frames are the same whatever its name.
            await io.send_all(proto.accept(offered[0] if offered else None))
        await io.send_all(proto.data_to_send())


async def dial_websocket(
    url: str, *, check: FrameCheck, liveness: Liveness, connect_timeout: float = 10.0
) -> WebSocketLink:
    """Open a client link to a ws:// URL (used by ``wsnic-trio connect`` and the tests)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ws":
        raise SetupError(f"unsupported URL scheme {parts.scheme!r} in {url} (expected ws://)")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(connect_timeout):
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, type_, proto_num, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto_num)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(sockaddr)
            if err == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(
                    err, f"cannot connect to {host}:{port}: {errno.errorcode.get(err, err)}"
                )
            io = SocketIO(sock, send_stall_timeout=liveness.timeout or 60.0)
            proto = WebSocketProtocol(client=True, check=check)
            netloc = parts.netloc.rsplit("@", 1)[-1]
            await io.send_all(proto.start_client(netloc, target))
            while proto.phase is Phase.HANDSHAKE:
                data = await io.recv_some(_HANDSHAKE_READ)
                proto.receive(data)
            if proto.phase is not Phase.OPEN:
                closed = proto.closed
                raise PeerClosed(closed.reason if closed else "handshake failed")
        except BaseException:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            raise
    return WebSocketLink(io, proto, f"{host}:{port}", liveness)


def is_expected_disconnect(exc: BaseException) -> bool:
    """Errors that mean only "this peer is gone" and deserve no traceback."""
    return isinstance(exc, PeerError) or is_disconnect(exc)
