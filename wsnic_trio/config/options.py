"""Server settings: one frozen dataclass, loaded from defaults, a config file and the CLI.

Every option is declared once, as a dataclass field whose metadata carries its flags,
help text and parser. The command line and the config-file reader are both generated
from that table, so a flag and its file key can never drift apart (the classic
hand-written ``if args.x is not None: cfg.x = args.x`` chain is where such bugs live).
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from wsnic_trio.config.endpoints import (
    ApiEndpoint,
    ForwardSpec,
    check_remote,
    parse_api_endpoint,
    parse_forward,
    parse_qemu_endpoint,
)
from wsnic_trio.config.origins import OriginPattern, parse_origin_pattern
from wsnic_trio.errors import ConfigError

__all__ = ["OPTIONS", "Config", "OptionSpec", "default_words", "help_text", "load_config_file"]

# Largest MTU a TAP or bridge accepts, and the largest frame the QEMU stream framing
# can carry comfortably; VM-only LANs may use it for big TCP segments.
MAX_MTU = 65520
MIN_MTU = 68
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """How one Config field appears on the command line and in the config file."""

    flags: tuple[str, ...]
    help: str
    parse: Callable[[str], Any] = str
    kind: Literal["value", "count", "flag", "list"] = "value"
    metavar: str | None = None
    # The default in words, for --help and the user guide, where the value alone says
    # nothing or misleads (None for "a file found at start-up", () for "the bridge").
    default_text: str | None = None


def default_words(spec: OptionSpec, value: Any) -> str | None:
    """The default as --help states it (once), or None when there is nothing to state.

    A flag is off and a counter is 0 unless given: saying so on every one of them is
    noise. An absent value (None, an empty list) means something only in words.
    """
    if spec.default_text is not None:
        return spec.default_text
    if spec.kind in ("flag", "count") or value is None or value == ():
        return None
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(spec: OptionSpec, value: Any) -> str:
    """The --help line of one option: its help, whether it repeats, and its default."""
    text = spec.help
    if spec.kind == "list":
        text += " (repeatable)"
    words = default_words(spec, value)
    if words is not None:
        text += f" (default: {words})"
    return text


def _opt(default: Any, *flags: str, help: str, **kw: Any) -> Any:
    spec = OptionSpec(flags=flags, help=help, **kw)
    return dataclasses.field(default=default, metadata={"option": spec})


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a TCP port (0-65535)")
    return port


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text} must be greater than 0")
    return value


def _subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an IPv4 subnet such as 192.168.86.0/24 ({exc})"
        ) from None
    if net.prefixlen > 30:
        raise ValueError(
            f"subnet {net} is too small: it needs room for the network, the bridge, at least "
            "one client and the broadcast address (/30 or larger)"
        )
    return net


def _ifname(text: str) -> str:
    if not _IFNAME.match(text):
        raise ValueError(f"{text!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return text


def _mtu(text: str) -> int:
    mtu = int(text)
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"MTU {mtu} is outside {MIN_MTU}-{MAX_MTU}")
    return mtu


# -- security options (see docs/security.md) -------------------------------------------

_SIZE_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def _byte_rate(text: str) -> float:
    """Bytes per second, with an optional k/M/G suffix (decimal); 0 means off."""
    t = text.strip().lower().removesuffix("b/s").removesuffix("/s").removesuffix("b")
    unit = t[-1:] if t[-1:] in _SIZE_SUFFIX else ""
    value = float(t[: len(t) - len(unit)]) * _SIZE_SUFFIX[unit]
    if value < 0:
        raise ValueError(f"{text} must not be negative")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} must not be negative (0 means no limit)")
    return value


def _lock_mac(text: str) -> str:
    if text not in ("off", "ws", "all"):
        raise ValueError(f"{text!r} is not one of off, ws, all")
    return text


def _path(text: str) -> Path | None:
    return Path(text) if text else None


def _origin_pattern(text: str) -> OriginPattern:
    return parse_origin_pattern(text)  # the admission policy owns the syntax


# -- VM transports (see docs/transports/) ----------------------------------------------


def _stream_endpoint(text: str) -> str:
    return str(parse_qemu_endpoint(text))


def _socket_path(text: str) -> str:
    if "\0" in text or len(text.encode()) > 107:
        raise ValueError(f"{text!r} is not a usable unix socket path (at most 107 bytes)")
    return text


class FileMode(int):
    """A permission mode that prints in octal (``--help`` shows 0660, not 432)."""

    def __str__(self) -> str:
        return f"0{self:o}"

    __repr__ = __str__


def _file_mode(text: str) -> int:
    try:
        mode = FileMode(int(text, 8))
    except ValueError:
        raise ValueError(f"{text!r} is not an octal file mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{text!r} is not a file mode (0000-0777)")
    return mode


def _peer_count(text: str) -> int:
    count = int(text)
    if count < 1:
        raise ValueError(f"{count} must be at least 1")
    return count


# -- DHCP, DNS and NAT options (see docs/dhcp-dns-nat.md) ------------------------------

_DOMAIN_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MIN_LEASE_TIME = 120  # dnsmasq's own lower limit, in seconds


def _lease_time(text: str) -> int:
    seconds = int(text)
    if seconds < MIN_LEASE_TIME:
        raise ValueError(f"lease time {seconds} s is shorter than dnsmasq's minimum of 120 s")
    return seconds


def _domain(text: str) -> str:
    name = text.lower().rstrip(".")
    if not name or len(name) > 253 or not all(_DOMAIN_LABEL.match(x) for x in name.split(".")):
        raise ValueError(f"{text!r} is not a DNS domain name such as lan or example.internal")
    return name


def _ipv4_address(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address such as 192.168.86.1") from None


def _ipv4_network(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 network such as 10.0.0.0/8") from None


def _optional_ifname(text: str) -> str | None:
    return _ifname(text) if text else None


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _optional_account(text: str) -> str | None:
    """A user or group name (or numeric id) for --user/--group; looked up at start."""
    if text and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", text):
        raise ValueError(f"{text!r} is not a user or group name")
    return text or None


UPLINKS = ("slirp4netns", "pasta")


def _uplink(text: str) -> str:
    if text not in UPLINKS:
        raise ValueError(f"{text!r} is not one of {', '.join(UPLINKS)}")
    return text


# -- control API, forwards and capture (see docs/api.md) -------------------------------


def _api_endpoint(text: str) -> ApiEndpoint:
    return parse_api_endpoint(text)


def _forward(text: str) -> ForwardSpec:
    return parse_forward(text)


def _byte_size(text: str) -> int:
    """A size in bytes with an optional k/M/G suffix (decimal)."""
    size = int(_byte_rate(text))
    if size < 1024:
        raise ValueError(f"{text} is too small (at least 1024 bytes)")
    return size


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the server needs to know; immutable once loaded."""

    ws_address: str = _opt(
        "127.0.0.1",
        "-a",
        "--ws-address",
        metavar="ADDR",
        help="address the WebSocket (ws://) listener binds to; 0.0.0.0 for every interface",
    )
    ws_port: int = _opt(
        8086,
        "--ws-port",
        parse=_port,
        metavar="PORT",
        help="TCP port of the ws:// listener; 0 turns the WebSocket listener off",
    )
    subnet: ipaddress.IPv4Network = _opt(
        ipaddress.IPv4Network("192.168.86.0/24"),
        "-s",
        "--subnet",
        parse=_subnet,
        metavar="CIDR",
        help="IPv4 subnet of the virtual LAN; the bridge takes its first host address",
    )
    bridge: str = _opt(
        "wsbr0",
        "-b",
        "--bridge",
        parse=_ifname,
        metavar="NAME",
        help="name of the Linux bridge the server creates (and removes on exit)",
    )
    tap_prefix: str = _opt(
        "wstap",
        "--tap-prefix",
        parse=_ifname,
        metavar="PREFIX",
        help="client TAP devices are named PREFIX0, PREFIX1, ...",
    )
    mtu: int = _opt(
        1500,
        "--mtu",
        parse=_mtu,
        metavar="BYTES",
        help=f"MTU of the bridge and every TAP ({MIN_MTU}-{MAX_MTU}); frames larger than "
        "MTU + 18 (Ethernet header and a VLAN tag) are refused",
    )
    ping_interval: float = _opt(
        30.0,
        "--ping-interval",
        parse=_positive,
        metavar="SECONDS",
        help="ping a WebSocket client after this many seconds without traffic from it",
    )
    ping_timeout: float = _opt(
        100.0,
        "--ping-timeout",
        parse=_positive,
        metavar="SECONDS",
        help="drop a client that sent nothing (no frame, no pong) for this many seconds",
    )
    handshake_timeout: float = _opt(
        10.0,
        "--handshake-timeout",
        parse=_positive,
        metavar="SECONDS",
        help="drop a connection that has not completed its handshake in this time",
    )
    max_handshakes: int = _opt(
        256,
        "--max-handshakes",
        parse=_count,
        metavar="N",
        help="at most N WebSocket connections (ws and wss together) may be in their "
        "handshake (TLS and the upgrade request) at once; beyond that, the oldest of the "
        "address with the most is closed; 0 means no limit",
    )
    max_handshakes_per_ip: int = _opt(
        16,
        "--max-handshakes-per-ip",
        parse=_count,
        metavar="N",
        help="the same per source address (an IPv6 /64 is one): its oldest connection "
        "still in its handshake is closed for a newer one; 0 means no limit",
    )
    wss_port: int = _opt(
        8087,
        "--wss-port",
        parse=_port,
        metavar="PORT",
        help="TCP port of the wss:// (TLS) listener on --ws-address; it runs when a "
        "certificate is available; 0 turns it off",
    )
    wss_certificate: Path | None = _opt(
        None,
        "-r",
        "--wss-certificate",
        parse=_path,
        metavar="PEM",
        default_text="cert/cert.crt when that file exists",
        help="TLS certificate chain (PEM; may hold the key too)",
    )
    wss_private_key: Path | None = _opt(
        None,
        "-k",
        "--wss-private-key",
        parse=_path,
        metavar="PEM",
        default_text="cert/cert.key when that file exists, else the key in the certificate file",
        help="TLS private key (PEM)",
    )
    auth_token_file: Path | None = _opt(
        None,
        "--auth-token-file",
        parse=_path,
        metavar="FILE",
        default_text="off",
        help="require WebSocket clients to present one of the tokens in FILE (one per line, "
        "# comments; re-read on SIGHUP)",
    )
    allow_origin: tuple[OriginPattern, ...] = _opt(
        (),
        "--allow-origin",
        parse=_origin_pattern,
        kind="list",
        metavar="ORIGIN",
        help="accept WebSocket clients from browser pages of this origin only (HTTP 403 for "
        "others): https://lab.example.org, HOST[:PORT] for http and https, *.example.org "
        "for its subdomains, null; a client that sends no Origin (not a browser) always "
        "passes",
        default_text="every origin",
    )
    max_clients: int = _opt(
        0,
        "--max-clients",
        parse=_count,
        metavar="N",
        help="refuse new clients (HTTP 503) while N are connected; 0 means no limit",
    )
    max_clients_per_ip: int = _opt(
        0,
        "--max-clients-per-ip",
        parse=_count,
        metavar="N",
        help="refuse new clients from an address that has N connected; 0 means no limit",
    )
    rate_limit: float = _opt(
        0.0,
        "--rate-limit",
        parse=_byte_rate,
        metavar="BYTES/S",
        help="per-client limit in each direction (token bucket; k/M/G suffixes); frames "
        "over it are dropped and counted; 0 means off",
    )
    broadcast_limit: int = _opt(
        100,
        "--broadcast-limit",
        parse=_count,
        metavar="FRAMES/S",
        help="per-client limit on frames to broadcast and multicast addresses (token "
        "bucket, bursts of twice that); frames over it are dropped and counted; 0 means off",
    )
    max_queued_bytes: int = _opt(
        0,
        "--max-queued-bytes",
        parse=_count,
        metavar="BYTES",
        help="cap the bytes queued toward one client (its socket send buffer and its TAP "
        "queue); 0 keeps the kernel's defaults",
    )
    lock_mac: str = _opt(
        "ws",
        "--lock-mac",
        parse=_lock_mac,
        metavar="off|ws|all",
        help="fix each client's source MAC at its first frame and drop frames from any "
        "other, and DHCP requests naming another client (ws: WebSocket clients only; all: "
        "every transport)",
    )
    lock_ip: bool = _opt(
        False,
        "--lock-ip",
        kind="flag",
        help="clients may only send ARP and IPv4 from the address dnsmasq leased to them "
        "(implies MAC locking for them)",
    )
    qemu: tuple[str, ...] = _opt(
        (),
        "--qemu",
        parse=_stream_endpoint,
        kind="list",
        metavar="unix:PATH|tcp:HOST:PORT",
        help="listen for QEMU -netdev stream clients (4-byte length + frame) here",
    )
    qemu_connect: tuple[str, ...] = _opt(
        (),
        "--qemu-connect",
        parse=_stream_endpoint,
        kind="list",
        metavar="unix:PATH|tcp:HOST:PORT",
        help="dial a QEMU started with -netdev stream,server=on, and redial when it goes away",
    )
    bess: tuple[str, ...] = _opt(
        (),
        "--bess",
        parse=_socket_path,
        kind="list",
        metavar="PATH",
        help="listen for UML vector transport=bess clients on this unix seqpacket socket",
    )
    dgram: tuple[str, ...] = _opt(
        (),
        "--dgram",
        "--vfkit",
        parse=_socket_path,
        kind="list",
        metavar="PATH",
        help="unix datagram socket for vfkit (unixSocketPath=) and QEMU -netdev dgram "
        "(remote.path=) clients; a peer is its source address",
    )
    socket_mode: int = _opt(
        FileMode(0o660),
        "--socket-mode",
        parse=_file_mode,
        metavar="MODE",
        help="octal permissions of the unix socket files the server creates",
    )
    partial_frame_timeout: float = _opt(
        10.0,
        "--partial-frame-timeout",
        parse=_positive,
        metavar="SECONDS",
        help="close a QEMU stream client whose frame stays incomplete this long",
    )
    dgram_idle_timeout: float = _opt(
        60.0,
        "--dgram-idle-timeout",
        parse=_positive,
        metavar="SECONDS",
        help="drop a datagram peer (and its TAP) after this long without a datagram",
    )
    dgram_max_peers: int = _opt(
        64,
        "--dgram-max-peers",
        parse=_peer_count,
        metavar="N",
        help="most peers one datagram socket serves; datagrams from more addresses are dropped",
    )
    disable_dhcp: bool = _opt(
        False,
        "--disable-dhcp",
        kind="flag",
        help="run no DHCP/DNS server (dnsmasq) on the LAN; clients configure themselves",
    )
    dhcp_lease_file: Path | None = _opt(
        None,
        "--dhcp-lease-file",
        parse=_optional_path,
        metavar="FILE",
        default_text="a temporary file under /run/wsnic-trio, removed on exit",
        help="keep DHCP leases in FILE (kept on exit; its directory must exist)",
    )
    dhcp_lease_time: int = _opt(
        86400,
        "-t",
        "--dhcp-lease-time",
        parse=_lease_time,
        metavar="SECONDS",
        help="DHCP lease time in seconds (at least 120)",
    )
    dhcp_domain_name: str = _opt(
        "lan",
        "-n",
        "--dhcp-domain-name",
        parse=_domain,
        metavar="DOMAIN",
        help="DNS domain of the LAN: a client that sends hostname NAME is NAME.DOMAIN",
    )
    dhcp_nameserver: tuple[ipaddress.IPv4Address, ...] = _opt(
        (),
        "-d",
        "--dhcp-nameserver",
        parse=_ipv4_address,
        kind="list",
        metavar="ADDR[,ADDR...]",
        default_text="the bridge address (dnsmasq itself)",
        help="DNS servers DHCP hands out",
    )
    dns_upstream: tuple[ipaddress.IPv4Address, ...] = _opt(
        (),
        "--dns-upstream",
        parse=_ipv4_address,
        kind="list",
        metavar="ADDR[,ADDR...]",
        default_text="with --enable-inet the host's resolvers, else none: LAN names only",
        help="DNS servers dnsmasq forwards non-LAN names to, instead of the host's resolvers "
        "(/etc/resolv.conf, re-read when it changes; in rootless mode through the uplink)",
    )
    enable_inet: bool = _opt(
        False,
        "-i",
        "--enable-inet",
        kind="flag",
        help="give the LAN Internet access: NAT (masquerade) out of the uplink, IPv4 "
        "forwarding on for the run, and Internet names through the host's resolvers",
    )
    inet_iface: str | None = _opt(
        None,
        "-f",
        "--inet-iface",
        parse=_optional_ifname,
        metavar="NAME",
        default_text="the interface of the default route",
        help="uplink for --enable-inet",
    )
    allow_private: tuple[ipaddress.IPv4Network, ...] = _opt(
        (),
        "--allow-private",
        parse=_ipv4_network,
        kind="list",
        metavar="CIDR",
        help="with --enable-inet, let the LAN reach this private network (RFC 1918, "
        "100.64.0.0/10, 169.254.0.0/16 are blocked otherwise)",
    )
    api: tuple[ApiEndpoint, ...] = _opt(
        (),
        "--api",
        parse=_api_endpoint,
        kind="list",
        metavar="unix:PATH|tcp:HOST:PORT",
        default_text="off",
        help="serve the control API (docs/api.md) here; a unix socket gets mode 0600, a "
        "TCP one needs --api-token-file",
    )
    api_token_file: Path | None = _opt(
        None,
        "--api-token-file",
        parse=_optional_path,
        metavar="FILE",
        help="tokens (one per line) a TCP control API client must send as 'Authorization: "
        "Bearer TOKEN'; separate from --auth-token-file, whose tokens browsers hold",
    )
    forward: tuple[ForwardSpec, ...] = _opt(
        (),
        "--forward",
        parse=_forward,
        kind="list",
        metavar="LOCAL=REMOTE[/udp]",
        help="forward a port of this host into the LAN, e.g. 127.0.0.1:2222=192.168.86.23:22 "
        "or 127.0.0.1:8053=guest:53/udp (a name is looked up in the DHCP leases)",
    )
    pcap: Path | None = _opt(
        None,
        "--pcap",
        parse=_optional_path,
        metavar="DIR",
        default_text="off",
        help="write one pcap file per client into DIR (which must exist)",
    )
    pcap_max_bytes: int = _opt(
        64_000_000,
        "--pcap-max-bytes",
        parse=_byte_size,
        metavar="BYTES",
        help="a capture file stops growing at this size (k/M/G suffixes)",
    )
    pcap_budget: int = _opt(
        256_000_000,
        "--pcap-budget",
        parse=_byte_size,
        metavar="BYTES",
        help="all capture files in the --pcap directory together hold at most this much "
        "(k/M/G suffixes): the oldest finished files are deleted to make room",
    )
    pcap_on_demand: bool = _opt(
        False,
        "--pcap-on-demand",
        kind="flag",
        help="with --pcap, capture no client from the start; captures are started (and "
        "stopped) per client through the control API",
    )
    rootless: bool = _opt(
        False,
        "--rootless",
        kind="flag",
        default_text="automatic when not root",
        help="run the LAN without root: a helper process owns the bridge, dnsmasq and NAT in "
        "a user + network namespace (see docs/rootless.md)",
    )
    uplink: str = _opt(
        "slirp4netns",
        "--uplink",
        parse=_uplink,
        metavar="slirp4netns|pasta",
        help="in rootless mode, what gives the LAN's namespace its way out for --enable-inet",
    )
    allow_host_loopback: bool = _opt(
        False,
        "--allow-host-loopback",
        kind="flag",
        help="in rootless mode with --enable-inet, let the LAN reach this host's loopback "
        "as 10.0.2.2",
    )
    disable_host_loopback: bool = _opt(
        False,
        "--disable-host-loopback",
        kind="flag",
        help="keep the LAN away from this host's loopback in rootless mode, as it is without "
        "--allow-host-loopback; overrides allow_host_loopback = true from a config file",
    )
    user: str | None = _opt(
        None,
        "--user",
        parse=_optional_account,
        metavar="NAME",
        help="(root only) after set-up, run the server as this user with no privileges; a "
        "small root helper keeps the bridge, NAT and dnsmasq (see docs/security.md)",
    )
    group: str | None = _opt(
        None,
        "--group",
        parse=_optional_account,
        metavar="NAME",
        default_text="the user's primary group",
        help="with --user, the group to run as",
    )
    verbose: int = _opt(
        0,
        "-v",
        "--verbose",
        parse=int,
        kind="count",
        help="log more (repeat for debug output of every connection)",
    )
    quiet: int = _opt(
        0, "-q", "--quiet", parse=int, kind="count", help="log only warnings and errors"
    )

    def __post_init__(self) -> None:
        if self.lock_ip and self.disable_dhcp:
            raise ConfigError(
                "--lock-ip needs the server's own DHCP (it checks addresses against dnsmasq's "
                "leases); drop --disable-dhcp or --lock-ip"
            )
        if any(a.kind == "tcp" for a in self.api) and self.api_token_file is None:
            raise ConfigError(
                "a TCP control API (--api tcp:...) needs --api-token-file: without a token "
                "anybody who can reach the port could kick clients and open forwards"
            )
        for spec in self.forward:
            problem = check_remote(spec.remote_host, self.subnet)
            if problem is not None:
                raise ConfigError(f"--forward {spec}: {problem}")
        if self.user is not None and self.rootless:
            raise ConfigError(
                "--user and --rootless contradict each other: --user is for a server started "
                "as root that drops its privileges; --rootless never has any"
            )
        if self.pcap_on_demand and self.pcap is None:
            raise ConfigError("--pcap-on-demand needs --pcap DIR (where the captures go)")
        if self.ping_timeout <= self.ping_interval:
            raise ConfigError(
                f"ping_timeout ({self.ping_timeout:g} s) must be longer than ping_interval "
                f"({self.ping_interval:g} s), or idle clients are dropped before they are pinged"
            )

    # -- derived values -------------------------------------------------------------

    @property
    def bridge_address(self) -> ipaddress.IPv4Address:
        """The host's address on the LAN: the subnet's first host address."""
        return self.subnet.network_address + 1

    @property
    def host_loopback(self) -> bool:
        """Rootless mode: whether the uplink maps 10.0.2.2 to this host's loopback."""
        return self.allow_host_loopback and not self.disable_host_loopback

    @property
    def max_frame(self) -> int:
        """Largest Ethernet frame a peer may send: MTU + header + one VLAN tag."""
        return self.mtu + 18

    # -- loading --------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "settings") -> Config:
        """Build a Config from raw values (strings or already-typed), checking each one."""
        return cls.from_layers([(source, values)])

    @classmethod
    def from_layers(cls, layers: Sequence[tuple[str, Mapping[str, Any]]]) -> Config:
        """Build a Config from (source, values) layers; later layers win.

        Each error names where the bad value came from: the file, or the flag.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        typed: dict[str, Any] = {}
        for source, values in layers:
            for raw_key, raw in values.items():
                key = raw_key.replace("-", "_")
                field = fields.get(key)
                if field is None:
                    raise ConfigError(f"{source}: unknown option {raw_key!r}")
                spec: OptionSpec = field.metadata["option"]
                where = _long_flag(spec) if source == "command line" else f"{source}: {key}"
                typed[key] = _convert(spec, raw, where)
        try:
            return cls(**typed)
        except ConfigError as exc:
            where = " + ".join(source for source, _ in layers) or "defaults"
            raise ConfigError(f"{where}: {exc}") from None


def _convert(spec: OptionSpec, raw: Any, where: str) -> Any:
    if spec.kind == "list":
        # Repeatable options: a TOML list, a comma-separated string in a wsnic file, or the
        # list argparse collects from repeated flags (each of which may itself be a comma
        # list: -d 1.1.1.1,9.9.9.9). An empty string means "none".
        items = raw if isinstance(raw, list | tuple) else [raw]
        out = []
        for text in (part.strip() for item in items for part in str(item).split(",")):
            if text:
                try:
                    out.append(spec.parse(text))
                except (ValueError, TypeError) as exc:
                    raise ConfigError(f"{where}: {exc}") from None
        return tuple(out)
    if spec.kind == "flag":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: {raw!r} is not a boolean (true/false)")
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: {raw!r} is not a valid value")
    try:
        return spec.parse(str(raw).strip())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _long_flag(spec: OptionSpec) -> str:
    """The name errors use for an option: its first long flag (--dgram, not --vfkit)."""
    return next(f for f in spec.flags if f.startswith("--"))


def _fields() -> dict[str, OptionSpec]:
    return {f.name: f.metadata["option"] for f in dataclasses.fields(Config)}


OPTIONS: dict[str, OptionSpec] = _fields()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config file: TOML (``*.toml``) or wsnic's section-less ``key = value`` file.

    Keys are the long option names, with ``_`` or ``-``. Only the syntax is checked
    here; values are checked by :meth:`Config.from_mapping`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        nested = [k for k, v in data.items() if isinstance(v, dict)]
        if nested:
            raise ConfigError(f"{path}: unexpected table [{nested[0]}]; options go at top level")
        return data
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string("[wsnic]\n" + text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc.message.splitlines()[0]}") from None
    if parser.sections() != ["wsnic"]:
        raise ConfigError(f"{path}: sections are not allowed; write 'key = value' lines only")
    return dict(parser["wsnic"])
