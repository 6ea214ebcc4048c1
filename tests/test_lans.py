"""Several LANs in one server (root mode): each client lands on the LAN its URL names,
gets its lease and names from that LAN's dnsmasq, and reaches nothing of the others."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import trio

from .lanhost import BUSYBOX, LanClient, add_client, netns_inode, require_tools, run_dirs
from .netns import NetNS, NsFactory
from .test_api import metric_samples
from .wsclients import close_ws, ws_client

LANS = ("--lan", "a=10.86.1.0/24", "--lan", "b=10.86.2.0/24,dhcp-domain-name=b.lab")


UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def upgrade_answer(ns: NetNS, path: str, port: int = 8086) -> str:
    """The server's answer to a WebSocket upgrade of ``path``: a refusal read until the
    server hangs up, or the head of a ``101``."""
    stream = await ns.connect_tcp("127.0.0.1", port)
    await stream.send_all(UPGRADE.format(path=path).encode())
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
            if data.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in data:
                break  # upgraded: the connection stays open
    await stream.aclose()
    return data.decode(errors="replace")


async def test_clients_land_on_the_lan_their_path_names(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    srv = world.new("srv")
    server = await srv.start_wsnic("-a", "0.0.0.0", "--api", f"unix:{tmp_path / 'api.sock'}", *LANS)
    await server.log.wait_for(r"INFO ready: LAN b 10\.86\.2\.0/24 on bridge wsl-b", timeout=30)
    alice = await add_client(world, srv, tmp_path, 0, "alice", path="/lan/a")
    dave = await add_client(world, srv, tmp_path, 1, "dave", path="/lan/a/")
    bob = await add_client(world, srv, tmp_path, 2, "bob", path="/lan/b?x=1")
    carol = await add_client(world, srv, tmp_path, 3, "carol", path="/")

    lease = {
        c: await c.dhcp(name)
        for c, name in ((alice, "alice"), (dave, "dave"), (bob, "bob"), (carol, "carol"))
    }
    net = ipaddress.IPv4Network
    for client, subnet in (
        (alice, "10.86.1.0/24"),
        (dave, "10.86.1.0/24"),
        (bob, "10.86.2.0/24"),
        (carol, "192.168.86.0/24"),
    ):
        got = lease[client]
        assert ipaddress.IPv4Address(got["ip"]) in net(subnet), got
        assert got["router"] == str(net(subnet).network_address + 1), got
    assert lease[bob]["domain"] == "b.lab"
    assert lease[alice]["domain"] == lease[carol]["domain"]  # inherited from the default LAN

    # Same LAN: reachable, and by DHCP host name from the LAN's own DNS.
    ok = await alice.ns.exec("ping", "-c", "1", "-W", "2", lease[dave]["ip"])
    assert ok.returncode == 0, "two clients of one LAN reach each other"
    found = await dave.ns.exec(BUSYBOX, "nslookup", "alice", "10.86.1.1")
    assert lease[alice]["ip"] in found.stdout.decode(), found.stdout.decode()
    # Another LAN: not by name, not by IP through the gateway, not even on the wire.
    missing = await bob.ns.exec(BUSYBOX, "nslookup", "alice", "10.86.2.1")
    assert lease[alice]["ip"] not in missing.stdout.decode()
    routed = await alice.ns.exec("ping", "-c", "1", "-W", "2", lease[bob]["ip"])
    assert routed.returncode != 0, "the host routes nothing between LANs"
    alice.ns.ip("addr", "add", "10.86.2.250/24", "dev", "lan0")
    wire = await alice.ns.exec("ping", "-c", "1", "-W", "2", "-I", "10.86.2.250", lease[bob]["ip"])
    assert wire.returncode != 0, "no frame crosses from one LAN's bridge to another's"
    gateway = await carol.ns.exec("ping", "-c", "1", "-W", "2", "10.86.1.1")
    assert gateway.returncode != 0, "a LAN's gateway address is not reachable from another LAN"
    # ARP: a client learns its own gateway's MAC, and nothing of another LAN's gateway
    # (alice has an address in b's subnet now, so she asks from there too).
    own = await alice.ns.exec(BUSYBOX, "arping", "-c", "1", "-w", "2", "-I", "lan0", "10.86.1.1")
    assert own.returncode == 0, own.stdout.decode()
    for source in (lease[alice]["ip"], "10.86.2.250"):
        arp = await alice.ns.exec(
            BUSYBOX, "arping", "-c", "1", "-w", "2", "-I", "lan0", "-s", source, "10.86.2.1"
        )
        assert arp.returncode != 0, (source, arp.stdout.decode())

    # Each client is on its LAN in the API; each LAN is listed.
    sock = str(tmp_path / "api.sock")
    result = await trio.run_process(
        ["curl", "-s", "--unix-socket", sock, "http://x/clients"], capture_stdout=True
    )
    on = {c["ip"]: c["lan"] for c in json.loads(result.stdout)["clients"]}
    assert on == {
        lease[alice]["ip"]: "a",
        lease[dave]["ip"]: "a",
        lease[bob]["ip"]: "b",
        lease[carol]["ip"]: "default",
    }
    result = await trio.run_process(
        ["curl", "-s", "--unix-socket", sock, "http://x/lans"], capture_stdout=True
    )
    lans = {row["name"]: row for row in json.loads(result.stdout)["lans"]}
    assert list(lans) == ["default", "a", "b"]
    assert (lans["a"]["bridge"], lans["a"]["clients"], lans["b"]["subnet"]) == (
        "wsl-a",
        2,
        "10.86.2.0/24",
    )

    status, scoped = await _api(str(tmp_path / "api.sock"), "GET", "/leases?lan=a")
    assert status == 200
    assert sorted(x["hostname"] for x in scoped["leases"]) == ["alice", "dave"]
    assert {x["lan"] for x in scoped["leases"]} == {"a"}
    status, everything = await _api(str(tmp_path / "api.sock"), "GET", "/leases")
    assert sorted(x["hostname"] for x in everything["leases"]) == ["alice", "bob", "carol", "dave"]
    status, only_b = await _api(str(tmp_path / "api.sock"), "GET", "/clients?lan=b")
    assert [c["ip"] for c in only_b["clients"]] == [lease[bob]["ip"]]
    status, unknown = await _api(str(tmp_path / "api.sock"), "GET", "/clients?lan=zzz")
    assert status == 404 and "no such LAN: zzz" in unknown["error"]
    result = await trio.run_process(
        ["curl", "-s", "--unix-socket", sock, "http://x/metrics"], capture_stdout=True
    )
    samples = metric_samples(result.stdout.decode())
    for lan, count in (("default", 1), ("a", 2), ("b", 1)):
        assert samples[("wsnic_clients_connected", (("lan", lan), ("transport", "ws")))] == count
        assert samples[("wsnic_dhcp_leases", (("lan", lan),))] == count
    assert samples[("wsnic_lans", ())] == 3

    bridges = {"wsbr0", "wsl-a", "wsl-b"}
    shown = srv.ip("-o", "link", "show", "type", "bridge").stdout
    assert all(f" {b}:" in shown for b in bridges), shown
    dirs = [d for d in run_dirs() if d.startswith(f"net{netns_inode(srv)}-")]
    assert sorted(dirs) == sorted(f"net{netns_inode(srv)}-{b}" for b in bridges)
    assert await server.stop() == 0
    shown = srv.ip("-o", "link", "show", "type", "bridge").stdout
    assert not any(f" {b}:" in shown for b in bridges), shown
    assert not [d for d in run_dirs() if d.startswith(f"net{netns_inode(srv)}-")]
    tables = await srv.exec("nft", "list", "tables")
    assert "wsnic" not in tables.stdout.decode(), tables.stdout.decode()


async def test_paths_that_name_no_lan_are_refused_before_the_upgrade(world: NsFactory) -> None:
    require_tools()
    srv = world.new("srv")
    server = await srv.start_wsnic(*LANS)
    await server.log.wait_for(r"INFO ready: LAN b ", timeout=30)
    for path, status, words in (
        ("/lan/zzz", 404, "no such LAN: zzz"),
        ("/lan/Upper", 404, "is not a LAN name"),
        ("/other", 404, "is no LAN path"),
    ):
        answer = await upgrade_answer(srv, path)
        assert answer.startswith(f"HTTP/1.1 {status} "), answer
        assert words in answer, answer
    assert await server.stop() == 0


async def _api(
    sock: str, method: str, path: str, body: str | None = None
) -> tuple[int, dict[str, Any]]:
    argv = ["curl", "-s", "--unix-socket", sock, "-X", method, "-w", "\n%{http_code}"]
    if body is not None:
        argv += ["-H", "content-type: application/json", "--data", body]
    result = await trio.run_process([*argv, f"http://x{path}"], capture_stdout=True)
    text, _, status = result.stdout.decode().rpartition("\n")
    return int(status), json.loads(text)


async def test_lans_made_on_demand_and_removed_when_idle(
    world: NsFactory, tmp_path: Path, nursery: trio.Nursery
) -> None:
    require_tools()
    srv = world.new("srv")
    server = await srv.start_wsnic(
        "-a",
        "0.0.0.0",
        "--api",
        f"unix:{tmp_path / 'api.sock'}",
        "--no-default-lan",
        "--lan-pool",
        "10.90.0.0/16",
        "--lan-idle-timeout",
        "3",
        "--max-lans",
        "20",
    )
    await server.log.wait_for(r"INFO LANs on demand: /24 blocks of 10\.90\.0\.0/16", timeout=30)
    # The first client of a name makes its LAN; a real DHCP client gets a lease from it.
    first = await add_client(world, srv, tmp_path, 0, "first", path="/lan/room-0")
    lease = await first.dhcp("first")
    assert ipaddress.IPv4Address(lease["ip"]) in ipaddress.IPv4Network("10.90.0.0/24"), lease
    # Nineteen more, each by its first client: twenty LANs, twenty distinct pool subnets.
    clients = [await ws_client(srv, nursery, path=f"/lan/room-{i}") for i in range(1, 20)]
    status, answer = await _api(str(tmp_path / "api.sock"), "GET", "/lans")
    lans = {row["name"]: row for row in answer["lans"]}
    assert sorted(lans) == sorted(f"room-{i}" for i in range(20))
    subnets = {ipaddress.IPv4Network(row["subnet"]) for row in lans.values()}
    assert len(subnets) == 20 and all(
        s.subnet_of(ipaddress.IPv4Network("10.90.0.0/16")) for s in subnets
    )
    assert all(row["on_demand"] and row["clients"] == 1 for row in lans.values())
    # The twenty-first is refused: --max-lans.
    answer_text = await upgrade_answer(srv, "/lan/room-20")
    assert answer_text.startswith("HTTP/1.1 503 ") and "--max-lans" in answer_text, answer_text
    # The API makes and removes them too (here: room-0, with its client on it).
    status, _ = await _api(str(tmp_path / "api.sock"), "POST", "/lans", '{"name": "room-20"}')
    assert status == 503  # still twenty
    status, removed = await _api(str(tmp_path / "api.sock"), "DELETE", "/lans/room-0")
    assert (status, removed) == (200, {"removed": "room-0", "clients_disconnected": 1})
    await first.connect.log.wait_for(r"(disconnected|closed|reconnect)", timeout=10)
    status, made = await _api(str(tmp_path / "api.sock"), "POST", "/lans", '{"name": "by-api"}')
    assert status == 201 and made["on_demand"] and made["clients"] == 0, made
    await first.connect.stop()

    # Idle: three seconds after their last client left, every LAN goes with all it had.
    for client in clients:
        await close_ws(client)
    # Gone from the listing at once (nobody can join them any more), then removed.
    with trio.fail_after(30):
        while True:
            status, answer = await _api(str(tmp_path / "api.sock"), "GET", "/lans")
            if not answer["lans"]:
                break
            await trio.sleep(0.5)
    for name in [f"room-{i}" for i in range(1, 20)] + ["by-api"]:
        await server.log.wait_for(rf"INFO LAN {name} removed \(no client for 3 s\)", timeout=30)
    shown = srv.ip("-o", "link", "show", "type", "bridge").stdout
    assert "wsl-" not in shown, shown
    assert not [d for d in run_dirs() if d.startswith(f"net{netns_inode(srv)}-")]
    tables = await srv.exec("nft", "list", "tables")
    assert "wsnic_trio" not in tables.stdout.decode(), tables.stdout.decode()
    dnsmasq = await srv.exec("sh", "-c", "pgrep -a dnsmasq || true")
    ours = f"/run/wsnic-trio/net{netns_inode(srv)}-"
    assert ours not in dnsmasq.stdout.decode(), "every LAN's dnsmasq is gone"
    assert await server.stop() == 0


async def test_a_start_up_error_on_one_lan_leaves_nothing_of_the_others(world: NsFactory) -> None:
    require_tools()
    srv = world.new("srv")
    before = srv.ip("-o", "link").stdout
    srv.ip("link", "add", "wsl-b", "type", "bridge")  # a device wsnic-trio did not make
    server = await srv.start_wsnic(*LANS, ready=False)
    assert await server.wait() == 2
    text = server.log.text()
    assert "a device named wsl-b already exists and was not created by wsnic-trio" in text, text
    assert "bridge wsl-a removed" in text and "bridge wsbr0 removed" in text, text
    srv.ip("link", "del", "wsl-b")
    assert srv.ip("-o", "link").stdout == before
    assert not [d for d in run_dirs() if d.startswith(f"net{netns_inode(srv)}-")]
    assert "wsnic" not in (await srv.exec("nft", "list", "tables")).stdout.decode()


async def test_a_lan_that_cannot_be_made_costs_its_first_client_only(world: NsFactory) -> None:
    require_tools()
    srv = world.new("srv")
    srv.ip("link", "add", "wsl-boom", "type", "bridge")  # a device wsnic-trio did not make
    server = await srv.start_wsnic("--no-default-lan", "--lan-pool", "10.92.0.0/16")
    answer = await upgrade_answer(srv, "/lan/boom")
    assert answer.startswith("HTTP/1.1 503 "), answer
    assert "a device named wsl-boom already exists" in answer, answer
    ok = await upgrade_answer(srv, "/lan/fine")  # the server goes on, and makes this one
    assert ok.startswith("HTTP/1.1 101 "), ok
    assert server.log.find(r"INFO LAN fine made on demand: 10\.92\.0\.0/24")
    assert await server.stop() == 0
    srv.ip("link", "del", "wsl-boom")


async def test_clients_that_ask_for_a_new_lan_at_once_all_join_it(
    world: NsFactory, nursery: trio.Nursery
) -> None:
    require_tools()
    srv = world.new("srv")
    server = await srv.start_wsnic("--no-default-lan", "--lan-pool", "10.93.0.0/16")
    answers: list[str] = []

    async def ask() -> None:
        answers.append(await upgrade_answer(srv, "/lan/busy"))

    async with trio.open_nursery() as crowd:
        for _ in range(8):
            crowd.start_soon(ask)
    assert all(a.startswith("HTTP/1.1 101 ") for a in answers), answers
    assert server.log.text().count("INFO LAN busy made on demand") == 1
    assert "Traceback" not in server.log.text()
    assert await server.stop() == 0


async def test_forty_lans_stop_at_once_and_leave_nothing(world: NsFactory) -> None:
    """When the server stops, every LAN made on demand lets go of its bridge and nftables
    table at the same moment; none may be left behind because the others were stopping
    too."""
    require_tools()
    srv = world.new("srv")
    before = srv.ip("-o", "link").stdout
    server = await srv.start_wsnic(
        "--disable-dhcp",
        "--no-default-lan",
        "--lan-pool",
        "10.87.0.0/16",
        "--lan-idle-timeout",
        "600",
        "--max-handshakes-per-ip",
        "0",
    )

    async def join(i: int) -> None:
        assert (await upgrade_answer(srv, f"/lan/l{i}")).startswith("HTTP/1.1 101 ")

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(join, i)
    ruleset = (await srv.exec("nft", "list", "ruleset")).stdout.decode()
    assert ruleset.count("table inet wsnic_trio_pid") == 1, "one table for the run"
    assert len(re.findall(r'"wsl-l\d+" : jump in_wsl_dl\d+', ruleset)) == 40, ruleset
    assert await server.stop(timeout=60) == 0
    assert "wsnic" not in (await srv.exec("nft", "list", "tables")).stdout.decode()
    assert srv.ip("-o", "link").stdout == before
    assert not [d for d in run_dirs() if d.startswith(f"net{netns_inode(srv)}-")]


async def test_a_lan_routed_to_another_opens_connections_one_way(
    world: NsFactory, tmp_path: Path
) -> None:
    """route-to: LAN a's clients reach LAN b's through the host (with their own address);
    b's clients cannot open anything toward a, nor may the default LAN reach either."""
    require_tools()
    srv = world.new("srv")
    forward_before = (await srv.exec("sysctl", "-n", "net.ipv4.ip_forward")).stdout
    server = await srv.start_wsnic(
        "-a",
        "0.0.0.0",
        "--lan",
        "a=10.86.1.0/24,route-to=10.86.2.0/24",
        "--lan",
        "b=10.86.2.0/24",
    )
    await server.log.wait_for(r"INFO ready: LAN b ", timeout=30)
    assert server.log.find(r"routes from 10\.86\.1\.0/24 to 10\.86\.2\.0/24")
    alice = await add_client(world, srv, tmp_path, 0, "alice", path="/lan/a")
    bob = await add_client(world, srv, tmp_path, 1, "bob", path="/lan/b")
    carol = await add_client(world, srv, tmp_path, 2, "carol", path="/")
    ip = {
        c: (await c.dhcp(name))["ip"]
        for c, name in ((alice, "alice"), (bob, "bob"), (carol, "carol"))
    }

    async def pings(client: LanClient, target: str) -> bool:
        result = await client.ns.exec("ping", "-c", "1", "-W", "2", target)
        return result.returncode == 0

    assert await pings(alice, ip[bob]), "a opens connections to b"
    assert not await pings(bob, ip[alice]), "b opens nothing toward a"
    assert not await pings(carol, ip[bob]) and not await pings(carol, ip[alice])
    assert not await pings(alice, "10.86.2.1"), "b's gateway (the host) stays closed to a"
    on = (await srv.exec("sysctl", "-n", "net.ipv4.ip_forward")).stdout.decode().strip()
    assert on == "1", "routing between LANs needs forwarding on while the server runs"
    assert await server.stop() == 0
    shown = srv.ip("-o", "link", "show", "type", "bridge").stdout
    assert "wsl-" not in shown and "wsbr0" not in shown, shown
    assert (await srv.exec("sysctl", "-n", "net.ipv4.ip_forward")).stdout == forward_before
    assert "wsnic" not in (await srv.exec("nft", "list", "tables")).stdout.decode()
