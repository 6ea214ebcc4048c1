"""UML ``transport=bess`` peers (unix SOCK_SEQPACKET) against the real server."""

from __future__ import annotations

from . import packets as pk
from .netns import NsFactory
from .vmclients import (
    PacketClient,
    arp_bridge,
    exists,
    frame_to,
    wait_fds,
    wait_taps,
    wsnic,
)


async def test_two_uml_like_clients_reach_the_bridge_and_each_other(
    world: NsFactory, sockdir: str
) -> None:
    ns = world.new("srv")
    path = f"{sockdir}/bess.sock"
    server = await ns.start_wsnic("--bess", path)
    await server.log.wait_for(rf"listening on bess \(UML vector\) unix:{path}")
    a_mac, b_mac = pk.mac("02:00:00:00:0a:01"), pk.mac("02:00:00:00:0b:01")
    # UML may bind its own src= path; the server names the peer after it.
    alice = await PacketClient.bess(path, src=f"{sockdir}/uml-a.sock")
    bob = await PacketClient.bess(path)
    await wait_taps(ns, 2)
    await server.log.wait_for(rf"connected: bess unix:{sockdir}/uml-a\.sock on wstap")
    await arp_bridge(alice, a_mac, "192.168.86.10")
    await arp_bridge(bob, b_mac, "192.168.86.11")
    await alice.send(*[frame_to(b_mac, a_mac, b"a%d" % i, size=1514) for i in range(20)])
    for i in range(20):
        got = await bob.receive_until(lambda f: f[6:12] == a_mac and f[12:14] == b"\x88\xb5")
        assert got[14 : 14 + len(b"a%d" % i)] == b"a%d" % i and len(got) == 1514
    alice.close()
    bob.close()
    await wait_taps(ns, 0)
    assert await server.stop() == 0
    assert not exists(path)


async def test_empty_and_oversize_messages_are_dropped_and_counted(
    world: NsFactory, sockdir: str
) -> None:
    ns = world.new("srv")
    path = f"{sockdir}/bess.sock"
    server = await ns.start_wsnic("--bess", path)
    me = pk.mac("02:00:00:00:0a:01")
    client = await PacketClient.bess(path)
    await wait_taps(ns, 1)
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
    line = server.log.find(r"client 1 disconnected.*")
    assert line is not None
    assert "oversize 1" in line.group(0) and "runt 2" in line.group(0)
    await wait_taps(ns, 0)
    assert await server.stop() == 0


async def test_vanished_client_ends_only_its_peer_and_leaks_nothing(
    world: NsFactory, sockdir: str
) -> None:
    ns = world.new("srv")
    path = f"{sockdir}/bess.sock"
    server = await ns.start_wsnic("--bess", path)
    good_mac = pk.mac("02:00:00:00:0a:01")
    good = await PacketClient.bess(path)
    await wait_taps(ns, 1)
    await arp_bridge(good, good_mac, "192.168.86.10")
    baseline = server.fd_count()
    for _ in range(3):
        gone = await PacketClient.bess(path)
        await wait_taps(ns, 2)
        await gone.send(frame_to(pk.BROADCAST, pk.mac("02:00:00:00:0b:01"), b"bye"))
        gone.close()  # UML killed: EOF on the seqpacket socket
        await wait_taps(ns, 1)
    await wait_fds(server, baseline)
    await arp_bridge(good, good_mac, "192.168.86.10")
    assert not server.log.find(r"client 1 disconnected")
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
    procs = []
    for ns, url, ip in (
        (ns_a, f"qemu+unix:{sockdir}/q.sock", "192.168.86.10"),
        (ns_b, f"bess:{sockdir}/b.sock", "192.168.86.11"),
    ):
        proc = await ns.start([*wsnic(), "connect", url, "--tap", "lan0"], label=url)
        await proc.log.wait_for(r"connected to ")
        ns.ip("addr", "add", f"{ip}/24", "dev", "lan0")
        procs.append(proc)
    await wait_taps(srv, 2)
    result = await ns_a.exec("ping", "-c", "3", "-i", "0.2", "-W", "2", "192.168.86.11")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"3 received" in result.stdout
    result = await ns_b.exec("ping", "-c", "1", "-W", "2", "192.168.86.1")
    assert result.returncode == 0, "the bridge answers the bess client too"
    for proc in procs:
        assert await proc.stop() == 0
    await wait_taps(srv, 0)
