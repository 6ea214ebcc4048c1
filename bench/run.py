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
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import topology
from .lans import run_lans
from .measure import run_profile, run_scale, run_scenario
from .report import add_ratios, fmt, print_report, targets, write_json
from .scenarios import METRICS, TRANSPORTS, Transport, default_scenarios
from .topology import build_c, run

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"


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


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What a result was measured on and with (and how busy the machine was)."""
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": git_state(),
        "code_digest": code_digest(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


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
        "--lans",
        action="store_true",
        help="several LANs instead of the suite: on-demand LANs, 200 LANs x 5 idle clients",
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

    if args.lans:
        print("bench: several LANs (200 LANs x 5 idle clients) ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        load_before = os.getloadavg()
        lans = run_lans(200, 5, 30.0, duration if args.duration else 4.0)
        lans["meta"] = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            **machine(load_before),
            "wall_seconds": round(time.monotonic() - started),
        }
        print(json.dumps({k: v for k, v in lans.items() if k != "on_demand_samples"}, indent=1))
        out = args.output or RESULTS / f"lans-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
        out.write_text(json.dumps(lans, indent=1))
        print(f"\nwrote {out}")
        return 0

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
        **machine(load_before),
        "bench_nofile": nofile,
        "skipped_transports": skipped,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print_report(results, checks, scale, meta)
    out = args.output or RESULTS / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    write_json(out, meta, results, checks, scale)
    return 0
