"""The settings model: the options table, the config file, the syntax of every value.

:class:`Config` is one server's configuration: ``config.server`` (:class:`ServerConfig`:
listeners, API, liveness, privileges, logging) and ``config.lan`` (:class:`LanConfig`:
subnet, bridge, MTU, DHCP/DNS, NAT, limits, locks, VM listeners).
"""

from __future__ import annotations

from wsnic_trio.config.lan import LanConfig as LanConfig
from wsnic_trio.config.options import LAN_OPTIONS as LAN_OPTIONS
from wsnic_trio.config.options import OPTIONS as OPTIONS
from wsnic_trio.config.options import SERVER_OPTIONS as SERVER_OPTIONS
from wsnic_trio.config.options import Config as Config
from wsnic_trio.config.options import load_config_file as load_config_file
from wsnic_trio.config.server import ServerConfig as ServerConfig
from wsnic_trio.config.spec import OptionSpec as OptionSpec
from wsnic_trio.config.spec import help_text as help_text

__all__ = [
    "LAN_OPTIONS",
    "OPTIONS",
    "SERVER_OPTIONS",
    "Config",
    "LanConfig",
    "OptionSpec",
    "ServerConfig",
    "help_text",
    "load_config_file",
]
