"""The control API against a real server, with curl as the HTTP client over its unix socket."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from .apihelp import api, events, follow_events, require_curl
from .lanhost import LanClient, add_client, require_tools
from .netns import NetNS, NsFactory, NsProcess


def lan0_mac(client: LanClient) -> str:
    out = client.ns.ip("-o", "link", "show", "lan0").stdout
    m = re.search(r"link/ether ([0-9a-f:]{17})", out)
    assert m, out
    return m.group(1)


async def ping(client: LanClient, address: str, count: int = 2) -> None:
    result = await client.ns.exec("ping", "-c", str(count), "-i", "0.2", "-W", "2", address)
    assert result.returncode == 0, result.stdout.decode()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def start_server(srv: NetNS, tmp: Path, *args: str) -> tuple[str, NsProcess]:
    sock = str(tmp / "api.sock")
    server = await srv.start_wsnic("-a", "0.0.0.0", "--api", f"unix:{sock}", *args)
    return sock, server


async def test_clients_stats_leases_events_metrics_and_kick(
    world: NsFactory, tmp_path: Path
) -> None:
    require_tools()
    require_curl()
    srv = world.new("srv")
    sock, server = await start_server(srv, tmp_path)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert server.log.find(rf"INFO control API on unix:{re.escape(sock)} \(mode 0600\)")
    follower = await follow_events(srv, sock)

    alice = await add_client(world, srv, tmp_path, 0, "alice", extra=("--once",))
    bob = await add_client(world, srv, tmp_path, 1, "bob")
    lease_a = await alice.dhcp("alice")
    lease_b = await bob.dhcp("bob")
    await ping(alice, "192.168.86.1")
    await ping(bob, lease_a["ip"])

    reply = await api(sock, "GET", "/clients")
    assert reply.status == 200 and reply.content_type.startswith("application/json"), reply
    clients = {c["hostname"]: c for c in reply.json()["clients"]}
    assert set(clients) == {"alice", "bob"}, reply
    a, b = clients["alice"], clients["bob"]
    assert a["mac"] == lan0_mac(alice) and b["mac"] == lan0_mac(bob)
    assert (a["ip"], b["ip"]) == (lease_a["ip"], lease_b["ip"])
    for c in (a, b):
        assert c["transport"] == "ws"
        assert c["remote"].startswith("198.18.0.")
        assert c["tap"] in srv.links()
        assert c["frames_in"] > 0 and c["bytes_in"] > 0 and c["frames_out"] > 0
        assert isinstance(c["drops"], dict) and c["connected_since"]
    assert (await api(sock, "GET", f"/clients/{a['id']}")).json()["tap"] == a["tap"]

    leases = {x["hostname"]: x for x in (await api(sock, "GET", "/leases")).json()["leases"]}
    assert leases["alice"]["ip"] == lease_a["ip"] and leases["alice"]["client"] == a["id"]
    assert leases["bob"]["mac"] == b["mac"]

    stats = (await api(sock, "GET", "/stats")).json()
    assert stats["clients_connected"] == 2
    assert stats["transports"]["ws"]["connections"] == 2
    assert stats["total"]["frames_in"] >= a["frames_in"] + b["frames_in"]

    metrics = await api(sock, "GET", "/metrics")
    assert metrics.status == 200 and metrics.content_type.startswith("text/plain"), metrics
    samples = metric_samples(metrics.body.decode())
    ws = (("lan", "default"), ("transport", "ws"))
    assert samples[("wsnic_clients_connected", ws)] == 2
    assert samples[("wsnic_frames_total", (("direction", "in"), *ws))] > 0
    assert samples[("wsnic_bytes_total", (("direction", "out"), *ws))] > 0
    assert samples[("wsnic_dnsmasq_restarts_total", ())] == 0
    assert samples[("wsnic_dhcp_leases", (("lan", "default"),))] == 2
    assert samples[("wsnic_lans", ())] == 1

    # Kick Alice (her client runs with --once, so she stays gone): her TAP goes.
    kicked = await api(sock, "DELETE", f"/clients/{a['id']}")
    assert kicked.status == 200 and kicked.json() == {
        "kicked": a["id"],
        "tap": a["tap"],
        "gone": True,
    }
    assert a["tap"] not in srv.links()
    await server.log.wait_for(
        rf"client {a['id']} disconnected \(kicked by the API\): ws 198\.18\.0\.\d+:\d+ on "
        rf"{a['tap']}, MAC {a['mac']}"
    )
    remaining = (await api(sock, "GET", "/clients")).json()["clients"]
    assert [c["id"] for c in remaining] == [b["id"]]
    # Totals survive the client that left.
    after = (await api(sock, "GET", "/stats")).json()
    assert after["clients_connected"] == 1
    assert after["transports"]["ws"]["connections"] == 2
    assert after["total"]["frames_in"] >= stats["total"]["frames_in"]

    await follower.log.wait_for(rf'"event": "client-disconnected", .*"id": {a["id"]}')
    seen = events(follower)
    kinds = [e["event"] for e in seen]
    assert kinds.count("client-connected") >= 2
    granted = [e for e in seen if e["event"] == "lease-granted"]
    assert {e["hostname"] for e in granted} >= {"alice", "bob"}
    assert any(e["event"] == "client-mac" and e["mac"] == a["mac"] for e in seen)
    gone = next(e for e in seen if e["event"] == "client-disconnected")
    assert gone["reason"] == "kicked by the API" and gone["tap"] == a["tap"]

    assert await server.stop() == 0
    assert not await trio.Path(sock).exists(), "the API socket is removed on exit"


async def test_bad_requests_get_4xx_and_change_nothing(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    require_curl()
    srv = world.new("srv")
    sock, server = await start_server(srv, tmp_path)
    bob = await add_client(world, srv, tmp_path, 0, "bob")
    await bob.dhcp("bob")
    before = (await api(sock, "GET", "/clients")).json()["clients"]
    assert len(before) == 1
    taps = srv.links()
    # A port that something else in the server's namespace already holds.
    holder = srv.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]

    cases = [
        ("GET", "/clients/999", None, None, 404, "no client with id 999"),
        ("DELETE", "/clients/999", None, None, 404, "no client with id 999"),
        ("DELETE", "/clients/999/pcap", None, None, 404, "no client with id 999"),
        ("GET", "/nowhere", None, None, 404, "no such endpoint"),
        ("PUT", "/clients", None, None, 405, "not allowed"),
        ("POST", "/forwards", None, b"{not json", 400, "malformed JSON"),
        ("POST", "/forwards", None, b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/forwards", {"local": "127.0.0.1:2222"}, None, 400, "'remote' is required"),
        (
            "POST",
            "/forwards",
            {"local": f"127.0.0.1:{taken}", "remote": "192.168.86.20:22"},
            None,
            409,
            "already in use",
        ),
        (
            "POST",
            "/forwards",
            {"local": "127.0.0.1:0", "remote": "10.1.2.3:22"},
            None,
            400,
            "outside the LAN 192.168.86.0/24",
        ),
        (
            "POST",
            "/forwards",
            {"local": "127.0.0.1:0", "remote": "192.168.86.1:22"},
            None,
            400,
            "the bridge",
        ),
        (
            "POST",
            "/forwards",
            {"local": "127.0.0.1:0", "remote": "192.168.86.9:22", "protocol": "sctp"},
            None,
            400,
            "not tcp or udp",
        ),
        (
            "POST",
            "/forwards",
            {"local": "nowhere:22", "remote": "192.168.86.9:22"},
            None,
            400,
            "is not an IP address",
        ),
        ("DELETE", "/forwards", {"local": "127.0.0.1:2222"}, None, 404, "no forward on"),
        ("DELETE", "/forwards", None, None, 400, "say which forward"),
        ("POST", f"/clients/{before[0]['id']}/pcap", None, None, 409, "--pcap DIR"),
        ("DELETE", f"/clients/{before[0]['id']}/pcap", None, None, 409, "--pcap DIR"),
    ]
    for method, path, body, raw, status, text in cases:
        reply = await api(sock, method, path, body, raw=raw)
        assert reply.status == status, (method, path, reply)
        error = reply.json()
        assert text in error["error"] and error["status"] == status, (method, path, error)
    # HTTP itself broken: h11 refuses it, the server answers 400 and goes on.
    reply = await api(sock, "GET", "/clients", headers=("Content-Length: x",))
    assert reply.status == 400, reply

    holder.close()
    after = (await api(sock, "GET", "/clients")).json()["clients"]
    assert [_static(c) for c in after] == [_static(c) for c in before]
    assert (await api(sock, "GET", "/forwards")).json()["forwards"] == []
    assert srv.links() == taps
    assert server.log.find(r"Traceback") is None
    assert await server.stop() == 0


def _static(client: dict[str, object]) -> dict[str, object]:
    """What a client is (as opposed to what it has counted so far)."""
    keys = ("id", "transport", "remote", "tap", "mac", "ip", "hostname", "connected_since")
    return {k: client[k] for k in keys}


async def test_tcp_api_needs_a_token(world: NsFactory, tmp_path: Path) -> None:
    require_curl()
    srv = world.new("srv")
    tokens = tmp_path / "api-tokens"
    tokens.write_text("# operators\ns3cret-token\n")
    server = await srv.start_wsnic(
        "--disable-dhcp", "--api", "tcp:127.0.0.1:8088", "--api-token-file", str(tokens)
    )
    assert server.log.find(r"control API on tcp:127\.0\.0\.1:8088 \(Bearer token required\)")

    async def get(*headers: str) -> int:
        result = await srv.exec(
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            *[x for h in headers for x in ("-H", h)],
            "http://127.0.0.1:8088/stats",
        )
        return int(result.stdout)

    assert await get() == 401
    assert await get("Authorization: Bearer wrong") == 403
    assert await get("Authorization: Bearer s3cret-token") == 200
    assert await server.stop() == 0


async def test_tcp_api_without_a_token_file_is_refused(world: NsFactory) -> None:
    srv = world.new("srv")
    server = await srv.start_wsnic("--api", "tcp:127.0.0.1:8088", ready=False)
    assert await server.wait() == 2
    assert server.log.find(r"needs --api-token-file")
