"""The server: one nursery that owns the LAN, every listener and every peer.

Start-up order is explicit and each step is reversible: listeners are bound first (a
taken port fails before the host is touched), then the bridge is created, then the
listeners start accepting. Each peer runs in its own nursery inside its listener's
task; whatever ends a peer ends that peer alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import signal
from collections.abc import Sequence

import trio

from transports import load_transports
from transports.base import FrameCheck, PeerLink, Transport

from ._config import Config
from ._exceptions import PeerClosed, PeerError
from ._lan import Lan
from ._relay import RelayStats, relay

__all__ = ["PeerInfo", "Server", "run_server", "serve_until_signal"]

log = logging.getLogger("wsnic_trio.server")


@dataclasses.dataclass
class PeerInfo:
    """A connected peer as the outside world sees it (log lines, later the control API)."""

    id: int
    transport: str
    remote: str
    tap: str
    stats: RelayStats
    cancel_scope: trio.CancelScope


class Server:
    """Runs peers on one LAN; ``peers`` is the live registry."""

    def __init__(self, config: Config, lan: Lan, transports: Sequence[Transport]) -> None:
        self.config = config
        self.lan = lan
        self.transports = list(transports)
        self.check = FrameCheck(config.max_frame)
        self.peers: dict[int, PeerInfo] = {}
        self._ids = itertools.count(1)

    async def handle_peer(self, link: PeerLink) -> None:
        """Serve one peer until it ends; never raises anything but Cancelled."""
        peer_id = next(self._ids)
        stats = RelayStats()
        reason: BaseException | None = None
        try:
            async with self.lan.open_tap() as tap:
                with trio.CancelScope() as scope:
                    info = PeerInfo(peer_id, link.transport, link.remote, tap.name, stats, scope)
                    self.peers[peer_id] = info
                    log.info(
                        "client %d connected: %s %s on %s",
                        peer_id,
                        link.transport,
                        link.remote,
                        tap.name,
                    )
                    try:
                        await relay(link, tap, self.check, stats)
                    except* PeerClosed as group:
                        reason = group.exceptions[0]
                    except* PeerError as group:
                        reason = group.exceptions[0]
                    except* OSError as group:
                        reason = group.exceptions[0]
                if scope.cancelled_caught and reason is None:
                    reason = PeerClosed("disconnected by the server")
                queue_drops = tap.kernel_drops()
                if queue_drops:
                    stats.drops["peer-too-slow"] += queue_drops
        except* Exception as group:
            # A failure that is not this peer's fault (e.g. no TAP could be made): log it
            # for the operator, end this peer, keep serving the others.
            reason = group.exceptions[0]
            log.error(
                "client %d (%s %s) failed: %s",
                peer_id,
                link.transport,
                link.remote,
                reason,
                exc_info=not isinstance(reason, PeerError | OSError),
            )
        finally:
            info_gone = self.peers.pop(peer_id, None)
            stats.drops.update(link.drops)
            if info_gone is not None:
                log.info(
                    "client %d disconnected (%s): %s", peer_id, _describe(reason), stats.summary()
                )
            await link.aclose(reason)


def _describe(reason: BaseException | None) -> str:
    if reason is None:
        return "server stopping"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def build_transports(config: Config) -> list[Transport]:
    """Create (and bind) every configured listener; on failure release those made so far."""
    made: list[Transport] = []
    try:
        for factory in load_transports():
            made.extend(factory(config))
    except BaseException:
        for transport in made:
            transport.close()
        raise
    return made


async def run_server(
    config: Config, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until cancelled. ``started()`` reports the Server once every listener accepts."""
    transports = build_transports(config)
    try:
        if not transports:
            log.warning("no listener is configured: nothing can connect")
        async with Lan(config) as lan:
            server = Server(config, lan, transports)
            async with trio.open_nursery() as nursery:
                for transport in transports:
                    await nursery.start(transport.serve, server.handle_peer)
                    log.info("listening on %s", transport.describe())
                log.info("ready: LAN %s on bridge %s", config.subnet, config.bridge)
                task_status.started(server)
    finally:
        for transport in transports:
            transport.close()


def _count_tasks() -> int:
    count = 0
    root = trio.lowlevel.current_root_task()
    stack = [root] if root is not None else []
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def log_status(server: Server) -> None:
    """One line an operator (or a leak test) can read: peers, tasks, open fds."""
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    log.info("status: %d clients, %d tasks, %d open fds", len(server.peers), _count_tasks(), fds)


async def serve_until_signal(config: Config) -> None:
    """The CLI's main: run until SIGINT or SIGTERM; SIGUSR1 logs a status line."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(run_server, config)
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    log_status(server)
                    continue
                log.info("received %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
