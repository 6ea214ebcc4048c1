"""Moving frames between one peer link and one TAP, plus the peer's liveness watchdog.

Shared by the server (a peer on the bridge) and the client tool (a local TAP relayed to
a server): the same three tasks either way. Each direction works in batches: every frame
that is ready is moved per wake-up, and we only wait when the kernel would block.

Backpressure toward a slow peer is the TAP's own kernel queue (``txqueuelen`` frames):
while we wait for the peer's socket we stop reading the TAP, the kernel drops what does
not fit and counts it in the TAP's ``tx_dropped``. Memory never grows, and the bridge
never stalls, because every TAP has its own queue.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Protocol

import trio

from wsnic_trio.core.guard import FramePolicy
from wsnic_trio.errors import PeerTimeout
from wsnic_trio.host.tap import TapDevice
from wsnic_trio.transports.base import PeerLink

__all__ = ["FrameSink", "RelayStats", "relay", "watchdog"]

TAP_BATCH = 64


@dataclasses.dataclass
class RelayStats:
    """Counters for one peer (served by the control API and the disconnect log line)."""

    frames_in: int = 0  # peer -> TAP
    bytes_in: int = 0
    frames_out: int = 0  # TAP -> peer
    bytes_out: int = 0
    drops: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    connected_at: float = dataclasses.field(default_factory=time.time)
    #: Source MAC of the first frame the peer sent (None until then).
    mac: bytes | None = None
    #: Called once, with that MAC (the server logs it and tells API subscribers).
    on_mac: Callable[[bytes], None] | None = None
    #: Packet capture of this peer's frames; None (the usual case) costs one check a batch.
    capture: FrameSink | None = None

    def summary(self) -> str:
        dropped = sum(self.drops.values())
        text = (
            f"in {self.frames_in} frames/{self.bytes_in} B, "
            f"out {self.frames_out} frames/{self.bytes_out} B"
        )
        if dropped:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.drops.items()))
            text += f", dropped {dropped} ({reasons})"
        return text


class FrameSink(Protocol):
    """Where a capture takes a copy of a peer's frames; must never block."""

    def add(self, frames: list[bytes], inbound: bool) -> None: ...


def _learn_mac(stats: RelayStats, frame: bytes) -> None:
    stats.mac = bytes(frame[6:12])
    if stats.on_mac is not None:
        stats.on_mac(stats.mac)


async def peer_to_tap(
    link: PeerLink, tap: TapDevice, policy: FramePolicy, stats: RelayStats
) -> None:
    while True:
        frames = policy.inbound(await link.receive_frames(), trio.current_time())
        if not frames:
            continue
        stats.frames_in += len(frames)
        stats.bytes_in += sum(map(len, frames))
        if stats.mac is None:
            _learn_mac(stats, frames[0])
        if stats.capture is not None:
            stats.capture.add(frames, True)
        refused = await tap.write_frames(frames)
        if refused:
            stats.drops["tap-refused"] += refused


async def tap_to_peer(
    link: PeerLink, tap: TapDevice, policy: FramePolicy, stats: RelayStats
) -> None:
    while True:
        frames = policy.outbound(await tap.read_batch(TAP_BATCH), trio.current_time())
        if not frames:
            continue
        await link.send_frames(frames)
        stats.frames_out += len(frames)
        stats.bytes_out += sum(map(len, frames))
        if stats.capture is not None:
            stats.capture.add(frames, False)


async def watchdog(link: PeerLink) -> None:
    """Ping a silent peer, and end it (PeerTimeout) when it stays silent too long."""
    interval = link.liveness.ping_interval
    timeout = link.liveness.timeout
    if interval is None and timeout is None:
        await trio.sleep_forever()
    last_ping = -math.inf
    while True:
        now = trio.current_time()
        idle = now - link.last_received
        if timeout is not None and idle >= timeout:
            raise PeerTimeout(f"no sign of life for {idle:.1f} s")
        wake = math.inf if timeout is None else link.last_received + timeout
        if interval is not None:
            if idle >= interval and now - last_ping >= interval:
                last_ping = now
                await link.ping()
            next_ping = max(link.last_received, last_ping) + interval
            wake = min(wake, next_ping)
        await trio.sleep_until(max(wake, trio.current_time() + 0.01))


async def relay(link: PeerLink, tap: TapDevice, policy: FramePolicy, stats: RelayStats) -> None:
    """Run both directions and the watchdog until one of them ends, then stop the rest.

    Whatever ended it propagates (``PeerClosed``, ``PeerTimeout``, an ``OSError``...) so
    the caller can log the reason; the other tasks are cancelled.
    """
    async with trio.open_nursery() as nursery:

        async def run(fn: object, *args: object) -> None:
            await fn(*args)  # type: ignore[operator]
            nursery.cancel_scope.cancel()

        nursery.start_soon(run, peer_to_tap, link, tap, policy, stats)
        nursery.start_soon(run, tap_to_peer, link, tap, policy, stats)
        nursery.start_soon(run, watchdog, link)
