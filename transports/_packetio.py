"""A peer link over a *connected* packet socket: one message (or datagram) is one frame.

Used by UML's ``transport=bess`` (``SOCK_SEQPACKET``, both ends) and by the client side
of the datagram transports (a ``SOCK_DGRAM`` socket connected to the server's path).
The socket keeps message boundaries, so there is no codec; the relay's FrameCheck drops
and counts runts and oversize frames. A message longer than the limit is read with one
byte to spare, so it shows up as oversize instead of being silently cut to size.

Per wake-up every ready message is read (up to a batch), and a batch is sent without
awaiting between messages; we wait only when the kernel would block. (One syscall per
message is unavoidable here: Python has no ``sendmmsg``.)
"""

from __future__ import annotations

import collections
import errno
import select
import socket

import trio

from wsnic_trio.errors import PeerClosed
from wsnic_trio.transports._sockio import skip_unsendable, wait_writable_within
from wsnic_trio.transports.base import DEFAULT_LAN, Liveness, Rejection

__all__ = ["PacketLink"]

BATCH = 64
_GONE = {errno.ECONNREFUSED, errno.ENOENT, errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN}


def _hung_up(sock: socket.socket) -> bool:
    """On SOCK_SEQPACKET an empty read is an empty message *or* EOF; poll tells them apart."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP) for _, ev in poller.poll(0))


class Unpinged:
    """A link whose wire has no ping. Its liveness is EOF, a vanished socket, or an idle
    timeout, so the watchdog never asks (``Liveness.ping_interval`` is None)."""

    async def ping(self) -> None:
        return None


class PacketLink(Unpinged):
    """One peer behind a connected SOCK_SEQPACKET or SOCK_DGRAM unix socket."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        transport: str,
        remote: str,
        liveness: Liveness,
        max_frame: int,
        send_stall_timeout: float,
        on_close: collections.abc.Callable[[], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.transport = transport
        self.remote = remote
        #: The LAN the peer joins (its listener's); set by the transport.
        self.lan = DEFAULT_LAN
        self.remote_ip: str | None = None  # unix sockets only
        self.liveness = liveness
        self.last_received = trio.current_time()
        self.drops: collections.Counter[str] = collections.Counter()
        self._read_size = max_frame + 1
        self._send_stall_timeout = send_stall_timeout
        self._seqpacket = sock.type == socket.SOCK_SEQPACKET
        self._on_close = on_close
        self._closed = False

    async def accept(self) -> None:
        """The socket was connected when accepted; what the peer sent meanwhile is queued."""

    async def refuse(self, rejection: Rejection) -> None:
        """Packet sockets cannot say why: hang up (the core logs the reason)."""
        await self.aclose()

    async def receive_frames(self) -> list[bytes]:
        while True:
            frames: list[bytes] = []
            try:
                while len(frames) < BATCH:
                    data = self.sock.recv(self._read_size)
                    if not data:
                        if self._seqpacket and _hung_up(self.sock):
                            if frames:
                                break  # deliver these; the next call sees EOF again
                            raise PeerClosed("end of stream")
                        self.drops["runt"] += 1
                        continue
                    frames.append(data)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno in _GONE:
                    raise PeerClosed(f"peer socket is gone ({exc.strerror})") from None
                raise
            if frames:
                self.last_received = trio.current_time()
                await trio.lowlevel.checkpoint()
                return frames
            await trio.lowlevel.wait_readable(self.sock)

    async def send_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            while True:
                try:
                    self.sock.send(frame)
                    break
                except BlockingIOError:
                    await wait_writable_within(self.sock, self._send_stall_timeout)
                except OSError as exc:
                    skip_unsendable(exc, _GONE, self.drops)
                    break
        await trio.lowlevel.checkpoint()

    async def aclose(self, reason: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
        if self._on_close is not None:
            self._on_close()
