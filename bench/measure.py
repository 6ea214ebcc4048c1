"""Measuring a built scenario: iperf3 throughput, small frames, ping latency, CPU per frame;
the scale test (N idle WebSocket clients); py-spy profiles of the Python relay.

The worlds measured are built by :mod:`bench.topology`; what the figures mean next to
each other (ratios, targets, tables) is :mod:`bench.report`'s.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import summarize_collapsed
from .scenarios import TEST_METRICS, TRANSPORTS, Scenario
from .topology import (
    BRIDGE,
    CLIENT_IPS,
    HOST_IP,
    IPERF_PORT,
    PY,
    Namespace,
    Proc,
    Setup,
    World,
    run,
    scale_setup,
    setup,
)


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
        with contextlib.closing(World()) as world:
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


def scale_connected(client: Proc, timeout: float) -> tuple[float, int]:
    """Wait for :mod:`bench.scale_client`'s handshakes: their seconds, how many succeeded."""
    client.wait_for(r"ALL_CONNECTED", timeout=timeout)
    m = re.search(r"ALL_CONNECTED ([\d.]+) (\d+)", client.text())
    assert m is not None
    return float(m.group(1)), int(m.group(2))


def end_scale_client(client: Proc, timeout: float) -> dict[str, Any]:
    """Tell :mod:`bench.scale_client` to close its clients; what it saw (empty: nothing)."""
    if client.popen.stdin is not None:
        with contextlib.suppress(OSError):
            client.popen.stdin.write(b"done\n")
            client.popen.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        client.popen.wait(timeout)
    lines = [ln for ln in client.text().splitlines() if ln.startswith("{")]
    return dict(json.loads(lines[-1])) if lines else {}


def run_scale(n: int, window: float) -> dict[str, Any]:
    """N idle WebSocket clients on one wsnic-trio server: connect time, RSS, idle CPU."""
    t = TRANSPORTS[0]
    result: dict[str, Any] = {"n": n}
    with contextlib.closing(World()) as world:
        srv, cli, server = scale_setup(world, t)
        time.sleep(0.5)
        result["server_nofile_limit"] = server.nofile_limit()
        rss0 = server.rss_kib()
        t0 = time.monotonic()
        argv = [PY, "-m", "bench.scale_client", "198.18.1.1", str(t.port), str(n)]
        client = cli.start(argv, "scale-client", stdin=subprocess.PIPE)
        try:
            result["handshakes_seconds"], connected = scale_connected(client, 240)
            server.wait_for(r"client \d+ connected", count=connected, timeout=240)
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
            seen = end_scale_client(client, 60)
        if seen:
            result.update({f"client_{k}": v for k, v in seen.items() if k != "connect_seconds"})
        result["ok"] = (
            result.get("client_connected") == n
            and result.get("client_dropped") == 0
            and result.get("server_disconnects") == 0
        )
    return result


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
        with contextlib.closing(World()) as world:
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
