"""The syntax of control API endpoints and port forwards, shared by the CLI, the config
file and the API itself (so ``--forward`` and ``POST /forwards`` accept the same text
and say the same thing about a mistake). Sans-IO: no sockets, no trio.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Literal

__all__ = [
    "ApiEndpoint",
    "Endpoint",
    "ForwardSpec",
    "check_remote",
    "make_forward",
    "parse_api_endpoint",
    "parse_endpoint",
    "parse_forward",
    "parse_host_port",
]

# RFC 1123 host names, optionally qualified (a DHCP client's hostname, or NAME.DOMAIN).
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

Protocol = Literal["tcp", "udp"]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A stream endpoint: a unix socket path, or a TCP host and port (the control API's
    ``--api``, and QEMU's ``--qemu`` / ``--qemu-connect``)."""

    kind: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_host_port(text: str, what: str, *, allow_name: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; HOST is an IP literal unless ``allow_name``."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{what} {text!r} is not [ADDRESS]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{what} {text!r} is not HOST:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {text!r}: {port_text!r} is not a port (0-65535)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not allow_name or not _HOSTNAME.match(host):
            kind = "an IP address or host name" if allow_name else "an IP address"
            raise ValueError(f"{what} {text!r}: {host!r} is not {kind}") from None
    return host, int(port_text)


ApiEndpoint = Endpoint


def parse_endpoint(text: str, what: str = "address", *, allow_name: bool = False) -> Endpoint:
    """``unix:PATH`` or ``tcp:HOST:PORT`` (``tcp:[V6]:PORT``); ValueError says what is wrong."""
    kind, sep, rest = text.strip().partition(":")
    if sep and kind == "unix":
        if not rest or "\0" in rest or len(rest.encode()) > 107:
            raise ValueError(f"{text!r}: not a usable unix socket path (1-107 bytes)")
        return Endpoint("unix", path=rest)
    if sep and kind == "tcp":
        host, port = parse_host_port(rest, what, allow_name=allow_name)
        return Endpoint("tcp", host=host, port=port)
    raise ValueError(
        f"{text!r} is not unix:PATH or tcp:HOST:PORT (e.g. unix:/run/wsnic/x.sock, "
        "tcp:127.0.0.1:9000)"
    )


def parse_qemu_endpoint(text: str) -> Endpoint:
    """``unix:PATH`` / ``tcp:HOST:PORT`` for ``--qemu`` and ``--qemu-connect``."""
    endpoint = parse_endpoint(text, "QEMU address", allow_name=True)
    if endpoint.kind == "tcp" and endpoint.port == 0:
        raise ValueError(f"{text!r}: QEMU needs a fixed port, not 0")
    return endpoint


def parse_api_endpoint(text: str) -> Endpoint:
    return parse_endpoint(text, "API address")


@dataclasses.dataclass(frozen=True)
class ForwardSpec:
    """A port forward: connections to ``local`` (on the server's host) reach ``remote``
    (on the LAN). ``remote_host`` is an address, or a name looked up in the DHCP leases
    each time a connection (or UDP session) starts."""

    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    protocol: Protocol = "tcp"

    @property
    def local(self) -> str:
        return _join(self.local_host, self.local_port)

    @property
    def remote(self) -> str:
        return _join(self.remote_host, self.remote_port)

    def __str__(self) -> str:
        suffix = "/udp" if self.protocol == "udp" else ""
        return f"{self.local}={self.remote}{suffix}"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_forward(local: str, remote: str, protocol: str = "tcp") -> ForwardSpec:
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"protocol {protocol!r} is not tcp or udp")
    local_host, local_port = parse_host_port(local, "local address")
    remote_host, remote_port = parse_host_port(remote, "remote address", allow_name=True)
    if remote_port == 0:
        raise ValueError(f"remote address {remote!r}: port 0 is not a destination")
    proto: Protocol = "udp" if protocol == "udp" else "tcp"
    return ForwardSpec(local_host, local_port, remote_host.lower(), remote_port, proto)


def parse_forward(text: str) -> ForwardSpec:
    """``LOCAL=REMOTE`` or ``LOCAL=REMOTE/udp`` (``/tcp`` is the default)."""
    spec, _, protocol = text.strip().partition("/")
    local, sep, remote = spec.partition("=")
    if not sep:
        raise ValueError(
            f"{text!r} is not LOCAL=REMOTE[/udp], e.g. 127.0.0.1:2222=192.168.86.23:22"
        )
    return make_forward(local, remote, protocol or "tcp")


def check_remote(host: str, subnet: ipaddress.IPv4Network) -> str | None:
    """Why ``host`` cannot be a forward's destination on this LAN, or None.

    Forwards reach into the LAN only: anything else would turn the server into an open
    proxy toward the host's own networks.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: resolved through the leases, which are all on the LAN
    if address not in subnet:
        return f"remote {host} is outside the LAN {subnet}"
    if address in (subnet.network_address, subnet.broadcast_address):
        return f"remote {host} is the LAN's network or broadcast address"
    if address == subnet.network_address + 1:
        return f"remote {host} is the bridge (this host itself); forward to a client"
    return None
