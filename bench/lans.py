"""Several LANs on one server: making a LAN on demand, the cost of an idle LAN, 200 LANs
with 5 idle clients each, and whether frames through one LAN slow down when others exist.

    python -m bench --lans

World: server namespace S (``--no-default-lan --lan-pool 10.80.0.0/12``), client
namespaces A and B (``wsnic-trio connect`` + busybox udhcpc, the tests' way of getting a
real lease), and C for the many idle clients (:mod:`bench.scale_client`). Everything is in
namespaces the benchmark deletes; the server removes its LANs (bridges, dnsmasq, nft
tables) when it stops.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from .measure import end_scale_client, iperf, percentile, ping_rtts, scale_connected
from .topology import IPERF_PORT, PY, Namespace, Proc, World, uplink

PORT = 8086
BUSYBOX = shutil.which("busybox") or "/bin/busybox"

#: udhcpc's script: the lease's address on the interface, no route (a namespace may hold
#: several probes' TAPs, each on its own LAN).
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
    deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew) ip -4 addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"
        echo "$ip $router" > "$LEASE_OUT" ;;
esac
exit 0
"""


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.connect(self._path)
        self.sock = sock


def api(sock: Path, method: str, path: str, body: Any = None) -> Any:
    conn = _UnixHTTP(str(sock))
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers=headers)
        reply = conn.getresponse()
        text = reply.read()
        if reply.status >= 300:
            raise RuntimeError(f"API {method} {path}: HTTP {reply.status} {text[:300]!r}")
        return json.loads(text) if text else None
    finally:
        conn.close()


def dnsmasqs(ns: Namespace) -> list[int]:
    pids = []
    listed = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True)
    for pid in map(int, listed.stdout.split()):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq":
                pids.append(pid)
    return pids


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def footprint(server: Proc, ns: Namespace) -> dict[str, float]:
    pids = dnsmasqs(ns)
    return {
        "server_rss_kib": server.rss_kib(),
        "server_fds": len(os.listdir(f"/proc/{server.pid}/fd")),
        "dnsmasq_count": len(pids),
        "dnsmasq_rss_kib": sum(_rss_kib(p) for p in pids),
    }


class Joiner:
    """Clients with a real lease: ``wsnic-trio connect`` on a TAP, then one udhcpc run."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.script = world.tmp / "udhcpc.sh"
        self.script.write_text(UDHCPC_SCRIPT)
        self.script.chmod(0o755)
        self.taps = 0

    def join(self, ns: Namespace, host: str, lan: str, tap: str = "") -> dict[str, Any]:
        """Connect to /lan/LAN and get a lease; the times of each step from the start."""
        tap = tap or f"p{self.taps}"
        self.taps += 1
        url = f"ws://{host}:{PORT}/lan/{lan}"
        t0 = time.monotonic()
        proc = ns.start([PY, "-m", "wsnic_trio", "connect", url, "--tap", tap], f"join-{lan}")
        rx = re.compile("connected to")
        while not rx.search(proc.text()):
            if not proc.alive() or time.monotonic() - t0 > 60:
                raise RuntimeError(f"connect to {url} failed:\n{proc.text()[-1500:]}")
            time.sleep(0.005)
        t_conn = time.monotonic()
        out = self.world.tmp / f"lease-{tap}-{ns.name}"
        opts = f"-i {tap} -s {self.script} -f -q -n -t 20 -T 1".split()
        argv = ["env", f"LEASE_OUT={out}", BUSYBOX, "udhcpc", *opts]
        result = ns.exec(*argv, timeout=60)
        t_lease = time.monotonic()
        if result.returncode != 0 or not out.exists():
            raise RuntimeError(f"udhcpc on {lan}: {result.stdout[-500:]} {result.stderr[-500:]}")
        ip, _, router = out.read_text().strip().partition(" ")
        return {
            "ip": ip,
            "router": router.split()[0] if router else "",
            "connected_s": t_conn - t0,
            "lease_after_connected_s": t_lease - t_conn,
            "start_to_lease_s": t_lease - t0,
        }


def relay(a: Namespace, b: Namespace, gw: str, b_ip: str, duration: float) -> dict[str, float]:
    """Ping p50 and TCP throughput on one LAN: client to gateway (host), client to client."""
    out: dict[str, float] = {}
    for name, target in (("c2h", gw), ("c2c", b_ip)):
        rtts = ping_rtts(a, target, 100)
        out[f"ping_{name}_p50_ms"] = percentile(rtts, 0.5)
        got = iperf(a, target, duration)["end"]["sum_received"]["bits_per_second"]
        out[f"tcp_{name}_gbps"] = got / 1e9
    return out


def run_lans(n_lans: int, per_lan: int, window: float, duration: float) -> dict[str, Any]:
    r: dict[str, Any] = {"lans": n_lans, "clients_per_lan": per_lan}
    with contextlib.closing(World("L")) as world:
        srv, a, b, c = (world.namespace(t) for t in "sabc")
        hosts = [uplink(world, ns, srv, i) for i, ns in enumerate((a, b, c), 1)]
        sock = world.tmp / "api.sock"
        argv = [PY, "-m", "wsnic_trio", "--ws-port", str(PORT), "--ws-address", "0.0.0.0"]
        argv += ["--no-default-lan", "--lan-pool", "10.80.0.0/12", "--max-lans", "0"]
        argv += ["--max-clients", "0", "--max-handshakes", "0", "--max-handshakes-per-ip", "0"]
        argv += ["--lan-idle-timeout", "3600", "--api", f"unix:{sock}"]
        r["server_args"] = argv[3:]
        server = srv.start(argv, "wsnic-trio")
        server.wait_for(r"INFO ready: ", timeout=30)
        time.sleep(0.5)
        base = footprint(server, srv)
        r["base"] = base

        # The cost of an idle LAN: N LANs through the API, no clients.
        t0 = time.monotonic()
        for i in range(n_lans):
            api(sock, "POST", "/lans", {"name": f"idle{i}"})
        r["api_create_s_per_lan"] = (time.monotonic() - t0) / n_lans
        time.sleep(1.0)
        full = footprint(server, srv)
        r["with_idle_lans"] = full
        r["per_idle_lan"] = {k: round((full[k] - base[k]) / n_lans, 2) for k in base}
        t0 = time.monotonic()
        for i in range(n_lans):
            api(sock, "DELETE", f"/lans/idle{i}")
        r["api_remove_s_per_lan"] = (time.monotonic() - t0) / n_lans
        time.sleep(1.0)
        r["after_removing"] = footprint(server, srv)

        # On demand: the first client of a new LAN, then a second one on it.
        joiner = Joiner(world)
        first = joiner.join(a, hosts[0], "relay", "bt0")
        second = joiner.join(b, hosts[1], "relay", "bt0")
        gw, b_ip = first["router"], second["ip"]
        samples: list[tuple[dict[str, Any], dict[str, Any]]] = [(first, second)]
        for i in range(4):
            samples.append(
                (joiner.join(a, hosts[0], f"probe{i}"), joiner.join(a, hosts[0], f"probe{i}"))
            )
        for key in ("start_to_lease_s", "lease_after_connected_s", "connected_s"):
            r[f"first_{key}"] = statistics.median(f[key] for f, _ in samples)
            r[f"second_{key}"] = statistics.median(s[key] for _, s in samples)
        r["on_demand_samples"] = samples

        srv.start(["iperf3", "-s", "-B", gw, "-p", IPERF_PORT], "iperf3-server")
        b.start(["iperf3", "-s", "-B", b_ip, "-p", IPERF_PORT], "iperf3-peer")
        srv.wait_listening(int(IPERF_PORT))
        b.wait_listening(int(IPERF_PORT))
        lans_now = len(api(sock, "GET", "/lans")["lans"])
        r["relay_few"] = {"lans": lans_now, **relay(a, b, gw, b_ip, duration)}

        # N LANs x per_lan idle clients, made on demand by their first client.
        n = n_lans * per_lan
        argv = [PY, "-m", "bench.scale_client", hosts[2], str(PORT), str(n)]
        argv += ["--lans", str(n_lans), "--lan-prefix", "s", "--max-seconds", "900"]
        rss0, t0 = server.rss_kib(), time.monotonic()
        client = c.start(argv, "scale-client", stdin=subprocess.PIPE)
        try:
            r["scale_handshakes_s"], r["scale_connected"] = scale_connected(client, 600)
            r["scale_wall_s"] = round(time.monotonic() - t0, 1)
            time.sleep(2.0)
            pids = dnsmasqs(srv)
            cpu_s, cpu_d = server.cpu_seconds(), sum(_cpu_s(p) for p in pids)
            time.sleep(window)
            r["idle_window_s"] = window
            r["scale_idle_server_cpu_pct"] = (server.cpu_seconds() - cpu_s) / window * 100
            r["scale_idle_dnsmasq_cpu_pct"] = (sum(_cpu_s(p) for p in pids) - cpu_d) / window * 100
            r["scale"] = footprint(server, srv)
            r["scale_rss_added_mib"] = (server.rss_kib() - rss0) / 1024
            lans_now = len(api(sock, "GET", "/lans")["lans"])
            r["relay_many"] = {"lans": lans_now, **relay(a, b, gw, b_ip, duration)}
            r["server_disconnects"] = len(re.findall(r"client \d+ disconnected", server.text()))
        finally:
            r["scale_client"] = end_scale_client(client, 120)
        t0 = time.monotonic()
        server.stop(timeout=120)
        r["server_stop_s"] = round(time.monotonic() - t0, 1)
        r["server_exit"] = server.popen.returncode
        r["left_after_stop"] = {
            "dnsmasq": len(dnsmasqs(srv)),
            "bridges": srv.ip("-o", "link", "show", "type", "bridge").stdout.count("wsl-"),
            "nft_tables": srv.exec("nft", "list", "tables").stdout.count("table"),
        }
        few, many = r["relay_few"], r["relay_many"]
        r["relay_ratio_many_over_few"] = {
            k: many[k] / few[k] for k in few if k != "lans" and few[k]
        }
    return r
