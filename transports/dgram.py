"""vfkit and QEMU ``-netdev dgram`` front end: one unix SOCK_DGRAM socket, many peers.

Both VMs bind a socket of their own and send datagrams to ours; each datagram is one
Ethernet frame, and a peer *is* its source address. vfkit (``--device
virtio-net,unixSocketPath=PATH``) may first send the 4-byte datagram ``VFKT``; it is a
handshake, never a frame, so it is swallowed (it still counts as a sign of life and may
create the peer). QEMU (``-netdev dgram,local.type=unix,...,remote.type=unix,
remote.path=PATH``) sends frames only. One listener serves both: the rules are the same.

With no connection there is no EOF, so:

- a peer is dropped after ``--dgram-idle-timeout`` seconds without a datagram (the
  core's watchdog does this, through ``Liveness.timeout``); its next datagram makes it a
  new peer;
- a send that the kernel refuses because the peer's socket is gone (``ECONNREFUSED``,
  ``ENOENT``) ends the peer at once.

Datagrams from an unbound socket have no source address to answer: they are dropped
and counted (logged once). Only a datagram that is a valid frame (or ``VFKT``) creates a
peer, and at most ``--dgram-max-peers`` exist per listener: a flood of datagrams from
new addresses costs counters, not TAPs. The single reader demultiplexes datagrams into a
small bounded queue per peer; a full queue drops (Ethernet is allowed to) and counts.

Sending: ``sendto`` on the shared socket. Linux reports a full receive queue of an
*unconnected* destination as ``EAGAIN`` and offers no readiness event for it (poll only
watches a connected peer), so a busy peer is retried with short sleeps for a moment
and then the rest of the batch is dropped and counted (``peer-busy``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import socket
import tempfile
from typing import TYPE_CHECKING

import trio

from wsnic_trio.errors import PeerClosed, SetupError
from wsnic_trio.net.unixpath import UnixPath, bind_unix
from wsnic_trio.transports._listen import bind_per_lan, serve_link
from wsnic_trio.transports._packetio import PacketLink, Unpinged
from wsnic_trio.transports._sockio import skip_unsendable
from wsnic_trio.transports.base import (
    DEFAULT_LAN,
    AdmissionRequest,
    FrameCheck,
    Liveness,
    PeerHandler,
    Rejection,
    lan_suffix,
    printable,
)

if TYPE_CHECKING:
    from wsnic_trio.config import Config

__all__ = ["VFKIT_HANDSHAKE", "DgramLink", "DgramTransport", "dial_dgram"]

log = logging.getLogger("wsnic_trio.dgram")

VFKIT_HANDSHAKE = b"VFKT"
QUEUE_FRAMES = 256
BATCH = 64
_BUSY_GIVE_UP = 0.25
#: Seconds a refused datagram peer's datagrams are dropped before it may try again.
REFUSED_HOLD = 1.0
_GONE = {errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN}

Address = str | bytes


def _name(addr: Address) -> str:
    """The peer's name in logs and the API; the peer chose it, so it is escaped."""
    if isinstance(addr, bytes):  # Linux abstract address: a leading NUL
        return "unix:@" + printable(addr[1:].decode(errors="surrogateescape"))
    return "unix:" + printable(addr)


class DgramLink(Unpinged):
    """One datagram peer; its receive side is fed by the listener's single reader."""

    transport = "dgram"

    def __init__(self, owner: DgramTransport, addr: Address, liveness: Liveness) -> None:
        self.owner = owner
        self.addr = addr
        self.lan = owner.lan
        self.remote = _name(addr)
        self.remote_ip: str | None = None  # unix sockets only
        self.liveness = liveness
        self.last_received = trio.current_time()
        self.drops: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[bytes] = collections.deque()
        self._wakeup = trio.Event()
        self._closed = False

    def feed(self, frame: bytes) -> None:
        """Called by the listener for each datagram from this peer (never blocks)."""
        self.last_received = trio.current_time()
        if frame == VFKIT_HANDSHAKE:
            return
        if len(self._queue) >= QUEUE_FRAMES:
            self.drops["queue-full"] += 1
            return
        self._queue.append(frame)
        self._wakeup.set()

    async def accept(self) -> None:
        """Datagrams that came while the TAP was made wait in this peer's queue."""

    async def refuse(self, rejection: Rejection) -> None:
        """No connection to close: forget the peer; its datagrams are dropped for a
        moment, then the next one tries again (so a refused VM cannot make the server
        attempt a TAP per datagram)."""
        self.owner.refused_until[self.addr] = trio.current_time() + REFUSED_HOLD
        await self.aclose()

    async def receive_frames(self) -> list[bytes]:
        while not self._queue:
            if self._closed:
                raise PeerClosed("link closed")
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        frames = list(self._queue)
        self._queue.clear()
        await trio.lowlevel.checkpoint()
        return frames

    async def send_frames(self, frames: list[bytes]) -> None:
        sock = self.owner.sock
        for index, frame in enumerate(frames):
            waited = 0.0
            pause = 0.001
            while True:
                try:
                    sock.sendto(frame, self.addr)
                    break
                except BlockingIOError:
                    if waited >= _BUSY_GIVE_UP:
                        self.drops["peer-busy"] += len(frames) - index
                        return
                    await trio.sleep(pause)
                    waited += pause
                    pause = min(pause * 2, 0.05)
                except OSError as exc:
                    skip_unsendable(exc, _GONE, self.drops)
                    break
        await trio.lowlevel.checkpoint()

    async def aclose(self, reason: BaseException | None = None) -> None:
        self._closed = True
        self._wakeup.set()
        self.owner.forget(self)


class DgramTransport:
    """One unixgram socket serving any number of VMs, each identified by its address."""

    name = "dgram"

    def __init__(self, config: Config, path: str, lan: str = DEFAULT_LAN) -> None:
        self.config = config
        self.path = path
        #: The LAN this socket's peers join.
        self.lan = lan
        self.check = FrameCheck(config.lan.max_frame)
        self.unix: UnixPath = bind_unix(
            path, socket.SOCK_DGRAM, config.server.socket_mode, "dgram listener"
        )
        self.sock = self.unix.sock
        self.peers: dict[Address, DgramLink] = {}
        #: Datagrams dropped before reaching any peer, by reason.
        self.drops: collections.Counter[str] = collections.Counter()
        self._liveness = Liveness(timeout=config.server.dgram_idle_timeout)
        #: Addresses the core refused recently, and until when their datagrams drop.
        self.refused_until: dict[Address, float] = {}

    @classmethod
    def from_config(cls, config: Config) -> list[DgramTransport]:
        return bind_per_lan(config, lambda lan: lan.dgram, cls)

    def describe(self) -> str:
        return f"dgram (vfkit, QEMU dgram) unix:{self.path}{lan_suffix(self.lan)}"

    def close(self) -> None:
        self.unix.close()

    def forget(self, link: DgramLink) -> None:
        if self.peers.get(link.addr) is link:
            del self.peers[link.addr]

    def _drop(self, reason: str, message: str) -> None:
        if not self.drops[reason]:
            log.warning("%s: %s (counted; logged once)", self.path, message)
        self.drops[reason] += 1

    async def serve(
        self, handler: PeerHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        read_size = self.config.lan.max_frame + 1  # one spare byte shows a datagram is oversize
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    for _ in range(BATCH):
                        try:
                            data, addr = self.sock.recvfrom(read_size)
                        except BlockingIOError:
                            await trio.lowlevel.wait_readable(self.sock)
                            break
                        self._dispatch(data, addr, nursery, handler)
                    else:
                        await trio.lowlevel.checkpoint()
        finally:
            trio.lowlevel.notify_closing(self.sock)
            self.close()
            if self.drops:
                log.info(
                    "%s: datagrams dropped before reaching a peer: %s",
                    self.path,
                    ", ".join(f"{k} {v}" for k, v in sorted(self.drops.items())),
                )

    def _dispatch(
        self, data: bytes, addr: Address | None, nursery: trio.Nursery, handler: PeerHandler
    ) -> None:
        if not addr:
            self._drop("unnamed", "datagram from an unbound socket dropped: it has no address")
            return
        link = self.peers.get(addr)
        if link is not None:
            link.feed(data)
            return
        if self.refused_until:
            now = trio.current_time()
            until = self.refused_until.get(addr)
            if until is not None and now < until:
                self.drops["refused"] += 1
                return
            for gone in [a for a, t in self.refused_until.items() if t <= now]:
                del self.refused_until[gone]
        if data != VFKIT_HANDSHAKE:
            problem = self.check.problem(data)
            if problem is not None:
                self._drop(problem, f"{problem} datagram from unknown {_name(addr)} dropped")
                return
        if len(self.peers) >= self.config.server.dgram_max_peers:
            self._drop(
                "peer-limit",
                f"datagram from a new address dropped: already {len(self.peers)} peers "
                "(--dgram-max-peers)",
            )
            return
        rejection = handler.admit(AdmissionRequest("dgram", None, lan=self.lan))
        if rejection is not None:
            self._drop("rejected", f"datagram from {_name(addr)} refused: {rejection.reason}")
            return
        link = DgramLink(self, addr, self._liveness)
        self.peers[addr] = link
        link.feed(data)
        nursery.start_soon(self._peer, link, handler)

    async def _peer(self, link: DgramLink, handler: PeerHandler) -> None:
        await serve_link(handler, link)


async def dial_dgram(
    url: str, *, check: FrameCheck, liveness: Liveness, connect_timeout: float = 10.0
) -> PacketLink:
    """Client side: ``dgram:PATH`` (as QEMU dgram) or ``vfkit:PATH`` (sends ``VFKT`` first).

    The client binds its own socket in a fresh private directory (the server needs an
    address to answer) and removes it when the link closes.
    """
    scheme, _, path = url.partition(":")
    if scheme not in ("dgram", "vfkit") or not path:
        raise SetupError(f"{url!r}: expected dgram:PATH or vfkit:PATH")
    directory = tempfile.mkdtemp(prefix="wsnic-connect-")
    local = os.path.join(directory, "client.sock")

    def cleanup() -> None:
        with contextlib.suppress(OSError):
            os.unlink(local)
        with contextlib.suppress(OSError):
            os.rmdir(directory)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        os.chmod(directory, 0o711)
        sock.bind(local)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot reach {url}: {exc.strerror}") from None
        if scheme == "vfkit":
            sock.send(VFKIT_HANDSHAKE)
    except BaseException:
        sock.close()
        cleanup()
        raise
    await trio.lowlevel.checkpoint()
    return PacketLink(
        sock,
        transport=scheme,
        remote=f"unix:{path}",
        liveness=Liveness(),
        max_frame=check.max_frame,
        send_stall_timeout=liveness.timeout or 60.0,
        on_close=cleanup,
    )
