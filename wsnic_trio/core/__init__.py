"""The server's heart: peers, admission, the relay and its guards, stats, events.

What other layers may use is exported here; the modules inside are the core's own.
"""

from __future__ import annotations

from wsnic_trio.core.admission import FailureLimiter as FailureLimiter
from wsnic_trio.core.admission import TokenStore as TokenStore
from wsnic_trio.core.events import MAX_SUBSCRIBERS as MAX_SUBSCRIBERS
from wsnic_trio.core.events import EventBus as EventBus
from wsnic_trio.core.lanstate import LanMaker as LanMaker
from wsnic_trio.core.lanstate import LanState as LanState
from wsnic_trio.core.server import CaptureHook as CaptureHook
from wsnic_trio.core.server import PeerInfo as PeerInfo
from wsnic_trio.core.server import Server as Server
from wsnic_trio.core.stats import Totals as Totals
from wsnic_trio.core.stats import mac_text as mac_text
from wsnic_trio.core.stats import merged_totals as merged_totals
from wsnic_trio.core.stats import per_transport as per_transport

__all__ = [
    "MAX_SUBSCRIBERS",
    "CaptureHook",
    "EventBus",
    "FailureLimiter",
    "LanMaker",
    "LanState",
    "PeerInfo",
    "Server",
    "TokenStore",
    "Totals",
    "mac_text",
    "merged_totals",
    "per_transport",
]
