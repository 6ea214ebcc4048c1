"""The host-side services of a LAN besides its bridge: leftovers, host filter and NAT,
then DHCP/DNS.

:func:`lan_services` is entered right after the bridge exists (so the LAN is known to
be ours: the bridge check has refused to run beside a live owner) and is left before
the bridge goes. It first clears whatever a killed run of this LAN left behind, in the
order that run made it undone in reverse: its dnsmasq, then (once per process) the
nftables tables of runs that are gone (restoring ``net.ipv4.ip_forward`` from their
record). Then the LAN's rules go into the run's table: the host filter always, NAT with
``-i``.
dnsmasq itself runs in the server's nursery (:func:`wsnic_trio.host.dnsmasq.serve_dnsmasq`),
so it stops before the table and the bridge are undone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Collection

import trio

from wsnic_trio.config import Config
from wsnic_trio.host import netlink
from wsnic_trio.host.dnsmasq import check_prerequisites, clear_leftovers
from wsnic_trio.host.nat import check_nft, clear_leftover_tables, host_filter
from wsnic_trio.host.procs import pid_is_wsnic
from wsnic_trio.lan.bridge import remove_leftover_bridge

__all__ = ["clear_leftover_lans", "lan_services"]


@contextlib.asynccontextmanager
async def lan_services(config: Config) -> AsyncIterator[str | None]:
    """Yields the NAT uplink's name, or None without ``--enable-inet``."""
    await trio.to_thread.run_sync(check_prerequisites, config)
    check_nft()
    await trio.to_thread.run_sync(clear_leftovers, config.lan.bridge)
    await clear_leftover_tables()
    async with host_filter(config.lan, os.getpid()) as uplink:
        yield uplink


async def clear_leftover_lans(keep: Collection[str]) -> None:
    """Remove every LAN a killed run left in this namespace, except the bridges in
    ``keep`` (the LANs this run is about to make clear their own leftovers, with the
    same log lines).

    A LAN made on demand lives on its name alone: if the next run never sees a client
    for that name, nothing else would ever take its bridge, dnsmasq and nftables table
    away. Only bridges a wsnic-trio made, whose maker is no longer running, are touched.
    Needs root (or CAP_NET_ADMIN) in this namespace: root mode only.
    """
    found = await trio.to_thread.run_sync(netlink.our_bridges)
    for bridge, owner in found.items():
        if bridge in keep or pid_is_wsnic(owner):
            continue
        # The order a stop undoes a LAN in: dnsmasq (then the tables, below), the bridge.
        await trio.to_thread.run_sync(clear_leftovers, bridge)
        await trio.to_thread.run_sync(remove_leftover_bridge, bridge, owner)
    # The killed run's table and its ip_forward record, also when no LAN starts before a
    # client asks for one.
    await clear_leftover_tables()
