"""A client nobody vouches for cannot take other clients' leases, MACs or airtime.

Attacker: a WebSocket client writing hand-built frames, in the default configuration
(``--lock-mac ws``). Victims: real Linux stacks behind ``wsnic-trio connect`` running
busybox udhcpc and iputils ping, and a QEMU-stream peer on the server's socket; each
test asserts what the victim sees.
"""

from __future__ import annotations

import itertools
import re
import struct
from pathlib import Path

import pytest
import trio
import trio_websocket
import wsproto.events as ev

from . import packets as pk
from .apihelp import api, require_curl
from .lanhost import add_client, require_tools
from .netns import NetNS, NsFactory, wait_taps
from .vmclients import StreamClient
from .wsclients import RawClient, close_ws, ws_client

GATEWAY = "192.168.86.1"
EVIL = pk.mac("02:00:00:00:0e:01")
EVIL_ID = b"\x01" + EVIL


class DhcpTalk:
    """The attacker's side of DHCP: send requests, match dnsmasq's answers by xid."""

    def __init__(self, conn: trio_websocket.WebSocketConnection) -> None:
        self.conn = conn
        self.xids = itertools.count(0x7E000001)

    def xid(self) -> int:
        return next(self.xids)

    async def exchange(
        self, frames: list[bytes], last: bytes, timeout: float = 30
    ) -> dict[int, pk.DhcpReply]:
        """Send ``frames``, then ``last`` (a request dnsmasq surely answers); return every
        answer that came before the answer to ``last``, by xid, and that one too.

        dnsmasq answers its DHCP socket in order, so once ``last`` is answered each
        earlier request was answered, or never will be.
        """
        for frame in frames:
            await self.conn.send_message(frame)
        await self.conn.send_message(last)
        last_xid = struct.unpack("!I", last[46:50])[0]
        replies: dict[int, pk.DhcpReply] = {}
        with trio.fail_after(timeout):
            while last_xid not in replies:
                message = await self.conn.get_message()
                assert isinstance(message, bytes)
                reply = pk.parse_dhcp_reply(message)
                if reply is not None:
                    replies[reply.xid] = reply
        return replies

    async def lease(self) -> str:
        """A lease for the attacker itself (its MAC, client-id 01:MAC): it may have one."""
        offer = await self.exchange([], self.own(pk.DHCPDISCOVER))
        address = offer.popitem()[1].yiaddr
        ack = await self.exchange([], self.own(pk.DHCPREQUEST, address))
        [reply] = ack.values()
        assert reply.type == pk.DHCPACK, reply
        return address

    def own(self, kind: int, address: str | None = None) -> bytes:
        server = GATEWAY if address is not None else None
        return pk.dhcp(
            EVIL, kind, client_id=EVIL_ID, requested=address, server=server, xid=self.xid()
        )


def _mac_of(ns: NetNS, device: str = "lan0") -> bytes:
    return pk.mac(ns.ip("-br", "link", "show", device).stdout.split()[2])


@pytest.mark.parametrize("lock_ip", [False, True], ids=["default", "lock-ip"])
async def test_forged_release_cannot_free_another_clients_lease(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path, lock_ip: bool
) -> None:
    """(issue 12: a forged DHCPRELEASE deleted the victim's lease; the attacker then
    leased the victim's address, and passed --lock-ip with it)"""
    require_tools()
    srv = world.new("srv")
    lease_file = tmp_path / "leases"
    options = ["--lock-ip"] if lock_ip else []
    server = await srv.start_wsnic("-a", "0.0.0.0", "--dhcp-lease-file", str(lease_file), *options)
    await server.log.wait_for(r"dnsmasq ready")
    victim = await add_client(world, srv, tmp_path, 0, "victim")
    lease = await victim.dhcp("victim")
    victim_mac = _mac_of(victim.ns)
    victim_id = b"\x01" + victim_mac  # what busybox udhcpc sends
    assert f"{victim_mac.hex(':')} {lease['ip']} victim" in lease_file.read_text()

    evil = await ws_client(srv, nursery)
    talk = DhcpTalk(evil)
    # Sent from 0.0.0.0 (which --lock-ip lets through before a lease), each names the
    # victim: by hardware address and client-id, by client-id alone (dnsmasq goes by it
    # first), and a DECLINE of its address by hardware address.
    forged = [
        pk.dhcp(
            EVIL,
            pk.DHCPRELEASE,
            chaddr=victim_mac,
            client_id=victim_id,
            ciaddr=lease["ip"],
            server=GATEWAY,
        ),
        pk.dhcp(EVIL, pk.DHCPRELEASE, client_id=victim_id, ciaddr=lease["ip"], server=GATEWAY),
        pk.dhcp(EVIL, pk.DHCPDECLINE, chaddr=victim_mac, requested=lease["ip"], server=GATEWAY),
    ]
    # Then the attacker asks for the victim's address for itself (as itself).
    grab = pk.dhcp(EVIL, pk.DHCPREQUEST, client_id=EVIL_ID, requested=lease["ip"], xid=talk.xid())
    replies = await talk.exchange(forged, grab)
    [answer] = replies.values()
    assert answer.type == pk.DHCPNAK, f"the attacker was given {lease['ip']}: {answer}"

    # The victim's view: its lease is still its own, and still works.
    assert f"{victim_mac.hex(':')} {lease['ip']} victim" in lease_file.read_text()
    assert (await victim.dhcp("victim"))["ip"] == lease["ip"]
    ping = await victim.ns.exec("ping", "-c", "1", "-W", "2", GATEWAY)
    assert ping.returncode == 0, ping.stdout.decode()
    await close_ws(evil)
    await server.log.wait_for(
        r"client 2 disconnected .*dropped 3 \(dhcp-chaddr 2, dhcp-client-id 1\)"
    )


async def test_one_client_cannot_drain_the_dhcp_pool(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """(issue 12: DHCP starvation) Requests for made-up clients, by hardware address and
    by client-id, from one connection: a newcomer still gets a lease."""
    require_tools()
    srv = world.new("srv")
    server = await srv.start_wsnic("-a", "0.0.0.0", "-s", "192.168.86.0/29")
    await server.log.wait_for(r"dnsmasq ready .*DHCP 192\.168\.86\.2-192\.168\.86\.6")
    evil = await ws_client(srv, nursery)
    talk = DhcpTalk(evil)
    own = await talk.lease()

    taken: set[str] = set()
    forgeries = itertools.count(1)
    for _ in range(8):  # rounds: dnsmasq may offer one address to several made-up clients
        # Per made-up client: its chaddr and client-id (an RFC 4361 one: type 255, IAID,
        # DUID); half of them forge the one, half the other.
        made_up: dict[int, tuple[bytes, bytes | None]] = {}
        for n in (next(forgeries) for _ in range(4)):
            if n % 2:
                made_up[talk.xid()] = (pk.mac(f"02:00:00:00:fa:{n:02x}"), None)
            else:
                made_up[talk.xid()] = (EVIL, b"\xff" + struct.pack("!I", n) + b"\0\x04duid")
        offers = await talk.exchange(
            [
                pk.dhcp(EVIL, pk.DHCPDISCOVER, chaddr=chaddr, client_id=client_id, xid=xid)
                for xid, (chaddr, client_id) in made_up.items()
            ],
            talk.own(pk.DHCPDISCOVER),
        )
        requests = [
            pk.dhcp(
                EVIL,
                pk.DHCPREQUEST,
                chaddr=chaddr,
                client_id=client_id,
                requested=offers[xid].yiaddr,
                server=GATEWAY,
                xid=talk.xid(),
            )
            for xid, (chaddr, client_id) in made_up.items()
            if xid in offers
        ]
        acks = await talk.exchange(requests, talk.own(pk.DHCPREQUEST, own))
        got = {a.yiaddr for a in acks.values() if a.type == pk.DHCPACK} - {own}
        if not got - taken:
            break
        taken |= got

    # The victim's view: a newcomer gets an address.
    newcomer = await add_client(world, srv, tmp_path, 0, "newcomer")
    lease = await newcomer.dhcp("newcomer")
    assert lease["ip"] != own
    assert not taken, f"made-up clients got {sorted(taken)}"
    await close_ws(evil)
    line = await server.log.wait_for(r"client 1 disconnected .*")
    assert re.search(r"dhcp-chaddr 2, dhcp-client-id 2\)", line.group(0)), line.group(0)


async def _stream_peer(srv: NetNS, kind: str, sockdir: str) -> StreamClient:
    if kind == "unix":
        return await StreamClient.unix(f"{sockdir}/qemu.sock")
    stream = await srv.connect_tcp("127.0.0.1", 9000)
    return StreamClient(stream.socket)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_websocket_client_cannot_take_a_vm_mac(
    world: NsFactory, nursery: trio.Nursery, sockdir: str, kind: str
) -> None:
    """(issue 12: under --lock-mac ws the bridge moved a QEMU guest's MAC to a WebSocket
    client's TAP) Also from the same address (a web page on the VM's host)."""
    srv = world.new("srv")
    listen = f"unix:{sockdir}/qemu.sock" if kind == "unix" else "tcp:127.0.0.1:9000"
    server = await srv.start_wsnic("--disable-dhcp", "--qemu", listen)
    vm_mac = pk.mac("52:54:00:12:34:56")
    vm = await _stream_peer(srv, kind, sockdir)
    try:
        await vm.send(pk.arp_request(vm_mac, "192.168.86.20", GATEWAY))
        await vm.receive_until(pk.parse_arp_reply)
        watcher = await ws_client(srv, nursery)
        evil = await ws_client(srv, nursery)
        await wait_taps(srv, 3)

        # The attacker's first frame claims the guest's MAC (and its address).
        claim = pk.arp_request(vm_mac, "192.168.86.20", "192.168.86.20")
        await evil.send_message(claim[:20] + b"\0\x02" + claim[22:])
        await server.log.wait_for(r"client 3 (uses MAC|disconnected)")

        # The victim's view: frames for its MAC still reach it.
        probe = pk.probe_frame(vm_mac, pk.mac("02:00:00:00:00:77"), b"for the vm")
        await watcher.send_message(probe)
        await vm.receive_until(lambda f: b"for the vm" in f)
        with trio.fail_after(5):
            while evil.closed is None:
                try:
                    await evil.get_message()
                except trio_websocket.ConnectionClosed:
                    break
        assert evil.closed is not None and evil.closed.code == 1008
        assert "MAC 52:54:00:12:34:56 is in use by another client" in (evil.closed.reason or "")
        await close_ws(evil)
        await close_ws(watcher)
    finally:
        vm.close()


def _loss_of_first(output: str, count: int) -> float:
    """The fraction of echo requests 1..count whose reply never came, from ping's lines."""
    seen = {int(s) for s in re.findall(r"icmp_seq=(\d+) ", output) if int(s) <= count}
    return 1 - len(seen) / count


async def _flood(client: RawClient, frame: bytes) -> None:
    """Send ``frame`` as fast as the socket takes it (encoded once: no work per frame)."""
    chunk = b"".join(client.ws.send(ev.BytesMessage(frame)) for _ in range(1000))
    while True:
        await client.send_raw(chunk)


async def test_broadcast_flood_costs_other_clients_nothing(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path, sockdir: str
) -> None:
    """(issue 12: one client's broadcast flood cost another 56 % ping loss) While a
    client floods broadcasts as fast as it can, another one's pings all come back."""
    require_curl()
    srv = world.new("srv")
    api_sock = f"{sockdir}/api.sock"
    await srv.start_wsnic("-a", "0.0.0.0", "--disable-dhcp", "--api", f"unix:{api_sock}")
    victim = await add_client(world, srv, tmp_path, 0, "victim")
    victim.ns.ip("addr", "add", "192.168.86.10/24", "dev", "lan0")
    warm = await victim.ns.exec("ping", "-c", "1", "-W", "5", GATEWAY)
    assert warm.returncode == 0, warm.stdout.decode()

    flooder = await RawClient.open(srv)
    try:
        await wait_taps(srv, 2)
        async with trio.open_nursery() as flood:
            flood.start_soon(_flood, flooder, pk.probe_frame(pk.BROADCAST, EVIL, b"flood"))
            # Wait until the flood is past any burst allowance: its frames counted by the
            # server (passed or dropped) far exceed a second's worth.
            with trio.fail_after(30):
                while True:
                    clients = (await api(api_sock, "GET", "/clients")).json()["clients"]
                    mine = [c for c in clients if c["mac"] == EVIL.hex(":")]
                    if mine and mine[0]["frames_in"] + sum(mine[0]["drops"].values()) > 5000:
                        break
                    await trio.sleep(0.1)
            ping = await victim.ns.exec(
                "ping", "-c", "200", "-i", "0.01", "-w", "60", GATEWAY, timeout=90
            )
            flood.cancel_scope.cancel()
        loss = _loss_of_first(ping.stdout.decode(), 200)
        assert loss < 0.01, (
            f"{loss:.1%} of the pings were lost during the flood:\n" + (ping.stdout.decode()[-600:])
        )
        clients = (await api(api_sock, "GET", "/clients")).json()["clients"]
        [mine] = [c for c in clients if c["mac"] == EVIL.hex(":")]
        assert mine["drops"].get("broadcast-limit", 0) > 0
    finally:
        await flooder.aclose()
