"""The host filter (issue 12): what a LAN client may reach on the host and beyond it, in
both IP families, with and without ``-i``; and the LAN's DNS answering the LAN only.

The server's namespace stands for the host. It has an uplink (to an "upstream"
namespace) and a private network of its own (10.77.0.1, fd77::1, toward a "private"
namespace), on which a host service listens that the LAN must not reach. LAN clients
are real Linux stacks behind ``wsnic-trio connect``; they add the routes an attacker
would add (a LAN client controls its own routing table).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from .lanhost import BUSYBOX, LanClient, add_client, forget_stale_run_dir, require_tools
from .netns import NetNS, NsFactory, NsProcess

PORT = 9000

#: A TCP service on each address given: it greets every connection with its address.
_SERVICE = """
import selectors, socket, sys
port = int(sys.argv[1])
sel = selectors.DefaultSelector()
for host in sys.argv[2:]:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(address)
    s.listen()
    sel.register(s, selectors.EVENT_READ, host)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        conn, peer = key.fileobj.accept()
        conn.sendall(f"hello from {key.data}\\n".encode())
        conn.close()
        print(f"served {key.data} to {peer[0]}", flush=True)
"""

#: Connect to HOST PORT and print the greeting; exit code 1 when that is impossible.
_PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.settimeout(3)
        print(s.recv(200).decode().strip())
except OSError as exc:
    print(f"failed: {exc!r}")
    sys.exit(1)
"""

#: Ask SERVER (UDP or TCP port 53) for NAME's A record; print the answer's first
#: address, or exit 1 when no answer comes.
_DNS_PROBE = """
import socket, struct, sys
server, name, proto = sys.argv[1], sys.argv[2], sys.argv[3]
query = struct.pack("!HHHHHH", 0x5A5A, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
query += struct.pack("!HH", 1, 1)
family, _, _, _, address = socket.getaddrinfo(server, 53)[0]
try:
    if proto == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(query, address)
        answer = s.recv(4096)
    else:
        s = socket.create_connection(address[:2] if family == socket.AF_INET else address,
                                     timeout=3)
        s.settimeout(3)
        s.sendall(struct.pack("!H", len(query)) + query)
        answer = s.recv(4096)[2:]
except OSError as exc:
    print(f"no answer: {exc!r}")
    sys.exit(1)
if len(answer) < 12 or answer[:2] != query[:2]:
    print("no answer: garbage")
    sys.exit(1)
print("answer", ".".join(str(b) for b in answer[-4:]) if answer[7] else "empty")
"""


async def _run_py(ns: NetNS, script: str, *args: str) -> tuple[bool, str]:
    result = await ns.exec(sys.executable, "-c", script, *args, timeout=30)
    text = (result.stdout + result.stderr).decode(errors="replace").strip()
    return result.returncode == 0, text


async def reach(ns: NetNS, host: str, port: int = PORT) -> tuple[bool, str]:
    """(connected and greeted, output) for a TCP connection from ``ns``."""
    return await _run_py(ns, _PROBE, host, str(port))


async def ask_dns(ns: NetNS, server: str, name: str, proto: str = "udp") -> tuple[bool, str]:
    return await _run_py(ns, _DNS_PROBE, server, name, proto)


async def link_local(ns: NetNS, device: str) -> str:
    """``device``'s IPv6 link-local address, once duplicate address detection is done."""
    with trio.fail_after(15):
        while True:
            out = ns.ip("-6", "-o", "addr", "show", "dev", device, "scope", "link").stdout
            if out.strip() and "tentative" not in out:
                return out.split()[3].split("/")[0]
            await trio.sleep(0.1)


async def start_service(ns: NetNS, *addresses: str) -> NsProcess:
    proc = await ns.start([sys.executable, "-c", _SERVICE, str(PORT), *addresses], label="svc")
    await proc.log.wait_for(r"^listening")
    return proc


def _host(world: NsFactory) -> tuple[NetNS, NetNS, str]:
    """The server's namespace with an uplink (default route) and a private network;
    the upstream namespace, and the name of its end of the uplink."""
    srv, upstream, private = world.new("srv"), world.new("up"), world.new("priv")
    _, upstream_if = world.link(srv, "198.18.1.1/30", upstream, "198.18.1.2/30")
    srv.ip("route", "add", "default", "via", "198.18.1.2")
    priv_if, _ = world.link(srv, "10.77.0.1/30", private, "10.77.0.2/30")
    srv.ip("-6", "addr", "add", "fd77::1/64", "dev", priv_if, "nodad")
    forget_stale_run_dir(srv)
    return srv, upstream, upstream_if


MODES = [pytest.param((), id="no-inet"), pytest.param(("-i",), id="inet")]


@pytest.mark.parametrize("mode", MODES)
async def test_host_services_closed_to_the_lan_in_both_families(
    world: NsFactory, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    """A host service on the host's private addresses (IPv4, its ULA, the bridge's own
    link-local address) is refused to a LAN client; what the LAN may use still works."""
    require_tools()
    srv, _, _ = _host(world)
    server = await srv.start_wsnic("-a", "0.0.0.0", *mode)
    client = await add_client(world, srv, tmp_path, 0, "guest")
    lease = await client.dhcp("guest")
    bridge_ll = await link_local(srv, "wsbr0")
    await link_local(client.ns, "lan0")
    client.ns.ip("-6", "route", "add", "fd77::/64", "via", bridge_ll, "dev", "lan0")
    service = await start_service(srv, "192.168.86.1", "10.77.0.1", "fd77::1", f"{bridge_ll}%wsbr0")

    # The service works, and the bridge's IPv4 address is the LAN's door to the host.
    ok, text = await reach(srv, "fd77::1")
    assert ok and "hello from fd77::1" in text, text
    ok, text = await reach(client.ns, "192.168.86.1")
    assert ok and "hello from 192.168.86.1" in text, text

    for address in ("10.77.0.1", "fd77::1", f"{bridge_ll}%lan0"):
        ok, text = await reach(client.ns, address)
        assert not ok, f"a LAN client reached the host service on {address}: {text}"
    assert "to fe80:" not in service.log.text() and "to 192.168.86." in service.log.text()

    # What the LAN may use on the host: DHCP (above), DNS, ping of the gateway.
    ok, text = await ask_dns(client.ns, "192.168.86.1", "guest.lan")
    assert ok and f"answer {lease['ip']}" in text, text
    ok, text = await ask_dns(client.ns, "192.168.86.1", "guest.lan", "tcp")
    assert ok and f"answer {lease['ip']}" in text, text
    ping = await client.ns.exec("ping", "-c", "1", "-W", "2", "192.168.86.1")
    assert ping.returncode == 0, ping.stdout.decode()
    ping = await client.ns.exec("ping", "-6", "-c", "1", "-W", "2", f"{bridge_ll}%lan0")
    assert ping.returncode == 0, ping.stdout.decode()
    assert await server.stop() == 0


async def _behind_the_host(world: NsFactory, srv: NetNS) -> NetNS:
    """A network behind the host (as Docker's or libvirt's), routed both ways, in both
    families; and the host forwarding, as such hosts do."""
    behind = world.new("behind")
    behind_if, other = world.link(srv, "198.18.2.1/30", behind, "198.18.2.2/30")
    srv.ip("-6", "addr", "add", "2001:db8:2::1/64", "dev", behind_if, "nodad")
    behind.ip("-6", "addr", "add", "2001:db8:2::2/64", "dev", other, "nodad")
    behind.ip("route", "add", "192.168.86.0/24", "via", "198.18.2.1")
    behind.ip("-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:2::1")
    forwarding = "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
    result = await srv.exec("sh", "-c", forwarding)
    assert result.returncode == 0, result.stderr.decode()
    return behind


async def _lan_ipv6(client: LanClient, address: str, bridge_ll: str) -> None:
    """The client numbers itself in 2001:db8:1::/64 and routes via the bridge."""
    await link_local(client.ns, "lan0")
    client.ns.ip("-6", "addr", "add", f"{address}/64", "dev", "lan0", "nodad")
    client.ns.ip("-6", "route", "add", "2001:db8:2::/64", "via", bridge_ll, "dev", "lan0")


async def test_no_forwarding_out_of_the_lan_without_inet(world: NsFactory, tmp_path: Path) -> None:
    """Without -i, on a host that forwards anyway, the LAN reaches nothing behind the
    host in either family; its clients still reach each other (bridged, br_netfilter)."""
    require_tools()
    srv, _, _ = _host(world)
    behind = await _behind_the_host(world, srv)
    await start_service(behind, "198.18.2.2", "2001:db8:2::2")
    ok, text = await reach(srv, "2001:db8:2::2")
    assert ok, f"the network behind the host works from the host: {text}"

    server = await srv.start_wsnic("-a", "0.0.0.0")
    srv.ip("-6", "route", "add", "2001:db8:1::/64", "dev", "wsbr0")
    alice = await add_client(world, srv, tmp_path, 1, "alice")
    bob = await add_client(world, srv, tmp_path, 2, "bob")
    await alice.dhcp("alice")
    lease_b = await bob.dhcp("bob")
    bridge_ll = await link_local(srv, "wsbr0")
    await _lan_ipv6(alice, "2001:db8:1::a", bridge_ll)
    await _lan_ipv6(bob, "2001:db8:1::b", bridge_ll)

    for address in ("198.18.2.2", "2001:db8:2::2"):
        ok, text = await reach(alice.ns, address)
        assert not ok, f"a LAN client reached {address} behind the host: {text}"
    ping = await alice.ns.exec("ping", "-c", "1", "-W", "1", "198.18.2.2")
    assert ping.returncode != 0, "not even ping gets through"

    # Client to client, in both families, is the LAN itself; from behind the host,
    # which routes to the LAN, nobody gets in.
    await start_service(bob.ns, lease_b["ip"], "2001:db8:1::b")
    for address in (lease_b["ip"], "2001:db8:1::b"):
        ok, text = await reach(alice.ns, address)
        assert ok and f"hello from {address}" in text, text
        ok, text = await reach(behind, address)
        assert not ok, f"the network behind the host reached {address} on the LAN: {text}"
    assert await server.stop() == 0
    forwarding = await srv.exec("sysctl", "-n", "net.ipv4.ip_forward")
    assert forwarding.stdout.strip() == b"1", "the host's own forwarding is left as it was"


@pytest.mark.parametrize("mode", MODES)
async def test_dns_answers_the_lan_only(
    world: NsFactory, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    """A machine on the uplink side that routes to the bridge address (Linux answers for
    any of its addresses on any interface) gets no DNS answer: the LAN's names stay in."""
    require_tools()
    srv, upstream, upstream_if = _host(world)
    upstream.ip("route", "add", "192.168.86.0/24", "via", "198.18.1.1")
    server = await srv.start_wsnic("-a", "0.0.0.0", *mode)
    client = await add_client(world, srv, tmp_path, 0, "guest")
    lease = await client.dhcp("guest")
    bridge_ll = await link_local(srv, "wsbr0")

    ok, text = await ask_dns(client.ns, "192.168.86.1", "guest.lan")
    assert ok and f"answer {lease['ip']}" in text, text
    for proto in ("udp", "tcp"):
        ok, text = await ask_dns(upstream, "192.168.86.1", "guest.lan", proto)
        assert not ok, f"the uplink side got a DNS answer over {proto}: {text}"
    ok, text = await ask_dns(upstream, f"{bridge_ll}%{upstream_if}", "guest.lan")
    assert not ok, f"the uplink side got a DNS answer at the bridge's link-local: {text}"
    # The host itself may ask its LAN's DNS.
    ok, text = await ask_dns(srv, "192.168.86.1", "guest.lan")
    assert ok and f"answer {lease['ip']}" in text, text
    result = await client.ns.exec(BUSYBOX, "nslookup", "guest", "192.168.86.1", timeout=30)
    assert result.returncode == 0, result.stdout.decode()
    assert await server.stop() == 0
