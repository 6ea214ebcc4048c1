"""Command line: ``wsnic-trio [OPTIONS]`` runs the server, ``wsnic-trio connect URL`` the client.

Server flags are generated from :data:`wsnic_trio.config.OPTIONS`; precedence is
built-in default < config file (``-c``) < command line. Errors the user can fix end
with one line on stderr and exit code 2, before the host is touched.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

import trio

from wsnic_trio import __version__
from wsnic_trio.cli.connect import ConnectOptions, connect_until_signal
from wsnic_trio.cli.serve import serve_until_signal
from wsnic_trio.config import LAN_OPTIONS, SERVER_OPTIONS, Config, help_text, load_config_file
from wsnic_trio.config.server import SEVERAL_LANS
from wsnic_trio.control.ctl import HelpFormatter
from wsnic_trio.errors import ConfigError, SetupError
from wsnic_trio.transports import dialer_for
from wsnic_trio.util.log import setup_logging

__all__ = ["build_parser", "config_from_args", "main"]

_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit code 2 with one line, as for bad config
        self.exit(2, f"{self.prog}: error: {message}\n")


# Help texts state their own default, once and in words where a value would mislead
# (argparse's ArgumentDefaultsHelpFormatter appended "(default: None)" to every one);
# the formatter keeps the examples in the epilogs as they are written.
_FORMATTER = HelpFormatter

SERVER_EPILOG = """\
examples:
  # a LAN with Internet access (NAT) for v86 clients on ws://127.0.0.1:8086/
  wsnic-trio -i
  # ws:// reachable from other machines, and the control API for 'wsnic-trio ctl'
  wsnic-trio -a 0.0.0.0 --api unix:/run/wsnic-trio/api.sock
  # QEMU (-netdev stream,addr.type=inet,...) and UML (vec0:transport=bess) clients
  wsnic-trio --qemu tcp:127.0.0.1:9000 --bess /tmp/uml.sock -v

A config file (-c) has the long option names as keys (ws_port = 8086): a
wsnic-style 'key = value' file, or TOML (*.toml); command-line options
override it. Client tool: 'wsnic-trio connect --help'; control API client:
'wsnic-trio ctl --help'.
"""

CONNECT_EPILOG = """\
examples:
  # this host joins the LAN as lan0 (then run a DHCP client on lan0)
  wsnic-trio connect ws://127.0.0.1:8086/ --tap lan0
  # through the server's --qemu tcp:127.0.0.1:9000, with a fixed MAC
  wsnic-trio connect qemu+tcp://127.0.0.1:9000 --mac 02:00:00:00:00:01
  # through the server's --dgram /tmp/vm.sock, once (no reconnecting)
  wsnic-trio connect dgram:/tmp/vm.sock --once
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wsnic-trio",
        description=(
            "Run a virtual Ethernet LAN on this host: every client (v86 over WebSocket, and\n"
            "VMs through the other transports) gets its own TAP device on one Linux bridge."
        ),
        epilog=SERVER_EPILOG,
        formatter_class=_FORMATTER,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("-c", "--config", metavar="CFGFILE", help="read options from this file")
    parser.add_argument("--version", action="version", version=f"wsnic-trio {__version__}")
    defaults = Config().values()
    server = {k: v for k, v in SERVER_OPTIONS.items() if k not in SEVERAL_LANS}
    groups = (
        (
            "server",
            "the server: listeners, liveness, access, control API, capture, privileges",
            server,
        ),
        (
            "LAN",
            "the default LAN: subnet, bridge, DHCP/DNS, NAT, limits, locks, VM listeners",
            LAN_OPTIONS,
        ),
        (
            "several LANs",
            "named LANs (ws://HOST:PORT/lan/NAME) and LANs made on demand",
            {k: SERVER_OPTIONS[k] for k in SEVERAL_LANS},
        ),
    )
    for title, description, options in groups:
        group = parser.add_argument_group(f"{title} options", description)
        for name, spec in options.items():
            # argparse %-formats help strings: a literal % in an option's help must survive.
            text = help_text(spec, defaults[name]).replace("%", "%%")
            if spec.kind == "count":
                group.add_argument(*spec.flags, dest=name, action="count", help=text)
            elif spec.kind == "flag":
                group.add_argument(*spec.flags, dest=name, action="store_true", help=text)
            else:
                action = "append" if spec.kind == "list" else "store"
                group.add_argument(
                    *spec.flags, dest=name, action=action, metavar=spec.metavar, help=text
                )
    return parser


def config_from_args(argv: Sequence[str]) -> Config:
    args = vars(build_parser().parse_args(argv))
    layers: list[tuple[str, dict[str, Any]]] = []
    path = args.pop("config", None)
    if path is not None:
        layers.append((path, load_config_file(path)))
    layers.append(("command line", args))
    return Config.from_layers(layers)


def build_connect_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wsnic-trio connect",
        description=(
            "Create a local TAP device and relay it to a wsnic-trio server, so this host's\n"
            "own network stack (ping, a DHCP client, curl, iperf3) joins the LAN.\n"
            "Reconnects with backoff when the server goes away; the TAP stays up. A\n"
            "refusal that would not change (a wrong token, no such LAN) ends it (exit 2)."
        ),
        epilog=CONNECT_EPILOG,
        formatter_class=_FORMATTER,
    )
    parser.add_argument(
        "url",
        metavar="URL",
        help="server URL: ws://HOST:PORT/PATH, qemu+unix:PATH, qemu+tcp://HOST:PORT, "
        "bess:PATH, dgram:PATH or vfkit:PATH (dgram with vfkit's handshake)",
    )
    parser.add_argument(
        "--tap",
        default="wsnic%d",
        metavar="NAME",
        help="name of the local TAP; %%d is the next free number (default: wsnic%%d)",
    )
    parser.add_argument(
        "--mac", default=None, metavar="MAC", help="MAC address of the TAP (default: random)"
    )
    parser.add_argument(
        "--mtu",
        type=int,
        default=1500,
        metavar="BYTES",
        help="MTU of the TAP; match the server's --mtu (default: 1500)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="ping the server after this long without traffic from it (default: 30)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=float,
        default=100.0,
        metavar="SECONDS",
        help="reconnect after this long without a sign of the server (default: 100)",
    )
    parser.add_argument(
        "--retry-max",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest wait between reconnect attempts; the first is 0.5 s, each next one "
        "twice as long (default: 10)",
    )
    parser.add_argument(
        "--once", action="store_true", help="exit when the connection ends instead of reconnecting"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="log less")
    return parser


def _connect_options(argv: Sequence[str]) -> tuple[ConnectOptions, int, int]:
    args = build_connect_parser().parse_args(argv)
    if args.mac is not None and not _MAC.match(args.mac):
        raise ConfigError(f"--mac {args.mac!r} is not a MAC address like 02:00:00:00:00:01")
    if args.mac is not None and int(args.mac[:2], 16) & 1:
        raise ConfigError(f"--mac {args.mac} is a multicast address; use a unicast one")
    if not 68 <= args.mtu <= 65520:
        raise ConfigError(f"--mtu {args.mtu} is outside 68-65520")
    try:
        dialer_for(args.url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.ping_timeout <= args.ping_interval:
        raise ConfigError("--ping-timeout must be longer than --ping-interval")
    opts = ConnectOptions(
        url=args.url,
        tap=args.tap,
        mac=args.mac,
        mtu=args.mtu,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        retry_max=args.retry_max,
        once=args.once,
    )
    return opts, args.verbose, args.quiet


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        from wsnic_trio.control.ctl import (
            main as ctl_main,  # the client only: no server imports needed
        )

        return ctl_main(argv[1:])
    try:
        if argv[:1] == ["connect"]:
            opts, verbose, quiet = _connect_options(argv[1:])
            setup_logging(verbose, quiet, "wsnic-trio-connect")
            trio.run(connect_until_signal, opts)
        else:
            config = config_from_args(argv)
            setup_logging(config.server.verbose, config.server.quiet)
            trio.run(serve_until_signal, config)
    except (ConfigError, SetupError) as exc:
        print(f"wsnic-trio: error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        user_errors, _ = group.split((ConfigError, SetupError))
        if user_errors is None:
            raise
        print(f"wsnic-trio: error: {_first_leaf(user_errors)}", file=sys.stderr)
        return 2
    return 0


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
