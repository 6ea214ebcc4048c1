"""Start-up of the control layer: the API's tokens, then capture, forwards and the API."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import trio

from wsnic_trio.config import Config
from wsnic_trio.config.lans import DEFAULT_LAN
from wsnic_trio.control.forward import ForwardError, ForwardLan, ForwardManager, OpenRemote
from wsnic_trio.control.handlers import ApiServer
from wsnic_trio.control.http import ApiListener
from wsnic_trio.control.pcap import PcapManager
from wsnic_trio.control.state import Control
from wsnic_trio.core import LanState, TokenStore, mac_text
from wsnic_trio.errors import SetupError
from wsnic_trio.host.leases import Lease

if TYPE_CHECKING:
    from wsnic_trio.core import Server

__all__ = ["load_api_tokens", "start_control"]

log = logging.getLogger("wsnic_trio.api")


def load_api_tokens(config: Config) -> TokenStore | None:
    """The TCP API's tokens, read once at start (ConfigError: exit 2)."""
    if config.server.api_token_file is None:
        return None
    tokens = TokenStore(config.server.api_token_file)
    count = tokens.load()
    log.info("control API: %d tokens from %s", count, config.server.api_token_file)
    return tokens


async def start_control(
    nursery: trio.Nursery,
    server: Server,
    listeners: list[ApiListener],
    tokens: TokenStore | None,
    open_remote: OpenRemote,
) -> Control:
    """Start capture, forwards and the API in the server's nursery, before any listener
    accepts peers (so the first client is already captured and counted)."""
    config = server.config
    pcap: PcapManager | None = None
    if config.server.pcap is not None:
        if not await trio.to_thread.run_sync(config.server.pcap.is_dir):
            raise SetupError(f"--pcap {config.server.pcap}: no such directory; create it first")
        pcap = PcapManager(
            config.server.pcap,
            config.server.pcap_max_bytes,
            not config.server.pcap_on_demand,
            config.server.pcap_budget,
        )
        await nursery.start(pcap.run)
        server.capture = pcap
        which = "on demand (API)" if config.server.pcap_on_demand else "every client"
        log.info(
            "packet capture: %s into %s, at most %d bytes per file, %d bytes in all",
            which,
            config.server.pcap,
            config.server.pcap_max_bytes,
            config.server.pcap_budget,
        )
    forwards = ForwardManager(open_remote)
    await nursery.start(forwards.run)
    for state in list(server.lans.values()):
        _forwards_reach(forwards, state)
        for spec in state.config.lan.forward:
            try:
                await forwards.add(spec, state.name)
            except ForwardError as exc:
                where = "--forward" if state.name == DEFAULT_LAN else f"LAN {state.name}: forward"
                raise SetupError(f"{where} {spec}: {exc}") from None
    server.on_lan_added.append(functools.partial(_forwards_reach, forwards))
    server.on_lan_removed.append(lambda state: forwards.remove_lan(state.name))
    control = Control(server, forwards, pcap)
    api = ApiServer(control, tokens)
    for listener in listeners:
        await nursery.start(api.serve, listener)
        log.info("control API on %s", listener.describe())
    for state in server.lans.values():
        _watch_lease_events(server, state)
    server.on_lan_added.append(functools.partial(_watch_lease_events, server))
    return control


def _forwards_reach(forwards: ForwardManager, state: LanState) -> None:
    lan = state.config.lan
    forwards.add_lan(state.name, ForwardLan(lan.subnet, state.leases, lan.dhcp_domain_name))


def _watch_lease_events(server: Server, state: LanState) -> None:
    if state.leases is not None:
        state.leases.on_change.append(functools.partial(_lease_events, server, state.name))


def _lease_events(
    server: Server, lan: str, old: dict[bytes, Lease], new: dict[bytes, Lease]
) -> None:
    by_mac = {i.stats.mac: i.id for i in server.peers.values() if i.stats.mac}
    for mac, lease in new.items():
        before = old.get(mac)
        if before is None or (before.ip, before.hostname, before.expires) != (
            lease.ip,
            lease.hostname,
            lease.expires,
        ):
            server.events.publish(
                "lease-granted",
                mac=mac_text(mac),
                ip=str(lease.ip),
                hostname=lease.hostname,
                expires=lease.expires,
                client=by_mac.get(mac),
                lan=lan,
            )
    for mac, lease in old.items():
        if mac not in new:
            server.events.publish(
                "lease-released",
                mac=mac_text(mac),
                ip=str(lease.ip),
                hostname=lease.hostname,
                lan=lan,
            )
