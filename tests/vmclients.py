"""Raw clients of the VM transports, speaking each wire format the way a VM would.

They are plain sockets driven by Trio, so a test can send exactly what it wants,
including what QEMU, UML or vfkit never would.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator

import trio

from wsnic_trio.transports.stream_protocol import StreamProtocol

from . import packets as pk
from .netns import NetNS, NsProcess
from .netns import taps as taps
from .netns import wait_taps as wait_taps

BRIDGE_MAC = "02:77:73:00:00:01"
Match = Callable[[bytes], object]


def wsnic() -> list[str]:
    return [sys.executable, "-m", "wsnic_trio"]


@contextlib.contextmanager
def short_tmpdir() -> Iterator[str]:
    """A private directory with a short path: unix socket paths are limited to 107 bytes."""
    path = tempfile.mkdtemp(prefix="wt", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def wait_fds(proc: object, count: int, timeout: float = 10.0) -> None:
    """Wait until the server holds ``count`` fds again (no leak); fail with the last value."""
    seen = -1
    with trio.move_on_after(timeout):
        while (seen := proc.fd_count()) != count:  # type: ignore[attr-defined]
            await trio.sleep(0.02)
        return
    raise AssertionError(f"server holds {seen} fds, expected its baseline of {count}")


class StreamClient:
    """A QEMU ``-netdev stream`` client: length-prefixed frames over unix or TCP."""

    def __init__(self, sock: trio.socket.SocketType, max_frame: int = 1518) -> None:
        self.sock = sock
        self.proto = StreamProtocol(max_frame)
        self.frames: list[bytes] = []

    @classmethod
    async def unix(cls, path: str, max_frame: int = 1518) -> StreamClient:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(path)
        return cls(sock, max_frame)

    @classmethod
    async def tcp(cls, host: str, port: int) -> StreamClient:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await sock.connect((host, port))
        return cls(sock)

    async def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[await self.sock.send(view) :]

    async def send(self, *frames: bytes) -> None:
        await self.send_raw(self.proto.encode(frames))

    async def receive_until(self, match: Match, timeout: float = 5.0) -> bytes:
        with trio.fail_after(timeout):
            while True:
                while self.frames:
                    frame = self.frames.pop(0)
                    if match(frame):
                        return frame
                data = await self.sock.recv(262144)
                assert data, "server closed the connection"
                self.frames.extend(self.proto.receive_data(data))

    async def read_to_eof(self, timeout: float = 10.0) -> None:
        """Wait for the server to close this connection (frames before that are ignored)."""
        with trio.fail_after(timeout):
            while True:
                try:
                    if not await self.sock.recv(262144):
                        return
                except ConnectionResetError:
                    return

    def close(self) -> None:
        self.sock.close()


class PacketClient:
    """A bess (seqpacket) or dgram/vfkit (datagram) client: one message is one frame."""

    def __init__(self, sock: trio.socket.SocketType, local: str | None = None) -> None:
        self.sock = sock
        self.local = local

    @classmethod
    async def bess(cls, path: str, src: str | None = None) -> PacketClient:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if src is not None:
            await sock.bind(src)
        await sock.connect(path)
        return cls(sock, src)

    @classmethod
    async def dgram(cls, path: str, local: str | None, *, vfkit: bool = False) -> PacketClient:
        """Like vfkit/QEMU: bind ``local`` (None: stay unnamed) and send to ``path``."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if local is not None:
            await sock.bind(local)
        await sock.connect(path)
        if vfkit:
            await sock.send(b"VFKT")
        return cls(sock, local)

    async def send(self, *frames: bytes) -> None:
        for frame in frames:
            await self.sock.send(frame)

    async def receive_until(self, match: Match, timeout: float = 5.0) -> bytes:
        with trio.fail_after(timeout):
            while True:
                frame = await self.sock.recv(70000)
                assert frame or self.sock.type != socket.SOCK_SEQPACKET, "server hung up"
                if match(frame):
                    return frame

    async def read_to_eof(self, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while await self.sock.recv(70000):
                pass

    def close(self, unlink: bool = True) -> None:
        self.sock.close()
        if unlink and self.local is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.local)


async def arp_bridge(
    client: StreamClient | PacketClient, me: bytes, my_ip: str, timeout: float = 10.0
) -> None:
    """Ask who has the bridge address and check the bridge answers to ``me``.

    The request is repeated every half second, as a real stack retransmits ARP: a
    frame that arrives while a brand-new TAP's bridge port is not forwarding yet is
    lost in the kernel (a datagram peer's first frame is what creates its TAP).
    """
    request = pk.arp_request(me, my_ip, "192.168.86.1")
    with trio.fail_after(timeout):
        while True:
            await client.send(request)
            with trio.move_on_after(0.5):
                reply = await client.receive_until(pk.parse_arp_reply, timeout=math.inf)
                break
    assert pk.parse_arp_reply(reply) == (BRIDGE_MAC, "192.168.86.1")
    assert reply[:6] == me


def frame_to(dst: bytes, src: bytes, tag: bytes, size: int = 64) -> bytes:
    return pk.probe_frame(dst, src, tag, size=size)


async def burst(
    sender: StreamClient | PacketClient,
    receiver: StreamClient | PacketClient,
    src: bytes,
    dst: bytes,
    tag: bytes,
    count: int,
) -> None:
    """``count`` full-size frames sent in one go (tagged ``tag`` and their index) all
    reach the receiver, in order: one read of the server may hold many of them."""
    await sender.send(*[frame_to(dst, src, tag + b"%d" % i, size=1514) for i in range(count)])
    for i in range(count):
        got = await receiver.receive_until(lambda f: f[6:12] == src and f[12:14] == b"\x88\xb5")
        assert got[14 : 14 + len(tag + b"%d" % i)] == tag + b"%d" % i and len(got) == 1514


async def survivor_unharmed(
    ns: NetNS, server: NsProcess, good: StreamClient | PacketClient, mac: bytes, baseline: int
) -> None:
    """After another peer's end: its TAP and fds are gone, and client 1 (``good``, at
    192.168.86.10) still reaches the bridge, never disconnected."""
    await wait_taps(ns, 1)
    await wait_fds(server, baseline)
    await arp_bridge(good, mac, "192.168.86.10")
    assert not server.log.find(r"client 1 disconnected")


def disconnect_line(server: NsProcess, client: int = 1) -> str:
    """The server's log line saying how client ``client`` ended, with its drop counters."""
    line = server.log.find(rf"client {client} disconnected.*")
    assert line is not None
    return line.group(0)


async def start_connects(
    clients: Iterable[tuple[NetNS, str, str]], label: str | None = None, connected: str = ""
) -> list[NsProcess]:
    """``wsnic-trio connect URL --tap lan0`` in each namespace, lan0 given its /24 address
    once connected; ``label`` names the processes in the log (default: the URL)."""
    procs = []
    for ns, url, ip in clients:
        proc = await ns.start([*wsnic(), "connect", url, "--tap", "lan0"], label=label or url)
        await proc.log.wait_for(rf"connected to {connected}")
        ns.ip("addr", "add", f"{ip}/24", "dev", "lan0")
        procs.append(proc)
    return procs


async def ping3(ns: NetNS, ip: str) -> bytes:
    """Three quick kernel pings from ``ns`` must be answered; ping's output."""
    result = await ns.exec("ping", "-c", "3", "-i", "0.2", "-W", "2", ip)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    return result.stdout


async def answers_ping(ns: NetNS, ip: str) -> bool:
    """Whether one kernel ping from ``ns`` to ``ip`` is answered within 2 s."""
    return (await ns.exec("ping", "-c", "1", "-W", "2", ip)).returncode == 0


async def stop_all(procs: Iterable[NsProcess]) -> None:
    for proc in procs:
        assert await proc.stop() == 0


def length_prefix(size: int) -> bytes:
    return struct.pack("!I", size)


def exists(path: str) -> bool:
    """Sync file checks, kept out of async test bodies (they are instant on a tmpfs)."""
    return os.path.exists(path)


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()
