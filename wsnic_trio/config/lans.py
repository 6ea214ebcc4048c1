"""Several LANs in one server: their names, the bridge each one gets, where their subnets
come from, and which LAN a WebSocket URL asks for.

All of it is pure: the server asks these functions and keeps the state itself.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from wsnic_trio.errors import ConfigError
from wsnic_trio.util.text import printable

__all__ = [
    "DEFAULT_LAN",
    "LAN_PATH_PREFIX",
    "LanPath",
    "LanSpec",
    "SubnetPool",
    "bridge_name",
    "check_disjoint",
    "check_lan_name",
    "lan_from_path",
]

#: The name of the LAN the existing options configure (and ``/`` joins).
DEFAULT_LAN = "default"
#: ``ws://HOST:PORT/lan/NAME`` joins LAN NAME.
LAN_PATH_PREFIX = "/lan/"

_NAME = re.compile(r"[a-z0-9-]{1,32}")
_NAME_RULE = "a LAN name is 1 to 32 lowercase letters, digits and '-'"
#: Linux's limit for interface names (IFNAMSIZ - 1).
IFNAME_MAX = 15
_BRIDGE_PREFIX = "wsl-"


@dataclasses.dataclass(frozen=True)
class LanSpec:
    """One named LAN as the user wrote it: ``--lan NAME=CIDR[,KEY=VALUE...]`` or a
    ``[lan.NAME]`` table. The values are raw; :class:`~wsnic_trio.config.Config` checks
    them as LAN options."""

    name: str
    values: tuple[tuple[str, Any], ...]

    def __str__(self) -> str:
        return ",".join([self.name, *(f"{k}={v}" for k, v in self.values)])


def parse_lan_spec(text: str | LanSpec) -> LanSpec:
    """``NAME=CIDR[,KEY=VALUE...]``: the LAN's name and subnet, then any LAN options."""
    if isinstance(text, LanSpec):
        return text
    head, *rest = text.split(",")
    name, sep, subnet = head.partition("=")
    if not sep or not subnet:
        raise ValueError(f"{text!r}: write NAME=CIDR[,KEY=VALUE...] (class3=10.86.3.0/24)")
    values: list[tuple[str, Any]] = [("subnet", subnet.strip())]
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{text!r}: {item!r} is not KEY=VALUE")
        values.append((key.strip(), value.strip()))
    return LanSpec(check_lan_name(name.strip()), tuple(values))


def check_lan_name(name: str) -> str:
    """``name`` if it may name a LAN; ValueError saying the rule otherwise."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r}: {_NAME_RULE}")
    return name


def bridge_name(lan: str) -> str:
    """The bridge of LAN ``lan``: ``wsl-NAME`` when that fits in 15 characters, else
    ``wsl-`` + the name's first 5 characters + ``.`` + 5 characters of its hash.

    A LAN name cannot contain ``.``, so a short name never takes a long name's bridge;
    two long names meet only if their hashes do (1 in 2**25), which the server checks.
    """
    short = _BRIDGE_PREFIX + lan
    if len(short) <= IFNAME_MAX:
        return short
    digest = base64.b32encode(hashlib.sha256(lan.encode()).digest()).decode().lower()
    return f"{_BRIDGE_PREFIX}{lan[:5]}.{digest[:5]}"


def check_disjoint(subnets: Mapping[str, ipaddress.IPv4Network]) -> None:
    """ConfigError naming the first two LANs whose subnets overlap."""
    seen: list[tuple[str, ipaddress.IPv4Network]] = []
    for name, subnet in subnets.items():
        for other, taken in seen:
            if subnet.overlaps(taken):
                raise ConfigError(
                    f"LAN {name!r} ({subnet}) overlaps LAN {other!r} ({taken}): every LAN "
                    "needs a subnet of its own"
                )
        seen.append((name, subnet))


class SubnetPool:
    """``--lan-pool`` cut into ``--lan-prefix`` blocks: the next free one for each LAN made
    on demand, skipping every subnet in use (configured LANs, the host's own routes)."""

    def __init__(self, pool: ipaddress.IPv4Network, prefix: int) -> None:
        if not pool.prefixlen <= prefix <= 30:
            raise ConfigError(
                f"--lan-prefix {prefix}: must lie between the pool's /{pool.prefixlen} and /30"
            )
        self.pool = pool
        self.prefix = prefix
        self._given: set[ipaddress.IPv4Network] = set()

    @property
    def size(self) -> int:
        return 1 << (self.prefix - self.pool.prefixlen)

    def take(self, avoid: Iterable[ipaddress.IPv4Network] = ()) -> ipaddress.IPv4Network | None:
        """The lowest free block that overlaps nothing in ``avoid``; None when all are used."""
        blocked = [*avoid, *self._given]
        for block in self.pool.subnets(new_prefix=self.prefix):
            if not any(block.overlaps(other) for other in blocked):
                self._given.add(block)
                return block
        return None

    def give_back(self, subnet: ipaddress.IPv4Network) -> None:
        self._given.discard(subnet)

    @property
    def in_use(self) -> int:
        return len(self._given)


@dataclasses.dataclass(frozen=True)
class LanPath:
    """What a WebSocket request path asks for."""

    #: The LAN's name; None: the default LAN (``/``, or any path while no LAN is named).
    lan: str | None
    #: Why the path names no LAN that may exist (shown in the 404); None when it does.
    problem: str | None = None


def lan_from_path(path: str, *, named: bool) -> LanPath:
    """The LAN a request path (without its query) joins.

    While the server has no named LANs (``named`` false) every path joins the default
    LAN, exactly as wsnic does. Once it has, ``/`` is the default LAN, ``/lan/NAME``
    (with or without a trailing ``/``) is LAN NAME, and any other path is a mistake the
    client must hear about rather than land on some other LAN.
    """
    path = path.split("?", 1)[0]
    if not named:
        return LanPath(None)
    if path in ("", "/"):
        return LanPath(None)
    if path.startswith(LAN_PATH_PREFIX):
        name = path[len(LAN_PATH_PREFIX) :]
        name = name[:-1] if name.endswith("/") else name
        if _NAME.fullmatch(name):
            return LanPath(name)
        return LanPath(None, f"'{printable(name, 40)}' is not a LAN name ({_NAME_RULE})")
    return LanPath(None, f"'{printable(path, 60)}' is no LAN path: use / or {LAN_PATH_PREFIX}NAME")
