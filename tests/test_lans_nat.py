"""Several LANs (root mode) with a NAT setting each, a clean-up after kill -9 of every
LAN, and tokens bound to LANs: what a user checks from the clients and on the host."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from .lanhost import (
    add_client,
    netns_inode,
    pid_alive,
    require_tools,
    run_dirs,
    snapshot,
    watchdog_of,
)
from .netns import NetNS, NsFactory, NsProcess
from .test_browser import PAGE, browse, chromium
from .test_lans import upgrade_answer
from .test_nat import _fetch, _http_server

UPSTREAM = "198.18.1.2"
BRIDGES = ("wsbr0", "wsl-a", "wsl-b")


def _with_upstream(world: NsFactory) -> tuple[NetNS, NetNS, str]:
    """The server's namespace with a default route out of its uplink to an upstream one."""
    srv, upstream = world.new("srv"), world.new("up")
    uplink, _ = world.link(srv, "198.18.1.1/30", upstream, f"{UPSTREAM}/30")
    srv.ip("route", "add", "default", "via", UPSTREAM)
    # A new namespace may reuse the inode of a deleted one whose server was killed.
    for bridge in BRIDGES:
        shutil.rmtree(f"/run/wsnic-trio/net{netns_inode(srv)}-{bridge}", ignore_errors=True)
    return srv, upstream, uplink


def _our_run_dirs(ns: NetNS) -> list[str]:
    return [d for d in run_dirs() if d.startswith(f"net{netns_inode(ns)}-")]


async def _pings(ns: NetNS, address: str) -> bool:
    return (await ns.exec("ping", "-c", "1", "-W", "2", address)).returncode == 0


@pytest.mark.parametrize(
    "lans",
    [
        ("--lan", "a=10.86.1.0/24,enable-inet=true", "--lan", "b=10.86.2.0/24"),
        ("-i", "--lan", "a=10.86.1.0/24", "--lan", "b=10.86.2.0/24,enable-inet=false"),
    ],
    ids=["on-for-a", "on-for-all-off-for-b"],
)
async def test_nat_on_for_one_lan_and_off_for_another(
    world: NsFactory, tmp_path: Path, lans: tuple[str, ...]
) -> None:
    require_tools()
    srv, upstream, uplink = _with_upstream(world)
    web = await _http_server(upstream, UPSTREAM, 8000, tmp_path / "up", "upstream-web")
    before = snapshot(srv)
    assert before["ip_forward"].strip() == "0"

    server = await srv.start_wsnic("-a", "0.0.0.0", *lans)
    await server.log.wait_for(r"INFO ready: LAN b ", timeout=30)
    log = server.log
    assert log.find(rf"NAT on: 10\.86\.1\.0/24 masqueraded out of {uplink} .*wsnic_trio_pid\d+")
    assert log.find(r"LAN isolated: nothing forwarded into or out of wsl-b")
    assert not log.find(r"NAT on: 10\.86\.2\.0/24"), log.text()
    assert snapshot(srv)["ip_forward"].strip() == "1", "a's NAT turned forwarding on"

    alice = await add_client(world, srv, tmp_path, 0, "alice", path="/lan/a")
    bob = await add_client(world, srv, tmp_path, 1, "bob", path="/lan/b")
    lease_a, lease_b = await alice.dhcp("alice"), await bob.dhcp("bob")
    assert ipaddress.IPv4Address(lease_a["ip"]) in ipaddress.IPv4Network("10.86.1.0/24")
    assert ipaddress.IPv4Address(lease_b["ip"]) in ipaddress.IPv4Network("10.86.2.0/24")

    # a: out to the upstream host, which sees the server's uplink address only.
    code, page = await _fetch(alice.ns, f"http://{UPSTREAM}:8000/")
    assert code == 0 and "hello from upstream-web" in page, page
    await web.log.wait_for(r'^198\.18\.1\.1 - - .*"GET / HTTP')
    assert lease_a["ip"] not in web.log.text()
    # b: no way out, though the host forwards for a.
    code, text = await _fetch(bob.ns, f"http://{UPSTREAM}:8000/")
    assert code != 0, f"a client of the LAN without NAT reached the upstream: {text}"
    assert not await _pings(bob.ns, UPSTREAM)
    assert lease_b["ip"] not in web.log.text()

    # Isolation holds with forwarding on: not to the other LAN's client, nor its gateway.
    await _http_server(bob.ns, lease_b["ip"], 8001, tmp_path / "bob", "bob-web")
    await _http_server(alice.ns, lease_a["ip"], 8001, tmp_path / "alice", "alice-web")
    assert await _pings(alice.ns, "10.86.1.1") and await _pings(bob.ns, "10.86.2.1")
    for client, other, gateway in (
        (alice, lease_b["ip"], "10.86.2.1"),
        (bob, lease_a["ip"], "10.86.1.1"),
    ):
        assert not await _pings(client.ns, other), f"{client.ns.name} reached {other}"
        assert not await _pings(client.ns, gateway), f"{client.ns.name} reached {gateway}"
        code, text = await _fetch(client.ns, f"http://{other}:8001/")
        assert code != 0, f"{client.ns.name} fetched from the other LAN: {text}"
    code, page = await _fetch(alice.ns, f"http://{lease_a['ip']}:8001/")
    assert code == 0 and "hello from alice-web" in page, "the guests' servers themselves work"
    # Nor in from the upstream, even with a route to both LANs.
    upstream.ip("route", "add", "10.86.0.0/16", "via", "198.18.1.1")
    for address in (lease_a["ip"], lease_b["ip"]):
        code, text = await _fetch(upstream, f"http://{address}:8001/")
        assert code != 0, f"the upstream reached into a LAN: {text}"

    assert await server.stop() == 0
    assert log.find(r"net\.ipv4\.ip_forward restored to 0")
    after = snapshot(srv)  # (links differ: the test added clients)
    assert after["ip_forward"] == before["ip_forward"]
    assert after["nft"] == before["nft"] == ""
    assert "wsnic" not in (await srv.exec("nft", "list", "tables")).stdout.decode()
    assert not _our_run_dirs(srv)


async def _kill_9_with_dnsmasqs_left(server: NsProcess, count: int) -> list[int]:
    """SIGKILL the server, and first the watchdogs of its ``count`` dnsmasqs: the worst
    case, in which nothing stops the old dnsmasqs. Their pids."""
    found = re.findall(r"dnsmasq ready \(pid (\d+)\)", server.log.text())
    dnsmasqs = [int(m) for m in found]
    assert len(dnsmasqs) == count, server.log.text()
    for pid in dnsmasqs:
        watchdog = watchdog_of(pid)
        assert watchdog is not None
        os.kill(watchdog, signal.SIGKILL)
    await server.stop(signal.SIGKILL)
    return dnsmasqs


def _says_it_cleared(
    srv: NetNS, second: NsProcess, killed: int, bridges: Sequence[str], dnsmasqs: list[int]
) -> None:
    """The new start's log names each thing of the killed run's LANs it removed."""
    log = second.log
    for bridge in bridges:
        found = log.find(rf"removed bridge {bridge} left behind by an earlier run \(pid {killed}\)")
        assert found, log.text()
        rundir = rf"/run/wsnic-trio/net{netns_inode(srv)}-{bridge}"
        assert log.find(rf"removed {rundir} left behind by an earlier run")
    for pid in dnsmasqs:
        assert log.find(rf"stopping dnsmasq \(pid {pid}\) left behind by an earlier run")
    table = f"wsnic_trio_pid{killed}"
    assert log.find(rf"removed nftables table inet {table} left behind .*\(pid {killed}\)")
    assert log.find(r"net\.ipv4\.ip_forward restored to 0, as it was before an earlier run")


THREE_LANS = ("-i", "--lan", "a=10.86.1.0/24", "--lan", "b=10.86.2.0/24,enable-inet=false")


async def test_kill_9_with_three_lans_then_a_new_start_cleans_every_lan(
    world: NsFactory,
) -> None:
    require_tools()
    srv, _, _ = _with_upstream(world)
    before = snapshot(srv)
    first = await srv.start_wsnic(*THREE_LANS)
    await first.log.wait_for(r"INFO ready: LAN b ", timeout=30)
    dnsmasqs = await _kill_9_with_dnsmasqs_left(first, 3)
    left = snapshot(srv)
    for bridge in BRIDGES:
        assert f" {bridge}:" in left["links"], left["links"]
        assert f'"{bridge}" : jump in_' in left["nft"], "its rules stay in the run's table"
    assert f"table inet wsnic_trio_pid{first.pid} " in left["nft"]
    assert left["ip_forward"].strip() == "1"
    assert left["processes"].split().count("dnsmasq") == 3, left["processes"]
    assert sorted(_our_run_dirs(srv)) == sorted(f"net{netns_inode(srv)}-{b}" for b in BRIDGES)

    second = await srv.start_wsnic(*THREE_LANS)
    await second.log.wait_for(r"INFO ready: LAN b ", timeout=30)
    log = second.log
    _says_it_cleared(srv, second, first.pid, BRIDGES, dnsmasqs)
    assert log.find(r"net\.ipv4\.ip_forward was 0: set to 1 for this run")
    assert not [pid for pid in dnsmasqs if pid_alive(pid)]
    during = snapshot(srv)
    assert during["processes"].split().count("dnsmasq") == 3, "one new dnsmasq per LAN"

    assert await second.stop() == 0
    assert snapshot(srv) == before
    assert not _our_run_dirs(srv)


async def test_kill_9_with_lans_made_on_demand_then_a_new_start_cleans_them(
    world: NsFactory,
) -> None:
    """A LAN made on demand lives on its name alone: the next run removes what a killed
    run left of it at start, whether or not a client ever asks for that name again."""
    require_tools()
    srv, _, _ = _with_upstream(world)
    before = snapshot(srv)
    pool = ("-i", "--no-default-lan", "--lan-pool", "10.88.0.0/16")
    first = await srv.start_wsnic(*pool)
    for name in ("x", "y"):
        assert (await upgrade_answer(srv, f"/lan/{name}")).startswith("HTTP/1.1 101 ")
    await first.log.wait_for(r"INFO LAN y made on demand", timeout=30)
    dnsmasqs = await _kill_9_with_dnsmasqs_left(first, 2)
    left = snapshot(srv)
    for bridge in ("wsl-x", "wsl-y"):
        assert f" {bridge}:" in left["links"], left["links"]
        assert f'"{bridge}" : jump in_' in left["nft"], "its rules stay in the run's table"
    assert f"table inet wsnic_trio_pid{first.pid} " in left["nft"]
    assert left["ip_forward"].strip() == "1"

    second = await srv.start_wsnic(*pool)
    _says_it_cleared(srv, second, first.pid, ("wsl-x", "wsl-y"), dnsmasqs)
    assert snapshot(srv) == before, "nothing of the killed run is left, and no LAN is up yet"
    assert await second.stop() == 0
    assert snapshot(srv) == before


async def test_kill_9_with_nat_on_every_lan_then_a_start_without_nat(world: NsFactory) -> None:
    """The next run without -i restores ip_forward to what it was before the killed run,
    whichever LAN's table it finds first."""
    require_tools()
    srv, _, _ = _with_upstream(world)
    before = snapshot(srv)
    assert before["ip_forward"].strip() == "0"
    lans = ("--lan", "a=10.86.1.0/24", "--lan", "b=10.86.2.0/24")
    first = await srv.start_wsnic("-i", *lans)
    await first.log.wait_for(r"INFO ready: LAN b ", timeout=30)
    await first.stop(signal.SIGKILL)
    assert snapshot(srv)["ip_forward"].strip() == "1"
    second = await srv.start_wsnic(*lans)
    await second.log.wait_for(r"INFO ready: LAN b ", timeout=30)
    assert snapshot(srv)["ip_forward"].strip() == "0", second.log.text()
    assert not second.log.find(r"ip_forward restored to 1"), second.log.text()
    assert await second.stop() == 0
    with trio.fail_after(10):  # the killed run's dnsmasqs go by their watchdogs
        while snapshot(srv) != before:
            await trio.sleep(0.05)


async def test_tokens_bound_to_lans(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    tokens = tmp_path / "tokens"
    tokens.write_text("alpha a\nteacher\n")
    srv = world.new("srv")
    server = await srv.start_wsnic(
        "-a",
        "0.0.0.0",
        "--auth-token-file",
        str(tokens),
        "--lan",
        "a=10.86.1.0/24",
        "--lan",
        "b=10.86.2.0/24",
    )
    await server.log.wait_for(r"INFO ready: LAN b ", timeout=30)
    net = ipaddress.IPv4Network
    joined = {}
    for index, (tag, path, subnet) in enumerate(
        (
            ("alpha", "/lan/a?token=alpha", "10.86.1.0/24"),
            ("teacha", "/lan/a?token=teacher", "10.86.1.0/24"),
            ("teachb", "/lan/b?token=teacher", "10.86.2.0/24"),
            ("teachd", "/?token=teacher", "192.168.86.0/24"),
        )
    ):
        client = await add_client(world, srv, tmp_path, index, tag, path=path)
        lease = await client.dhcp(tag)
        assert ipaddress.IPv4Address(lease["ip"]) in net(subnet), (tag, lease)
        joined[tag] = client

    # alpha on b: refused with 403; `connect` (even without --once) says why and exits 2,
    # since dialling again gets the same answer. So does a LAN that does not exist.
    for index, (tag, path, status, words) in enumerate(
        (
            ("alphab", "/lan/b?token=alpha", 403, "this token does not open LAN b"),
            ("nolan", "/lan/zzz?token=teacher", 404, "no such LAN: zzz"),
        ),
        start=4,
    ):
        mark = len(server.log.lines)
        refused = await add_client(world, srv, tmp_path, index, tag, wait=False, path=path)
        assert await refused.connect.wait() == 2
        shown = path.replace("?", r"\?").replace("alpha", r"\*\*\*").replace("teacher", r"\*\*\*")
        assert refused.connect.log.find(
            rf"error: ws://198\.18\.0\.{4 * index + 1}:8086{shown} refused: "
            rf"server answered HTTP {status}: {words} \(not retried"
        ), refused.connect.log.text()
        await server.log.wait_for(
            rf"198\.18\.0\.{4 * index + 2}:\d+: refused \(HTTP {status}\): {words}", start=mark
        )
        assert not refused.connect.log.find(r"connected to ws://|reconnecting in")
        assert "lan0" not in refused.ns.links()

    for path, status, words in (
        ("/lan/b?token=alpha", 403, "this token does not open LAN b"),
        ("/?token=alpha", 403, "this token does not open LAN default"),
        ("/lan/zzz?token=teacher", 404, "no such LAN: zzz"),
        ("/lan/zzz?token=alpha", 404, "no such LAN: zzz"),
    ):
        answer = await upgrade_answer(srv, path)
        assert answer.startswith(f"HTTP/1.1 {status} "), (path, answer)
        assert words in answer, (path, answer)
    assert await server.stop() == 0


def _lan_a_page() -> str:
    """The browser test's page, asking for LAN a's gateway from an address of LAN a."""
    page = PAGE.replace("ip = [192, 168, 86, 77]", "ip = [10, 86, 1, 77]")
    page = page.replace("target = [192, 168, 86, 1]", "target = [10, 86, 1, 1]")
    assert page.count("10, 86, 1") == 2
    return page


async def test_chromium_with_a_token_bound_to_lan_a(world: NsFactory, tmp_path: Path) -> None:
    """A real browser: accepted on a, HTTP 403 on b; a LAN that does not exist: 404."""
    require_tools()
    chromium()
    tokens = tmp_path / "tokens"
    tokens.write_text("alpha a\n")
    page = tmp_path / "page.html"
    page.write_text(_lan_a_page())
    ns = world.new("srv")
    server = await ns.start_wsnic(
        "--auth-token-file", str(tokens), "--lan", "a=10.86.1.0/24", "--lan", "b=10.86.2.0/24"
    )
    await server.log.wait_for(r"INFO ready: LAN b ", timeout=30)
    result = await browse(ns, page, "ws://127.0.0.1:8086/lan/a?token=alpha")
    assert result == "arp-reply 02:77:73:00:00:01 10.86.1.1 protocol=", result
    # (Linux answers ARP for its addresses on any bridge: the log says which LAN it was.)
    assert server.log.find(r"client 1 connected on LAN a: ws 127\.0\.0\.1:"), server.log.text()
    await server.log.wait_for(r"client 1 disconnected \(closed by peer \(code 1000\)\)")
    for lan, status, words in (
        ("b", 403, "this token does not open LAN b"),
        ("zzz", 404, "no such LAN: zzz"),
    ):
        mark = len(server.log.lines)
        refused = await browse(ns, page, f"ws://127.0.0.1:8086/lan/{lan}?token=alpha")
        assert refused.startswith(("error", "closed")), refused
        await server.log.wait_for(rf"refused \(HTTP {status}\): {words}", start=mark)
    assert not server.log.find(r"client 2 connected"), "only the page on a joined"
    assert await server.stop() == 0


async def test_on_demand_lans_share_forwarding_whatever_order_they_go(
    world: NsFactory, tmp_path: Path
) -> None:
    """ip_forward is one switch: the LAN that turned it on may go first while another
    LAN still masquerades through it; the last LAN to go puts it back."""
    require_tools()
    srv, upstream, _ = _with_upstream(world)
    await _http_server(upstream, UPSTREAM, 8000, tmp_path / "up", "upstream-web")
    assert snapshot(srv)["ip_forward"].strip() == "0"
    server = await srv.start_wsnic(
        "-a",
        "0.0.0.0",
        "-i",
        "--no-default-lan",
        "--lan-pool",
        "10.91.0.0/16",
        "--lan-idle-timeout",
        "600",
        "--api",
        f"unix:{tmp_path / 'api.sock'}",
    )
    first = await add_client(world, srv, tmp_path, 0, "first", path="/lan/x")
    await first.dhcp("first")
    assert snapshot(srv)["ip_forward"].strip() == "1"
    second = await add_client(world, srv, tmp_path, 1, "second", path="/lan/y")
    await second.dhcp("second")
    sock = str(tmp_path / "api.sock")
    removed = await trio.run_process(
        ["curl", "-sf", "--unix-socket", sock, "-X", "DELETE", "http://x/lans/x"],
        capture_stdout=True,
    )
    assert b'"removed": "x"' in removed.stdout
    assert snapshot(srv)["ip_forward"].strip() == "1", "y still needs forwarding"
    code, page = await _fetch(second.ns, f"http://{UPSTREAM}:8000/")
    assert code == 0 and "hello from upstream-web" in page, "y's NAT still works"
    await trio.run_process(
        ["curl", "-sf", "--unix-socket", sock, "-X", "DELETE", "http://x/lans/y"],
        capture_stdout=True,
    )
    assert snapshot(srv)["ip_forward"].strip() == "0", "the last LAN put it back"
    assert "wsnic_trio_forward" not in (await srv.exec("nft", "list", "tables")).stdout.decode()
    assert await server.stop() == 0
