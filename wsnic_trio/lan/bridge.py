"""The virtual LAN: a bridge the server owns, and TAP ports handed out to peers.

``Lan`` is an object, not module state, so one server can later run several LANs (a LAN
per URL path or per listener). It is an async context manager: entering creates the
bridge (after clearing what a killed earlier run left behind), leaving removes it, even
when the body failed or was cancelled.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol

import trio

from wsnic_trio.config import Config
from wsnic_trio.errors import SetupError
from wsnic_trio.host import netlink
from wsnic_trio.host.procs import pid_is_wsnic
from wsnic_trio.host.tap import TapDevice

__all__ = ["Lan", "LanBackend"]

log = logging.getLogger("wsnic_trio.lan")

# Locally administered, unicast: 02:xx. "ws" in the next two bytes for recognisability.
BRIDGE_MAC = "02:77:73:00:00:01"
_CLEANUP_TIMEOUT = 10.0
_CARRIER_TIMEOUT = 3.0


def remove_leftover_bridge(bridge: str, owner: int) -> None:
    """Delete a bridge made by a wsnic-trio that is no longer running (blocking netlink)."""
    if netlink.delete_link(bridge):
        log.warning(
            "removed bridge %s left behind by an earlier run (pid %s) that did not stop cleanly",
            bridge,
            owner,
        )


class LanBackend(Protocol):
    """What the server needs of a LAN: a TAP fd on it for each peer. :class:`Lan` makes
    them itself (root mode); ``lan.rootless.HelperLan`` gets them from a helper process
    (rootless mode, and root mode with ``--user``)."""

    config: Config

    def open_tap(self) -> AbstractAsyncContextManager[TapDevice]: ...


def _read_sys(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _forwarding(port: str) -> bool:
    # Port state 3 is BR_STATE_FORWARDING; no sysfs (an unusual mount) means don't wait.
    state = _read_sys(f"/sys/class/net/{port}/brport/state")
    return state in ("3", "")


def _bridge_up(bridge: str) -> bool:
    return _read_sys(f"/sys/class/net/{bridge}/operstate") in ("up", "unknown", "")


class Lan:
    """One bridge with its subnet, plus the TAPs attached to it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bridge = config.lan.bridge
        self.address = ipaddress.IPv4Interface(
            f"{config.lan.bridge_address}/{config.lan.subnet.prefixlen}"
        )
        self._created = False

    async def __aenter__(self) -> Lan:
        await trio.to_thread.run_sync(self._create)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            await trio.to_thread.run_sync(self._remove)

    def _create(self) -> None:
        existing = netlink.find_link(self.bridge)
        if existing is not None:
            owner = netlink.parse_owner(existing.alias)
            if owner is None:
                raise SetupError(
                    f"a device named {self.bridge} already exists and was not created by "
                    f"wsnic-trio; choose another name with --bridge or remove it"
                )
            if pid_is_wsnic(owner):
                raise SetupError(
                    f"bridge {self.bridge} belongs to a running wsnic-trio (pid {owner}); "
                    f"stop it first or choose another name with --bridge"
                )
            remove_leftover_bridge(self.bridge, owner)
        netlink.create_bridge(
            self.bridge,
            BRIDGE_MAC,
            self.address,
            self.config.lan.mtu,
            netlink.owner_alias("bridge"),
        )
        self._created = True
        log.info("bridge %s up with %s (MTU %d)", self.bridge, self.address, self.config.lan.mtu)

    def _remove(self) -> None:
        if self._created and netlink.delete_link(self.bridge):
            log.info("bridge %s removed", self.bridge)
        self._created = False

    async def _wait_until_forwarding(self, tap: str) -> None:
        """Wait until the new port really forwards, so a peer's first frames are not lost.

        The kernel finishes bringing a new bridge port (and a bridge that just gained its
        first port) into service in a deferred "linkwatch" step; until then the bridge
        drops what the port sends and the bridge's own transmit queue is not attached.
        Usually that takes well under a millisecond, under load up to a second.
        """
        with trio.move_on_after(_CARRIER_TIMEOUT):
            while not (_forwarding(tap) and _bridge_up(self.bridge)):  # noqa: ASYNC110
                await trio.sleep(0.002)

    async def create_tap(self) -> tuple[int, str]:
        """A fresh TAP on the bridge that forwards: (fd, name). The caller owns the fd
        (the privileged helper of ``--user`` hands it to the server); the TAP is deleted
        when the last copy of the fd is closed."""
        queued = self.config.lan.max_queued_bytes
        fd, name = await trio.to_thread.run_sync(
            functools.partial(
                netlink.create_tap_on_bridge,
                self.config.lan.tap_prefix + "%d",
                self.bridge,
                self.config.lan.mtu,
                netlink.owner_alias("tap"),
                txqlen=max(8, queued // self.config.lan.max_frame) if queued else None,
            )
        )
        try:
            await self._wait_until_forwarding(name)
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    @contextlib.asynccontextmanager
    async def open_tap(self) -> AsyncIterator[TapDevice]:
        """A fresh TAP on the bridge for one peer; it is deleted when the block ends."""
        fd, name = await self.create_tap()
        tap = TapDevice(fd, name, self.config.lan.max_frame)
        try:
            yield tap
        finally:
            tap.close()
