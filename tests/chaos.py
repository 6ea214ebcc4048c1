"""Misbehaving clients for the chaos test: each opens one connection (or datagram peer)
to one listener of a running server and gives up on it at a random phase.

A run is a *plan*: a list of steps (listener, phase) drawn from one seed, each step
with its own random generator derived from the seed and its index, so the same seed
replays the same misbehaviour (what each client sends and where it cuts off), whatever
order the steps happen to finish in. Every step is bounded in time; everything a step
opens is closed when it ends.

``WSNIC_CHAOS_ONLY=ws,api-unix:events`` restricts a plan to some listeners (or
listener:phase pairs), ``WSNIC_CHAOS_ONLY=-api-unix:events,-api-tcp:events`` leaves some
out: to narrow a failure down, or to look past one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import trio
import wsproto
import wsproto.events as ev
import wsproto.utilities

from wsnic_trio.transports.stream_protocol import StreamProtocol

from . import packets as pk
from .apihelp import Reply, api
from .netns import NetNS

BRIDGE_IP = "192.168.86.1"
BRIDGE_MAC = pk.mac("02:77:73:00:00:01")
#: The longest one step may take; a step cut off here is recorded, not an error.
STEP_LIMIT = 6.0
#: How long a step waits for an answer it wants (a 101, an HTTP reply, a ServerHello).
ANSWER_WAIT = 3.0
#: A receive buffer this small makes a client that stops reading back up the server fast.
TINY_RCVBUF = 2048

ENDINGS = ("rst", "fin", "close")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the server under test listens (everything a step may connect to)."""

    ns: NetNS
    ws_port: int
    wss_port: int
    qemu_unix: str
    qemu_port: int
    bess: str
    dgram: str
    api_unix: str
    api_port: int
    api_token: str
    fwd_tcp_port: int
    fwd_udp_port: int
    tls: ssl.SSLContext
    sockdir: str
    #: Ids of the well-behaved clients: API operations of the chaos leave them alone.
    good_ids: frozenset[int]


@dataclasses.dataclass(frozen=True)
class Step:
    index: int
    listener: str
    phase: str


@dataclasses.dataclass
class Outcome:
    """What happened to one step, for the failure report."""

    step: Step
    started: float
    ending: str = "-"
    ended: float | None = None
    result: str = "running"

    def line(self) -> str:
        end = f"{self.ended:7.2f}" if self.ended is not None else "   --- "
        s = self.step
        return (
            f"#{s.index:<4} {s.listener}:{s.phase} end={self.ending} "
            f"t={self.started:7.2f}..{end} -> {self.result}"
        )


# -- one chaos client's identity and frames ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Identity:
    """A MAC of its own (one per step) and an address the good clients do not use."""

    mac: bytes
    ip: str

    @classmethod
    def of(cls, index: int) -> Identity:
        return cls(
            bytes([0x02, 0xC4, 0x05, index >> 8 & 0xFF, index & 0xFF, 0x01]),
            f"192.168.86.{100 + index % 100}",
        )


def hello_frames(me: Identity, rng: random.Random, count: int) -> list[bytes]:
    """Frames a client sends: ARP and pings toward the bridge, some broadcasts, runts."""
    frames = [pk.arp_request(me.mac, me.ip, BRIDGE_IP)]
    for seq in range(count):
        kind = rng.random()
        if kind < 0.6:
            size = rng.randint(8, 1400)
            frames.append(
                pk.icmp_echo(me.mac, BRIDGE_MAC, me.ip, BRIDGE_IP, 0xC405, seq, b"c" * size)
            )
        elif kind < 0.8:
            frames.append(pk.probe_frame(pk.BROADCAST, me.mac, b"chaos", size=rng.randint(60, 600)))
        elif kind < 0.9:
            frames.append(pk.arp_request(me.mac, me.ip, f"192.168.86.{rng.randint(2, 254)}"))
        else:
            frames.append(b"\x01" * rng.randint(1, 13))  # a runt: dropped and counted
    return frames


def flood_frames(me: Identity, rng: random.Random) -> list[bytes]:
    """Pings to the bridge whose answers the client will never read."""
    count, size = rng.randint(60, 200), rng.randint(900, 1400)
    pings = [
        pk.icmp_echo(me.mac, BRIDGE_MAC, me.ip, BRIDGE_IP, 0xC406, seq, b"f" * size)
        for seq in range(count)
    ]
    return [pk.arp_request(me.mac, me.ip, BRIDGE_IP), *pings]


def cut(rng: random.Random, data: bytes) -> bytes:
    """A strict prefix of ``data`` (possibly empty), cut anywhere."""
    return data[: rng.randrange(len(data))]


# -- connections -------------------------------------------------------------------------


def _linger_zero(sock: socket.socket | trio.socket.SocketType) -> None:
    """Closing after this sends a TCP reset instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Conn:
    """A stream connection (TCP or unix, TLS optional) that a step abandons at will."""

    def __init__(self, sock: trio.socket.SocketType, stream: trio.abc.Stream) -> None:
        self.sock = sock
        self.stream = stream

    @classmethod
    async def open(
        cls, t: Target, listener: str, *, tiny_rcvbuf: bool = False, tls: bool = False
    ) -> Conn:
        port = TCP_PORTS.get(listener)
        if port is not None:
            sock = trio.socket.from_stdlib_socket(t.ns.socket())
            address: object = ("127.0.0.1", port(t))
        else:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = UNIX_PATHS[listener](t)
        try:
            if tiny_rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TINY_RCVBUF)
            await sock.connect(address)
            stream: trio.abc.Stream = trio.SocketStream(sock)
            if tls:
                ssl_stream = trio.SSLStream(stream, t.tls, server_hostname="localhost")
                await ssl_stream.do_handshake()
                stream = ssl_stream
        except BaseException:
            sock.close()
            raise
        return cls(sock, stream)

    async def send(self, data: bytes) -> None:
        if data:
            await self.stream.send_all(data)

    async def read(self, limit: int, seconds: float) -> bytes:
        """Up to ``limit`` bytes, as many as come within ``seconds`` (EOF ends it early)."""
        got = b""
        with trio.move_on_after(seconds):
            while len(got) < limit:
                chunk = await self.stream.receive_some(limit - len(got))
                if not chunk:
                    break
                got += chunk
        return got

    async def read_until(self, marker: bytes, seconds: float) -> bytes:
        got = b""
        with trio.move_on_after(seconds):
            while marker not in got:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    break
                got += chunk
        return got

    async def end(self, how: str, rng: random.Random) -> None:
        """Abandon the connection: reset, half-close (reading a little longer), or close."""
        if self.sock.fileno() == -1:
            return
        if how == "rst":
            _linger_zero(self.sock)
        elif how == "fin":
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError, trio.BrokenResourceError, ssl.SSLError):
                await self.read(1 << 20, rng.uniform(0, 0.5))
        self.sock.close()


TCP_PORTS: dict[str, Callable[[Target], int]] = {
    "ws": lambda t: t.ws_port,
    "wss": lambda t: t.wss_port,
    "qemu-tcp": lambda t: t.qemu_port,
    "api-tcp": lambda t: t.api_port,
    "fwd-tcp": lambda t: t.fwd_tcp_port,
}
UNIX_PATHS: dict[str, Callable[[Target], str]] = {
    "qemu-unix": lambda t: t.qemu_unix,
    "api-unix": lambda t: t.api_unix,
}

Phase = Callable[[Target, Step, random.Random, Outcome], Awaitable[None]]


async def _with_conn(
    t: Target,
    step: Step,
    rng: random.Random,
    out: Outcome,
    body: Callable[[Conn], Awaitable[None]],
    *,
    tiny_rcvbuf: bool = False,
    tls: bool = False,
    ending: str | None = None,
) -> None:
    """Open a connection, run ``body`` on it, then end it the way the step chose (or
    ``ending``)."""
    out.ending = ending or rng.choice(ENDINGS)
    conn = await Conn.open(t, step.listener, tiny_rcvbuf=tiny_rcvbuf, tls=tls)
    try:
        await body(conn)
        await conn.end(out.ending, rng)
    finally:
        conn.sock.close()


# -- phases every stream listener has ------------------------------------------------------


async def syn_reset(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """Reset or half-close right after a nonblocking connect, without waiting for it.

    A connection still half-open in the kernel never reaches the server process; what
    the server can meet is one the kernel completed and that is reset or half-closed
    before (or just as) the server accepts it. On loopback the handshake is usually
    complete by the time ``connect`` returns, so this is mostly that case.
    """
    out.ending = rng.choice(("rst", "fin"))
    sock = t.ns.socket()
    try:
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", TCP_PORTS[step.listener](t)))
        if out.ending == "rst":
            _linger_zero(sock)
        else:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            await trio.sleep(rng.uniform(0, 0.2))
    finally:
        sock.close()
    await trio.lowlevel.checkpoint()


async def connect_then_end(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """Connected, then gone before saying anything (before the server's accept, often)."""

    async def body(conn: Conn) -> None:
        if rng.random() < 0.5:
            await trio.sleep(rng.uniform(0, 0.3))

    await _with_conn(t, step, rng, out, body)


# -- WebSocket (ws:// and, over TLS, wss://) ---------------------------------------------------


def _ws_request(rng: random.Random) -> tuple[wsproto.WSConnection, bytes]:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    extra = [(b"user-agent", b"chaos/" + str(rng.randint(1, 99)).encode())]
    return ws, ws.send(ev.Request(host="127.0.0.1", target="/chaos", extra_headers=extra))


async def _ws_upgrade(conn: Conn, rng: random.Random, out: Outcome) -> wsproto.WSConnection | None:
    """The whole handshake; the client's protocol state when the server accepted."""
    ws, request = _ws_request(rng)
    await conn.send(request)
    answer = await conn.read_until(b"\r\n\r\n", ANSWER_WAIT)
    ws.receive_data(answer)
    if any(isinstance(e, ev.AcceptConnection) for e in ws.events()):
        return ws
    out.result = f"not upgraded: {answer[:40]!r}"
    return None


async def _ws_upgrade_and_send(
    conn: Conn, rng: random.Random, out: Outcome, frames: Sequence[bytes]
) -> wsproto.WSConnection | None:
    """The handshake, then ``frames`` in one write; None when the server did not accept."""
    ws = await _ws_upgrade(conn, rng, out)
    if ws is not None:
        await conn.send(b"".join(ws.send(ev.BytesMessage(f)) for f in frames))
    return ws


def _is_tls(step: Step) -> bool:
    return step.listener == "wss"


async def ws_mid_request(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    async def body(conn: Conn) -> None:
        await conn.send(cut(rng, _ws_request(rng)[1]))
        await trio.sleep(rng.uniform(0, 0.3))

    await _with_conn(t, step, rng, out, body, tls=_is_tls(step))


async def ws_mid_upgrade(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """The request is complete; the client leaves before, during or right after the 101."""

    async def body(conn: Conn) -> None:
        _, request = _ws_request(rng)
        await conn.send(request)
        when = rng.choice(("before-101", "inside-101", "after-101", "after-first-frame"))
        if when == "inside-101":
            await conn.read(rng.randint(1, 120), ANSWER_WAIT)
        elif when != "before-101":
            await conn.read_until(b"\r\n\r\n", ANSWER_WAIT)
        if when == "after-first-frame":
            me = Identity.of(step.index)
            arp = pk.arp_request(me.mac, me.ip, BRIDGE_IP)
            # One binary frame by hand (masked with the all-zero key): the client's
            # wsproto state never saw the 101, so it cannot encode one.
            await conn.send(b"\x82" + bytes([0x80 | len(arp)]) + b"\0\0\0\0" + arp)

    await _with_conn(t, step, rng, out, body, tls=_is_tls(step))


async def ws_mid_frame(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """Open, some frames, then a frame (data, ping or close) cut short."""

    async def body(conn: Conn) -> None:
        frames = hello_frames(Identity.of(step.index), rng, rng.randint(0, 8))
        ws = await _ws_upgrade_and_send(conn, rng, out, frames)
        if ws is None:
            return
        last = rng.choice(
            (
                ev.BytesMessage(pk.probe_frame(pk.BROADCAST, Identity.of(step.index).mac, b"x")),
                ev.BytesMessage(b"\0" * rng.randint(200, 1500)),
                ev.Ping(b"chaos"),
                ev.CloseConnection(1000, "bye"),
            )
        )
        await conn.send(cut(rng, ws.send(last)))
        await trio.sleep(rng.uniform(0, 0.3))

    await _with_conn(t, step, rng, out, body, tls=_is_tls(step))


async def ws_stalled_reader(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """Ask the bridge for plenty of answers, never read them, then leave."""

    async def body(conn: Conn) -> None:
        if await _ws_upgrade_and_send(conn, rng, out, flood_frames(Identity.of(step.index), rng)):
            await trio.sleep(rng.uniform(0.2, 1.5))

    await _with_conn(t, step, rng, out, body, tiny_rcvbuf=True, tls=_is_tls(step))


# -- TLS (wss://) before any WebSocket byte -------------------------------------------------------


def client_hello(ctx: ssl.SSLContext) -> bytes:
    """The first flight a real TLS client sends, to be cut short."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def tls_mid_hello(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    async def body(conn: Conn) -> None:
        await conn.send(cut(rng, client_hello(t.tls)))
        await trio.sleep(rng.uniform(0, 0.3))

    await _with_conn(t, step, rng, out, body)


async def tls_after_hello(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """A whole ClientHello; gone while (or right after) the server answers it."""

    async def body(conn: Conn) -> None:
        await conn.send(client_hello(t.tls))
        await conn.read(rng.randint(0, 3000), rng.uniform(0, 0.5))

    await _with_conn(t, step, rng, out, body)


async def tls_garbage(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    async def body(conn: Conn) -> None:
        plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        junk = rng.choice((plain, rng.randbytes(rng.randint(1, 600))))
        await conn.send(junk)
        await conn.read(4096, rng.uniform(0, 0.5))

    await _with_conn(t, step, rng, out, body)


# -- QEMU stream (unix and TCP) -------------------------------------------------------------


async def qemu_mid_frame(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    async def body(conn: Conn) -> None:
        codec = StreamProtocol(1518)
        me = Identity.of(step.index)
        whole = [f for f in hello_frames(me, rng, rng.randint(0, 8)) if len(f) >= 14]
        await conn.send(codec.encode(whole))
        tail = codec.encode([pk.probe_frame(pk.BROADCAST, me.mac, b"q", rng.randint(60, 1500))])
        await conn.send(cut(rng, tail))
        await trio.sleep(rng.uniform(0, 0.3))

    await _with_conn(t, step, rng, out, body)


async def qemu_stalled_reader(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    async def body(conn: Conn) -> None:
        await conn.send(StreamProtocol(1518).encode(flood_frames(Identity.of(step.index), rng)))
        await trio.sleep(rng.uniform(0.2, 1.5))

    await _with_conn(t, step, rng, out, body, tiny_rcvbuf=True)


async def qemu_garbage(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    async def body(conn: Conn) -> None:
        await conn.send(rng.randbytes(rng.randint(1, 3000)))
        await conn.read(4096, rng.uniform(0, 0.3))

    await _with_conn(t, step, rng, out, body)


# -- the control API (unix and TCP) ------------------------------------------------------------

API_READS = ("/clients", "/stats", "/metrics", "/leases", "/forwards", "/clients/999", "/nowhere")


def http_request(t: Target, step: Step, method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: wsnic\r\n"
    if step.listener == "api-tcp":
        head += f"Authorization: Bearer {t.api_token}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def any_request(t: Target, step: Step, rng: random.Random) -> bytes:
    """A request that, answered, changes nothing (a refused forward at most)."""
    kind = rng.random()
    if kind < 0.2:
        return http_request(t, step, "GET", "/events")
    if kind < 0.35:
        body = b'{"local": "127.0.0.1:0", "remote": "10.9.9.9:22"}'  # outside the LAN: 400
        return http_request(t, step, "POST", "/forwards", body)
    return http_request(t, step, "GET", rng.choice(API_READS))


async def api_mid_request(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    async def body(conn: Conn) -> None:
        await conn.send(cut(rng, any_request(t, step, rng)))
        await trio.sleep(rng.uniform(0, 0.3))

    await _with_conn(t, step, rng, out, body)


async def api_unread_answer(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """Requests (pipelined) whose answers the client never reads, or reads in part."""

    async def body(conn: Conn) -> None:
        requests = [
            http_request(t, step, "GET", rng.choice(("/metrics", "/clients", "/stats")))
            for _ in range(rng.randint(1, 6))
        ]
        await conn.send(b"".join(requests))
        if rng.random() < 0.5:
            await conn.read(rng.randint(1, 4000), rng.uniform(0, 0.5))
        else:
            await trio.sleep(rng.uniform(0, 0.5))

    await _with_conn(t, step, rng, out, body, tiny_rcvbuf=True)


async def api_events(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """An event subscriber that reads a while, then goes."""

    async def body(conn: Conn) -> None:
        await conn.send(http_request(t, step, "GET", "/events"))
        await conn.read(rng.randint(1, 6000), rng.uniform(0.1, 2.0))

    await _with_conn(t, step, rng, out, body)


async def api_stalled_events(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """An event subscriber that never reads (the server writes events to it), then goes."""

    async def body(conn: Conn) -> None:
        await conn.send(http_request(t, step, "GET", "/events"))
        await trio.sleep(rng.uniform(0.3, 2.0))

    await _with_conn(t, step, rng, out, body, tiny_rcvbuf=True)


async def api_operations(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """A well-formed client (curl) that captures or kicks chaos clients as they come and go."""
    out.ending = "curl"
    sock, tcp, ns = t.api_unix, None, None
    headers: tuple[str, ...] = ()
    if step.listener == "api-tcp":
        tcp, ns = f"127.0.0.1:{t.api_port}", t.ns
        headers = (f"authorization: Bearer {t.api_token}",)

    async def request(method: str, path: str) -> Reply:
        try:
            return await api(sock, method, path, tcp=tcp, headers=headers, ns=ns)
        except AssertionError as exc:  # curl itself failed: no answer from the server
            raise ConnectionError(f"curl: {str(exc).strip()}") from None

    listing = await request("GET", "/clients")
    ids = [c["id"] for c in listing.json()["clients"] if c["id"] not in t.good_ids]
    if not ids:
        out.result = "no chaos client to act on"
        return
    victim = rng.choice(ids)
    what, method, path = rng.choice(
        (
            ("start capture", "POST", f"/clients/{victim}/pcap"),
            ("start capture", "POST", f"/clients/{victim}/pcap"),
            ("stop capture", "DELETE", f"/clients/{victim}/pcap"),
            ("kick", "DELETE", f"/clients/{victim}"),
        )
    )
    reply = await request(method, path)
    out.result = f"{what} of a chaos client answered {reply.status}"


# -- port forwards --------------------------------------------------------------------------


async def fwd_mid_data(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    async def body(conn: Conn) -> None:
        await conn.send(rng.randbytes(rng.randint(0, 5000)))
        await trio.sleep(rng.uniform(0, 0.3))

    await _with_conn(t, step, rng, out, body)


async def fwd_unread_echo(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """Much data, a half-close (the guest answers at EOF), and nobody reads the answer."""

    async def body(conn: Conn) -> None:
        await conn.send(b"e" * rng.randint(64 * 1024, 256 * 1024))
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        await trio.sleep(rng.uniform(0.2, 1.5))

    await _with_conn(t, step, rng, out, body, tiny_rcvbuf=True, ending="rst")


async def fwd_udp_vanish(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """A UDP client whose socket is gone before (or just after) the guest answers."""
    out.ending = "close"
    sock = trio.socket.from_stdlib_socket(t.ns.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sock:
        await sock.connect(("127.0.0.1", t.fwd_udp_port))
        for _ in range(rng.randint(1, 3)):
            await sock.send(rng.randbytes(rng.randint(1, 1200)))
        if rng.random() < 0.3:
            with trio.move_on_after(rng.uniform(0, 0.3)):
                await sock.recv(65536)


# -- UML bess (unix seqpacket) ----------------------------------------------------------------


async def _seqpacket(t: Target, tiny_rcvbuf: bool = False) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        if tiny_rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TINY_RCVBUF)
        await sock.connect(t.bess)
    except BaseException:
        sock.close()
        raise
    return sock


async def _send_each(sock: trio.socket.SocketType, frames: Sequence[bytes]) -> None:
    for frame in frames:
        await sock.send(frame)


async def _packet_end(sock: trio.socket.SocketType, rng: random.Random, out: Outcome) -> None:
    out.ending = rng.choice(("fin", "close"))
    if out.ending == "fin":
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        with trio.move_on_after(rng.uniform(0, 0.3)), contextlib.suppress(OSError):
            while await sock.recv(70000):
                pass
    sock.close()


async def bess_connect_then_end(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    sock = await _seqpacket(t)
    with sock:
        await _packet_end(sock, rng, out)


async def bess_frames_then_gone(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    sock = await _seqpacket(t)
    with sock:
        frames = hello_frames(Identity.of(step.index), rng, rng.randint(0, 10))
        await _send_each(sock, [*frames, b""][: rng.randint(1, len(frames) + 1)])
        await _packet_end(sock, rng, out)


async def bess_stalled_reader(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    sock = await _seqpacket(t, tiny_rcvbuf=True)
    with sock:
        await _send_each(sock, flood_frames(Identity.of(step.index), rng))
        await trio.sleep(rng.uniform(0.2, 1.5))
        await _packet_end(sock, rng, out)


# -- vfkit / QEMU dgram (unix datagrams) --------------------------------------------------------


async def _dgram_peer(
    t: Target, step: Step, rng: random.Random, out: Outcome, frames: Sequence[bytes], how: str
) -> None:
    """A datagram peer bound to its own path, which vanishes the way ``how`` says."""
    out.ending = how
    path = os.path.join(t.sockdir, f"chaos-{step.index}.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if how == "stalled":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TINY_RCVBUF)
        await sock.bind(path)
        await sock.connect(t.dgram)
        if rng.random() < 0.5:
            await sock.send(b"VFKT")
        await _send_each(sock, frames)  # waits while the server's socket queue is full
        await trio.sleep(rng.uniform(0.2, 1.5) if how == "stalled" else rng.uniform(0, 0.3))
    finally:
        sock.close()
        if how != "file-left":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


async def dgram_vanish(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """The VM dies: its socket file removed, or left behind with nobody on it."""
    frames = hello_frames(Identity.of(step.index), rng, rng.randint(0, 10))
    await _dgram_peer(t, step, rng, out, frames, rng.choice(("unlinked", "file-left")))


async def dgram_stalled_reader(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    await _dgram_peer(t, step, rng, out, flood_frames(Identity.of(step.index), rng), "stalled")


async def dgram_junk(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    junk = [rng.randbytes(rng.randint(0, 13)) for _ in range(rng.randint(1, 5))]
    await _dgram_peer(t, step, rng, out, junk, "unlinked")


async def dgram_unbound(t: Target, step: Step, rng: random.Random, out: Outcome) -> None:
    """From a socket without an address: nothing can be answered."""
    out.ending = "close"
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.connect(t.dgram)
        await _send_each(sock, hello_frames(Identity.of(step.index), rng, 2))


# -- the plan -----------------------------------------------------------------------------------

_WS: dict[str, Phase] = {
    "syn": syn_reset,
    "connect-then-end": connect_then_end,
    "mid-request": ws_mid_request,
    "mid-upgrade": ws_mid_upgrade,
    "mid-frame": ws_mid_frame,
    "stalled-reader": ws_stalled_reader,
}
_QEMU: dict[str, Phase] = {
    "connect-then-end": connect_then_end,
    "mid-frame": qemu_mid_frame,
    "stalled-reader": qemu_stalled_reader,
    "garbage": qemu_garbage,
}
_API: dict[str, Phase] = {
    "connect-then-end": connect_then_end,
    "mid-request": api_mid_request,
    "unread-answer": api_unread_answer,
    "events": api_events,
    "stalled-events": api_stalled_events,
    "operations": api_operations,
}

PHASES: dict[str, dict[str, Phase]] = {
    "ws": _WS,
    "wss": {
        **_WS,
        "mid-tls-hello": tls_mid_hello,
        "after-tls-hello": tls_after_hello,
        "tls-garbage": tls_garbage,
    },
    "qemu-unix": _QEMU,
    "qemu-tcp": {"syn": syn_reset, **_QEMU},
    "bess": {
        "connect-then-end": bess_connect_then_end,
        "frames-then-gone": bess_frames_then_gone,
        "stalled-reader": bess_stalled_reader,
    },
    "dgram": {
        "vanish": dgram_vanish,
        "stalled-reader": dgram_stalled_reader,
        "junk": dgram_junk,
        "unbound": dgram_unbound,
    },
    "api-unix": _API,
    "api-tcp": {"syn": syn_reset, **_API},
    "fwd-tcp": {
        "syn": syn_reset,
        "connect-then-end": connect_then_end,
        "mid-data": fwd_mid_data,
        "unread-echo": fwd_unread_echo,
    },
    "fwd-udp": {"vanish": fwd_udp_vanish},
}


def _wanted(only: str | None) -> list[tuple[str, str]]:
    """The (listener, phase) pairs that ``WSNIC_CHAOS_ONLY`` keeps: names keep, names
    with a leading ``-`` drop (``-api-unix:events``); only drops: all but those."""
    pairs = [(listener, phase) for listener, phases in PHASES.items() for phase in phases]
    parts = [part.strip() for part in (only or "").split(",") if part.strip()]
    keep = {part for part in parts if not part.startswith("-")}
    drop = {part[1:] for part in parts if part.startswith("-")}

    def named(names: set[str], listener: str, phase: str) -> bool:
        return listener in names or f"{listener}:{phase}" in names

    chosen = [
        (lis, ph)
        for lis, ph in pairs
        if (not keep or named(keep, lis, ph)) and not named(drop, lis, ph)
    ]
    if not chosen:
        raise ValueError(f"WSNIC_CHAOS_ONLY={only!r} leaves no listener:phase to run")
    return chosen


def make_plan(seed: int, count: int, only: str | None = None) -> list[Step]:
    """``count`` steps: a listener at random (each equally often), then one of its phases."""
    rng = random.Random(seed)
    pairs = _wanted(only)
    by_listener: dict[str, list[str]] = {}
    for listener, phase in pairs:
        by_listener.setdefault(listener, []).append(phase)
    listeners = sorted(by_listener)
    steps = []
    for index in range(count):
        listener = rng.choice(listeners)
        steps.append(Step(index, listener, rng.choice(by_listener[listener])))
    return steps


# What a misbehaving client may see from its own side: the server hung up on it, refused
# it, or reset it. Anything else (a bug in a step) fails the test.
CLIENT_SIDE = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ssl.SSLError,
    wsproto.utilities.RemoteProtocolError,  # the server hung up inside the upgrade
)


async def run_step(t: Target, step: Step, seed: int, out: Outcome) -> None:
    rng = random.Random(f"{seed}:{step.index}")
    with trio.move_on_after(STEP_LIMIT) as scope:
        try:
            await PHASES[step.listener][step.phase](t, step, rng, out)
            if out.result == "running":
                out.result = "done"
        except CLIENT_SIDE as exc:
            out.result = f"{type(exc).__name__}: {exc}"[:120]
    if scope.cancelled_caught:
        out.result = f"cut off after {STEP_LIMIT:g} s"
    out.ended = trio.current_time()


async def run_plan(
    t: Target,
    steps: Sequence[Step],
    seed: int,
    *,
    workers: int,
    seconds: float,
    start: float,
    keep_going: Callable[[], bool],
) -> list[Outcome]:
    """Run the steps, ``workers`` at a time, for at most ``seconds``; stop early when
    ``keep_going()`` says no (the server died). Times are recorded from ``start``."""
    outcomes: list[Outcome] = []
    send, receive = trio.open_memory_channel[Step](len(steps))
    for step in steps:
        send.send_nowait(step)
    send.close()

    async def worker() -> None:
        async for step in receive:
            if not keep_going():
                return
            out = Outcome(step, trio.current_time() - start)
            outcomes.append(out)
            await run_step(t, step, seed, out)
            assert out.ended is not None
            out.ended -= start

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
    return outcomes


def summary(outcomes: Sequence[Outcome]) -> str:
    """Steps per listener:phase and what the clients saw, one line each."""
    counts: Counter[tuple[str, str]] = Counter()
    for out in outcomes:
        result = out.result.split(":")[0]
        counts[(f"{out.step.listener}:{out.step.phase}", result)] += 1
    return "\n".join(f"  {n:4} {what} -> {result}" for (what, result), n in sorted(counts.items()))


def log_digest(lines: Sequence[str], most: int = 40) -> str:
    """What the server logged, counted by message (disconnects by reason and transport)."""
    counts: Counter[str] = Counter()
    for line in lines:
        m = re.match(r"\S+ \S+ wsnic-trio\[\d+\] (\w+) (.*)", line)
        if m is None or " connected: " in m[2] or " uses MAC " in m[2]:
            continue
        gone = re.match(r"client \d+ disconnected \((.*?)\): (\w+) ", m[2])
        if gone is not None:
            text = f"client disconnected ({gone[1]}): {gone[2]}"
        else:
            text = re.sub(r"127\.0\.0\.1:\d+|unix:\S+|/tmp/\S+|\d+", "N", m[2])
        counts[f"{m[1]} {re.sub(r'[0-9]+', 'N', text)[:160]}"] += 1
    return "\n".join(f"  {n:4} {text}" for text, n in counts.most_common(most))


def server_gone(outcomes: Sequence[Outcome]) -> float | None:
    """When a step first found nobody listening (the server's end, seen from outside)."""
    refused = [
        o.ended
        for o in outcomes
        if o.ended is not None
        and o.result.startswith(("ConnectionRefusedError", "FileNotFoundError"))
    ]
    return min(refused, default=None)


def around(outcomes: Sequence[Outcome], when: float, count: int = 25) -> str:
    """The steps running at ``when`` and the last ones that ended before it."""
    running = [o for o in outcomes if o.started <= when and (o.ended is None or o.ended >= when)]
    before = sorted(
        (o for o in outcomes if o.ended is not None and o.ended < when), key=lambda o: o.ended or 0
    )[-count:]
    return "\n".join(
        ["running then:", *(o.line() for o in running), "ended just before:"]
        + [o.line() for o in before]
    )
