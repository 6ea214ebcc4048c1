"""The host-side services of a LAN besides its bridge: leftovers, host filter and NAT,
then DHCP/DNS.

:func:`lan_services` is entered right after the bridge exists (so the LAN is known to
be ours: the bridge check has refused to run beside a live owner) and is left before
the bridge goes. It first clears whatever a killed run of this LAN left behind, in the
order that run made it undone in reverse: its dnsmasq, then its nftables table (restoring
``net.ipv4.ip_forward`` from the table's record). Then the LAN's nftables table is set
up: the host filter always, NAT with ``-i``.
dnsmasq itself runs in the server's nursery (:func:`wsnic_trio.host.dnsmasq.serve_dnsmasq`),
so it stops before the table and the bridge are undone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import trio

from wsnic_trio.config import Config
from wsnic_trio.host.dnsmasq import check_prerequisites, clear_leftovers
from wsnic_trio.host.nat import (
    check_nft,
    clear_leftover_forwarding,
    clear_leftover_table,
    host_filter,
)

__all__ = ["lan_services"]


@contextlib.asynccontextmanager
async def lan_services(config: Config) -> AsyncIterator[str | None]:
    """Yields the NAT uplink's name, or None without ``--enable-inet``."""
    await trio.to_thread.run_sync(check_prerequisites, config)
    check_nft()
    await trio.to_thread.run_sync(clear_leftovers, config.lan.bridge)
    await clear_leftover_table(config.lan.bridge)
    await clear_leftover_forwarding()
    async with host_filter(config.lan, os.getpid()) as uplink:
        yield uplink
