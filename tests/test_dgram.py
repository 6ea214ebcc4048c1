"""vfkit and QEMU ``-netdev dgram`` peers (unix SOCK_DGRAM) against the real server."""

from __future__ import annotations

import trio

from . import packets as pk
from .netns import NetNS, NsFactory, NsProcess
from .vmclients import (
    PacketClient,
    arp_bridge,
    burst,
    disconnect_line,
    exists,
    frame_to,
    ping3,
    start_connects,
    stop_all,
    survivor_unharmed,
    taps,
    wait_fds,
    wait_taps,
)


async def _server(world: NsFactory, sockdir: str, *args: str) -> tuple[NetNS, str, NsProcess]:
    """A server in namespace "srv" taking datagram peers on ``sockdir``/vm.sock."""
    ns = world.new("srv")
    path = f"{sockdir}/vm.sock"
    return ns, path, await ns.start_wsnic("--dgram", path, *args)


async def test_vfkit_and_qemu_dgram_clients_share_one_socket(
    world: NsFactory, sockdir: str
) -> None:
    ns = world.new("srv")
    path = f"{sockdir}/vm.sock"
    server = await ns.start_wsnic("--vfkit", path)
    await server.log.wait_for(rf"listening on dgram \(vfkit, QEMU dgram\) unix:{path}")
    v_mac, q_mac = pk.mac("02:00:00:00:0a:01"), pk.mac("02:00:00:00:0b:01")
    # vfkit: binds its own socket, sends the VFKT handshake, then frames.
    vfkit = await PacketClient.dgram(path, f"{sockdir}/vfkit.sock", vfkit=True)
    await wait_taps(ns, 1)  # the handshake alone makes the peer
    await arp_bridge(vfkit, v_mac, "192.168.86.10")
    # QEMU -netdev dgram: no handshake.
    qemu = await PacketClient.dgram(path, f"{sockdir}/qemu.sock")
    await arp_bridge(qemu, q_mac, "192.168.86.11")
    await wait_taps(ns, 2)
    await server.log.wait_for(rf"connected: dgram unix:{sockdir}/vfkit\.sock on wstap")
    await server.log.wait_for(rf"connected: dgram unix:{sockdir}/qemu\.sock on wstap")
    await burst(vfkit, qemu, v_mac, q_mac, b"v", 5)
    vfkit.close()
    qemu.close()
    assert await server.stop() == 0
    assert not exists(path)
    assert "runt" not in disconnect_line(server), "VFKT is not counted as a frame"


async def test_datagrams_without_a_source_address_are_dropped_and_logged_once(
    world: NsFactory, sockdir: str
) -> None:
    ns, path, server = await _server(world, sockdir)
    unnamed = await PacketClient.dgram(path, None)
    me = pk.mac("02:00:00:00:0a:01")
    for _ in range(5):
        await unnamed.send(pk.arp_request(me, "192.168.86.10", "192.168.86.1"))
    await server.log.wait_for(r"datagram from an unbound socket dropped.*logged once")
    good = await PacketClient.dgram(path, f"{sockdir}/good.sock")
    await arp_bridge(good, me, "192.168.86.10")
    assert len(taps(ns, ready=False)) == 1, "only the named client got a TAP"
    assert len([x for x in server.log.lines if "unbound socket" in x]) == 1
    unnamed.close()
    good.close()
    assert await server.stop() == 0
    await server.log.wait_for(r"dropped before reaching a peer: unnamed 5")


async def test_peer_limit_caps_taps_for_a_flood_of_source_addresses(
    world: NsFactory, sockdir: str
) -> None:
    ns, path, server = await _server(world, sockdir, "--dgram-max-peers", "3")
    baseline = server.fd_count()
    clients = []
    for i in range(12):
        client = await PacketClient.dgram(path, f"{sockdir}/c{i}.sock")
        src = pk.mac(f"02:00:00:00:0c:{i:02x}")
        await client.send(frame_to(pk.BROADCAST, src, b"hello"))
        clients.append(client)
    await server.log.wait_for(r"datagram from a new address dropped: already 3 peers")
    await wait_taps(ns, 3)
    await arp_bridge(clients[0], pk.mac("02:00:00:00:0c:00"), "192.168.86.10")
    assert len(taps(ns, ready=False)) == 3
    # Garbage from new addresses costs no peer either.
    junk = await PacketClient.dgram(path, f"{sockdir}/junk.sock")
    await junk.send(b"", b"short")
    for client in clients:
        client.close()
    junk.close()
    assert await server.stop() == 0
    await server.log.wait_for(r"dropped before reaching a peer: .*peer-limit 9")
    assert server.log.find(r"dropped before reaching a peer: .*runt 2")
    assert baseline > 0


async def test_idle_peer_is_dropped_and_comes_back_as_a_new_peer(
    world: NsFactory, sockdir: str
) -> None:
    ns, path, server = await _server(world, sockdir, "--dgram-idle-timeout", "1")
    baseline = server.fd_count()
    other_mac, me = pk.mac("02:00:00:00:0b:01"), pk.mac("02:00:00:00:0a:01")
    client = await PacketClient.dgram(path, f"{sockdir}/vm1.sock")
    await arp_bridge(client, me, "192.168.86.10")
    await wait_taps(ns, 1)
    # Silence: the peer and its TAP go after the idle timeout.
    await server.log.wait_for(r"client 1 disconnected \(no sign of life")
    await wait_taps(ns, 0)
    await wait_fds(server, baseline)
    # The same VM speaks again: a new peer, a new TAP.
    await arp_bridge(client, me, "192.168.86.10")
    await server.log.wait_for(r"client 2 connected: dgram")
    assert other_mac != me
    client.close()
    assert await server.stop() == 0


async def test_a_vanished_peer_ends_at_the_next_send(world: NsFactory, sockdir: str) -> None:
    ns, path, server = await _server(world, sockdir, "--dgram-idle-timeout", "600")
    good_mac, gone_mac = pk.mac("02:00:00:00:0a:01"), pk.mac("02:00:00:00:0b:01")
    good = await PacketClient.dgram(path, f"{sockdir}/good.sock")
    await arp_bridge(good, good_mac, "192.168.86.10")
    baseline = server.fd_count()
    gone = await PacketClient.dgram(path, f"{sockdir}/gone.sock")
    await arp_bridge(gone, gone_mac, "192.168.86.11")
    await wait_taps(ns, 2)
    gone.close()  # the VM dies; its socket file is removed
    # A broadcast from the other VM is flooded to the dead one's TAP: the send fails.
    with trio.fail_after(10):
        while not server.log.find(r"client 2 disconnected \(peer socket is gone"):
            await good.send(frame_to(pk.BROADCAST, good_mac, b"anyone?"))
            await trio.sleep(0.1)
    await survivor_unharmed(ns, server, good, good_mac, baseline)
    good.close()
    assert await server.stop() == 0


async def test_empty_and_oversize_datagrams_of_a_peer_are_dropped_and_counted(
    world: NsFactory, sockdir: str
) -> None:
    ns, path, server = await _server(world, sockdir)
    me = pk.mac("02:00:00:00:0a:01")
    client = await PacketClient.dgram(path, f"{sockdir}/vm.sock2")
    await arp_bridge(client, me, "192.168.86.10")
    await client.send(b"", frame_to(pk.BROADCAST, me, b"x", size=1519), b"VFKT")
    await arp_bridge(client, me, "192.168.86.10")
    client.close()
    assert await server.stop() == 0
    line = disconnect_line(server)
    assert "oversize 1" in line and "runt 1" in line, line
    await wait_taps(ns, 0)


async def test_connect_tool_over_vfkit_and_dgram(world: NsFactory, sockdir: str) -> None:
    """`wsnic-trio connect vfkit:PATH` and `dgram:PATH`: kernel ping between them."""
    srv = world.new("srv")
    ns_a, ns_b = world.new("a"), world.new("b")
    await srv.start_wsnic("--dgram", f"{sockdir}/vm.sock")
    procs = await start_connects(
        [
            (ns_a, f"vfkit:{sockdir}/vm.sock", "192.168.86.10"),
            (ns_b, f"dgram:{sockdir}/vm.sock", "192.168.86.11"),
        ]
    )
    await ping3(ns_a, "192.168.86.11")
    await stop_all(procs)
