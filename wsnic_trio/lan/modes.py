"""Several LANs in each mode: root, ``--user`` and rootless.

:func:`open_lans` gives the server one way to open a LAN, whatever the mode: a
function of the LAN's name and view (``Config.for_lan``) that returns its backend, for
the LANs configured at start and for those made on demand later. Root mode opens a
:class:`~wsnic_trio.lan.bridge.Lan` per LAN itself. ``--user`` and rootless mode have
one helper for all of them (after the privilege drop the server could not start
another root helper; a rootless server's LANs share the helper's namespace and its one
uplink), and a LAN is an ``add`` request to it, removed by ``remove``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from wsnic_trio.config import Config
from wsnic_trio.lan.bridge import LanBackend
from wsnic_trio.lan.privsep import Account, SeparatedLan
from wsnic_trio.lan.rootless import HelperLan, HelperPart, RootlessLan, open_backend, this_mode

__all__ = ["LanOpener", "helper_of", "open_lans"]

log = logging.getLogger("wsnic_trio.rootless")

#: Opens LAN ``name`` from its view; the backend lives as long as the block.
LanOpener = Callable[[str, Config], AbstractAsyncContextManager[LanBackend]]


def helper_of(backend: LanBackend) -> HelperLan | None:
    """The helper that keeps this LAN (and runs its dnsmasq), or None in root mode."""
    if isinstance(backend, HelperPart):
        return backend.helper
    return backend if isinstance(backend, HelperLan) else None


def _root_opener(name: str, view: Config) -> AbstractAsyncContextManager[LanBackend]:
    return open_backend(view, several=True)


@contextlib.asynccontextmanager
async def open_lans(
    config: Config, account: Account | None, sockets: Sequence[tuple[str, int, int]]
) -> AsyncIterator[LanOpener]:
    """The mode's :data:`LanOpener` for a server with several LANs (the log says which
    mode, and why); with ``--user`` or rootless, its helper goes when the block ends."""
    on_demand = ", and LANs on demand" if config.server.lan_pool is not None else ""
    count = len(config.all_lans())
    if account is not None:
        log.info(
            "mode: root mode, privilege separation (--user %s), %d LANs%s",
            account.user,
            count,
            on_demand,
        )
        async with SeparatedLan(config, account, sockets, several=True) as helper:
            yield helper.open_lan
        return
    rootless, why = await this_mode(config)
    log.info("mode: %s, %d LANs%s", why, count, on_demand)
    if not rootless:
        yield _root_opener
        return
    views = [config.for_lan(name) for name in config.all_lans()]
    if config.server.lan_pool is not None:
        views.append(config.view(config.lan))  # what a LAN made on demand will be
    async with RootlessLan(config.view(config.lan), lans=views) as helper:
        yield helper.open_lan
