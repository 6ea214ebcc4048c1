"""Totals per transport and LAN that outlive the clients they count.

A peer's :class:`RelayStats` goes away with the peer; when it does, the server adds it
to its transport's :class:`Totals`. Anything that reports "since start" (the API's
``/stats``, the Prometheus metrics) is then those totals plus the live peers, computed
when asked, so counting costs nothing on the frame path.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from wsnic_trio.core.relay import RelayStats

__all__ = ["Totals", "mac_text", "merged_totals", "per_transport"]

K = TypeVar("K")


@dataclasses.dataclass
class Totals:
    connections: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    drops: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def add(self, stats: RelayStats, extra_drops: Mapping[str, int] | None = None) -> None:
        self.frames_in += stats.frames_in
        self.bytes_in += stats.bytes_in
        self.frames_out += stats.frames_out
        self.bytes_out += stats.bytes_out
        self.drops.update(stats.drops)
        if extra_drops:
            self.drops.update(extra_drops)

    def merge(self, other: Totals) -> None:
        self.connections += other.connections
        self.frames_in += other.frames_in
        self.bytes_in += other.bytes_in
        self.frames_out += other.frames_out
        self.bytes_out += other.bytes_out
        self.drops.update(other.drops)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "frames_in": self.frames_in,
            "bytes_in": self.bytes_in,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "drops": dict(sorted(self.drops.items())),
        }


def merged_totals(
    departed: Mapping[K, Totals],
    live: Iterable[tuple[K, RelayStats, Mapping[str, int]]],
    names: Iterable[K] = (),
) -> dict[K, Totals]:
    """Per key (transport and LAN): the departed peers' totals plus every live peer's
    counters.

    A live peer was counted as a connection when it joined (``departed`` holds the
    connection counts of live peers too), so only its traffic is added here.
    """
    out: dict[K, Totals] = {name: Totals() for name in names}
    for name, totals in departed.items():
        copy = Totals()
        copy.merge(totals)
        out[name] = copy
    for name, stats, link_drops in live:
        out.setdefault(name, Totals()).add(stats, link_drops)
    return out


def per_transport(totals: Mapping[tuple[str, str], Totals]) -> dict[str, Totals]:
    """(transport, LAN) totals summed per transport."""
    out: dict[str, Totals] = {}
    for (transport, _), t in totals.items():
        out.setdefault(transport, Totals()).merge(t)
    return out


def mac_text(mac: bytes | None) -> str | None:
    return mac.hex(":") if mac is not None else None
