"""The settings of the server itself: its listeners for browsers, the control API,
liveness, authentication, capture, privileges (rootless, --user) and logging."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from wsnic_trio.config import syntax
from wsnic_trio.config.endpoints import ApiEndpoint
from wsnic_trio.config.lans import LanSpec, parse_lan_spec
from wsnic_trio.config.origins import OriginPattern
from wsnic_trio.config.spec import option
from wsnic_trio.errors import ConfigError

__all__ = ["SEVERAL_LANS", "ServerConfig"]

#: The options about several LANs (their own group in --help and the user guide).
SEVERAL_LANS = ("lan", "lan_pool", "lan_prefix", "lan_idle_timeout", "max_lans", "no_default_lan")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """The server-wide settings; immutable once loaded."""

    ws_address: str = option(
        "127.0.0.1",
        "-a",
        "--ws-address",
        metavar="ADDR",
        help="address the WebSocket (ws://) listener binds to; 0.0.0.0 for every interface",
    )
    ws_port: int = option(
        8086,
        "--ws-port",
        parse=syntax.port,
        metavar="PORT",
        help="TCP port of the ws:// listener; 0 turns the WebSocket listener off",
    )
    ping_interval: float = option(
        30.0,
        "--ping-interval",
        parse=syntax.positive,
        metavar="SECONDS",
        help="ping a WebSocket client after this many seconds without traffic from it",
    )
    ping_timeout: float = option(
        100.0,
        "--ping-timeout",
        parse=syntax.positive,
        metavar="SECONDS",
        help="drop a client that sent nothing (no frame, no pong) for this many seconds",
    )
    handshake_timeout: float = option(
        10.0,
        "--handshake-timeout",
        parse=syntax.positive,
        metavar="SECONDS",
        help="drop a connection that has not completed its handshake in this time",
    )
    max_handshakes: int = option(
        256,
        "--max-handshakes",
        parse=syntax.count,
        metavar="N",
        help="at most N WebSocket connections (ws and wss together) may be in their "
        "handshake (TLS and the upgrade request) at once; beyond that, the oldest of the "
        "address with the most is closed; 0 means no limit",
    )
    max_handshakes_per_ip: int = option(
        16,
        "--max-handshakes-per-ip",
        parse=syntax.count,
        metavar="N",
        help="the same per source address (an IPv6 /64 is one): its oldest connection "
        "still in its handshake is closed for a newer one; 0 means no limit",
    )
    wss_port: int = option(
        8087,
        "--wss-port",
        parse=syntax.port,
        metavar="PORT",
        help="TCP port of the wss:// (TLS) listener on --ws-address; it runs when a "
        "certificate is available; 0 turns it off",
    )
    wss_certificate: Path | None = option(
        None,
        "-r",
        "--wss-certificate",
        parse=syntax.path,
        metavar="PEM",
        default_text="cert/cert.crt when that file exists",
        help="TLS certificate chain (PEM; may hold the key too)",
    )
    wss_private_key: Path | None = option(
        None,
        "-k",
        "--wss-private-key",
        parse=syntax.path,
        metavar="PEM",
        default_text="cert/cert.key when that file exists, else the key in the certificate file",
        help="TLS private key (PEM)",
    )
    auth_token_file: Path | None = option(
        None,
        "--auth-token-file",
        parse=syntax.path,
        metavar="FILE",
        default_text="off",
        help="require WebSocket clients to present one of the tokens in FILE (one per line, "
        "# comments; re-read on SIGHUP)",
    )
    allow_origin: tuple[OriginPattern, ...] = option(
        (),
        "--allow-origin",
        parse=syntax.origin_pattern,
        kind="list",
        metavar="ORIGIN",
        help="accept WebSocket clients from browser pages of this origin only (HTTP 403 for "
        "others): https://lab.example.org, HOST[:PORT] for http and https, *.example.org "
        "for its subdomains, null; a client that sends no Origin (not a browser) always "
        "passes",
        default_text="every origin",
    )
    socket_mode: int = option(
        syntax.FileMode(0o660),
        "--socket-mode",
        parse=syntax.file_mode,
        metavar="MODE",
        help="octal permissions of the unix socket files the server creates",
    )
    partial_frame_timeout: float = option(
        10.0,
        "--partial-frame-timeout",
        parse=syntax.positive,
        metavar="SECONDS",
        help="close a QEMU stream client whose frame stays incomplete this long",
    )
    dgram_idle_timeout: float = option(
        60.0,
        "--dgram-idle-timeout",
        parse=syntax.positive,
        metavar="SECONDS",
        help="drop a datagram peer (and its TAP) after this long without a datagram",
    )
    dgram_max_peers: int = option(
        64,
        "--dgram-max-peers",
        parse=syntax.peer_count,
        metavar="N",
        help="most peers one datagram socket serves; datagrams from more addresses are dropped",
    )
    api: tuple[ApiEndpoint, ...] = option(
        (),
        "--api",
        parse=syntax.api_endpoint,
        kind="list",
        metavar="unix:PATH|tcp:HOST:PORT",
        default_text="off",
        help="serve the control API (docs/api.md) here; a unix socket gets mode 0600, a "
        "TCP one needs --api-token-file",
    )
    api_token_file: Path | None = option(
        None,
        "--api-token-file",
        parse=syntax.optional_path,
        metavar="FILE",
        help="tokens (one per line) a TCP control API client must send as 'Authorization: "
        "Bearer TOKEN'; separate from --auth-token-file, whose tokens browsers hold",
    )
    pcap: Path | None = option(
        None,
        "--pcap",
        parse=syntax.optional_path,
        metavar="DIR",
        default_text="off",
        help="write one pcap file per client into DIR (which must exist)",
    )
    pcap_max_bytes: int = option(
        64_000_000,
        "--pcap-max-bytes",
        parse=syntax.byte_size,
        metavar="BYTES",
        help="a capture file stops growing at this size (k/M/G suffixes)",
    )
    pcap_budget: int = option(
        256_000_000,
        "--pcap-budget",
        parse=syntax.byte_size,
        metavar="BYTES",
        help="all capture files in the --pcap directory together hold at most this much "
        "(k/M/G suffixes): the oldest finished files are deleted to make room",
    )
    pcap_on_demand: bool = option(
        False,
        "--pcap-on-demand",
        kind="flag",
        help="with --pcap, capture no client from the start; captures are started (and "
        "stopped) per client through the control API",
    )
    rootless: bool = option(
        False,
        "--rootless",
        kind="flag",
        default_text="automatic when not root",
        help="run the LAN without root: a helper process owns the bridge, dnsmasq and NAT in "
        "a user + network namespace (see docs/rootless.md)",
    )
    uplink: str = option(
        "slirp4netns",
        "--uplink",
        parse=syntax.uplink,
        metavar="slirp4netns|pasta",
        help="in rootless mode, what gives the LAN's namespace its way out for --enable-inet",
    )
    allow_host_loopback: bool = option(
        False,
        "--allow-host-loopback",
        kind="flag",
        help="in rootless mode with --enable-inet, let the LAN reach this host's loopback "
        "as 10.0.2.2",
    )
    disable_host_loopback: bool = option(
        False,
        "--disable-host-loopback",
        kind="flag",
        help="keep the LAN away from this host's loopback in rootless mode, as it is without "
        "--allow-host-loopback; overrides allow_host_loopback = true from a config file",
    )
    user: str | None = option(
        None,
        "--user",
        parse=syntax.optional_account,
        metavar="NAME",
        help="(root only) after set-up, run the server as this user with no privileges; a "
        "small root helper keeps the bridge, NAT and dnsmasq (see docs/security.md)",
    )
    group: str | None = option(
        None,
        "--group",
        parse=syntax.optional_account,
        metavar="NAME",
        default_text="the user's primary group",
        help="with --user, the group to run as",
    )
    verbose: int = option(
        0,
        "-v",
        "--verbose",
        parse=int,
        kind="count",
        help="log more (repeat for debug output of every connection)",
    )
    quiet: int = option(
        0, "-q", "--quiet", parse=int, kind="count", help="log only warnings and errors"
    )
    # -- several LANs (docs/lans.md) --
    lan: tuple[LanSpec, ...] = option(
        (),
        "--lan",
        parse=parse_lan_spec,
        kind="list",
        split=False,
        metavar="NAME=CIDR[,KEY=VALUE...]",
        help="a named LAN with its own subnet, joined at ws://HOST:PORT/lan/NAME; KEY=VALUE "
        "sets any LAN option for it (qemu=unix:PATH gives it a listener); the options it "
        "does not set are the default LAN's",
    )
    lan_pool: ipaddress.IPv4Network | None = option(
        None,
        "--lan-pool",
        parse=syntax.optional_pool,
        metavar="CIDR",
        help="make a LAN on demand for /lan/NAME when NAME is not configured, with the next "
        "free block of CIDR as its subnet",
    )
    lan_prefix: int = option(
        24,
        "--lan-prefix",
        parse=syntax.lan_prefix,
        metavar="LEN",
        help="the size of each on-demand LAN's subnet (/LEN blocks of --lan-pool)",
    )
    lan_idle_timeout: float = option(
        300.0,
        "--lan-idle-timeout",
        parse=syntax.positive,
        metavar="SECONDS",
        help="remove an on-demand LAN (bridge, dnsmasq, rules) this long after its last "
        "client left",
    )
    max_lans: int = option(
        64,
        "--max-lans",
        parse=syntax.count,
        metavar="N",
        help="most on-demand LANs at once; 0 for no limit",
    )
    no_default_lan: bool = option(
        False,
        "--no-default-lan",
        kind="flag",
        help="serve only the named LANs: / is refused (the default LAN's options then only "
        "give the named LANs their defaults)",
    )

    def __post_init__(self) -> None:
        if any(a.kind == "tcp" for a in self.api) and self.api_token_file is None:
            raise ConfigError(
                "a TCP control API (--api tcp:...) needs --api-token-file: without a token "
                "anybody who can reach the port could kick clients and open forwards"
            )
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

    @property
    def host_loopback(self) -> bool:
        """Rootless mode: whether the uplink maps 10.0.2.2 to this host's loopback."""
        return self.allow_host_loopback and not self.disable_host_loopback
