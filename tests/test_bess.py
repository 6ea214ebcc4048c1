"""UML ``transport=bess`` peers (unix SOCK_SEQPACKET) against the real server."""

from __future__ import annotations

from . import packets as pk
from .netns import NetNS, NsFactory, NsProcess
from .vmclients import (
    PacketClient,
    answers_ping,
    arp_bridge,
    burst,
    disconnect_line,
    exists,
    frame_to,
    ping3,
    start_connects,
    stop_all,
    survivor_unharmed,
    wait_taps,
)


async def _server(world: NsFactory, sockdir: str) -> tuple[NetNS, str, NsProcess]:
    """A server in namespace "srv" taking bess peers on ``sockdir``/bess.sock."""
    ns = world.new("srv")
    path = f"{sockdir}/bess.sock"
    return ns, path, await ns.start_wsnic("--bess", path)


async def _server_and_peer(
    world: NsFactory, sockdir: str
) -> tuple[NetNS, str, NsProcess, PacketClient]:
    """:func:`_server` with one unnamed bess peer, its TAP made."""
    ns, path, server = await _server(world, sockdir)
    peer = await PacketClient.bess(path)
    await wait_taps(ns, 1)
    return ns, path, server, peer


async def test_two_uml_like_clients_reach_the_bridge_and_each_other(
    world: NsFactory, sockdir: str
) -> None:
    ns, path, server = await _server(world, sockdir)
    await server.log.wait_for(rf"listening on bess \(UML vector\) unix:{path}")
    a_mac, b_mac = pk.mac("02:00:00:00:0a:01"), pk.mac("02:00:00:00:0b:01")
    # UML may bind its own src= path; the server names the peer after it.
    alice = await PacketClient.bess(path, src=f"{sockdir}/uml-a.sock")
    bob = await PacketClient.bess(path)
    await wait_taps(ns, 2)
    await server.log.wait_for(rf"connected: bess unix:{sockdir}/uml-a\.sock on wstap")
    await arp_bridge(alice, a_mac, "192.168.86.10")
    await arp_bridge(bob, b_mac, "192.168.86.11")
    await burst(alice, bob, a_mac, b_mac, b"a", 20)
    alice.close()
    bob.close()
    await wait_taps(ns, 0)
    assert await server.stop() == 0
    assert not exists(path)


async def test_empty_and_oversize_messages_are_dropped_and_counted(
    world: NsFactory, sockdir: str
) -> None:
    ns, _, server, client = await _server_and_peer(world, sockdir)
    me = pk.mac("02:00:00:00:0a:01")
    await client.send(b"", b"\0" * 5, frame_to(pk.BROADCAST, me, b"x", size=1519))
    # The peer stays: an empty message is not EOF, and bad frames are only dropped.
    await arp_bridge(client, me, "192.168.86.10")
    client.close()
    # The hang-up is seen as EOF, or as EPIPE when the bridge was sending to the peer
    # just then (IPv6 multicast of the new port, for instance): both end only this peer.
    await server.log.wait_for(
        r"client 1 disconnected \((end of stream|peer socket is gone \(Broken pipe\))\)"
        r".*dropped 3 "
    )
    line = disconnect_line(server)
    assert "oversize 1" in line and "runt 2" in line
    await wait_taps(ns, 0)
    assert await server.stop() == 0


async def test_vanished_client_ends_only_its_peer_and_leaks_nothing(
    world: NsFactory, sockdir: str
) -> None:
    ns, path, server, good = await _server_and_peer(world, sockdir)
    good_mac = pk.mac("02:00:00:00:0a:01")
    await arp_bridge(good, good_mac, "192.168.86.10")
    baseline = server.fd_count()
    for _ in range(3):
        gone = await PacketClient.bess(path)
        await wait_taps(ns, 2)
        await gone.send(frame_to(pk.BROADCAST, pk.mac("02:00:00:00:0b:01"), b"bye"))
        gone.close()  # UML killed: EOF on the seqpacket socket
        await wait_taps(ns, 1)
    await survivor_unharmed(ns, server, good, good_mac, baseline)
    good.close()
    await wait_taps(ns, 0)
    assert await server.stop() == 0


async def test_kernel_ping_between_qemu_stream_and_bess_connect_clients(
    world: NsFactory, sockdir: str
) -> None:
    """Two real Linux stacks, each joined through a different VM transport."""
    srv = world.new("srv")
    ns_a, ns_b = world.new("a"), world.new("b")
    await srv.start_wsnic("--qemu", f"unix:{sockdir}/q.sock", "--bess", f"{sockdir}/b.sock")
    procs = await start_connects(
        [
            (ns_a, f"qemu+unix:{sockdir}/q.sock", "192.168.86.10"),
            (ns_b, f"bess:{sockdir}/b.sock", "192.168.86.11"),
        ]
    )
    await wait_taps(srv, 2)
    assert b"3 received" in await ping3(ns_a, "192.168.86.11")
    assert await answers_ping(ns_b, "192.168.86.1"), "the bridge answers the bess client too"
    await stop_all(procs)
    await wait_taps(srv, 0)
