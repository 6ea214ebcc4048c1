"""The benchmark's report: ratios to the baselines, the targets (pass/fail), the tables
on stdout and the JSON file; summaries of py-spy profiles.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Any

from .scenarios import METRICS, TCP_TESTS, TESTS


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


def print_report(
    results: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    scale: list[dict[str, Any]],
    meta: dict[str, Any],
) -> None:
    """The end of a run on stdout: the figures, the targets, the scale test, the load."""
    table = print_table(results)
    print()
    print(
        f"Medians of {meta['repeats']} run(s) x {meta['duration_s']:g} s; (xV) = ratio to kernel "
        f"veth, (xC) = ratio to the C relay of the same framing and MTU, (x1500) = ratio to the "
        f"same pair at MTU 1500."
    )
    print(table)
    print()
    print(print_targets(checks))
    if scale:
        print()
        print(print_scale(scale))
    print(
        f"\nload average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}; "
        f"wall time {meta['wall_seconds']} s"
    )


def write_json(
    out: Path,
    meta: dict[str, Any],
    results: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    scale: list[dict[str, Any]],
) -> None:
    out.write_text(
        json.dumps({"meta": meta, "results": results, "targets": checks, "scale": scale}, indent=1)
    )
    print(f"wrote {out}")
