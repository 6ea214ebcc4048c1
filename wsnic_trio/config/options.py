"""A server's whole configuration: its own settings and its LAN's, loaded from defaults,
a config file and the command line.

The split is the model's only: flags and config-file keys are one flat namespace, as in
wsnic's files. :class:`Config` routes each key to :class:`ServerConfig` or
:class:`LanConfig`, whichever declares it.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wsnic_trio.config.lan import LanConfig
from wsnic_trio.config.lans import (
    DEFAULT_LAN,
    LanSpec,
    bridge_name,
    check_disjoint,
    check_lan_name,
)
from wsnic_trio.config.server import ServerConfig
from wsnic_trio.config.spec import OptionSpec, convert, long_flag, options_of
from wsnic_trio.errors import ConfigError

__all__ = ["LAN_OPTIONS", "OPTIONS", "SERVER_OPTIONS", "Config", "load_config_file"]

SERVER_OPTIONS: dict[str, OptionSpec] = options_of(ServerConfig)
LAN_OPTIONS: dict[str, OptionSpec] = options_of(LanConfig)
#: Every option, by its config key (the server's first, then the LAN's).
OPTIONS: dict[str, OptionSpec] = {**SERVER_OPTIONS, **LAN_OPTIONS}


@dataclasses.dataclass(frozen=True, init=False)
class Config:
    """Everything one server needs to know; immutable once loaded.

    ``Config(**values)`` takes the flat option names (``Config(subnet=..., user=...)``),
    as the command line and the config file spell them.
    """

    server: ServerConfig
    #: The default LAN (the one the LAN options on their own configure, joined at ``/``).
    lan: LanConfig
    #: The named LANs (``--lan``, ``[lan.NAME]``), by name.
    lans: Mapping[str, LanConfig] = dataclasses.field(hash=False)

    def __init__(
        self,
        *,
        base_server: ServerConfig | None = None,
        base_lan: LanConfig | None = None,
        **values: Any,
    ) -> None:
        unknown = [k for k in values if k not in OPTIONS]
        if unknown:
            raise TypeError(f"Config got unknown options: {', '.join(unknown)}")
        server_values = {k: v for k, v in values.items() if k in SERVER_OPTIONS}
        lan_values = {k: v for k, v in values.items() if k in LAN_OPTIONS}
        if base_server is None:
            server = ServerConfig(**server_values)
        else:
            server = dataclasses.replace(base_server, **server_values)
        if base_lan is None:
            lan = LanConfig(**lan_values)
        else:
            lan = dataclasses.replace(base_lan, **lan_values)
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "lan", lan)
        object.__setattr__(self, "lans", _named_lans(server, lan))

    @property
    def default_lan(self) -> bool:
        """Whether the default LAN is served (``/`` joins it)."""
        return not self.server.no_default_lan

    def all_lans(self) -> dict[str, LanConfig]:
        """Every LAN the server runs at start, the default one first (as ``default``)."""
        default = {DEFAULT_LAN: self.lan} if self.default_lan else {}
        return {**default, **self.lans}

    def for_lan(self, name: str) -> Config:
        """The configuration as one LAN sees it: the server's settings and this LAN's as
        ``lan`` (what the LAN's bridge, dnsmasq, rules and listeners are made from)."""
        return self.view(self.all_lans()[name] if name != DEFAULT_LAN else self.lan)

    def view(self, lan: LanConfig) -> Config:
        """The server's settings with ``lan`` as the LAN (see :meth:`for_lan`)."""
        view = object.__new__(Config)
        object.__setattr__(view, "server", self.server)
        object.__setattr__(view, "lan", lan)
        object.__setattr__(view, "lans", {})
        return view

    def on_demand_lan(self, name: str, subnet: ipaddress.IPv4Network) -> LanConfig:
        """The settings of a LAN made on demand (``--lan-pool``): the default LAN's, with
        its own subnet and bridge."""
        return _named_lan(LanSpec(name, (("subnet", subnet),)), self.lan)

    def replace(self, **values: Any) -> Config:
        """A copy with some options changed (flat names, checked like any others)."""
        return Config(base_server=self.server, base_lan=self.lan, **values)

    def values(self) -> dict[str, Any]:
        """Every option's value by its flat name (for --help defaults and the helper's wire)."""
        out = {name: getattr(self.server, name) for name in SERVER_OPTIONS}
        out.update({name: getattr(self.lan, name) for name in LAN_OPTIONS})
        return out

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
        typed: dict[str, Any] = {}
        for source, values in layers:
            for raw_key, raw in values.items():
                key = raw_key.replace("-", "_")
                spec = OPTIONS.get(key)
                if spec is None:
                    raise ConfigError(f"{source}: unknown option {raw_key!r}")
                where = long_flag(spec) if source == "command line" else f"{source}: {key}"
                typed[key] = convert(spec, raw, where)
        try:
            return cls(**typed)
        except ConfigError as exc:
            where = " + ".join(source for source, _ in layers) or "defaults"
            raise ConfigError(f"{where}: {exc}") from None


#: LAN options a named LAN does not take from the default LAN: what makes a LAN itself.
NOT_INHERITED = frozenset(
    {
        "subnet",
        "bridge",
        "qemu",
        "qemu_connect",
        "bess",
        "dgram",
        "dhcp_lease_file",
        "forward",
        "route_to",
    }
)


def _named_lans(server: ServerConfig, default: LanConfig) -> dict[str, LanConfig]:
    lans: dict[str, LanConfig] = {}
    for spec in server.lan:
        if spec.name == DEFAULT_LAN:
            raise ConfigError(
                f"LAN {DEFAULT_LAN!r} is the one the LAN options configure; give this LAN "
                "another name"
            )
        if spec.name in lans:
            raise ConfigError(f"LAN {spec.name!r} is configured twice")
        lans[spec.name] = _named_lan(spec, default)
    if not lans and server.no_default_lan and server.lan_pool is None:
        raise ConfigError("--no-default-lan leaves no LAN: add --lan or --lan-pool")
    if server.no_default_lan and default.forward:
        raise ConfigError(
            "--forward is for the default LAN, and --no-default-lan turns it off (a named "
            "LAN's forwards: --lan NAME=CIDR,forward=LOCAL=REMOTE, or forward = [...] in "
            "[lan.NAME])"
        )
    everything = {DEFAULT_LAN: default, **lans} if not server.no_default_lan else lans
    check_disjoint({name: lan.subnet for name, lan in everything.items()})
    _check_unique(everything, "bridge", lambda lan: [lan.bridge])
    _check_unique(
        everything, "listener", lambda lan: [*lan.qemu, *lan.qemu_connect, *lan.bess, *lan.dgram]
    )
    _check_routes(everything, server.lan_pool)
    return lans


def _check_routes(lans: Mapping[str, LanConfig], pool: ipaddress.IPv4Network | None) -> None:
    """A route goes to another LAN of this server (or to the pool of LANs on demand):
    anything else is a mistake that would open nothing, or the LAN's own subnet."""
    for name, lan in lans.items():
        others = [o.subnet for n, o in lans.items() if n != name]
        if pool is not None:
            others.append(pool)
        for target in lan.route_to:
            if target.overlaps(lan.subnet):
                raise ConfigError(f"LAN {name}: route-to {target} overlaps its own subnet")
            if not any(target.subnet_of(other) for other in others):
                raise ConfigError(
                    f"LAN {name}: route-to {target} is not (in) the subnet of another LAN of "
                    "this server, nor in --lan-pool"
                )


def _named_lan(spec: LanSpec, default: LanConfig) -> LanConfig:
    typed = {k: getattr(default, k) for k in LAN_OPTIONS if k not in NOT_INHERITED}
    for raw_key, raw in spec.values:
        key = raw_key.replace("-", "_")
        option = LAN_OPTIONS.get(key)
        if option is None:
            whose = " (it is the server's, not a LAN's)" if key in SERVER_OPTIONS else ""
            raise ConfigError(f"LAN {spec.name}: {raw_key!r} is not a LAN option{whose}")
        typed[key] = convert(option, raw, f"LAN {spec.name}: {key}")
    if "subnet" not in typed:
        raise ConfigError(
            f"LAN {spec.name}: no subnet (--lan {spec.name}=CIDR, or subnet = ... in "
            f"[lan.{spec.name}])"
        )
    typed.setdefault("bridge", bridge_name(spec.name))
    try:
        return LanConfig(**typed)
    except ConfigError as exc:
        raise ConfigError(f"LAN {spec.name}: {exc}") from None


def _check_unique(
    lans: Mapping[str, LanConfig], what: str, values: Callable[[LanConfig], list[object]]
) -> None:
    owner: dict[str, str] = {}
    for name, lan in lans.items():
        for value in values(lan):
            other = owner.setdefault(str(value), name)
            if other != name:
                raise ConfigError(f"LANs {other!r} and {name!r} both have the {what} {value}")


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
        nested = [k for k, v in data.items() if isinstance(v, dict) and k != "lan"]
        if nested:
            raise ConfigError(
                f"{path}: unexpected table [{nested[0]}]; options go at top level, and "
                "named LANs in [lan.NAME] tables"
            )
        if isinstance(data.get("lan"), dict):
            data["lan"] = [_lan_table(path, name, table) for name, table in data["lan"].items()]
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


def _lan_table(path: Path, name: str, table: Any) -> LanSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: lan.{name} must be a table ([lan.{name}])")
    try:
        check_lan_name(name)
    except ValueError as exc:
        raise ConfigError(f"{path}: [lan.{name}]: {exc}") from None
    for key, value in table.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: [lan.{name}] may not hold the table {key!r}")
    return LanSpec(name, tuple(table.items()))
