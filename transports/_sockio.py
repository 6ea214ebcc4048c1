"""A nonblocking stdlib socket driven by Trio's readiness waits.

Trio's stream API costs a scheduler trip and a checkpoint per call; on the data path we
want one big ``recv`` per wake-up and one ``send`` per batch, so the socket is used raw
and we wait only when the kernel says it would block. Writers share one lock: the relay
sends frames while the reader answers pings, and two writers on one socket would
interleave bytes.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter
from collections.abc import Collection

import trio

from wsnic_trio.errors import PeerClosed, PeerTimeout
from wsnic_trio.util.fairness import Fairness

__all__ = ["SocketIO", "is_disconnect", "skip_unsendable", "wait_writable_within"]

RECV_SIZE = 256 * 1024


class SocketIO:
    """Raw nonblocking socket: ``recv_some`` / ``send_all`` with a stall timeout."""

    def __init__(self, sock: socket.socket, *, send_stall_timeout: float) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.send_stall_timeout = send_stall_timeout
        self._send_lock = trio.StrictFIFOLock()
        self._fair = Fairness()
        self._closed = False
        #: True while a send was cut off mid-way: the byte stream now ends inside a
        #: message, so nothing more (not even a close frame) may be written.
        self.torn = False

    async def recv_some(self, size: int = RECV_SIZE) -> bytes:
        """Bytes from the peer; ``b""`` at EOF. A reset raises ``ConnectionError``."""
        waited = False
        while True:
            try:
                data = self.sock.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                waited = True
                continue
            if waited:
                self._fair.waited()
            else:
                # Data was ready without waiting: stay fair to the other tasks.
                await self._fair.tick()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send everything; a peer that accepts nothing for too long is timed out."""
        if not data:
            return
        await self._lock()
        try:
            await self._send_raw(data)
        finally:
            self._send_lock.release()

    async def _lock(self) -> None:
        """Take the send lock, without a scheduler round trip when nobody holds it."""
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()

    async def _send_raw(self, data: bytes | bytearray | memoryview) -> None:
        """The send loop itself; the caller holds the send lock."""
        view = memoryview(data)
        self.torn = True
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await wait_writable_within(self.sock, self.send_stall_timeout)
                continue
            view = view[sent:]
        self.torn = False

    async def goodbye(self) -> None:
        """End our sending side in an orderly way (TLS sends close_notify here)."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


async def wait_writable_within(sock: socket.socket, stall: float) -> None:
    """Wait for room in the socket's send buffer; a peer that reads nothing for
    ``stall`` seconds is stalled, and the link ends (PeerTimeout) rather than queue
    frames for it without bound."""
    with trio.move_on_after(stall) as scope:
        await trio.lowlevel.wait_writable(sock)
    if scope.cancelled_caught:
        raise PeerTimeout(f"peer accepted no data for {stall:g} s") from None


def skip_unsendable(exc: OSError, gone: Collection[int], drops: Counter[str]) -> None:
    """Sort out a failed send of one packet: the peer is gone (PeerClosed), or the
    packet was larger than the peer's socket takes (counted in ``drops``; returns, and
    the caller goes on with the next); anything else is raised as it is."""
    if exc.errno in gone:
        raise PeerClosed(f"peer socket is gone ({exc.strerror})") from None
    if exc.errno == errno.EMSGSIZE:
        drops["too-big-for-peer"] += 1
        return
    raise exc


def is_disconnect(exc: BaseException) -> bool:
    """True for the errors a peer causes by vanishing (reset, broken pipe, timeout)."""
    return isinstance(exc, OSError) and exc.errno in {
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
    }
