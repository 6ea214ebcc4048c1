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

from ._exceptions import ConfigError

__all__ = ["OPTIONS", "Config", "OptionSpec", "load_config_file"]

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
    kind: Literal["value", "count", "flag"] = "value"
    metavar: str | None = None


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
                where = spec.flags[-1] if source == "command line" else f"{source}: {key}"
                typed[key] = _convert(spec, raw, where)
        try:
            return cls(**typed)
        except ConfigError as exc:
            where = " + ".join(source for source, _ in layers) or "defaults"
            raise ConfigError(f"{where}: {exc}") from None


def _convert(spec: OptionSpec, raw: Any, where: str) -> Any:
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
