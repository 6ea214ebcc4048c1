"""Prometheus metrics, read from the live server when scraped.

A custom collector turns the server's own counters (per-peer :class:`RelayStats` and the
per-transport totals of peers that left) into metric families at scrape time, so the
frame path pays nothing for metrics. The registry is the server's own, not the global
default one (no module state: several servers may share one process in tests).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from wsnic_trio.core import merged_totals

if TYPE_CHECKING:
    from wsnic_trio.control.pcap import PcapManager
    from wsnic_trio.control.state import Control

__all__ = ["CONTENT_TYPE_LATEST", "ServerCollector", "render"]


class ServerCollector(Collector):
    def __init__(self, control: Control) -> None:
        self.control = control

    def collect(self) -> Iterator[Metric]:
        control = self.control
        server = control.server
        transports = sorted({t.name for t in server.transports})
        lans = list(server.lans)
        # Every listener's transport on every LAN starts at 0 (a LAN made on demand, too).
        keys = [(t, lan) for t in transports for lan in lans]
        connected: collections.Counter[tuple[str, str]] = collections.Counter(
            (info.transport, info.lan) for info in server.peers.values()
        )
        clients = GaugeMetricFamily(
            "wsnic_clients_connected", "Clients connected now", labels=["transport", "lan"]
        )
        for key in sorted(set(keys) | set(connected)):
            clients.add_metric(list(key), connected[key])
        yield clients

        totals = merged_totals(
            server.totals,
            (((i.transport, i.lan), i.stats, i.link_drops) for i in server.peers.values()),
            keys,
        )
        connections = CounterMetricFamily(
            "wsnic_connections", "Clients that joined since start", labels=["transport", "lan"]
        )
        frames = CounterMetricFamily(
            "wsnic_frames",
            "Ethernet frames relayed (in: client to LAN, out: LAN to client)",
            labels=["transport", "lan", "direction"],
        )
        octets = CounterMetricFamily(
            "wsnic_bytes",
            "Bytes of Ethernet frames relayed (in: client to LAN, out: LAN to client)",
            labels=["transport", "lan", "direction"],
        )
        drops = CounterMetricFamily(
            "wsnic_drops", "Frames dropped, by reason", labels=["transport", "lan", "reason"]
        )
        for (name, lan), t in sorted(totals.items()):
            connections.add_metric([name, lan], t.connections)
            frames.add_metric([name, lan, "in"], t.frames_in)
            frames.add_metric([name, lan, "out"], t.frames_out)
            octets.add_metric([name, lan, "in"], t.bytes_in)
            octets.add_metric([name, lan, "out"], t.bytes_out)
            for reason, count in sorted(t.drops.items()):
                drops.add_metric([name, lan, reason], count)
        yield from (connections, frames, octets, drops)

        refused = CounterMetricFamily(
            "wsnic_refused",
            "Would-be clients turned away (origin, auth, login-brake, limit, no-tap: no TAP "
            "could be made, e.g. the bridge is full; no-lan: no such LAN; lan-limit: no LAN "
            "could be made on demand; handshake-limit, handshake-limit-per-ip: closed in its "
            "handshake to make room for a newer connection)",
            labels=["transport", "reason"],
        )
        for (name, reason), count in sorted(server.refused.items()):
            refused.add_metric([name, reason], count)
        yield refused

        restarts = CounterMetricFamily(
            "wsnic_dnsmasq_restarts", "Times dnsmasq was started again after it ended"
        )
        restarts.add_metric([], server.dnsmasq_restarts)
        yield restarts
        leases = GaugeMetricFamily("wsnic_dhcp_leases", "DHCP leases dnsmasq holds", labels=["lan"])
        for name, state in server.lans.items():
            if state.leases is not None:
                leases.add_metric([name], len(state.leases.leases))
        yield leases
        yield GaugeMetricFamily("wsnic_lans", "LANs the server runs now", value=len(server.lans))
        forwards = GaugeMetricFamily(
            "wsnic_forwards", "Port forwards configured", labels=["protocol"]
        )
        fwd_conn = CounterMetricFamily(
            "wsnic_forward_connections",
            "Connections (TCP) or sessions (UDP) forwarded since the forward was made",
            labels=["protocol", "local"],
        )
        per_proto: collections.Counter[str] = collections.Counter()
        for (proto, local), fwd in sorted(control.forwards.forwards.items()):
            per_proto[proto] += 1
            fwd_conn.add_metric([proto, local], fwd.total)
        for proto in ("tcp", "udp"):
            forwards.add_metric([proto], per_proto[proto])
        yield forwards
        yield fwd_conn
        if control.pcap is not None:
            yield from _pcap_metrics(control.pcap)
        yield GaugeMetricFamily(
            "wsnic_start_time_seconds", "When the server started (Unix time)", server.started_at
        )
        yield GaugeMetricFamily(
            "wsnic_event_subscribers", "Clients of GET /events", server.events.subscribers
        )


def _pcap_metrics(pcap: PcapManager) -> Iterator[Metric]:
    budget = pcap.budget
    yield GaugeMetricFamily(
        "wsnic_pcap_bytes",
        "Bytes the capture files in the --pcap directory hold (live and finished)",
        value=budget.used,
    )
    yield GaugeMetricFamily(
        "wsnic_pcap_budget_bytes", "--pcap-budget: most bytes the capture files hold", budget.limit
    )
    deleted = CounterMetricFamily(
        "wsnic_pcap_files_deleted", "Oldest capture files deleted to stay within the budget"
    )
    deleted.add_metric([], budget.deleted_files)
    yield deleted
    cut = CounterMetricFamily(
        "wsnic_pcap_captures_cut", "Live captures cut because live captures held the budget"
    )
    cut.add_metric([], budget.cuts)
    yield cut
    refused = CounterMetricFamily(
        "wsnic_pcap_refused",
        "Captures not started (disk-full: the capture directory's disk is nearly full; "
        "budget: live captures hold all of it)",
        labels=["reason"],
    )
    for reason in ("budget", "disk-full"):
        refused.add_metric([reason], pcap.refused[reason])
    yield refused
    yield GaugeMetricFamily(
        "wsnic_pcap_disk_nearly_full",
        "1 while the disk holding the capture directory is nearly full (captures refused)",
        value=int(pcap.disk_low),
    )


def make_registry(control: Control) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(control))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
