"""Real guests on two LANs of one server (root mode): a QEMU guest on LAN ``a`` through
that LAN's own ``qemu=`` listener, UML guests on LAN ``b`` through its own ``bess=``
listener, and a ``wsnic-trio connect`` client on ``/lan/a``.

What a user checks: each guest's lease comes from its own LAN's range and gateway, it
resolves the names of its own LAN and not those of the other, and it reaches its own
LAN while the other stays unreachable by ARP, broadcast, IP and name. Every negative
check has a positive twin on the guest's own LAN (the same probe, answered), so a probe
that cannot work at all fails the test instead of passing it. The guests' probes are
the ``wsnic.*`` steps of ``tests/guests/init.sh``; the frames on both bridges are
captured the whole time for the broadcast check.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from pathlib import Path

import trio

from .guestlan import Guest, GuestLan, lease_domain, removed_after
from .guests.boot import GuestResults, guest_cmdline
from .lanhost import BUSYBOX, add_client
from .netns import NETNS_ETC, NetNS, NsFactory

A_NET = ipaddress.IPv4Network("10.86.1.0/24")
B_NET = ipaddress.IPv4Network("10.86.2.0/24")
A_GW, B_GW = "10.86.1.1", "10.86.2.1"

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
BROADCAST = "ff:ff:ff:ff:ff:ff"

#: Fewer tries than the guests' default: an unreachable target costs 2 s per try.
PROBES = {"pingtries": 3, "lifetime": 600}


class BridgeCapture:
    """Every frame a LAN's bridge carries, as (source MAC, destination MAC).

    The socket asks for promiscuous mode, so the bridge hands up the frames it
    forwards between its ports too, not only those for the host.
    """

    def __init__(self, ns: NetNS, bridge: str) -> None:
        self.bridge = bridge
        index = int(ns.ip("-o", "link", "show", "dev", bridge).stdout.split(":")[0])
        sock = ns.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sock.bind((bridge, ETH_P_ALL))
        mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.frames: list[tuple[str, str]] = []

    async def run(self) -> None:
        with self.sock:
            while True:
                frame = await self.sock.recv(65536)
                self.frames.append((frame[6:12].hex(":"), frame[0:6].hex(":")))

    def sent_by(self, mac: str) -> list[tuple[str, str]]:
        return [f for f in self.frames if f[0] == mac.lower()]


def check_lease(lan: GuestLan, guest: Guest, res: GuestResults, net: ipaddress.IPv4Network) -> str:
    """The guest's DHCP lease is from ``net``'s dnsmasq: its range, its gateway, its DNS."""
    gateway = str(net.network_address + 1)
    lease = res.lease
    lan.check(lease is not None and not lease.static, f"{guest.name} got no DHCP lease")
    assert lease is not None
    lan.check(
        ipaddress.IPv4Address(lease.ip) in net and lease.prefix == net.prefixlen,
        f"{guest.name} leased {lease.ip}/{lease.prefix}, not from {net}",
    )
    lan.check(
        (lease.router, lease.dns, lease.server) == (gateway, gateway, gateway),
        f"{guest.name}: router {lease.router}, DNS {lease.dns}, DHCP server {lease.server}",
    )
    lan.check(lease_domain(res) == "lan", f"{guest.name}: domain {lease_domain(res)}")
    return lease.ip


def check_probes(
    lan: GuestLan,
    guest: Guest,
    res: GuestResults,
    *,
    pings: dict[str, bool],
    arpings: dict[str, bool],
    names: dict[str, str | None],
) -> None:
    """What the guest reported for each probe is what was expected (True: answered)."""
    lan.check(not res.errors, f"{guest.name} reported errors: {res.errors}")
    for target, ok in pings.items():
        ping = res.pings.get(target)
        lan.check(ping is not None and ping.ok == ok, f"{guest.name} ping {target}: {ping}")
    for target, ok in arpings.items():
        lan.check(
            res.arpings.get(target) == ok,
            f"{guest.name} arping {target}: {res.arpings.get(target)}, expected {ok}",
        )
    for name, addr in names.items():
        lan.check(
            name in res.resolved and res.resolved[name] == addr,
            f"{guest.name} resolved {name} to {res.resolved.get(name, '(nothing)')}, "
            f"expected {addr}",
        )


async def on_bridge(lan: GuestLan, name: str, remote: str) -> None:
    """The server put the peer on LAN ``name``: its TAP is a port of that LAN's bridge."""
    bridge = f"wsl-{name}"
    connected = await lan.server_line(
        rf"client \d+ connected on LAN {name}: {remote} on (wstap\d+)"
    )
    tap = connected.group(1)
    shown = lan.ns.ip("link", "show", tap, check=False).stdout
    lan.check(f"master {bridge} " in shown, f"{tap} of {remote} is not on {bridge}: {shown}")


async def test_qemu_on_lan_a_and_uml_on_lan_b_reach_their_own_lan_only(
    world: NsFactory, lan: GuestLan, sockdir: str, tmp_path: Path
) -> None:
    server = await lan.start_server(
        "-a",
        "0.0.0.0",
        "--lan",
        f"a={A_NET},qemu=unix:{sockdir}/a.sock",
        "--lan",
        f"b={B_NET},bess={sockdir}/b.sock",
    )
    await lan.server_line(r"INFO ready: LAN b 10\.86\.2\.0/24 on bridge wsl-b")
    captures = {bridge: BridgeCapture(lan.ns, bridge) for bridge in ("wsl-a", "wsl-b")}
    async with trio.open_nursery() as nursery:
        for capture in captures.values():
            nursery.start_soon(capture.run)

        # The WebSocket client on /lan/a: LAN a's first host, a target for the QEMU guest.
        client = await add_client(world, lan.ns, tmp_path, 0, "wa", path="/lan/a")
        lan.watch(client.connect)
        wa = await client.dhcp("wa")
        lan.check(
            ipaddress.IPv4Address(wa["ip"]) in A_NET and wa["router"] == A_GW,
            f"client lease on /lan/a: {wa}",
        )
        shown = client.ns.ip("-o", "link", "show", "dev", "lan0").stdout
        wa_mac = shown.split("link/ether ")[1].split()[0]

        with removed_after(f"{sockdir}/ub.sock", f"{sockdir}/ub2.sock"):
            # 1. UML guest ub on LAN b, serving: it is up while the QEMU guest probes it.
            ub = await lan.start_uml(
                "ub",
                1,
                f"transport=bess,dst={sockdir}/b.sock,src={sockdir}/ub.sock",
                guest_cmdline(hostname="ub", ping=[B_GW], serve=True, extra=PROBES),
            )
            await on_bridge(lan, "b", rf"bess unix:{re.escape(sockdir)}/ub\.sock")
            await ub.wait_line(r"WSNIC-GUEST ready ")
            ub_ip = check_lease(lan, ub, ub.results(), B_NET)

            # 2. QEMU guest qa on LAN a probes its own LAN and ub.
            qa = await lan.start_qemu(
                "qa",
                2,
                f"stream,id=n0,server=off,addr.type=unix,addr.path={sockdir}/a.sock",
                guest_cmdline(
                    hostname="qa",
                    ping=[A_GW, wa["ip"], "wa", ub_ip],
                    arping=[A_GW, wa["ip"], ub_ip, B_GW],
                    resolve=["qa", "wa", "ub", "ub.lan"],
                    serve=True,
                    extra=PROBES,
                ),
            )
            await on_bridge(lan, "a", r"qemu unix:\S+")
            await qa.wait_line(r"WSNIC-GUEST ready ")
            res = qa.results()
            qa_ip = check_lease(lan, qa, res, A_NET)
            check_probes(
                lan,
                qa,
                res,
                pings={A_GW: True, wa["ip"]: True, "wa": True, ub_ip: False},
                arpings={A_GW: True, wa["ip"]: True, ub_ip: False, B_GW: False},
                names={"qa": qa_ip, "wa": wa["ip"], "ub": None, "ub.lan": None},
            )

            # 3. UML guest ub2 on LAN b probes its own LAN (ub) and qa, then powers off.
            ub2 = await lan.start_uml(
                "ub2",
                3,
                f"transport=bess,dst={sockdir}/b.sock,src={sockdir}/ub2.sock",
                guest_cmdline(
                    hostname="ub2",
                    ping=[B_GW, ub_ip, "ub", qa_ip],
                    arping=[B_GW, ub_ip, qa_ip, A_GW],
                    resolve=["ub2", "ub", "qa", "qa.lan", "wa"],
                    extra=PROBES,
                ),
            )
            code, res = await ub2.finish()
            lan.check(code == 0 and res.done, f"ub2 exited with {code}")
            check_lease(lan, ub2, res, B_NET)
            check_probes(
                lan,
                ub2,
                res,
                pings={B_GW: True, ub_ip: True, "ub": True, qa_ip: False},
                arpings={B_GW: True, ub_ip: True, qa_ip: False, A_GW: False},
                names={"ub2": res.ip, "ub": ub_ip, "qa": None, "qa.lan": None, "wa": None},
            )

            # 4. The client on /lan/a reaches the QEMU guest by its DHCP host name, through
            #    LAN a's DNS, and ub neither by name nor by IP.
            (NETNS_ETC / client.ns.name / "resolv.conf").write_text(
                f"nameserver {A_GW}\nsearch lan\n"
            )
            got = await client.ns.exec(
                "timeout", "30", BUSYBOX, "wget", "-q", "-O", "-", "http://qa/index.html"
            )
            body = got.stdout.decode(errors="replace")
            lan.check(
                got.returncode == 0 and f"hostname=qa ip={qa_ip} " in body,
                f"client fetch of http://qa/index.html: {body!r} {got.stderr.decode()}",
            )
            pinged = await client.ns.exec("ping", "-c", "1", "-W", "3", "qa.lan")
            lan.check(pinged.returncode == 0, f"client ping qa.lan:\n{pinged.stdout.decode()}")
            found = await client.ns.exec(BUSYBOX, "nslookup", "ub", A_GW)
            lan.check(ub_ip not in found.stdout.decode(), f"ub on LAN a:\n{found.stdout.decode()}")
            pinged = await client.ns.exec("ping", "-c", "1", "-W", "2", ub_ip)
            lan.check(pinged.returncode != 0, f"the client on LAN a reaches ub at {ub_ip}")

            # 5. Broadcasts and every other frame stayed on their own LAN's bridge.
            await trio.sleep(0.5)  # the captures read what is still queued
            a_cap, b_cap = captures["wsl-a"], captures["wsl-b"]
            for cap, mac in ((a_cap, qa.mac), (a_cap, wa_mac), (b_cap, ub.mac), (b_cap, ub2.mac)):
                lan.check(
                    (mac, BROADCAST) in cap.sent_by(mac),
                    f"no broadcast from {mac} on its own bridge {cap.bridge}",
                )
            for cap, mac in ((b_cap, qa.mac), (b_cap, wa_mac), (a_cap, ub.mac), (a_cap, ub2.mac)):
                lan.check(
                    not cap.sent_by(mac),
                    f"{len(cap.sent_by(mac))} frames from {mac} on the other LAN's "
                    f"bridge {cap.bridge}: {cap.sent_by(mac)[:5]}",
                )
            for bridge, mac in (("wsl-a", qa.mac), ("wsl-b", ub.mac), ("wsl-b", ub2.mac)):
                await lan.server_line(rf"DHCPACK\({bridge}\) \S+ {mac} ")
            lan.check(
                not server.log.find(rf"\(wsl-b\) .*{qa.mac}|\(wsl-a\) .*{ub.mac}"),
                "a dnsmasq logged a guest of the other LAN",
            )
            for guest in (qa, ub):
                await guest.stop()
        nursery.cancel_scope.cancel()

    lan.check(not server.log.find(r"Traceback"), "the server logged a traceback")
    assert await client.connect.stop() == 0
    lan.check(await server.stop() == 0, "the server did not exit with 0")
