"""WebSocket clients on the LAN: real frames through real TAPs and the real bridge."""

from __future__ import annotations

import trio

from . import packets as pk
from .netns import NsFactory, wait_taps
from .vmclients import answers_ping, ping3, start_connects, stop_all, wsnic
from .wsclients import receive_until, ws_client

BRIDGE_MAC = "02:77:73:00:00:01"


async def test_arp_and_ping_of_the_bridge(world: NsFactory, nursery: trio.Nursery) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic()
    conn = await ws_client(ns, nursery)
    me = pk.mac("02:00:00:00:00:0a")
    [tap] = await wait_taps(ns, 1)
    assert "master wsbr0" in ns.ip("link", "show", tap).stdout

    await conn.send_message(pk.arp_request(me, "192.168.86.10", "192.168.86.1"))
    reply = await receive_until(conn, pk.parse_arp_reply)
    assert pk.parse_arp_reply(reply) == (BRIDGE_MAC, "192.168.86.1")
    assert reply[:6] == me

    await conn.send_message(
        pk.icmp_echo(me, pk.mac(BRIDGE_MAC), "192.168.86.10", "192.168.86.1", 0x1234, 7)
    )
    echo = await receive_until(conn, pk.parse_icmp_echo_reply)
    assert pk.parse_icmp_echo_reply(echo) == ("192.168.86.1", 0x1234, 7)
    await server.log.wait_for(rf"client 1 connected: ws 127\.0\.0\.1:\d+ on {tap}")

    await conn.aclose()
    await wait_taps(ns, 0, timeout=1.0)  # "disconnect removes the TAP within a second"
    await server.log.wait_for(r"client 1 disconnected \(closed by peer \(code 1000.*in 2 frames")
    assert await server.stop() == 0


async def test_two_websocket_clients_reach_each_other(
    world: NsFactory, nursery: trio.Nursery
) -> None:
    ns = world.new("srv")
    await ns.start_wsnic()
    alice = await ws_client(ns, nursery)
    bob = await ws_client(ns, nursery, path="/any/path/works")
    await wait_taps(ns, 2)
    a, b = pk.mac("02:00:00:00:0a:01"), pk.mac("02:00:00:00:0b:01")
    # Bob speaks first so the bridge learns where his MAC lives; then Alice unicasts to him.
    await bob.send_message(pk.probe_frame(pk.BROADCAST, b, b"hello from bob"))
    got = await receive_until(alice, lambda f: f[6:12] == b)
    assert b"hello from bob" in got
    for i in range(20):
        await alice.send_message(pk.probe_frame(b, a, b"alice %d" % i, size=1514))
    for i in range(20):
        frame = await receive_until(bob, lambda f: f[6:12] == a)
        assert frame[:6] == b and len(frame) == 1514
        assert frame[14 : 14 + len(b"alice %d" % i)] == b"alice %d" % i
    await alice.aclose()
    await bob.aclose()


async def test_kernel_ping_between_two_connect_taps(world: NsFactory) -> None:
    srv = world.new("srv")
    ns_a, ns_b = world.new("a"), world.new("b")
    world.link(srv, "198.18.0.1/30", ns_a, "198.18.0.2/30")
    world.link(srv, "198.18.0.5/30", ns_b, "198.18.0.6/30")
    await srv.start_wsnic("-a", "0.0.0.0")
    clients = await start_connects(
        [
            (ns_a, "ws://198.18.0.1:8086/", "192.168.86.10"),
            (ns_b, "ws://198.18.0.5:8086/", "192.168.86.11"),
        ],
        label="connect",
        connected="ws://",
    )
    await wait_taps(srv, 2)
    assert b"3 received" in await ping3(ns_a, "192.168.86.11")
    assert await answers_ping(ns_b, "192.168.86.1"), "the bridge address answers too"
    await stop_all(clients)
    assert "lan0" not in ns_a.links(), "the client's TAP goes when the client stops"
    await wait_taps(srv, 0)


async def test_connect_reconnects_after_server_restart(world: NsFactory) -> None:
    """The client tool keeps its TAP (and the addresses on it) while the server is away,
    and redials with backoff until the server is back."""
    srv, ns_a = world.new("srv"), world.new("a")
    world.link(srv, "198.18.0.1/30", ns_a, "198.18.0.2/30")
    server = await srv.start_wsnic("-a", "0.0.0.0", "--disable-dhcp")
    client = await ns_a.start(
        [*wsnic(), "connect", "ws://198.18.0.1:8086/", "--tap", "lan0", "--retry-max", "1"],
        label="connect",
    )
    await client.log.wait_for(r"connected to ws://")
    ns_a.ip("addr", "add", "192.168.86.10/24", "dev", "lan0")
    assert await answers_ping(ns_a, "192.168.86.1")
    assert await server.stop() == 0
    await client.log.wait_for(r"reconnecting in")
    assert "lan0" in ns_a.links(), "the TAP stays while the server is away"
    mark = len(client.log.lines)
    await srv.start_wsnic("-a", "0.0.0.0", "--disable-dhcp")
    await client.log.wait_for(r"connected to ws://", start=mark, timeout=20)
    assert await answers_ping(ns_a, "192.168.86.1"), (
        "the same address works again after the restart"
    )
    assert await client.stop() == 0
