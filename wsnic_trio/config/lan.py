"""The settings of one LAN: its subnet and bridge, DHCP and DNS, NAT, the limits and
locks its clients live under, and the VM listeners that put clients on it."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from wsnic_trio.config import syntax
from wsnic_trio.config.endpoints import ForwardSpec, check_remote
from wsnic_trio.config.spec import option
from wsnic_trio.errors import ConfigError

__all__ = ["LanConfig"]


@dataclasses.dataclass(frozen=True)
class LanConfig:
    """One LAN's settings; immutable once loaded."""

    subnet: ipaddress.IPv4Network = option(
        ipaddress.IPv4Network("192.168.86.0/24"),
        "-s",
        "--subnet",
        parse=syntax.subnet,
        metavar="CIDR",
        help="IPv4 subnet of the virtual LAN; the bridge takes its first host address",
    )
    bridge: str = option(
        "wsbr0",
        "-b",
        "--bridge",
        parse=syntax.ifname,
        metavar="NAME",
        help="name of the Linux bridge the server creates (and removes on exit)",
    )
    tap_prefix: str = option(
        "wstap",
        "--tap-prefix",
        parse=syntax.ifname,
        metavar="PREFIX",
        help="client TAP devices are named PREFIX0, PREFIX1, ...",
    )
    mtu: int = option(
        1500,
        "--mtu",
        parse=syntax.mtu,
        metavar="BYTES",
        help=f"MTU of the bridge and every TAP ({syntax.MIN_MTU}-{syntax.MAX_MTU}); frames "
        "larger than "
        "MTU + 18 (Ethernet header and a VLAN tag) are refused",
    )
    max_clients: int = option(
        0,
        "--max-clients",
        parse=syntax.count,
        metavar="N",
        help="refuse new clients (HTTP 503) while N are connected; 0 means no limit",
    )
    max_clients_per_ip: int = option(
        0,
        "--max-clients-per-ip",
        parse=syntax.count,
        metavar="N",
        help="refuse new clients from an address that has N connected; 0 means no limit",
    )
    rate_limit: float = option(
        0.0,
        "--rate-limit",
        parse=syntax.byte_rate,
        metavar="BYTES/S",
        help="per-client limit in each direction (token bucket; k/M/G suffixes); frames "
        "over it are dropped and counted; 0 means off",
    )
    broadcast_limit: int = option(
        100,
        "--broadcast-limit",
        parse=syntax.count,
        metavar="FRAMES/S",
        help="per-client limit on frames to broadcast and multicast addresses (token "
        "bucket, bursts of twice that); frames over it are dropped and counted; 0 means off",
    )
    max_queued_bytes: int = option(
        0,
        "--max-queued-bytes",
        parse=syntax.count,
        metavar="BYTES",
        help="cap the bytes queued toward one client (its socket send buffer and its TAP "
        "queue); 0 keeps the kernel's defaults",
    )
    lock_mac: str = option(
        "ws",
        "--lock-mac",
        parse=syntax.lock_mac,
        metavar="off|ws|all",
        help="fix each client's source MAC at its first frame and drop frames from any "
        "other, and DHCP requests naming another client (ws: WebSocket clients only; all: "
        "every transport)",
    )
    lock_ip: bool = option(
        False,
        "--lock-ip",
        kind="flag",
        help="clients may only send ARP and IPv4 from the address dnsmasq leased to them "
        "(implies MAC locking for them)",
    )
    qemu: tuple[str, ...] = option(
        (),
        "--qemu",
        parse=syntax.stream_endpoint,
        kind="list",
        metavar="unix:PATH|tcp:HOST:PORT",
        help="listen for QEMU -netdev stream clients (4-byte length + frame) here",
    )
    qemu_connect: tuple[str, ...] = option(
        (),
        "--qemu-connect",
        parse=syntax.stream_endpoint,
        kind="list",
        metavar="unix:PATH|tcp:HOST:PORT",
        help="dial a QEMU started with -netdev stream,server=on, and redial when it goes away",
    )
    bess: tuple[str, ...] = option(
        (),
        "--bess",
        parse=syntax.socket_path,
        kind="list",
        metavar="PATH",
        help="listen for UML vector transport=bess clients on this unix seqpacket socket",
    )
    dgram: tuple[str, ...] = option(
        (),
        "--dgram",
        "--vfkit",
        parse=syntax.socket_path,
        kind="list",
        metavar="PATH",
        help="unix datagram socket for vfkit (unixSocketPath=) and QEMU -netdev dgram "
        "(remote.path=) clients; a peer is its source address",
    )
    disable_dhcp: bool = option(
        False,
        "--disable-dhcp",
        kind="flag",
        help="run no DHCP/DNS server (dnsmasq) on the LAN; clients configure themselves",
    )
    dhcp_lease_file: Path | None = option(
        None,
        "--dhcp-lease-file",
        parse=syntax.optional_path,
        metavar="FILE",
        default_text="a temporary file under /run/wsnic-trio, removed on exit",
        help="keep DHCP leases in FILE (kept on exit; its directory must exist)",
    )
    dhcp_lease_time: int = option(
        86400,
        "-t",
        "--dhcp-lease-time",
        parse=syntax.lease_time,
        metavar="SECONDS",
        help="DHCP lease time in seconds (at least 120)",
    )
    dhcp_domain_name: str = option(
        "lan",
        "-n",
        "--dhcp-domain-name",
        parse=syntax.domain,
        metavar="DOMAIN",
        help="DNS domain of the LAN: a client that sends hostname NAME is NAME.DOMAIN",
    )
    dhcp_nameserver: tuple[ipaddress.IPv4Address, ...] = option(
        (),
        "-d",
        "--dhcp-nameserver",
        parse=syntax.ipv4_address,
        kind="list",
        metavar="ADDR[,ADDR...]",
        default_text="the bridge address (dnsmasq itself)",
        help="DNS servers DHCP hands out",
    )
    dns_upstream: tuple[ipaddress.IPv4Address, ...] = option(
        (),
        "--dns-upstream",
        parse=syntax.ipv4_address,
        kind="list",
        metavar="ADDR[,ADDR...]",
        default_text="with --enable-inet the host's resolvers, else none: LAN names only",
        help="DNS servers dnsmasq forwards non-LAN names to, instead of the host's resolvers "
        "(/etc/resolv.conf, re-read when it changes; in rootless mode through the uplink)",
    )
    enable_inet: bool = option(
        False,
        "-i",
        "--enable-inet",
        kind="flag",
        help="give the LAN Internet access: NAT (masquerade) out of the uplink, IPv4 "
        "forwarding on for the run, and Internet names through the host's resolvers",
    )
    inet_iface: str | None = option(
        None,
        "-f",
        "--inet-iface",
        parse=syntax.optional_ifname,
        metavar="NAME",
        default_text="the interface of the default route",
        help="uplink for --enable-inet",
    )
    allow_private: tuple[ipaddress.IPv4Network, ...] = option(
        (),
        "--allow-private",
        parse=syntax.ipv4_network,
        kind="list",
        metavar="CIDR",
        help="with --enable-inet, let the LAN reach this private network (RFC 1918, "
        "100.64.0.0/10, 169.254.0.0/16 are blocked otherwise)",
    )
    route_to: tuple[ipaddress.IPv4Network, ...] = option(
        (),
        "--route-to",
        parse=syntax.ipv4_network,
        kind="list",
        metavar="CIDR",
        help="let this LAN's clients open connections to another LAN of this server (its "
        "subnet, or the --lan-pool for every LAN made on demand), routed by the host; "
        "replies come back, new connections from there do not (docs/lans.md)",
    )
    forward: tuple[ForwardSpec, ...] = option(
        (),
        "--forward",
        parse=syntax.forward,
        kind="list",
        metavar="LOCAL=REMOTE[/udp]",
        help="forward a port of this host into the LAN, e.g. 127.0.0.1:2222=192.168.86.23:22 "
        "or 127.0.0.1:8053=guest:53/udp (a name is looked up in the DHCP leases)",
    )

    def __post_init__(self) -> None:
        if self.lock_ip and self.disable_dhcp:
            raise ConfigError(
                "--lock-ip needs the server's own DHCP (it checks addresses against dnsmasq's "
                "leases); drop --disable-dhcp or --lock-ip"
            )
        for spec in self.forward:
            problem = check_remote(spec.remote_host, self.subnet)
            if problem is not None:
                raise ConfigError(f"--forward {spec}: {problem}")

    @property
    def bridge_address(self) -> ipaddress.IPv4Address:
        """The host's address on the LAN: the subnet's first host address."""
        return self.subnet.network_address + 1

    @property
    def max_frame(self) -> int:
        """Largest Ethernet frame a peer may send: MTU + header + one VLAN tag."""
        return self.mtu + 18
