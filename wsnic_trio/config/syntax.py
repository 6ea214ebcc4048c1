"""The syntax of option values: each parser turns one string into a typed value, or
raises ValueError saying what is wrong (the caller adds where the value came from)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from wsnic_trio.config.endpoints import (
    ApiEndpoint,
    ForwardSpec,
    parse_api_endpoint,
    parse_forward,
    parse_qemu_endpoint,
)
from wsnic_trio.config.origins import OriginPattern, parse_origin_pattern

# Largest MTU a TAP or bridge accepts, and the largest frame the QEMU stream framing
# can carry comfortably; VM-only LANs may use it for big TCP segments.
MAX_MTU = 65520
MIN_MTU = 68
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a TCP port (0-65535)")
    return port


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text} must be greater than 0")
    return value


def subnet(text: str) -> ipaddress.IPv4Network:
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


def ifname(text: str) -> str:
    if not _IFNAME.match(text):
        raise ValueError(f"{text!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return text


def mtu(text: str) -> int:
    mtu = int(text)
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"MTU {mtu} is outside {MIN_MTU}-{MAX_MTU}")
    return mtu


# -- security options (see docs/security.md) -------------------------------------------

_SIZE_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def byte_rate(text: str) -> float:
    """Bytes per second, with an optional k/M/G suffix (decimal); 0 means off."""
    t = text.strip().lower().removesuffix("b/s").removesuffix("/s").removesuffix("b")
    unit = t[-1:] if t[-1:] in _SIZE_SUFFIX else ""
    value = float(t[: len(t) - len(unit)]) * _SIZE_SUFFIX[unit]
    if value < 0:
        raise ValueError(f"{text} must not be negative")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} must not be negative (0 means no limit)")
    return value


def lock_mac(text: str) -> str:
    if text not in ("off", "ws", "all"):
        raise ValueError(f"{text!r} is not one of off, ws, all")
    return text


def path(text: str) -> Path | None:
    return Path(text) if text else None


def origin_pattern(text: str) -> OriginPattern:
    return parse_origin_pattern(text)  # the admission policy owns the syntax


# -- VM transports (see docs/transports/) ----------------------------------------------


def stream_endpoint(text: str) -> str:
    return str(parse_qemu_endpoint(text))


def socket_path(text: str) -> str:
    if "\0" in text or len(text.encode()) > 107:
        raise ValueError(f"{text!r} is not a usable unix socket path (at most 107 bytes)")
    return text


class FileMode(int):
    """A permission mode that prints in octal (``--help`` shows 0660, not 432)."""

    def __str__(self) -> str:
        return f"0{self:o}"

    __repr__ = __str__


def file_mode(text: str) -> int:
    try:
        mode = FileMode(int(text, 8))
    except ValueError:
        raise ValueError(f"{text!r} is not an octal file mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{text!r} is not a file mode (0000-0777)")
    return mode


def peer_count(text: str) -> int:
    count = int(text)
    if count < 1:
        raise ValueError(f"{count} must be at least 1")
    return count


# -- DHCP, DNS and NAT options (see docs/dhcp-dns-nat.md) ------------------------------

_DOMAIN_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MIN_LEASE_TIME = 120  # dnsmasq's own lower limit, in seconds


def lease_time(text: str) -> int:
    seconds = int(text)
    if seconds < MIN_LEASE_TIME:
        raise ValueError(f"lease time {seconds} s is shorter than dnsmasq's minimum of 120 s")
    return seconds


def domain(text: str) -> str:
    name = text.lower().rstrip(".")
    if not name or len(name) > 253 or not all(_DOMAIN_LABEL.match(x) for x in name.split(".")):
        raise ValueError(f"{text!r} is not a DNS domain name such as lan or example.internal")
    return name


def ipv4_address(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address such as 192.168.86.1") from None


def ipv4_network(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 network such as 10.0.0.0/8") from None


def optional_ifname(text: str) -> str | None:
    return ifname(text) if text else None


def optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def optional_account(text: str) -> str | None:
    """A user or group name (or numeric id) for --user/--group; looked up at start."""
    if text and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", text):
        raise ValueError(f"{text!r} is not a user or group name")
    return text or None


UPLINKS = ("slirp4netns", "pasta")


def uplink(text: str) -> str:
    if text not in UPLINKS:
        raise ValueError(f"{text!r} is not one of {', '.join(UPLINKS)}")
    return text


# -- control API, forwards and capture (see docs/api.md) -------------------------------


def api_endpoint(text: str) -> ApiEndpoint:
    return parse_api_endpoint(text)


def forward(text: str) -> ForwardSpec:
    return parse_forward(text)


def byte_size(text: str) -> int:
    """A size in bytes with an optional k/M/G suffix (decimal)."""
    size = int(byte_rate(text))
    if size < 1024:
        raise ValueError(f"{text} is too small (at least 1024 bytes)")
    return size


def optional_pool(text: str) -> ipaddress.IPv4Network | None:
    return subnet(text) if text else None


def lan_prefix(text: str) -> int:
    value = int(text.removeprefix("/"))
    if not 8 <= value <= 30:
        raise ValueError(f"/{value} is no LAN size: give a prefix length from 8 to 30")
    return value
