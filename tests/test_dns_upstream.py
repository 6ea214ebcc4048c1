"""Names outside the LAN (issue 11): with -i the LAN's dnsmasq forwards them to the
host's resolvers; without -i it answers LAN names only; --dns-upstream beats both.

"The host" is the server's test namespace: ``ip netns exec`` bind-mounts
/etc/netns/NAME/resolv.conf over /etc/resolv.conf for what it starts, so the server
(and its dnsmasq) read a resolv.conf the test wrote, naming a small DNS responder
(``tests/dnsresponder.py``) in an upstream namespace or on the namespace's loopback.
Each responder prints every query it gets: the tests check what reached it, and what
never did. A client on the LAN asks the bridge address with busybox nslookup.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from .conftest import require
from .lanhost import BUSYBOX, LanClient, add_client, require_tools
from .netns import NETNS_ETC, NetNS, NsFactory, NsProcess
from .rootlesshost import (
    DEBIAN_PYTHON,
    make_runtime,
    start_rootless,
    temp_dir,
    throwaway_user,
)

OUTSIDE = "outside.example"
OUTSIDE_IP = "198.51.100.7"
SUBNET = "100.64.86.0/24"  # not a private range: --bogus-priv does not cover its PTRs
BRIDGE = "100.64.86.1"


@contextlib.contextmanager
def resolv_conf(ns: NetNS, text: str) -> Iterator[Path]:
    """The resolv.conf that what is started in ``ns`` from now on sees; removed after.

    ``ns``'s own /etc/netns directory (made with its Debian hosts file, see
    tests/netns.py) holds it; the namespace's teardown removes the directory.
    """
    path = NETNS_ETC / ns.name / "resolv.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_text(text)
        yield path
    finally:
        path.unlink(missing_ok=True)


async def start_responder(ns: NetNS, address: str, *records: str) -> NsProcess:
    proc = await ns.start(
        [sys.executable, "-m", "tests.dnsresponder", address, *records],
        label=f"dns-{address}",
    )
    await proc.log.wait_for(rf"dns responder on {re.escape(address)}:53")
    return proc


async def lookup(client: LanClient, name: str, server: str = BRIDGE) -> tuple[bool, str]:
    """(found, output) of ``nslookup NAME`` asked of the LAN's dnsmasq."""
    result = await client.ns.exec(BUSYBOX, "nslookup", name, server, timeout=30)
    text = (result.stdout + result.stderr).decode(errors="replace")
    return result.returncode == 0, text


def answered(text: str, address: str) -> bool:
    """Whether busybox nslookup's output gives ``address`` as an answer (the server's
    own address is printed as ``Address: ADDR:53``, so it never counts)."""
    return re.search(rf"^Address(?: \d+)?:\s*{re.escape(address)}$", text, re.M) is not None


async def barrier(ns: NetNS, responder: NsProcess, address: str) -> None:
    """Ask ``responder`` directly and wait for that query in its log: every query that
    reached it before is in the log by then."""
    await ns.exec(BUSYBOX, "nslookup", "barrier.example", address, timeout=30)
    await responder.log.wait_for(r"query barrier\.example ")


def queries(responder: NsProcess) -> list[str]:
    return [line for line in responder.log.lines if line.startswith("query ")]


async def _world(world: NsFactory) -> tuple[NetNS, NetNS, NsProcess]:
    """The server's namespace, routed to an upstream namespace that runs "the
    Internet's" resolver on 198.18.1.2."""
    require_tools()
    srv, up = world.routed()
    responder = await start_responder(up, "198.18.1.2", f"{OUTSIDE}={OUTSIDE_IP}")
    return srv, up, responder


async def _guest(world: NsFactory, srv: NetNS, tmp_path: Path) -> tuple[LanClient, dict[str, str]]:
    """A client on the LAN that took a lease as host name "guest"; and that lease."""
    client = await add_client(world, srv, tmp_path, 0, "guest")
    return client, await client.dhcp("guest")


async def test_inet_forwards_outside_names_to_the_hosts_resolver(
    world: NsFactory, tmp_path: Path
) -> None:
    """With -i, a guest resolves an Internet name through the resolver of the host's
    resolv.conf; LAN names, names without a dot and reverse lookups of the LAN never
    leave dnsmasq; a resolv.conf entry naming the bridge itself is ignored, not looped."""
    srv, _, upstream = await _world(world)
    with resolv_conf(srv, f"nameserver {BRIDGE}\nnameserver 198.18.1.2\n"):
        server = await srv.start_wsnic("-a", "0.0.0.0", "-i", "-s", SUBNET)
    assert server.log.find(
        r"DNS: forwarding non-LAN names to 198\.18\.1\.2 \(from /etc/resolv\.conf, re-read "
        rf"when it changes\) \(ignoring {re.escape(BRIDGE)}: that is this LAN's own dnsmasq\)"
    ), server.log.text()
    client, lease = await _guest(world, srv, tmp_path)

    # LAN names and the LAN's reverse zone: answered (or refused) by dnsmasq alone.
    for name in ("guest", "guest.lan"):
        found, text = await lookup(client, name)
        assert found and answered(text, lease["ip"]), text
    found, text = await lookup(client, lease["ip"])
    assert found and "guest.lan" in text, text
    # An address of the LAN that nobody leased (dnsmasq picks the guest's at random).
    unleased = "100.64.86.77" if lease["ip"] != "100.64.86.77" else "100.64.86.78"
    for name in ("nosuch.lan", "nosuch", unleased):
        found, text = await lookup(client, name)
        assert not found, text

    found, text = await lookup(client, OUTSIDE)
    assert found and answered(text, OUTSIDE_IP), text
    await upstream.log.wait_for(rf"query {re.escape(OUTSIDE)} A$")
    asked = queries(upstream)
    assert not [q for q in asked if "guest" in q or "nosuch" in q or "in-addr.arpa" in q], asked
    assert await server.stop() == 0


async def test_without_inet_lan_names_only(world: NsFactory, tmp_path: Path) -> None:
    """Without -i the LAN has no way out, and no Internet names either: resolv.conf is
    not read, nothing reaches its resolver, LAN names still work."""
    srv, _, upstream = await _world(world)
    with resolv_conf(srv, "nameserver 198.18.1.2\n"):
        server = await srv.start_wsnic("-a", "0.0.0.0", "-s", SUBNET)
    assert server.log.find(r"DNS: LAN names only \(no --enable-inet, no --dns-upstream\)")
    client, lease = await _guest(world, srv, tmp_path)
    found, text = await lookup(client, "guest.lan")
    assert found and answered(text, lease["ip"]), text
    found, text = await lookup(client, OUTSIDE)
    assert not found, text
    await barrier(srv, upstream, "198.18.1.2")
    assert {q.split()[1] for q in queries(upstream)} == {"barrier.example"}, queries(upstream)
    assert await server.stop() == 0


async def test_dns_upstream_wins_over_resolv_conf(world: NsFactory, tmp_path: Path) -> None:
    srv, up, from_resolv = await _world(world)
    up.ip("addr", "add", "198.18.1.6/32", "dev", "lo")
    chosen = await start_responder(up, "198.18.1.6", f"{OUTSIDE}=198.51.100.66")
    with resolv_conf(srv, "nameserver 198.18.1.2\n"):
        server = await srv.start_wsnic(
            "-a", "0.0.0.0", "-i", "-s", SUBNET, "--dns-upstream", "198.18.1.6"
        )
    assert server.log.find(r"DNS: forwarding non-LAN names to 198\.18\.1\.6 \(--dns-upstream\)")
    client, _ = await _guest(world, srv, tmp_path)
    found, text = await lookup(client, OUTSIDE)
    assert found and answered(text, "198.51.100.66"), text
    assert queries(chosen), "the --dns-upstream server was asked"
    await barrier(srv, from_resolv, "198.18.1.2")
    assert not [q for q in queries(from_resolv) if OUTSIDE in q], queries(from_resolv)
    assert await server.stop() == 0


async def test_a_stub_resolver_on_loopback_serves_the_lan(world: NsFactory, tmp_path: Path) -> None:
    """A host whose resolv.conf names a stub on its loopback (systemd-resolved's
    127.0.0.53): dnsmasq runs on the host's side, so it reaches the stub."""
    srv, _, upstream = await _world(world)
    stub = await start_responder(srv, "127.0.0.53", f"{OUTSIDE}={OUTSIDE_IP}")
    with resolv_conf(srv, "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"):
        server = await srv.start_wsnic("-a", "0.0.0.0", "-i")
    assert server.log.find(r"DNS: forwarding non-LAN names to 127\.0\.0\.53 \(from /etc/resolv")
    client, _ = await _guest(world, srv, tmp_path)
    found, text = await lookup(client, OUTSIDE, "192.168.86.1")
    assert found and answered(text, OUTSIDE_IP), text
    assert f"query {OUTSIDE} A" in queries(stub)
    assert not queries(upstream)
    assert await server.stop() == 0


async def test_no_name_server_listed_keeps_lan_names(world: NsFactory, tmp_path: Path) -> None:
    """A resolv.conf with no server: a warning at start, and the LAN's own names work."""
    srv, _, upstream = await _world(world)
    with resolv_conf(srv, "# no network yet\nsearch example\n"):
        server = await srv.start_wsnic("-a", "0.0.0.0", "-i")
    assert server.log.find(
        r"WARNING .*DNS: /etc/resolv\.conf lists no usable name server, so only LAN names "
        r"resolve for now"
    ), server.log.text()
    client, lease = await _guest(world, srv, tmp_path)
    found, text = await lookup(client, "guest.lan", "192.168.86.1")
    assert found and answered(text, lease["ip"]), text
    found, text = await lookup(client, OUTSIDE, "192.168.86.1")
    assert not found, text
    await barrier(srv, upstream, "198.18.1.2")
    assert not [q for q in queries(upstream) if OUTSIDE in q]
    assert await server.stop() == 0


# -- rootless mode: through the uplink's DNS forwarder --------------------------------


@pytest.fixture
async def runtime(world: NsFactory) -> AsyncIterator[Path]:
    """The code, readable by the test users (see tests/rootlesshost.py)."""
    require_tools()
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    require(os.access(DEBIAN_PYTHON, os.X_OK), f"{DEBIAN_PYTHON} is missing")
    with temp_dir() as path:
        await trio.to_thread.run_sync(make_runtime, path)
        yield path


async def _rootless_client(world: NsFactory, srv: NetNS, tmp: Path) -> LanClient:
    ns = world.new("c")
    world.link(srv, "198.18.0.1/30", ns, "198.18.0.2/30")
    proc = await ns.start(
        [sys.executable, "-m", "wsnic_trio", "connect", "ws://198.18.0.1:8086/", "--tap", "lan0"],
        label="connect",
    )
    await proc.log.wait_for(r"connected to ws://")
    return LanClient(ns, proc, tmp)


@pytest.mark.parametrize("uplink", ["slirp4netns", "pasta"])
async def test_rootless_inet_resolves_through_the_uplink(
    world: NsFactory, runtime: Path, uplink: str
) -> None:
    """Rootless: the helper's namespace has its own loopback, so dnsmasq there cannot
    use the host's 127.0.0.53 itself; it asks the uplink's DNS forwarder, which asks
    the host's resolver from the host's side."""
    require(shutil.which(uplink) is not None, f"{uplink} is not installed")
    srv, router = world.new("srv"), world.new("rtr")
    world.link(srv, "198.19.0.1/30", router, "198.19.0.2/30")  # pasta copies this uplink
    srv.ip("route", "add", "default", "via", "198.19.0.2")
    stub = await start_responder(srv, "127.0.0.53", f"{OUTSIDE}={OUTSIDE_IP}")
    with throwaway_user() as user, resolv_conf(srv, "nameserver 127.0.0.53\n"):
        server = await start_rootless(
            srv, user, runtime, "--ws-address", "0.0.0.0", "--enable-inet", "--uplink", uplink
        )
        forwarder = "169.254.1.1" if uplink == "pasta" else "10.0.2.3"
        assert server.log.find(
            rf"DNS: forwarding non-LAN names to {re.escape(forwarder)}, the DNS forwarder "
            rf"of {uplink}"
        ), server.log.text()
        client = await _rootless_client(world, srv, runtime)
        await client.dhcp("guest")
        found, text = await lookup(client, OUTSIDE, "192.168.86.1")
        assert found and answered(text, OUTSIDE_IP), text
        assert f"query {OUTSIDE} A" in queries(stub)
        found, text = await lookup(client, "guest.lan", "192.168.86.1")
        assert found, text
        assert not [q for q in queries(stub) if "guest" in q], queries(stub)
        assert await server.stop(signal.SIGTERM) == 0, server.log.text()
