"""A server's whole configuration: its own settings and its LAN's, loaded from defaults,
a config file and the command line.

The split is the model's only: flags and config-file keys are one flat namespace, as in
wsnic's files. :class:`Config` routes each key to :class:`ServerConfig` or
:class:`LanConfig`, whichever declares it.
"""

from __future__ import annotations

import configparser
import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wsnic_trio.config.lan import LanConfig
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
    lan: LanConfig

    def __init__(
        self,
        *,
        server: ServerConfig | None = None,
        lan: LanConfig | None = None,
        **values: Any,
    ) -> None:
        unknown = [k for k in values if k not in OPTIONS]
        if unknown:
            raise TypeError(f"Config got unknown options: {', '.join(unknown)}")
        server_values = {k: v for k, v in values.items() if k in SERVER_OPTIONS}
        lan_values = {k: v for k, v in values.items() if k in LAN_OPTIONS}
        if server is None:
            server = ServerConfig(**server_values)
        elif server_values:
            server = dataclasses.replace(server, **server_values)
        if lan is None:
            lan = LanConfig(**lan_values)
        elif lan_values:
            lan = dataclasses.replace(lan, **lan_values)
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "lan", lan)

    def replace(self, **values: Any) -> Config:
        """A copy with some options changed (flat names, checked like any others)."""
        return Config(server=self.server, lan=self.lan, **values)

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
