"""QEMU ``-netdev stream`` front end: unix or TCP listeners, outbound dialling, client dialer.

Wire format (QEMU ``net/stream.c``): a byte stream of frames, each behind a 4-byte
big-endian length; the rules live in :mod:`wsnic_trio.transports.stream_protocol`.

Liveness: a stream peer ends at EOF or a reset; TCP sockets get keepalive. A stream has
no ping, so one more rule protects the server from a client that starts a frame and
stalls: a frame left incomplete for ``--partial-frame-timeout`` seconds closes the peer
(a live QEMU always writes whole frames, so the rest follows within microseconds).

Outbound mode (``--qemu-connect``): the server dials a QEMU started with
``-netdev stream,server=on`` and dials again, with backoff, whenever it goes away or
is not there yet. QEMU before 7.2's ``reconnect=`` option cannot redial a restarted
server by itself; in this mode it does not need to.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import urllib.parse
from typing import TYPE_CHECKING, Any

import trio

from wsnic_trio.config.endpoints import Endpoint, parse_qemu_endpoint
from wsnic_trio.errors import PeerClosed, PeerProtocolError, PeerTimeout
from wsnic_trio.net.addresses import bind_all_addresses, connect_any
from wsnic_trio.net.listen import accept_forever
from wsnic_trio.net.unixpath import UnixPath, bind_unix
from wsnic_trio.transports._listen import bind_per_lan, serve_link
from wsnic_trio.transports._sockio import SocketIO
from wsnic_trio.transports.base import (
    DEFAULT_LAN,
    AdmissionRequest,
    FrameCheck,
    Liveness,
    PeerHandler,
    Rejection,
    lan_suffix,
    peer_address,
)
from wsnic_trio.transports.stream_protocol import StreamFramingError, StreamProtocol

if TYPE_CHECKING:
    from wsnic_trio.config import Config

__all__ = [
    "Endpoint",
    "QemuConnectTransport",
    "QemuStreamTransport",
    "StreamLink",
    "dial_qemu_stream",
    "parse_endpoint",
]

log = logging.getLogger("wsnic_trio.qemu")

_REDIAL_MIN = 0.5
_REDIAL_MAX = 5.0


#: ``unix:PATH`` / ``tcp:HOST:PORT``: the syntax lives with the settings that read it.
parse_endpoint = parse_qemu_endpoint


def _stream_options(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Notice a vanished host in about a minute and a half instead of two hours.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)


class StreamLink:
    """A peer whose frames travel length-prefixed over a stream socket (either side)."""

    transport = "qemu"

    def __init__(
        self,
        io: SocketIO,
        proto: StreamProtocol,
        remote: str,
        partial_frame_timeout: float,
        remote_ip: str | None = None,
    ) -> None:
        self.io = io
        self.proto = proto
        self.remote = remote
        self.remote_ip = remote_ip
        #: The LAN the peer joins (its listener's).
        self.lan = DEFAULT_LAN
        self.liveness = Liveness()
        self.last_received = trio.current_time()
        self.drops: collections.Counter[str] = collections.Counter()
        self.partial_frame_timeout = partial_frame_timeout

    async def accept(self) -> None:
        """The stream was complete when accepted; what QEMU sent meanwhile is queued."""

    async def refuse(self, rejection: Rejection) -> None:
        """The stream format cannot say why: hang up (the core logs the reason)."""
        self.io.close()

    async def receive_frames(self) -> list[bytes]:
        proto = self.proto
        while True:
            if proto.pending:
                with trio.move_on_after(self.partial_frame_timeout) as scope:
                    data = await self.io.recv_some()
                if scope.cancelled_caught:
                    raise PeerTimeout(
                        f"a frame stayed incomplete for {self.partial_frame_timeout:g} s "
                        f"({proto.pending} bytes of it received)"
                    )
            else:
                data = await self.io.recv_some()
            try:
                if not data:
                    proto.end_of_stream()
                    raise PeerClosed("end of stream")
                frames = proto.receive_data(data)
            except StreamFramingError as exc:
                raise PeerProtocolError(str(exc)) from None
            self.last_received = trio.current_time()
            if frames:
                return frames

    async def send_frames(self, frames: list[bytes]) -> None:
        await self.io.send_all(self.proto.encode(frames))

    async def ping(self) -> None:
        """The stream format has no ping; liveness is EOF and TCP keepalive."""

    async def aclose(self, reason: BaseException | None = None) -> None:
        self.io.close()


def _peer_name(addr: object, endpoint: Endpoint) -> tuple[str, str | None]:
    if isinstance(addr, tuple):
        return peer_address(addr)
    return str(endpoint), None  # unix clients are usually unnamed: name the socket they used


class QemuStreamTransport:
    """One listener (unix or TCP); every accepted connection is its own peer."""

    name = "qemu"

    def __init__(self, config: Config, endpoint: Endpoint, *, lan: str = DEFAULT_LAN) -> None:
        self.config = config
        self.endpoint = endpoint
        #: The LAN this listener's peers join (its ``--qemu`` is that LAN's option).
        self.lan = lan
        self.unix: UnixPath | None = None
        if endpoint.kind == "unix":
            self.unix = bind_unix(
                endpoint.path, socket.SOCK_STREAM, config.server.socket_mode, "QEMU stream listener"
            )
            self.socks = [self.unix.sock]
        else:
            # One socket per address of a host name (tcp:localhost:5555: ::1 and 127.0.0.1).
            self.socks = bind_all_addresses(
                endpoint.host, endpoint.port, "QEMU stream listener", backlog=512
            )

    @classmethod
    def from_config(cls, config: Config) -> list[QemuStreamTransport | QemuConnectTransport]:
        made: list[QemuStreamTransport | QemuConnectTransport] = []
        made.extend(
            bind_per_lan(
                config,
                lambda lan: lan.qemu,
                lambda view, t, name: cls(view, parse_endpoint(t), lan=name),
            )
        )
        for name in config.all_lans():
            view = config.for_lan(name)
            made.extend(
                QemuConnectTransport(view, parse_endpoint(t), lan=name)
                for t in view.lan.qemu_connect
            )
        return made

    def describe(self) -> str:
        if self.endpoint.kind == "unix":
            return f"qemu stream unix:{self.endpoint.path}{lan_suffix(self.lan)}"
        shown = []
        for sock in self.socks:
            host, port = sock.getsockname()[:2]
            shown.append(f"tcp:{f'[{host}]' if ':' in host else host}:{port}")
        return "qemu stream " + " and ".join(shown) + lan_suffix(self.lan)

    def close(self) -> None:
        if self.unix is not None:
            self.unix.close()
        else:
            for sock in self.socks:
                sock.close()  # a no-op for one already closed

    async def serve(
        self, handler: PeerHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async def on_connection(conn: socket.socket, addr: Any) -> None:
            remote, remote_ip = _peer_name(addr, self.endpoint)
            await run_stream_peer(conn, remote, remote_ip, self.config, handler, self.lan)

        await accept_forever(self.socks, on_connection, self.close, task_status=task_status)


async def run_stream_peer(
    conn: socket.socket,
    remote: str,
    remote_ip: str | None,
    config: Config,
    handler: PeerHandler,
    lan: str = DEFAULT_LAN,
) -> None:
    """Hand one connected stream socket to the core; its errors end here."""
    rejection = handler.admit(AdmissionRequest("qemu", remote_ip, lan=lan))
    if rejection is not None:
        # The stream format has no way to say why: log it, and close.
        log.warning("%s: refused: %s", remote, rejection.reason)
        conn.close()
        return
    _stream_options(conn)
    io = SocketIO(conn, send_stall_timeout=config.server.ping_timeout)
    link = StreamLink(
        io,
        StreamProtocol(config.lan.max_frame),
        remote,
        config.server.partial_frame_timeout,
        remote_ip,
    )
    link.lan = lan
    await serve_link(handler, link)


async def _open_stream(endpoint: Endpoint, deadline: float) -> socket.socket:
    """Connect without blocking Trio by ``deadline`` (TooSlowError); raises OSError naming
    the endpoint (for TCP, every address of its host name and why each failed)."""
    if endpoint.kind == "tcp":
        return await connect_any(
            endpoint.host, endpoint.port, deadline=deadline, target=str(endpoint)
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        with trio.fail_at(deadline):
            try:
                sock.connect(endpoint.path)
                err = 0
            except BlockingIOError:  # EAGAIN: the listener's backlog is full
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError as exc:
                err = exc.errno or errno.EIO
        if err:
            raise OSError(err, f"cannot connect to {endpoint}: {os.strerror(err)}")
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return sock


def _dialled_ip(conn: socket.socket) -> str | None:
    """The address we really reached (the endpoint may be a name with several)."""
    try:
        return peer_address(conn.getpeername())[1]
    except OSError:
        return None


class QemuConnectTransport:
    """Outbound mode: keep one peer connected to a listening QEMU, redialling for ever."""

    name = "qemu"

    def __init__(self, config: Config, endpoint: Endpoint, *, lan: str = DEFAULT_LAN) -> None:
        self.config = config
        self.endpoint = endpoint
        self.lan = lan

    def describe(self) -> str:
        return f"qemu stream, dialling {self.endpoint}{lan_suffix(self.lan)}"

    def close(self) -> None:
        """Nothing is bound in outbound mode."""

    async def serve(
        self, handler: PeerHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        delay = _REDIAL_MIN
        failing = False
        while True:
            try:
                deadline = trio.current_time() + self.config.server.handshake_timeout
                conn = await _open_stream(self.endpoint, deadline)
            except (OSError, trio.TooSlowError) as exc:
                if not failing:  # say it once, not at every attempt
                    why = exc.strerror if isinstance(exc, OSError) else "connect timed out"
                    log.warning("%s: %s; retrying with backoff", self.endpoint, why)
                    failing = True
                await trio.sleep(delay)
                delay = min(_REDIAL_MAX, delay * 2)
                continue
            failing = False
            delay = _REDIAL_MIN
            log.info("%s: connected", self.endpoint)
            remote_ip = _dialled_ip(conn) if self.endpoint.kind == "tcp" else None
            await run_stream_peer(
                conn, str(self.endpoint), remote_ip, self.config, handler, self.lan
            )
            await trio.sleep(_REDIAL_MIN)


async def dial_qemu_stream(
    url: str, *, check: FrameCheck, liveness: Liveness, connect_timeout: float = 10.0
) -> StreamLink:
    """Client side (``wsnic-trio connect``): ``qemu+unix:PATH`` or ``qemu+tcp://HOST:PORT``."""
    if url.startswith("qemu+unix:"):
        endpoint = Endpoint("unix", path=url.removeprefix("qemu+unix:"))
    else:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "qemu+tcp" or not parts.hostname or not parts.port:
            raise ValueError(f"{url!r}: expected qemu+unix:PATH or qemu+tcp://HOST:PORT")
        endpoint = Endpoint("tcp", host=parts.hostname, port=parts.port)
    sock = await _open_stream(endpoint, trio.current_time() + connect_timeout)
    _stream_options(sock)
    io = SocketIO(sock, send_stall_timeout=liveness.timeout or 60.0)
    return StreamLink(io, StreamProtocol(check.max_frame), str(endpoint), 60.0)
