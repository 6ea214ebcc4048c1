"""Host names with several addresses (localhost is ::1 and 127.0.0.1 on Debian).

The first tests run in the test process on loopback, with a resolver of their own (so
they do not depend on this machine's /etc/hosts); the others run the real server and
client tool in namespaces with Debian's /etc/hosts (tests/netns.py).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio_websocket

from wsnic_trio.config import Config
from wsnic_trio.errors import SetupError
from wsnic_trio.net.addresses import Address, all_failed, bind_all_addresses, interleave
from wsnic_trio.transports.base import AdmissionRequest, FrameCheck, Liveness, PeerLink, Rejection
from wsnic_trio.transports.qemu_stream import QemuConnectTransport, dial_qemu_stream, parse_endpoint
from wsnic_trio.transports.websocket import dial_websocket

from . import packets as pk
from .netns import NetNS, NsFactory, NsProcess, debian_hosts, hosts_lookup, wait_taps
from .vmclients import StreamClient, arp_bridge, wsnic
from .wsclients import close_ws, receive_until, ws_client

BRIDGE_MAC = "02:77:73:00:00:01"
#: Names only the tests' own resolver knows, and the addresses it gives them, in order.
NAMES = {
    "dual.test": ["::1", "127.0.0.1"],  # Debian's localhost, IPv6 first
    "two4.test": ["127.0.0.2", "127.0.0.1"],
}


def _infos(name: str, port: int) -> list[Any]:
    infos: list[Any] = []
    for ip in NAMES[name]:
        if ":" in ip:
            infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
        else:
            infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
    return infos


class _Resolver(trio.abc.HostnameResolver):
    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        name = (host or b"").decode()
        if name not in NAMES:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return _infos(name, int(port or 0))

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        raise NotImplementedError


@pytest.fixture
async def resolver() -> AsyncIterator[None]:
    """trio resolves the NAMES in this test (Trio keeps the resolver per run)."""
    trio.socket.set_custom_hostname_resolver(_Resolver())
    try:
        yield
    finally:
        trio.socket.set_custom_hostname_resolver(None)


async def _listener(ip: str = "127.0.0.1", port: int = 0) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind((ip, port))
    sock.listen(8)
    return sock


def _closed_port() -> tuple[socket.socket, socket.socket | None, int]:
    """A port bound but not listening on 127.0.0.1 (and ::1, where it exists): refused."""
    v4 = socket.socket(socket.AF_INET)
    v4.bind(("127.0.0.1", 0))
    port = v4.getsockname()[1]
    v6: socket.socket | None = socket.socket(socket.AF_INET6)
    try:
        v6.bind(("::1", port))  # type: ignore[union-attr]
    except OSError:
        v6.close()  # type: ignore[union-attr]
        v6 = None
    return v4, v6, port


def test_interleave_alternates_families_starting_with_the_first() -> None:
    a6, b6, c6 = (Address(socket.AF_INET6, (f"::{i}", 80, 0, 0)) for i in (1, 2, 3))
    a4 = Address(socket.AF_INET, ("127.0.0.1", 80))
    assert interleave([a6, b6, c6, a4]) == [a6, a4, b6, c6]
    assert interleave([a4, a6, b6]) == [a4, a6, b6]
    assert [str(a) for a in interleave([a6, a4])] == ["[::1]:80", "127.0.0.1:80"]


def test_the_all_failed_message_names_every_address_and_its_fate() -> None:
    a6 = Address(socket.AF_INET6, ("::1", 80, 0, 0))
    a4 = Address(socket.AF_INET, ("127.0.0.1", 80))
    b4 = Address(socket.AF_INET, ("127.0.0.2", 80))
    refused = OSError(errno.ECONNREFUSED, "Connection refused")
    exc = all_failed("localhost:80", [a6, a4, b4], {a6: refused, a4: None})
    assert exc.errno == errno.ECONNREFUSED
    assert exc.strerror == (
        "cannot connect to localhost:80 ([::1]:80: Connection refused; "
        "127.0.0.1:80: timed out; 127.0.0.2:80: not tried (out of time))"
    )
    one = all_failed("127.0.0.1:80", [a4], {a4: refused})
    assert one.strerror == "cannot connect to 127.0.0.1:80: Connection refused"


async def test_dial_websocket_skips_a_first_address_that_refuses(
    resolver: None, nursery: trio.Nursery
) -> None:
    async def echo(request: trio_websocket.WebSocketRequest) -> None:
        conn = await request.accept()
        await conn.send_message(await conn.get_message())

    server = await nursery.start(trio_websocket.serve_websocket, echo, "127.0.0.1", 0, None)
    port = server.port
    link = await dial_websocket(
        f"ws://dual.test:{port}/", check=FrameCheck(1518), liveness=Liveness()
    )
    frame = pk.probe_frame(pk.BROADCAST, pk.mac("02:00:00:00:00:01"), b"hello")
    await link.send_frames([frame])
    with trio.fail_after(5):
        assert await link.receive_frames() == [frame]
    assert link.io.sock.getpeername()[0] == "127.0.0.1"
    await link.aclose()


async def test_dial_qemu_stream_skips_a_first_address_that_refuses(resolver: None) -> None:
    listener = await _listener()
    port = listener.getsockname()[1]
    with listener:
        link = await dial_qemu_stream(
            f"qemu+tcp://dual.test:{port}", check=FrameCheck(1518), liveness=Liveness()
        )
        with trio.fail_after(5):
            conn, addr = await listener.accept()
        assert addr[0] == "127.0.0.1"
        frame = pk.probe_frame(pk.BROADCAST, pk.mac("02:00:00:00:00:01"), b"hello")
        await link.send_frames([frame])
        with conn:
            assert await conn.recv(100) == len(frame).to_bytes(4, "big") + frame
        await link.aclose()


class _Handler:
    """The core, as far as a transport can tell: it admits everyone and notes each link."""

    def __init__(self) -> None:
        self.links: list[PeerLink] = []
        self.arrived = trio.Event()

    def admit(self, request: AdmissionRequest) -> Rejection | None:
        return None

    def admission_delay(self, request: AdmissionRequest) -> float:
        return 0.0

    def count_refusal(self, transport: str, reason: str) -> None:
        pass

    async def __call__(self, link: PeerLink) -> None:
        self.links.append(link)
        self.arrived.set()


async def test_qemu_connect_skips_a_first_address_that_refuses(
    resolver: None, nursery: trio.Nursery
) -> None:
    listener = await _listener()
    port = listener.getsockname()[1]
    handler = _Handler()
    transport = QemuConnectTransport(Config(), parse_endpoint(f"tcp:dual.test:{port}"))
    with listener:
        await nursery.start(transport.serve, handler)
        with trio.fail_after(10):
            conn, addr = await listener.accept()
            await handler.arrived.wait()
        conn.close()
    assert addr[0] == "127.0.0.1"
    assert handler.links[0].remote == f"tcp:dual.test:{port}"
    nursery.cancel_scope.cancel()


async def test_when_every_address_fails_one_error_names_them_all(resolver: None) -> None:
    v4, v6, port = _closed_port()
    try:
        with pytest.raises(OSError, match=r"cannot connect to dual\.test") as info:
            await dial_websocket(
                f"ws://dual.test:{port}/", check=FrameCheck(1518), liveness=Liveness()
            )
        message = info.value.strerror or ""
        assert message.startswith(f"cannot connect to dual.test:{port} ([::1]:{port}: ")
        assert message.endswith(f"; 127.0.0.1:{port}: Connection refused)")
        with pytest.raises(OSError, match=r"cannot connect to tcp:dual\.test") as info:
            await dial_qemu_stream(
                f"qemu+tcp://dual.test:{port}", check=FrameCheck(1518), liveness=Liveness()
            )
        assert f"; 127.0.0.1:{port}: Connection refused)" in str(info.value)
    finally:
        v4.close()
        if v6 is not None:
            v6.close()


async def test_an_unknown_name_is_named_in_the_error(resolver: None) -> None:
    with pytest.raises(socket.gaierror, match=r"cannot resolve 'nowhere\.test'"):
        await dial_websocket("ws://nowhere.test:1/", check=FrameCheck(1518), liveness=Liveness())


@pytest.fixture
def two_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listeners' (blocking) resolver knows ``two4.test``: 127.0.0.2, then 127.0.0.1."""
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in NAMES:
            return _infos(host, int(port))
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


async def test_a_listener_binds_every_address_of_a_name(two_addresses: None) -> None:
    socks = bind_all_addresses("two4.test", 0, "test listener", backlog=8)
    try:
        names = [s.getsockname() for s in socks]
        assert [ip for ip, _ in names] == ["127.0.0.2", "127.0.0.1"]
        assert names[0][1] == names[1][1], "port 0: every address gets the same port"
        for ip, port in names:
            client = trio.socket.socket(socket.AF_INET)
            with client:
                await client.connect((ip, port))
    finally:
        for sock in socks:
            sock.close()


def test_a_listener_that_cannot_bind_every_address_binds_none(two_addresses: None) -> None:
    taken = socket.socket(socket.AF_INET)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(SetupError) as info:
            bind_all_addresses("two4.test", port, "test listener", backlog=8)
        assert str(info.value) == (
            f"test listener: cannot listen on 127.0.0.1 port {port} (two4.test is 127.0.0.2, "
            "127.0.0.1): Address already in use (another program is listening there; "
            "pick another port)"
        )
        # 127.0.0.2 was bound first and released again.
        again = socket.socket(socket.AF_INET)
        with again:
            again.bind(("127.0.0.2", port))
    finally:
        taken.close()


def test_debian_hosts_layout_gives_localhost_both_families() -> None:
    assert hosts_lookup(debian_hosts(), "localhost") == ["127.0.0.1", "::1"]
    assert hosts_lookup(debian_hosts(), "ip6-allnodes") == ["ff02::1"]


# -- the real server and client tool, in namespaces with Debian's /etc/hosts -------------------


async def test_namespaces_resolve_localhost_as_debian_does(world: NsFactory) -> None:
    ns = world.new("srv")
    result = await ns.exec("getent", "ahosts", "localhost")
    found = {line.split()[0] for line in result.stdout.decode().splitlines()}
    assert result.returncode == 0 and found == {"::1", "127.0.0.1"}, result.stdout
    assert ns.resolve("localhost") == ["127.0.0.1", "::1"]


async def _connect(ns: NetNS, url: str, tap: str, *extra: str) -> NsProcess:
    return await ns.start([*wsnic(), "connect", url, "--tap", tap, *extra], label="connect")


async def test_connect_tool_reaches_a_server_on_the_ipv4_address_of_localhost(
    world: NsFactory,
) -> None:
    """``connect ws://localhost`` and ``qemu+tcp://localhost`` find a server on 127.0.0.1."""
    ns = world.new("srv")
    server = await ns.start_wsnic("--qemu", "tcp:127.0.0.1:9000")
    assert server.log.find(r"listening on ws://127\.0\.0\.1:8086/$")
    ws = await _connect(ns, "ws://localhost:8086/", "lan0")
    await ws.log.wait_for(r"connected to ws://localhost:8086/")
    qemu = await _connect(ns, "qemu+tcp://localhost:9000", "lan1")
    await qemu.log.wait_for(r"connected to qemu\+tcp://localhost:9000")
    await wait_taps(ns, 2)
    await server.log.wait_for(r"connected: ws 127\.0\.0\.1:\d+ on wstap")
    await server.log.wait_for(r"connected: qemu 127\.0\.0\.1:\d+ on wstap")
    assert await ws.stop() == 0
    assert await qemu.stop() == 0
    assert await server.stop() == 0


async def test_connect_tool_names_every_address_it_tried(world: NsFactory) -> None:
    ns = world.new("cli")
    client = await _connect(ns, "ws://localhost:8099/", "lan0", "--once")
    await client.log.wait_for(
        r"cannot connect to localhost:8099 \(\[::1\]:8099: Connection refused; "
        r"127\.0\.0\.1:8099: Connection refused\)"
    )
    await client.wait()


async def test_qemu_connect_dials_the_ipv4_address_of_localhost(world: NsFactory) -> None:
    ns = world.new("srv")
    listener = trio.socket.from_stdlib_socket(ns.socket(socket.AF_INET))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await listener.bind(("127.0.0.1", 9100))
    listener.listen(1)
    with listener:
        server = await ns.start_wsnic("--qemu-connect", "tcp:localhost:9100")
        with trio.fail_after(20):
            conn, addr = await listener.accept()
        assert addr[0] == "127.0.0.1"
        qemu = StreamClient(conn)
        await wait_taps(ns, 1)
        await arp_bridge(qemu, pk.mac("02:00:00:00:0c:01"), "192.168.86.12")
        qemu.close()
        await server.log.wait_for(r"client 1 disconnected")
    assert await server.stop() == 0


async def test_listeners_given_localhost_accept_on_ipv4_and_ipv6(
    world: NsFactory, nursery: trio.Nursery
) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic("-a", "localhost", "--qemu", "tcp:localhost:9000")
    ws_line = server.log.find(r"listening on (ws://.*)$")
    assert ws_line and set(ws_line[1].split(" and ")) == {
        "ws://127.0.0.1:8086/",
        "ws://[::1]:8086/",
    }
    qemu_line = server.log.find(r"listening on qemu stream (.*)$")
    assert qemu_line and set(qemu_line[1].split(" and ")) == {
        "tcp:127.0.0.1:9000",
        "tcp:[::1]:9000",
    }
    for i, host in enumerate(("127.0.0.1", "::1")):
        conn = await ws_client(ns, nursery, host=host)
        me = pk.mac(f"02:00:00:00:00:1{i}")
        await conn.send_message(pk.arp_request(me, f"192.168.86.1{i}", "192.168.86.1"))
        reply = await receive_until(conn, pk.parse_arp_reply)
        assert pk.parse_arp_reply(reply) == (BRIDGE_MAC, "192.168.86.1")
        await close_ws(conn)
        stream = await ns.connect_tcp(host, 9000)
        qemu = StreamClient(stream.socket)
        await arp_bridge(qemu, pk.mac(f"02:00:00:00:0c:1{i}"), f"192.168.86.2{i}")
        qemu.close()
    await server.log.wait_for(r"connected: ws \[::1\]:\d+ on wstap")
    await server.log.wait_for(r"connected: qemu \[::1\]:\d+ on wstap")
    await server.log.wait_for(r"client 4 disconnected")
    assert await server.stop() == 0
