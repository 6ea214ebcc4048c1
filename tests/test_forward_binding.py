"""A forward to a host name stays with the guest that held the name: a later client
claiming the same DHCP hostname does not capture it; the guest itself reconnecting (same
MAC) keeps it. Real clients: ``wsnic-trio connect`` namespaces with busybox udhcpc, and
guest echo services that say who answered."""

from __future__ import annotations

from pathlib import Path

from .apihelp import api, require_curl, start_echo
from .lanhost import add_client, require_tools, wsnic
from .netns import NsFactory
from .test_forward import tcp_roundtrip

FIRST_MAC = "02:5e:00:00:00:01"


async def test_forward_to_a_name_is_not_captured_by_a_later_claimer(
    world: NsFactory, tmp_path: Path
) -> None:
    require_tools()
    require_curl()
    srv = world.new("srv")
    sock = str(tmp_path / "api.sock")
    server = await srv.start_wsnic("-a", "0.0.0.0", "--api", f"unix:{sock}")
    first = await add_client(world, srv, tmp_path, 0, "first", extra=("--mac", FIRST_MAC))
    first_lease = await first.dhcp("web")
    await start_echo(first.ns, "guest-first")
    made = await api(sock, "POST", "/forwards", {"local": "127.0.0.1:0", "remote": "web:7000"})
    assert made.status == 201, made
    port = int(made.json()["local"].rpartition(":")[2])
    assert await tcp_roundtrip(srv, port, b"one") == b"guest-first tcp one"

    # A second client claims the same hostname; dnsmasq now gives the name to it.
    second = await add_client(world, srv, tmp_path, 1, "second")
    second_lease = await second.dhcp("web")
    await start_echo(second.ns, "guest-second")
    leases = (await api(sock, "GET", "/leases")).json()["leases"]
    holders = [lease["ip"] for lease in leases if lease["hostname"] == "web"]
    assert holders == [second_lease["ip"]], leases

    # The forward still reaches the first guest.
    assert await tcp_roundtrip(srv, port, b"two") == b"guest-first tcp two"
    [fwd] = (await api(sock, "GET", "/forwards")).json()["forwards"]
    assert fwd["bound_mac"] == FIRST_MAC and fwd["resolved"] == first_lease["ip"], fwd
    assert server.log.find(r"host name 'web' is now claimed by MAC .*stays with MAC " + FIRST_MAC)

    # The first guest reconnects (the same MAC, a new connection and TAP) and renews:
    # the forward follows it, and the second client still does not get it.
    mark = len(server.log.lines)
    assert await first.connect.stop() == 0
    await server.log.wait_for(r"client \d+ disconnected", start=mark)
    again = await first.ns.start(
        [*wsnic(), "connect", "ws://198.18.0.1:8086/", "--tap", "lan0", "--mac", FIRST_MAC],
        label="connect-first-again",
    )
    await again.log.wait_for(r"connected to ws://")
    renewed = await first.dhcp("web")
    assert await tcp_roundtrip(srv, port, b"three") == b"guest-first tcp three"
    [fwd] = (await api(sock, "GET", "/forwards")).json()["forwards"]
    assert fwd["bound_mac"] == FIRST_MAC and fwd["resolved"] == renewed["ip"], fwd
    assert fwd["failed"] == 0, fwd
    assert await server.stop() == 0
