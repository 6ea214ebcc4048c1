"""What the server keeps per LAN: its backend (bridge and TAPs), its limits and rules,
the MACs its peers own and its DHCP leases.

LANs share nothing but the server's tokens, login brake and listeners: a MAC, a client
limit or a lease of one LAN means nothing on another.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from wsnic_trio.config import Config
from wsnic_trio.core.admission import Admission, FailureLimiter, TokenStore
from wsnic_trio.core.guard import GatewayRules
from wsnic_trio.host.dnsmasq import lease_file_path
from wsnic_trio.host.leases import LeaseTable
from wsnic_trio.lan.bridge import BRIDGE_MAC, LanBackend
from wsnic_trio.transports.base import FrameCheck, Rejection

__all__ = ["BRIDGE_MAC_BYTES", "LanMaker", "LanState"]

BRIDGE_MAC_BYTES = bytes.fromhex(BRIDGE_MAC.replace(":", ""))


@dataclasses.dataclass
class LanState:
    name: str
    #: The configuration as this LAN sees it (``config.lan`` is this LAN's settings).
    config: Config
    backend: LanBackend
    admission: Admission
    check: FrameCheck
    #: What no client may send (gateway impersonation, rogue DHCP, IPv6 RAs).
    rules: GatewayRules
    #: dnsmasq's leases, when the LAN runs DHCP.
    leases: LeaseTable | None
    #: Which connected peer owns which MAC (its first source MAC, for every peer).
    mac_owners: dict[bytes, int] = dataclasses.field(default_factory=dict)
    #: Made on demand (``--lan-pool``), and so removed when idle.
    on_demand: bool = False
    #: When its last client left (``trio.current_time()``); None while it has clients.
    idle_since: float | None = None

    @classmethod
    def make(
        cls,
        name: str,
        config: Config,
        backend: LanBackend,
        tokens: TokenStore,
        limiter: FailureLimiter,
    ) -> LanState:
        lan = config.lan
        return cls(
            name=name,
            config=config,
            backend=backend,
            admission=Admission(
                tokens,
                max_clients=lan.max_clients,
                max_clients_per_ip=lan.max_clients_per_ip,
                limiter=limiter,
                origins=config.server.allow_origin,
            ),
            check=FrameCheck(lan.max_frame),
            rules=GatewayRules(BRIDGE_MAC_BYTES, lan.bridge_address.packed),
            leases=None if lan.disable_dhcp else LeaseTable(lease_file_path(config)),
        )

    def leased_ip(self, mac: bytes) -> bytes | None:
        """The IPv4 address dnsmasq leased to ``mac`` on this LAN (None: no lease known)."""
        return self.leases.ip_of(mac) if self.leases is not None else None


class LanMaker(Protocol):
    """Makes LANs on demand (``--lan-pool``) for names no LAN has yet."""

    def refusal(self, name: str) -> Rejection | None:
        """Why no LAN ``name`` can be made now (a cap, an empty pool); None if it can."""
        ...

    async def make(self, name: str) -> LanState:
        """The LAN ``name``, made and registered (or the one being made); SetupError if
        it could not be made."""
        ...

    async def remove(self, name: str) -> bool:
        """Kick every client of the on-demand LAN ``name`` and remove it; False when no
        LAN of that name was made on demand."""
        ...
