"""The rootless helper's wire protocol: one JSON object per ``SOCK_SEQPACKET`` message.

The server (in the host namespace) and the namespace helper (see ``nshelper``) talk
over a unix seqpacket socketpair, so every message arrives whole or not at all and
there is no framing to get wrong. The exchange is strictly request then reply, one at a
time; a reply to ``tap`` carries the TAP's file descriptor as ``SCM_RIGHTS`` ancillary
data, a reply to ``connect`` a socket's, and the helper closes its own copy right after
sending it. A TCP ``connect`` socket comes back right after a nonblocking ``connect()``
(EINPROGRESS): the server waits for it to be writable and reads ``SO_ERROR`` itself, so
the single-threaded helper never waits for a remote host.

    server                                   helper
    setup {config}                  ->       unshare done already; bridge, sysctls
                                    <-       ok {rundir}
    (server starts the uplink against the helper's pid)
    start {uplink}                  ->       NAT on the uplink, dnsmasq
                                    <-       ok {}
    tap                             ->       a TAP on the bridge
                                    <-       ok {name} + fd
    connect {protocol, host, port}  ->       a socket connected from the namespace
                                    <-       ok {} + fd   (a port forward's remote side)
    ...                                      EOF: stop dnsmasq, exit (the namespace goes)

Several LANs (``--lan``, ``--lan-pool``) share one helper: ``setup`` carries
``several: true`` and builds no LAN (only what all share: the namespace, the rootless
uplink's ``start``), then each LAN is its own request, named as in the URL:

    add {lan, config}               ->       its bridge, filter/NAT table, dnsmasq
                                    <-       ok {rundir}
    tap {lan}                       ->       a TAP on that LAN's bridge
                                    <-       ok {name} + fd
    remove {lan}                    ->       dnsmasq, table and bridge of that LAN gone
                                    <-       ok {}

A ``tap`` without ``lan`` is the LAN that ``setup`` built (one LAN, as before). A
request naming a LAN the helper does not have is an error reply, like any other.

This module is sans-IO: it turns requests and replies into bytes and back, checks
them (every argument of every request has a known name and type, so a malformed request
is refused here, as one error reply, and no handler ever sees it), and converts a
:class:`~wsnic_trio.Config` to plain JSON values that :meth:`Config.from_mapping` reads
back. Both sides share it; it imports no sockets.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from wsnic_trio.config import OPTIONS, Config
from wsnic_trio.config.lans import DEFAULT_LAN, check_lan_name
from wsnic_trio.errors import WsnicError

__all__ = [
    "FD_OPS",
    "MAX_MESSAGE",
    "HelperProtocolError",
    "Reply",
    "Request",
    "config_from_wire",
    "config_to_wire",
    "connect_args",
    "connect_request",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "lan_of",
]

#: Largest message either side sends or accepts (a whole Config is a few KiB).
MAX_MESSAGE = 64 * 1024
OPS = ("setup", "start", "tap", "connect", "add", "remove")
#: Requests whose reply carries one file descriptor.
FD_OPS = ("tap", "connect")
PROTOCOLS = ("tcp", "udp")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_MAX_ERROR = 4000  # characters of an error reply: at most 16 KB of UTF-8


class HelperProtocolError(WsnicError):
    """A message that is not valid in this protocol (a bug, or a foreign process)."""


@dataclasses.dataclass(frozen=True)
class Request:
    op: str
    args: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Reply:
    ok: bool
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""


def _dump(obj: Mapping[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > MAX_MESSAGE:
        raise HelperProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def _load(data: bytes) -> dict[str, Any]:
    if not data:
        raise HelperProtocolError("empty message")
    if len(data) > MAX_MESSAGE:
        raise HelperProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HelperProtocolError(f"not a JSON message: {exc}") from None
    if not isinstance(obj, dict):
        raise HelperProtocolError("a message must be a JSON object")
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_config(value: Any) -> bool:
    """Option values as :func:`config_to_wire` writes them: strings, flags, counts and
    lists of strings (Config.from_mapping checks each one further)."""
    return isinstance(value, dict) and all(
        isinstance(key, str)
        and (
            isinstance(item, str | bool | int)
            or (isinstance(item, list) and all(isinstance(x, str) for x in item))
        )
        for key, item in value.items()
    )


def _is_owner(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 0 for v in value)


def _is_sockets(value: Any) -> bool:
    """(path, dev, inode) of each unix socket file the server bound (``--user``)."""
    return isinstance(value, list) and all(
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and _is_int(entry[1])
        and _is_int(entry[2])
        for entry in value
    )


def _is_ifname(value: Any) -> bool:
    return value is None or (isinstance(value, str) and _IFNAME.fullmatch(value) is not None)


def _is_ipv4(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False  # IPv4Address() would take an int too
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _is_flag(value: Any) -> bool:
    return isinstance(value, bool)


def _is_lan(value: Any) -> bool:
    try:
        check_lan_name(value if isinstance(value, str) else "")
    except ValueError:
        return False
    return True


def _any(value: Any) -> bool:
    return True  # checked as a whole by connect_args


#: The arguments each request may carry, and what each must look like.
_ARGS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "setup": {
        "config": _is_config,
        "owner": _is_owner,
        "sockets": _is_sockets,
        "several": _is_flag,
    },
    "start": {"uplink": _is_ifname, "host_address": _is_ipv4},
    "tap": {"lan": _is_lan},
    "connect": {"protocol": _any, "host": _any, "port": _any},
    "add": {"lan": _is_lan, "config": _is_config},
    "remove": {"lan": _is_lan},
}
#: The arguments a request cannot do without.
_REQUIRED: dict[str, tuple[str, ...]] = {"add": ("lan", "config"), "remove": ("lan",)}


def _check_request(op: Any, args: Any) -> Request:
    if op not in OPS:
        raise HelperProtocolError(f"unknown request {op!r:.40}")
    if not isinstance(args, dict):
        raise HelperProtocolError("request args must be an object")
    allowed = _ARGS[op]
    for key, value in args.items():
        check = allowed.get(key)
        if check is None:
            raise HelperProtocolError(f"{op}: unknown argument {key!r:.40}")
        if not check(value):
            raise HelperProtocolError(f"{op}: bad {key} {value!r:.60}")
    for key in _REQUIRED.get(op, ()):
        if key not in args:
            raise HelperProtocolError(f"{op}: {key} is missing")
    request = Request(op, args)
    if op == "connect":
        connect_args(request)
    return request


def encode_request(request: Request) -> bytes:
    _check_request(request.op, dict(request.args))
    return _dump({"op": request.op, "args": dict(request.args)})


def decode_request(data: bytes) -> Request:
    obj = _load(data)
    return _check_request(obj.get("op"), obj.get("args", {}))


def encode_reply(reply: Reply) -> bytes:
    if reply.ok:
        return _dump({"ok": True, "values": dict(reply.values)})
    # An error may quote the request (a bad config value): cut it, so that the reply to
    # a request of nearly MAX_MESSAGE bytes still fits and is sent.
    error = reply.error or "unknown error"
    if len(error) > _MAX_ERROR:
        error = error[:_MAX_ERROR] + "..."
    return _dump({"ok": False, "error": error})


def decode_reply(data: bytes) -> Reply:
    obj = _load(data)
    ok = obj.get("ok")
    if ok is True:
        values = obj.get("values", {})
        if not isinstance(values, dict):
            raise HelperProtocolError("reply values must be an object")
        return Reply(True, values)
    if ok is False:
        error = obj.get("error")
        if not isinstance(error, str):
            raise HelperProtocolError("an error reply needs an error text")
        return Reply(False, error=error)
    raise HelperProtocolError("a reply needs ok: true or false")


def lan_of(request: Request) -> str:
    """The LAN a ``tap``, ``add`` or ``remove`` is for (checked when decoded); a ``tap``
    without one is for the LAN ``setup`` built, which the helper keeps as ``default``."""
    return str(request.args.get("lan", DEFAULT_LAN))


# -- connect: the remote side of a port forward ------------------------------------------


def connect_request(protocol: str, host: str, port: int) -> Request:
    """A ``connect`` request, checked as the helper will check it."""
    request = Request("connect", {"protocol": protocol, "host": host, "port": port})
    connect_args(request)
    return request


def connect_args(request: Request) -> tuple[str, str, int]:
    """(protocol, host, port) of a ``connect`` request; the host must be an IP address
    (names are resolved by the server, from its leases) and the port 1-65535."""
    protocol, host, port = (request.args.get(k) for k in ("protocol", "host", "port"))
    if protocol not in PROTOCOLS:
        raise HelperProtocolError(f"connect: protocol must be tcp or udp, not {protocol!r}")
    if not isinstance(host, str):
        raise HelperProtocolError("connect: host must be an IP address")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise HelperProtocolError(f"connect: host must be an IP address, not {host!r}") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise HelperProtocolError(f"connect: port must be 1-65535, not {port!r}")
    return str(protocol), str(address), port


# -- the Config, as values Config.from_mapping reads back ---------------------------------


def _wire_value(kind: str, value: Any) -> Any:
    if kind == "list":
        return [str(v) for v in value]
    if kind in ("flag", "count"):
        return value
    return "" if value is None else str(value)


#: The server's options that say which LANs exist: one LAN's config (``add``, and the
#: ``setup`` of several LANs) is that LAN alone, so they do not go with it.
_LAN_LIST = ("lan", "lan_pool", "no_default_lan")


def config_to_wire(config: Config, *, one_lan: bool = False) -> dict[str, Any]:
    """Every option as JSON values, in the syntax a config file would use; with
    ``one_lan``, ``config`` is one LAN's view (``Config.for_lan``) and is sent as such."""
    values = config.values()
    return {
        name: _wire_value(spec.kind, values[name])
        for name, spec in OPTIONS.items()
        if not (one_lan and name in _LAN_LIST)
    }


def config_from_wire(values: Mapping[str, Any]) -> Config:
    return Config.from_mapping(values, source="rootless helper request")
