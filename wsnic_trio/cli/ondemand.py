"""LANs made on demand (``--lan-pool``): the first client of an unknown name gets a LAN
with the pool's next free subnet; the LAN goes once it has had no client for
``--lan-idle-timeout`` seconds, or when the control API removes it.

Each LAN is one task in the server's nursery that owns all of it (bridge, NAT and
filter rules, dnsmasq, lease watch) for its lifetime, so a LAN is removed exactly the
way the server removes its configured LANs at exit: by leaving those blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from wsnic_trio.config import Config
from wsnic_trio.config.lans import SubnetPool
from wsnic_trio.core import Server
from wsnic_trio.core.lanstate import LanState
from wsnic_trio.errors import SetupError, first_error
from wsnic_trio.host.dnsmasq import serve_dnsmasq
from wsnic_trio.lan.modes import LanOpener, helper_of
from wsnic_trio.transports.base import Rejection

__all__ = ["OnDemandLans"]

log = logging.getLogger("wsnic_trio.lans")

#: How often an idle LAN checks whether its time is up, at most (seconds).
_IDLE_CHECK = 5.0
#: How long removing a LAN waits for its kicked clients to be gone.
_KICK_TIMEOUT = 10.0


class OnDemandLans:
    def __init__(
        self, config: Config, server: Server, nursery: trio.Nursery, open_lan: LanOpener
    ) -> None:
        assert config.server.lan_pool is not None
        self.config = config
        #: The mode's way to open a LAN (root: here; --user and rootless: its helper).
        self.open_lan = open_lan
        self.server = server
        self.nursery = nursery
        self.pool = SubnetPool(config.server.lan_pool, config.server.lan_prefix)
        self.max_lans = config.server.max_lans
        self.idle_timeout = config.server.lan_idle_timeout
        #: Names being made, and the event set once each is made (or failed).
        self._making: dict[str, trio.Event] = {}
        #: Names being removed: a new LAN of the same name waits until the old is gone.
        self._removing: dict[str, trio.Event] = {}
        self._remove_now: dict[str, trio.Event] = {}

    @property
    def count(self) -> int:
        """On-demand LANs that exist or are being made."""
        made = sum(1 for state in self.server.lans.values() if state.on_demand)
        return made + sum(1 for name in self._making if name not in self.server.lans)

    def refusal(self, name: str) -> Rejection | None:
        if name in self._making or name in self.server.lans:
            return None
        if self.max_lans and self.count >= self.max_lans:
            return Rejection(
                503,
                f"no room for LAN {name}: {self.max_lans} LANs made on demand (--max-lans)",
                1013,
                "lan-limit",
            )
        if self.pool.in_use >= self.pool.size:
            return Rejection(
                503,
                f"no room for LAN {name}: every subnet of --lan-pool {self.pool.pool} is in use",
                1013,
                "lan-limit",
            )
        return None

    async def make(self, name: str) -> LanState:
        while True:  # a LAN of this name being made, or one still being removed
            pending = self._making.get(name)
            if pending is None:
                pending = self._removing.get(name)
            if pending is None:
                break
            await pending.wait()
        state = self.server.lans.get(name)
        if state is not None:
            return state
        refused = self.refusal(name)
        if refused is not None:
            raise SetupError(refused.reason)
        made = self._making[name] = trio.Event()
        try:
            state = await self.nursery.start(self._run_lan, name)
        finally:
            del self._making[name]
            made.set()
        assert isinstance(state, LanState)
        return state

    async def remove(self, name: str) -> bool:
        """Kick every client of on-demand LAN ``name`` and remove it; False if no such LAN
        was made on demand."""
        state = self.server.lans.get(name)
        if state is None or not state.on_demand:
            return False
        gone = self._removing.get(name) or trio.Event()
        self._removing.setdefault(name, gone)
        self._remove_now[name].set()
        await gone.wait()
        return True

    async def _run_lan(self, name: str, *, task_status: trio.TaskStatus[LanState]) -> None:
        """One LAN's lifetime. A failure before it serves is its first client's to hear
        (through :meth:`make`); one after it ends this LAN only, never the server."""
        started = False

        def report(state: LanState) -> None:
            nonlocal started
            started = True
            task_status.started(state)

        try:
            await self._lifetime(name, report)
        except* Exception as group:
            if not started:
                raise
            log.error("LAN %s failed, and is removed: %s", name, first_error(group), exc_info=group)
            self.server.events.publish("lan-removed", lan=name, reason="failed")

    async def _lifetime(self, name: str, report: Callable[[LanState], None]) -> None:
        taken = [state.config.lan.subnet for state in self.server.lans.values()]
        subnet = self.pool.take(taken)
        if subnet is None:
            raise SetupError(f"every subnet of --lan-pool {self.pool.pool} is in use")
        try:
            lan = self.config.on_demand_lan(name, subnet)
            if any(s.config.lan.bridge == lan.bridge for s in self.server.lans.values()):
                raise SetupError(f"its bridge name {lan.bridge} is taken by another LAN")
            view = self.config.view(lan)
            async with self.open_lan(name, view) as backend:
                # backend.config: the view as the backend made it (rootless: its lease file)
                state = LanState.make(
                    name, backend.config, backend, self.server.tokens, self.server.limiter
                )
                state.on_demand = True
                async with trio.open_nursery() as nursery:
                    if not lan.disable_dhcp and helper_of(backend) is None:
                        await nursery.start(serve_dnsmasq, view, self.server.count_dnsmasq_restart)
                    if state.leases is not None:
                        nursery.start_soon(state.leases.watch)
                    self._remove_now[name] = trio.Event()
                    self.server.add_lan(state)
                    state.idle_since = trio.current_time()
                    log.info("LAN %s made on demand: %s on bridge %s", name, subnet, lan.bridge)
                    self.server.events.publish(
                        "lan-created", lan=name, subnet=str(subnet), bridge=lan.bridge
                    )
                    report(state)
                    why = await self._until_unwanted(state)
                    await self._close(state, why)
                    nursery.cancel_scope.cancel()
            log.info("LAN %s removed (%s)", name, why)
            self.server.events.publish("lan-removed", lan=name, reason=why)
        finally:
            current = self.server.lans.get(name)
            if current is not None and current.on_demand and current.config.lan.subnet == subnet:
                self.server.remove_lan(name)  # it failed after registering
            self._remove_now.pop(name, None)
            self.pool.give_back(subnet)
            removing = self._removing.pop(name, None)
            if removing is not None:
                removing.set()

    async def _until_unwanted(self, state: LanState) -> str:
        remove_now = self._remove_now[state.name]
        while True:
            idle_since = state.idle_since
            if idle_since is not None:
                left = idle_since + self.idle_timeout - trio.current_time()
                if left <= 0:
                    return f"no client for {self.idle_timeout:g} s"
                wait = min(left, _IDLE_CHECK)
            else:
                wait = _IDLE_CHECK
            with trio.move_on_after(wait):
                await remove_now.wait()
                return "removed by the control API"

    async def _close(self, state: LanState, why: str) -> None:
        """Unregister the LAN first (no peer can join it any more), then end its peers."""
        self.server.remove_lan(state.name)
        self._removing.setdefault(state.name, trio.Event())
        peers = [info for info in self.server.peers.values() if info.lan == state.name]
        for info in peers:
            self.server.kick(info.id, f"LAN {state.name} removed ({why})")
        with trio.move_on_after(_KICK_TIMEOUT):
            for info in peers:
                await info.gone.wait()
