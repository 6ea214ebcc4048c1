"""NAT with --enable-inet: out through the uplink, masqueraded; nothing in uninvited."""

from __future__ import annotations

import sys
from pathlib import Path

from .lanhost import add_client, forget_stale_run_dir, require_tools, snapshot
from .netns import NetNS, NsFactory, NsProcess


def _web_root(root: Path, label: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(f"hello from {label}\n")
    return root


async def _http_server(ns: NetNS, address: str, port: int, root: Path, label: str) -> NsProcess:
    root = _web_root(root, label)
    proc = await ns.start(
        [sys.executable, "-m", "http.server", str(port), "--bind", address, "-d", str(root)],
        label=label,
    )
    await proc.log.wait_for(r"Serving HTTP")
    return proc


_GET = (
    "import sys, urllib.request\n"
    "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())\n"
)


async def _fetch(ns: NetNS, url: str) -> tuple[int, str]:
    """GET ``url`` from inside ``ns`` (busybox's static wget crashes here, so: Python)."""
    result = await ns.exec(sys.executable, "-c", _GET, url)
    return result.returncode, result.stdout.decode() + result.stderr.decode()[-300:]


async def test_masquerade_out_of_the_uplink_and_nothing_in(
    world: NsFactory, tmp_path: Path
) -> None:
    require_tools()
    srv, upstream = world.new("srv"), world.new("up")
    uplink, _ = world.link(srv, "198.18.1.1/30", upstream, "198.18.1.2/30")
    srv.ip("route", "add", "default", "via", "198.18.1.2")
    web = await _http_server(upstream, "198.18.1.2", 8000, tmp_path / "up", "upstream-web")
    forget_stale_run_dir(srv)
    before = snapshot(srv)
    assert before["ip_forward"].strip() == "0"

    server = await srv.start_wsnic("-a", "0.0.0.0", "-i")
    assert server.log.find(rf"NAT on: 192\.168\.86\.0/24 masqueraded out of {uplink}")
    assert server.log.find(r"net\.ipv4\.ip_forward was 0: set to 1 for this run")
    assert snapshot(srv)["ip_forward"].strip() == "1"
    client = await add_client(world, srv, tmp_path, 0, "guest")
    lease = await client.dhcp("guest")

    code, page = await _fetch(client.ns, "http://198.18.1.2:8000/")
    assert code == 0, page
    assert "hello from upstream-web" in page
    # The upstream saw the server's uplink address, never the LAN address.
    await web.log.wait_for(r'^198\.18\.1\.1 - - .*"GET / HTTP')
    assert lease["ip"] not in web.log.text()

    # Nothing gets in uninvited, even for an upstream that knows the route to the LAN.
    await _http_server(client.ns, lease["ip"], 8001, tmp_path / "guest", "guest-web")
    upstream.ip("route", "add", "192.168.86.0/24", "via", "198.18.1.1")
    code, text = await _fetch(upstream, f"http://{lease['ip']}:8001/")
    assert code != 0, f"the upstream reached into the LAN: {text}"
    code, text = await _fetch(client.ns, f"http://{lease['ip']}:8001/")
    assert code == 0, "the guest's server itself works: only the way in is closed"

    assert await server.stop() == 0
    assert server.log.find(r"net\.ipv4\.ip_forward restored to 0")
    after = snapshot(srv)  # (links differ: the test added a client; see test_restore.py)
    assert after["nft"] == before["nft"] == ""
    assert after["ip_forward"] == before["ip_forward"]


async def test_private_networks_blocked_unless_allowed(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    srv, upstream, private = world.new("srv"), world.new("up"), world.new("priv")
    world.link(srv, "198.18.1.1/30", upstream, "198.18.1.2/30")
    world.link(srv, "10.99.0.1/30", private, "10.99.0.2/30")
    srv.ip("route", "add", "default", "via", "198.18.1.2")
    await _http_server(private, "10.99.0.2", 8000, tmp_path / "priv", "private-web")
    await _http_server(upstream, "198.18.1.2", 8000, tmp_path / "up", "upstream-web")

    server = await srv.start_wsnic("-a", "0.0.0.0", "-i")
    client = await add_client(world, srv, tmp_path, 0, "guest")
    await client.dhcp("guest")
    assert (await _fetch(client.ns, "http://198.18.1.2:8000/"))[0] == 0
    code, text = await _fetch(client.ns, "http://10.99.0.2:8000/")
    assert code != 0, f"a private network of the host was reachable: {text}"
    ping = await client.ns.exec("ping", "-c", "1", "-W", "1", "10.99.0.1")
    assert ping.returncode != 0, "the host's own private address is closed to the LAN too"
    ping = await client.ns.exec("ping", "-c", "1", "-W", "2", "192.168.86.1")
    assert ping.returncode == 0, "the bridge address stays reachable"
    assert await server.stop() == 0

    mark = len(client.connect.log.lines)
    server = await srv.start_wsnic("-a", "0.0.0.0", "-i", "--allow-private", "10.99.0.0/30")
    await client.connect.log.wait_for(r"connected to ws://", timeout=30, start=mark)
    code, page = await _fetch(client.ns, "http://10.99.0.2:8000/")
    assert code == 0, page
    assert "hello from private-web" in page
    assert await server.stop() == 0


async def test_clients_reach_each_other_with_nat_on(world: NsFactory, tmp_path: Path) -> None:
    """Regression: where br_netfilter is loaded, frames bridged between two clients pass
    the forward hook with the bridge as in and out device; NAT must not drop them."""
    require_tools()
    srv, upstream = world.new("srv"), world.new("up")
    world.link(srv, "198.18.1.1/30", upstream, "198.18.1.2/30")
    srv.ip("route", "add", "default", "via", "198.18.1.2")
    await srv.start_wsnic("-a", "0.0.0.0", "-i")
    alice = await add_client(world, srv, tmp_path, 1, "alice")
    bob = await add_client(world, srv, tmp_path, 2, "bob")
    await alice.dhcp("alice")
    lease_b = await bob.dhcp("bob")
    await _http_server(bob.ns, lease_b["ip"], 8002, tmp_path / "bob", "bob-web")
    ping = await alice.ns.exec("ping", "-c", "1", "-W", "2", lease_b["ip"])
    assert ping.returncode == 0, ping.stdout.decode()
    code, page = await _fetch(alice.ns, f"http://{lease_b['ip']}:8002/")
    assert code == 0 and "hello from bob-web" in page, page
