"""A client nobody vouches for cannot become the LAN's gateway, DHCP server or router.

Attacker: a WebSocket client writing hand-built frames, in the default configuration.
Victims: a real Linux stack behind ``wsnic-trio connect`` (its neighbour table, its
routes) and the server's own namespace (its routes and addresses).
"""

from __future__ import annotations

import sys

import trio

from . import packets as pk
from .netns import NetNS, NsFactory, wait_taps
from .wsclients import close_ws, receive_until, ws_client

BRIDGE_MAC = "02:77:73:00:00:01"
EVIL = pk.mac("02:00:00:00:0e:01")
EVIL_LL = "fe80::ff:fe00:e01"


async def _join_with_connect(srv: NetNS, victim: NetNS, lan_ip: str) -> None:
    proc = await victim.start(
        [sys.executable, "-m", "wsnic_trio", "connect", "ws://198.18.0.1:8086/", "--tap", "lan0"],
        label="connect",
    )
    await proc.log.wait_for(r"connected to ws://")
    victim.ip("addr", "add", f"{lan_ip}/24", "dev", "lan0")


def _ipv6_addresses(ns: NetNS) -> set[str]:
    """Addresses only: their flags (``tentative`` during DAD) change by themselves."""
    out = ns.ip("-6", "-o", "addr", "show").stdout.split("\n")
    return {line.split()[1] + " " + line.split()[3] for line in out if line.strip()}


def _neighbour_mac(ns: NetNS, ip: str) -> str:
    out = ns.ip("neigh", "show", ip, "dev", "lan0").stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else ""


async def test_client_cannot_impersonate_gateway_dhcp_or_router(
    world: NsFactory, nursery: trio.Nursery
) -> None:
    """(issue 12: gateway ARP, rogue DHCP, router advertisements)"""
    srv, victim = world.new("srv"), world.new("victim")
    world.link(srv, "198.18.0.1/30", victim, "198.18.0.2/30")
    server = await srv.start_wsnic("-a", "0.0.0.0", "--disable-dhcp")
    await _join_with_connect(srv, victim, "192.168.86.10")
    watcher = await ws_client(srv, nursery, host="198.18.0.1")
    evil = await ws_client(srv, nursery, host="198.18.0.1")
    await wait_taps(srv, 3)
    ping = await victim.exec("ping", "-c", "1", "-W", "2", "192.168.86.1")
    assert ping.returncode == 0
    assert _neighbour_mac(victim, "192.168.86.1") == BRIDGE_MAC
    routes_before = srv.ip("-6", "route", "show").stdout
    addrs_before = _ipv6_addresses(srv)

    # "192.168.86.1 is at EVIL", as a gratuitous reply to everyone and to the victim.
    claim = pk.arp_request(EVIL, "192.168.86.1", "192.168.86.1")
    reply = claim[:20] + b"\x00\x02" + claim[22:]
    await evil.send_message(reply)
    victim_mac = pk.mac(victim.ip("-br", "link", "show", "lan0").stdout.split()[2])
    directed = victim_mac + reply[6:32] + victim_mac + pk.ip4("192.168.86.10") + reply[42:]
    await evil.send_message(directed)
    # A DHCP offer naming the attacker as router, and a router advertisement.
    await evil.send_message(pk.udp(EVIL, pk.BROADCAST, "192.168.86.66", "255.255.255.255", 67, 68))
    await evil.send_message(pk.router_advert(EVIL, EVIL_LL, "2001:db8:66::/64"))
    # A harmless broadcast last: when the watcher has it, the others were not relayed.
    await evil.send_message(pk.probe_frame(pk.BROADCAST, EVIL, b"end of attack"))
    seen = []
    with trio.fail_after(5):
        while True:
            frame = await watcher.get_message()
            assert isinstance(frame, bytes)
            if frame[6:12] == EVIL:
                seen.append(frame)
                if b"end of attack" in frame:
                    break
    assert len(seen) == 1, f"attack frames reached another client: {seen[:-1]!r}"

    await trio.sleep(0.5)  # let the kernels process whatever did arrive
    assert _neighbour_mac(victim, "192.168.86.1") == BRIDGE_MAC
    assert (await victim.exec("ping", "-c", "1", "-W", "2", "192.168.86.1")).returncode == 0
    assert "2001:db8:66" not in srv.ip("-6", "route", "show").stdout, "the RA changed routes"
    assert srv.ip("-6", "route", "show").stdout == routes_before
    assert _ipv6_addresses(srv) == addrs_before
    await close_ws(evil)
    await server.log.wait_for(
        r"client \d+ disconnected .*dropped 4 \(claims-gateway 2, dhcp-server 1, router-advert 1\)"
    )
    # The watcher is still served.
    await watcher.send_message(
        pk.arp_request(pk.mac("02:00:00:00:00:77"), "192.168.86.77", "192.168.86.1")
    )
    await receive_until(watcher, pk.parse_arp_reply)
    await close_ws(watcher)


async def _sysctl(ns: NetNS, device: str, name: str) -> str:
    result = await ns.exec("cat", f"/proc/sys/net/ipv6/conf/{device}/{name}")
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


async def test_devices_we_make_ignore_ipv6_routers(world: NsFactory, nursery: trio.Nursery) -> None:
    """(issue 12) Even if an RA got through, the bridge, the TAPs and the ``connect``
    TAP would not take routes, addresses or redirects from it."""
    srv, client = world.new("srv"), world.new("client")
    world.link(srv, "198.18.0.1/30", client, "198.18.0.2/30")
    await srv.start_wsnic("-a", "0.0.0.0", "--disable-dhcp")
    await _join_with_connect(srv, client, "192.168.86.10")
    [tap] = await wait_taps(srv, 1)
    for name in ("accept_ra", "autoconf", "accept_redirects"):
        assert await _sysctl(srv, "wsbr0", name) == "0", name
        assert await _sysctl(client, "lan0", name) == "0", name
    assert await _sysctl(srv, tap, "disable_ipv6") == "1"
    assert await _sysctl(srv, "wsbr0", "disable_ipv6") == "0", "the bridge keeps IPv6"
