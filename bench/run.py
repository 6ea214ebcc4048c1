"""wsnic-trio benchmark suite: throughput, small frames, latency and scale, with baselines.

    python -m bench            # full run (~10 min): 3 runs x 4 s per figure, N = 100/500/1000
    python -m bench --quick    # ~2 min: 1 run x 2 s per figure, N = 100/500
    python -m bench --profile  # py-spy profiles of the server under WebSocket load

Needs root, iproute2, iperf3, iputils ping, gcc and libssl-dev (the C reference relay).
Everything runs in network namespaces the benchmark makes and deletes (see
:mod:`bench.topology`). Every figure is printed beside two baselines measured in the
same run: a veth pair straight into the bridge (the kernel's limit) and a minimal C relay
of the same framing (``bench/c/minirelay.c``: epoll, batching; what userspace can do).

Topology of one scenario (S = server namespace, A and B = client namespaces)::

    A: bt0 192.168.86.11 ─ client ─ veth 198.18.1.2 ══ 198.18.1.1 ┐
                                                           S: server ─ TAPs ─ wsbr0 192.168.86.1
    B: bt0 192.168.86.12 ─ client ─ veth 198.18.2.2 ══ 198.18.2.1 ┘

The client is ``wsnic-trio connect`` (the project's own) or the C client of the same
framing, so the client's cost is not mistaken for the server's. Results: a table on
stdout and JSON under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import topology
from .topology import Namespace, Proc, World, run

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable

HOST_IP = "192.168.86.1"
CLIENT_IPS = ("192.168.86.11", "192.168.86.12")
BRIDGE = "wsbr0"
CLIENT_TAP = "bt0"
IPERF_PORT = "5201"
JUMBO = 65520


# -- transports: adding one is one line ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Transport:
    """How the benchmark starts a server and a client of one framing."""

    name: str
    port: int
    #: framing name understood by bench/c/minirelay ("ws" or "stream")
    c_framing: str
    #: wsnic-trio server options that open this listener on ``port`` (and nothing else)
    server_args: Callable[[int], list[str]]
    #: ``wsnic-trio connect`` URL for a server at host:port
    url: Callable[[str, int], str]
    #: also measure at MTU 65520
    jumbo: bool = False


def _ws_args(port: int) -> list[str]:
    return ["-a", "0.0.0.0", "--ws-port", str(port)]


def _qemu_args(port: int) -> list[str]:
    return ["--ws-port", "0", "--qemu", f"tcp:0.0.0.0:{port}"]


# One line per transport.
TRANSPORTS = [
    Transport("ws", 8086, "ws", _ws_args, lambda h, p: f"ws://{h}:{p}/"),
    Transport("qemu", 8087, "stream", _qemu_args, lambda h, p: f"qemu+tcp://{h}:{p}", jumbo=True),
]


def transport_missing(t: Transport) -> str | None:
    """Why this transport cannot be benchmarked with the tree as it is (None: it can)."""
    sys.path.insert(0, topology.CODE_PATH[0])
    try:
        from wsnic_trio.cli.main import config_from_args
        from wsnic_trio.transports import dialer_for

        config_from_args(t.server_args(t.port))
        dialer_for(t.url("127.0.0.1", t.port))
    except (Exception, SystemExit) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        sys.path.pop(0)
    return None


# -- scenarios ----------------------------------------------------------------------------

TESTS = ("tcp_c2h", "tcp_h2c", "tcp_c2c", "udp64", "ping")
TCP_TESTS = ("tcp_c2h", "tcp_h2c", "tcp_c2c")
METRICS = {
    # metric: (unit, higher is better)
    "tcp_c2h": ("Gbit/s", True),
    "tcp_h2c": ("Gbit/s", True),
    "tcp_c2c": ("Gbit/s", True),
    "udp64": ("kpps", True),
    "ping_p50": ("ms", False),
    "ping_p99": ("ms", False),
}
TEST_METRICS = {
    "tcp_c2h": ("tcp_c2h",),
    "tcp_h2c": ("tcp_h2c",),
    "tcp_c2c": ("tcp_c2c",),
    "udp64": ("udp64",),
    "ping": ("ping_p50", "ping_p99"),
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    server: str  # "veth" | "c" | "wsnic"
    client: str  # "veth" | "c" | "wsnic"
    transport: Transport | None
    mtu: int = 1500
    tests: tuple[str, ...] = TESTS

    @property
    def key(self) -> str:
        t = self.transport.name if self.transport else "-"
        return f"{self.server}/{self.client}/{t}/{self.mtu}"

    @property
    def label(self) -> str:
        if self.server == "veth":
            return "kernel veth (no relay)"
        server = {"c": "C relay", "wsnic": "wsnic-trio"}[self.server]
        client = {"c": "C client", "wsnic": "wsnic-trio connect"}[self.client]
        assert self.transport is not None
        mtu = "" if self.mtu == 1500 else f", MTU {self.mtu}"
        return f"{server} {self.transport.name} + {client}{mtu}"

    def baseline_key(self) -> str:
        """The C relay + C client scenario this one is compared with."""
        t = self.transport.name if self.transport else "-"
        return f"c/c/{t}/{self.mtu}"


def default_scenarios(transports: Sequence[Transport], quick: bool) -> list[Scenario]:
    out = [Scenario("veth", "veth", None)]
    for t in transports:
        out.append(Scenario("c", "c", t))
        out.append(Scenario("wsnic", "c", t))
        out.append(Scenario("wsnic", "wsnic", t))
    for t in transports:
        if t.jumbo:
            out.append(Scenario("c", "c", t, JUMBO, TCP_TESTS))
            out.append(Scenario("wsnic", "c", t, JUMBO, TCP_TESTS))
            if not quick:
                out.append(Scenario("wsnic", "wsnic", t, JUMBO, TCP_TESTS))
    return out


# -- building a scenario's world ------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    world: World
    server_ns: Namespace
    client_ns: list[Namespace]
    server: Proc | None
    clients: list[Proc]


def build_c(out_dir: Path) -> Path:
    """Compile the C reference relay from bench/c with gcc (-O2 -Wall -Wextra)."""
    if shutil.which("gcc") is None:
        raise SystemExit("bench: gcc is missing (apt-get install gcc libssl-dev)")
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / "minirelay"
    src = BENCH / "c" / "minirelay.c"
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src), "-lcrypto"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or result.stderr.strip():
        raise SystemExit(f"bench: building {src} failed:\n{result.stderr}")
    return exe


def make_bridge(ns: Namespace, mtu: int) -> None:
    ns.ip("link", "add", BRIDGE, "mtu", str(mtu), "type", "bridge")
    ns.ip("addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    ns.ip("link", "set", BRIDGE, "up")


def wsnic_server(ns: Namespace, t: Transport, mtu: int, *extra: str) -> Proc:
    argv = [PY, "-m", "wsnic_trio", "--disable-dhcp", "--mtu", str(mtu), *t.server_args(t.port)]
    proc = ns.start([*argv, *extra], "wsnic-trio")
    proc.wait_for(r"INFO ready: ", timeout=30)
    return proc


def setup(world: World, sc: Scenario, minirelay: Path) -> Setup:
    srv = world.namespace("s")
    clients_ns = [world.namespace("a"), world.namespace("b")]
    mtu = str(sc.mtu)
    server: Proc | None = None
    client_procs: list[Proc] = []
    if sc.server == "veth":
        make_bridge(srv, sc.mtu)
        for ns, ip in zip(clients_ns, CLIENT_IPS, strict=True):
            a, b = world.veth(ns, srv)
            srv.ip("link", "set", b, "mtu", mtu, "master", BRIDGE, "up")
            ns.ip("link", "set", a, "mtu", mtu)
            ns.ip("addr", "add", f"{ip}/24", "dev", a)
            ns.ip("link", "set", a, "up")
    else:
        t = sc.transport
        assert t is not None
        for i, ns in enumerate(clients_ns, 1):
            a, b = world.veth(ns, srv)
            ns.ip("addr", "add", f"198.18.{i}.2/30", "dev", a)
            srv.ip("addr", "add", f"198.18.{i}.1/30", "dev", b)
            ns.ip("link", "set", a, "up")
            srv.ip("link", "set", b, "up")
        if sc.server == "c":
            make_bridge(srv, sc.mtu)
            argv = [str(minirelay), "server", t.c_framing, str(t.port), BRIDGE, mtu]
            server = srv.start(argv, "minirelay-server")
            server.wait_for("listening")
        else:
            server = wsnic_server(srv, t, sc.mtu)
        for i, (ns, ip) in enumerate(zip(clients_ns, CLIENT_IPS, strict=True), 1):
            host = f"198.18.{i}.1"
            if sc.client == "c":
                argv = [str(minirelay), "client", t.c_framing, host, str(t.port), CLIENT_TAP, mtu]
                proc = ns.start(argv, "minirelay-client")
                proc.wait_for("connected")
            else:
                argv = [PY, "-m", "wsnic_trio", "connect", t.url(host, t.port)]
                argv += ["--tap", CLIENT_TAP, "--mtu", mtu]
                proc = ns.start(argv, "wsnic-trio-connect")
                proc.wait_for("connected to", timeout=30)
            client_procs.append(proc)
            ns.ip("addr", "add", f"{ip}/24", "dev", CLIENT_TAP)
            ns.ip("link", "set", CLIENT_TAP, "up")
    for ns in clients_ns:
        ns.wait_ping(HOST_IP)
    clients_ns[0].wait_ping(CLIENT_IPS[1])
    srv.start(["iperf3", "-s", "-B", HOST_IP, "-p", IPERF_PORT], "iperf3-server")
    clients_ns[1].start(["iperf3", "-s", "-B", CLIENT_IPS[1], "-p", IPERF_PORT], "iperf3-peer")
    srv.wait_listening(int(IPERF_PORT))
    clients_ns[1].wait_listening(int(IPERF_PORT))
    return Setup(world, srv, clients_ns, server, client_procs)


# -- measuring ------------------------------------------------------------------------------


def iperf(ns: Namespace, target: str, duration: float, *extra: str) -> dict[str, Any]:
    argv = ["iperf3", "-c", target, "-p", IPERF_PORT, "-t", f"{duration:g}", "-J", *extra]
    result = ns.exec(*argv, timeout=duration + 30)
    try:
        data: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"iperf3 gave no JSON: {result.stdout[-500:]} {result.stderr[-500:]}"
        ) from None
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data


def ping_rtts(ns: Namespace, target: str, count: int) -> list[float]:
    result = ns.exec("ping", "-c", str(count), "-i", "0.01", "-W", "1", target, timeout=count + 30)
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", result.stdout)]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def tap_packets(ns: Namespace, prefixes: tuple[str, ...]) -> int:
    """Frames through the TAPs of a namespace so far (rx + tx, both directions)."""
    out = ns.ip("-s", "-j", "link", "show", check=False).stdout
    total = 0
    with contextlib.suppress(json.JSONDecodeError):
        for link in json.loads(out or "[]"):
            if str(link.get("ifname", "")).startswith(prefixes):
                stats = link.get("stats64", {})
                total += stats.get("rx", {}).get("packets", 0) + stats.get("tx", {}).get(
                    "packets", 0
                )
    return total


RELAY_TAPS = ("wstap", "mrtap")


def run_test(s: Setup, test: str, duration: float, ping_count: int) -> dict[str, Any]:
    """One run of one test; returns its metric values and the relay processes' CPU use."""
    a = s.client_ns[0]
    procs = [p for p in [s.server, *s.clients] if p is not None]
    frames0 = tap_packets(s.server_ns, RELAY_TAPS) if s.server is not None else 0
    cpu0 = [p.cpu_seconds() for p in procs]
    t0 = time.monotonic()
    out: dict[str, Any] = {}
    if test == "tcp_c2h":
        out["tcp_c2h"] = iperf(a, HOST_IP, duration)["end"]["sum_received"]["bits_per_second"] / 1e9
    elif test == "tcp_h2c":
        out["tcp_h2c"] = (
            iperf(a, HOST_IP, duration, "-R")["end"]["sum_received"]["bits_per_second"] / 1e9
        )
    elif test == "tcp_c2c":
        out["tcp_c2c"] = (
            iperf(a, CLIENT_IPS[1], duration)["end"]["sum_received"]["bits_per_second"] / 1e9
        )
    elif test == "udp64":
        got = iperf(a, HOST_IP, duration, "-u", "-l", "64", "-b", "0")["end"]["sum_received"]
        out["udp64"] = (got["packets"] - got["lost_packets"]) / got["seconds"] / 1e3
        out["udp64_sent_kpps"] = got["packets"] / got["seconds"] / 1e3
    elif test == "ping":
        rtts = ping_rtts(a, HOST_IP, ping_count)
        if len(rtts) < ping_count // 2:
            raise RuntimeError(f"ping: only {len(rtts)} of {ping_count} answers")
        out["ping_p50"] = percentile(rtts, 0.5)
        out["ping_p99"] = percentile(rtts, 0.99)
        out["ping_lost"] = ping_count - len(rtts)
    elapsed = time.monotonic() - t0
    cpu = [(p.cpu_seconds() - c) / elapsed * 100 for p, c in zip(procs, cpu0, strict=True)]
    if s.server is not None:
        out["server_cpu_pct"] = cpu[0]
        out["client_cpu_pct"] = cpu[1:]
        frames = tap_packets(s.server_ns, RELAY_TAPS) - frames0
        out["server_frames"] = frames
        if frames >= 1000:  # below that, CPU clock ticks (10 ms) make it meaningless
            # CPU time (user + system: the TAP write's trip through the bridge counts)
            # per frame relayed in either direction: the figure noise hurts least.
            out["server_us_per_frame"] = cpu[0] / 100 * elapsed / frames * 1e6
    return out


def run_scenario(
    sc: Scenario, minirelay: Path, repeats: int, duration: float, ping_count: int
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    errors: list[str] = []
    t0 = time.monotonic()
    try:
        with World() as world:
            s = setup(world, sc, minirelay)
            for _ in range(repeats):
                for test in sc.tests:
                    try:
                        runs[test].append(run_test(s, test, duration, ping_count))
                    except (RuntimeError, subprocess.TimeoutExpired, KeyError) as exc:
                        errors.append(f"{test}: {exc}")
                    for p in [s.server, *s.clients]:
                        if p is not None and not p.alive():
                            raise RuntimeError(f"{p.label} exited:\n{p.text()[-2000:]}")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        errors.append(f"setup/run: {exc}")
    medians: dict[str, float] = {}
    for test, results in runs.items():
        for metric in TEST_METRICS[test]:
            values = [r[metric] for r in results if metric in r]
            if values:
                medians[metric] = statistics.median(values)
        per_frame = [r["server_us_per_frame"] for r in results if "server_us_per_frame" in r]
        if per_frame:
            medians[f"{test}_server_us_per_frame"] = statistics.median(per_frame)
        cpus = [r["server_cpu_pct"] for r in results if "server_cpu_pct" in r]
        if cpus:
            medians[f"{test}_server_cpu_pct"] = statistics.median(cpus)
        ccpus = [max(r["client_cpu_pct"]) for r in results if r.get("client_cpu_pct")]
        if ccpus:
            medians[f"{test}_client_cpu_pct"] = statistics.median(ccpus)
    return {
        "key": sc.key,
        "label": sc.label,
        "server": sc.server,
        "client": sc.client,
        "transport": sc.transport.name if sc.transport else None,
        "mtu": sc.mtu,
        "runs": runs,
        "median": medians,
        "errors": errors,
        "seconds": round(time.monotonic() - t0, 1),
    }


# -- scale ------------------------------------------------------------------------------------


def run_scale(n: int, window: float) -> dict[str, Any]:
    """N idle WebSocket clients on one wsnic-trio server: connect time, RSS, idle CPU."""
    t = TRANSPORTS[0]
    result: dict[str, Any] = {"n": n}
    with World() as world:
        srv, cli = world.namespace("s"), world.namespace("a")
        a, b = world.veth(cli, srv)
        cli.ip("addr", "add", "198.18.1.2/30", "dev", a)
        srv.ip("addr", "add", "198.18.1.1/30", "dev", b)
        cli.ip("link", "set", a, "up")
        srv.ip("link", "set", b, "up")
        # All N clients come from one address at once: the per-address handshake cap
        # (a defence against silent connections) would close most of them mid-handshake.
        server = wsnic_server(
            srv,
            t,
            1500,
            "--ping-interval",
            "1",
            "--ping-timeout",
            "10",
            "--max-handshakes",
            "0",
            "--max-handshakes-per-ip",
            "0",
        )
        time.sleep(0.5)
        result["server_nofile_limit"] = server.nofile_limit()
        rss0 = server.rss_kib()
        t0 = time.monotonic()
        argv = [PY, "-m", "bench.scale_client", "198.18.1.1", str(t.port), str(n)]
        client = cli.start(argv, "scale-client", stdin=subprocess.PIPE)
        try:
            client.wait_for(r"ALL_CONNECTED", timeout=240)
            m = re.search(r"ALL_CONNECTED ([\d.]+) (\d+)", client.text())
            assert m is not None
            result["handshakes_seconds"] = float(m.group(1))
            server.wait_for(r"client \d+ connected", count=int(m.group(2)), timeout=240)
            result["all_taps_seconds"] = round(time.monotonic() - t0, 2)
            time.sleep(1.0)
            rss1 = server.rss_kib()
            cpu1 = server.cpu_seconds()
            time.sleep(window)
            cpu2 = server.cpu_seconds()
            result["server_rss_mib"] = round(server.rss_kib() / 1024, 1)
            result["rss_per_client_kib"] = round((rss1 - rss0) / n, 1)
            result["idle_cpu_pct"] = round((cpu2 - cpu1) / window * 100, 1)
            result["idle_window_s"] = window
            result["server_fds"] = len(os.listdir(f"/proc/{server.pid}/fd"))
            result["server_taps"] = srv.ip("-o", "link", "show", "master", BRIDGE).stdout.count(
                "wstap"
            )
            result["server_disconnects"] = len(
                re.findall(r"client \d+ disconnected", server.text())
            )
        finally:
            if client.popen.stdin is not None:
                with contextlib.suppress(OSError):
                    client.popen.stdin.write(b"done\n")
                    client.popen.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                client.popen.wait(60)
        lines = [ln for ln in client.text().splitlines() if ln.startswith("{")]
        if lines:
            seen = json.loads(lines[-1])
            result.update({f"client_{k}": v for k, v in seen.items() if k != "connect_seconds"})
        result["ok"] = (
            result.get("client_connected") == n
            and result.get("client_dropped") == 0
            and result.get("server_disconnects") == 0
        )
    return result


# -- report -------------------------------------------------------------------------------------


def fmt(value: float | None, metric: str) -> str:
    if value is None or value != value:
        return "—"
    if metric.startswith("ping"):
        return f"{value:.3f}"
    if metric == "udp64":
        return f"{value:.0f}"
    return f"{value:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Each scenario's figures as ratios to veth and to the C relay of its framing and MTU."""
    by_key = {r["key"]: r for r in results}
    veth = by_key.get("veth/veth/-/1500", {}).get("median", {})
    for r in results:
        base = by_key.get(f"c/c/{r['transport'] or '-'}/{r['mtu']}", {}).get("median", {})
        own1500 = by_key.get(f"{r['server']}/{r['client']}/{r['transport']}/1500", {}).get(
            "median", {}
        )
        r["vs_veth"] = {m: ratio(v, veth.get(m)) for m, v in r["median"].items() if m in METRICS}
        r["vs_c_relay"] = {m: ratio(v, base.get(m)) for m, v in r["median"].items() if m in METRICS}
        if r["mtu"] != 1500:
            r["vs_own_mtu1500"] = {
                m: ratio(v, own1500.get(m)) for m, v in r["median"].items() if m in METRICS
            }


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, checked on every wsnic-trio server scenario of this run."""
    out: list[dict[str, Any]] = []
    for r in results:
        if r["server"] != "wsnic":
            continue
        vc = r.get("vs_c_relay", {})
        checks: list[tuple[str, float | None, float, bool]] = []
        if r["mtu"] == 1500:
            for m in TCP_TESTS:
                checks.append((f"{m} ≥ 0.5x C relay", vc.get(m), 0.5, True))
            checks.append(("udp64 ≥ 0.5x C relay", vc.get("udp64"), 0.5, True))
            checks.append(("ping_p50 ≤ 1.5x C relay", vc.get("ping_p50"), 1.5, False))
        else:
            own = r.get("vs_own_mtu1500", {})
            for m in TCP_TESTS:
                checks.append((f"{m} at MTU {r['mtu']} ≥ 3x own MTU 1500", own.get(m), 3.0, True))
        for name, value, limit, higher in checks:
            passed = None if value is None else (value >= limit if higher else value <= limit)
            out.append({"scenario": r["label"], "target": name, "ratio": value, "pass": passed})
    return out


def print_table(results: list[dict[str, Any]]) -> str:
    metrics = list(METRICS)
    lines = []
    head = "| scenario | " + " | ".join(f"{m} ({METRICS[m][0]})" for m in metrics) + " |"
    lines.append(head)
    lines.append("|" + "---|" * (len(metrics) + 1))
    for r in results:
        cells = []
        for m in metrics:
            v = r["median"].get(m)
            text = fmt(v, m)
            if v is not None and r["server"] != "veth":
                parts = []
                rv = r.get("vs_veth", {}).get(m)
                rc = r.get("vs_c_relay", {}).get(m)
                if rv is not None and r["mtu"] == 1500:
                    parts.append(f"{rv:.2f}V")
                if rc is not None and not (r["server"] == "c" and r["client"] == "c"):
                    parts.append(f"{rc:.2f}C")
                own = r.get("vs_own_mtu1500", {}).get(m)
                if own is not None:
                    parts.append(f"{own:.1f}x1500")
                if parts:
                    text += " (" + ", ".join(parts) + ")"
            cells.append(text)
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    cpu_lines = [
        "",
        "Server CPU per relayed frame (µs, user + system, frames counted on the server's TAPs "
        "in both directions) / server CPU (% of one core) / busiest client's CPU (%):",
        "",
    ]
    cpu_lines.append("| scenario | " + " | ".join(TESTS) + " |")
    cpu_lines.append("|" + "---|" * (len(TESTS) + 1))
    for r in results:
        if r["server"] == "veth":
            continue
        cells = []
        for t in TESTS:
            s = r["median"].get(f"{t}_server_cpu_pct")
            c = r["median"].get(f"{t}_client_cpu_pct")
            us = r["median"].get(f"{t}_server_us_per_frame")
            us_text = "—" if us is None else f"{us:.1f} µs"
            cells.append("—" if s is None else f"{us_text} / {s:.0f}% / {c or 0:.0f}%")
        cpu_lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + cpu_lines)


def print_scale(scale: list[dict[str, Any]]) -> str:
    lines = [
        "| N | handshakes done (s) | all TAPs up (s) | RSS/client (KiB) | server RSS (MiB) "
        "| idle CPU (% core, ping every 1 s) | pings answered | dropped | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scale:
        dropped = (s.get("client_dropped") or 0) + (s.get("server_disconnects") or 0)
        lines.append(
            f"| {s['n']} | {s.get('handshakes_seconds', '—')} | {s.get('all_taps_seconds', '—')} "
            f"| {s.get('rss_per_client_kib', '—')} | {s.get('server_rss_mib', '—')} "
            f"| {s.get('idle_cpu_pct', '—')} | {s.get('client_pings_answered', '—')} "
            f"| {dropped} | {s.get('ok')} |"
        )
    if scale:
        lines.append(f"\nServer RLIMIT_NOFILE (soft/hard): {scale[0].get('server_nofile_limit')}")
    return "\n".join(lines)


def print_targets(checks: list[dict[str, Any]]) -> str:
    lines = ["| scenario | target | measured ratio | met |", "|---|---|---|---|"]
    for c in checks:
        value = "—" if c["ratio"] is None else f"{c['ratio']:.2f}"
        met = {True: "yes", False: "**no**", None: "—"}[c["pass"]]
        lines.append(f"| {c['scenario']} | {c['target']} | {value} | {met} |")
    return "\n".join(lines)


# -- profile ---------------------------------------------------------------------------------------


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares from py-spy's raw (collapsed stack) output."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        # drop the thread label py-spy puts first
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_counts[_short(frames[-1])] += count
        for f in {_short(f) for f in frames}:
            incl[f] += count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples", "", "self time:"]
    for name, c in self_counts.most_common(top):
        lines.append(f"  {100 * c / total:5.1f}%  {name}")
    lines += ["", "inclusive time (functions of this project and its hot libraries):"]
    keep = ("wsnic_trio", "transports", "wsproto", "_tap", "_sockio", "trio/_core/_run")
    for name, c in incl.most_common(200):
        if any(k in name for k in keep):
            lines.append(f"  {100 * c / total:5.1f}%  {name}")
            if len(lines) > top * 2 + 10:
                break
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)", keeping a package hint
    m = re.match(r"(.*) \((.*):(\d+)\)$", frame)
    if not m:
        return frame
    func, path, line = m.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short}:{line})"


def run_profile(minirelay: Path, duration: float, out_dir: Path) -> dict[str, str]:
    """py-spy the wsnic-trio server (C client: the server is the only Python) under load."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("bench --profile: py-spy is missing (pip install py-spy)")
    summaries: dict[str, str] = {}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    plans = [
        (Scenario("wsnic", "c", TRANSPORTS[0]), "server", ["tcp_c2h", "tcp_h2c", "udp64"]),
        (Scenario("c", "wsnic", TRANSPORTS[0]), "client", ["tcp_c2h", "tcp_h2c"]),
    ]
    for sc, who, tests in plans:
        with World() as world:
            s = setup(world, sc, minirelay)
            target = s.server if who == "server" else s.clients[0]
            assert target is not None
            for test in tests:
                extra = {"tcp_c2h": [], "tcp_h2c": ["-R"], "udp64": ["-u", "-l", "64", "-b", "0"]}[
                    test
                ]
                argv = [
                    "iperf3",
                    "-c",
                    HOST_IP,
                    "-p",
                    IPERF_PORT,
                    "-t",
                    f"{duration + 3:g}",
                    *extra,
                ]
                load = s.client_ns[0].start(argv, f"load-{test}")
                time.sleep(1.0)
                raw = out_dir / f"profile-{stamp}-ws-{who}-{test}.txt"
                cpu0, t0 = target.cpu_seconds(), time.monotonic()
                run(
                    spy,
                    "record",
                    "--pid",
                    str(target.pid),
                    "--duration",
                    f"{duration:g}",
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    timeout=duration + 60,
                )
                cpu = (target.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
                load.popen.wait(duration + 30)
                body = summarize_collapsed(raw)
                summaries[f"ws-{who}-{test}"] = f"CPU {cpu:.0f}% of one core\n{body}"
                print(f"\n=== {sc.label}: {who} profile during {test} ({raw.name}) ===")
                print(summaries[f"ws-{who}-{test}"])
    return summaries


# -- main -------------------------------------------------------------------------------------


def snapshot_code(dest: Path) -> None:
    """Measure one consistent copy of the code, even while the tree is being edited.

    wsnic_trio/ and transports/ are copied once at the start; every server and client
    the benchmark starts imports them from there (first on its PYTHONPATH).
    """
    for package in ("wsnic_trio", "transports"):
        shutil.copytree(
            REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    topology.CODE_PATH.insert(0, str(dest))


def code_digest() -> str:
    """A short hash of the measured copy of wsnic_trio/ and transports/."""
    digest = hashlib.sha256()
    for path in sorted(Path(topology.CODE_PATH[0]).rglob("*.py")):
        digest.update(str(path.relative_to(topology.CODE_PATH[0])).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def raise_nofile() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 8192))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return f"{want}/{hard}"


def git_state() -> str:
    try:
        head = run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD").stdout.strip()
        dirty = run(
            "git", "-C", str(REPO), "status", "--porcelain", "--", "wsnic_trio", "transports"
        ).stdout
    except (RuntimeError, OSError):
        return "?"
    return head + (" + uncommitted changes in wsnic_trio/transports" if dirty.strip() else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~2 min: 1 run x 2 s, N = 100/500")
    parser.add_argument("--repeats", type=int, help="runs per figure (default 3, quick 1)")
    parser.add_argument(
        "--duration", type=float, help="seconds per iperf3 run (default 4, quick 2)"
    )
    parser.add_argument(
        "--scale",
        help="comma-separated client counts (default 100,500,1000; quick 100,500; 0 = skip)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="only scenarios whose key (server/client/transport/mtu) contains this (repeatable)",
    )
    parser.add_argument(
        "--transport",
        action="append",
        default=[],
        help="only these transports (default: every one the tree has)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy profiles of the Python relay instead of the suite",
    )
    parser.add_argument(
        "--output", type=Path, help="JSON file (default bench/results/bench-DATE.json)"
    )
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, TAP devices)", file=sys.stderr)
        return 2
    for tool in ("ip", "iperf3", "ping", "ss"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing", file=sys.stderr)
            return 2
    repeats = args.repeats or (1 if args.quick else 3)
    duration = args.duration or (2.0 if args.quick else 4.0)
    ping_count = 100 if args.quick else 200
    scale_ns = [
        int(x)
        for x in (args.scale or ("100,500" if args.quick else "100,500,1000")).split(",")
        if int(x)
    ]
    nofile = raise_nofile()
    RESULTS.mkdir(parents=True, exist_ok=True)
    minirelay = build_c(RESULTS / "build")
    code = tempfile.TemporaryDirectory(prefix="wsnic-bench-code-")
    with code:
        snapshot_code(Path(code.name))
        return _main(args, repeats, duration, ping_count, scale_ns, nofile, minirelay)


def _main(
    args: argparse.Namespace,
    repeats: int,
    duration: float,
    ping_count: int,
    scale_ns: list[int],
    nofile: str,
    minirelay: Path,
) -> int:

    transports: list[Transport] = []
    skipped: dict[str, str] = {}
    for t in TRANSPORTS:
        if args.transport and t.name not in args.transport:
            continue
        why = transport_missing(t)
        if why is None:
            transports.append(t)
        else:
            skipped[t.name] = why
            print(f"bench: skipping transport {t.name}: {why}", file=sys.stderr)

    if args.profile:
        summaries = run_profile(minirelay, duration if args.duration else 8.0, RESULTS)
        out = args.output or RESULTS / f"profile-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
        out.write_text(json.dumps(summaries, indent=1))
        print(f"\nwrote {out}")
        return 0

    scenarios = default_scenarios(transports, args.quick)
    if args.only:
        scenarios = [s for s in scenarios if any(o in s.key for o in args.only)]
    started = time.monotonic()
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    for sc in scenarios:
        print(f"bench: {sc.label} ...", file=sys.stderr, flush=True)
        r = run_scenario(sc, minirelay, repeats, duration, ping_count)
        results.append(r)
        summary = ", ".join(f"{m} {fmt(v, m)}" for m, v in r["median"].items() if m in METRICS)
        print(f"  {summary}  [{r['seconds']} s]", file=sys.stderr, flush=True)
        for err in r["errors"]:
            print(f"  error: {err[:1500]}", file=sys.stderr)
    scale: list[dict[str, Any]] = []
    for n in scale_ns:
        print(f"bench: scale, {n} idle WebSocket clients ...", file=sys.stderr, flush=True)
        try:
            scale.append(run_scale(n, 5.0 if args.quick else 10.0))
        except (RuntimeError, subprocess.TimeoutExpired, AssertionError) as exc:
            scale.append({"n": n, "error": str(exc)[-2000:]})
            print(f"  error: {str(exc)[-1500:]}", file=sys.stderr)
        print(f"  {scale[-1]}", file=sys.stderr, flush=True)
    add_ratios(results)
    checks = targets(results)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "repeats": repeats,
        "duration_s": duration,
        "ping_count": ping_count,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": git_state(),
        "code_digest": code_digest(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "bench_nofile": nofile,
        "skipped_transports": skipped,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    table = print_table(results)
    print()
    print(
        f"Medians of {repeats} run(s) x {duration:g} s; (xV) = ratio to kernel veth, (xC) = ratio "
        f"to the C relay of the same framing and MTU, (x1500) = ratio to the same pair at MTU 1500."
    )
    print(table)
    print()
    print(print_targets(checks))
    if scale:
        print()
        print(print_scale(scale))
    print(
        f"\nload average before/after: {load_before} / {meta['loadavg_after']}; "
        f"wall time {meta['wall_seconds']} s"
    )
    out = args.output or RESULTS / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(
        json.dumps({"meta": meta, "results": results, "targets": checks, "scale": scale}, indent=1)
    )
    print(f"wrote {out}")
    return 0
