"""Host names with several addresses: dial any of them, listen on all of them.

A name such as ``localhost`` resolves to more than one address on most hosts (Debian's
/etc/hosts gives it ::1 and 127.0.0.1). A dialler that tries only the first address
fails whenever the server listens on another, and a listener that binds only the first
leaves clients of the other family out. :func:`connect_any` tries every address, Happy
Eyeballs style (RFC 8305: families interleaved, a new attempt every 250 ms while the
earlier ones still run, the first to connect wins), and when all fail its one error
names each address and why it failed. :func:`bind_all_addresses` binds every address
a name resolves to, or none; it and the port forwards' local sides (one address, TCP
or UDP) make their sockets with :func:`listen_socket`.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import trio

from wsnic_trio.errors import SetupError

__all__ = [
    "Address",
    "all_failed",
    "bind_all_addresses",
    "connect_any",
    "interleave",
    "listen_socket",
    "resolve_all",
    "show_addresses",
]

#: RFC 8305's recommended "Connection Attempt Delay".
ATTEMPT_DELAY = 0.25

_BIND_HINTS = {
    errno.EADDRINUSE: " (another program is listening there; pick another port)",
    errno.EADDRNOTAVAIL: " (no interface of this host has that address)",
    errno.EACCES: " (permission denied)",
}


@dataclasses.dataclass(frozen=True)
class Address:
    """One result of ``getaddrinfo`` for a stream socket."""

    family: socket.AddressFamily
    sockaddr: tuple[Any, ...]

    @property
    def ip(self) -> str:
        return str(self.sockaddr[0])

    def __str__(self) -> str:
        host, port = self.sockaddr[0], self.sockaddr[1]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"


def _addresses(infos: Iterable[tuple[Any, ...]]) -> list[Address]:
    found: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = Address(family, tuple(sockaddr))
        if address not in found:  # getaddrinfo may repeat one (e.g. two hosts lines)
            found.append(address)
    return found


def interleave(addresses: Sequence[Address]) -> list[Address]:
    """The resolver's order, but alternating families, starting with the first one's.

    So that a dead family costs one attempt delay, not one per address of it.
    """
    if not addresses:
        return []
    first = addresses[0].family
    ours = [a for a in addresses if a.family == first]
    others = [a for a in addresses if a.family != first]
    mixed: list[Address] = []
    for i in range(max(len(ours), len(others))):
        mixed.extend(group[i] for group in (ours, others) if i < len(group))
    return mixed


def show_addresses(addresses: Iterable[Address]) -> str:
    return ", ".join(address.ip for address in addresses)


async def resolve_all(host: str, port: int) -> list[Address]:
    """Every address of ``host`` for a TCP connection; ``socket.gaierror`` names the host."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise socket.gaierror(exc.errno, f"cannot resolve {host!r}: {exc.strerror}") from None
    found = _addresses(infos)
    if not found:
        raise socket.gaierror(socket.EAI_NONAME, f"{host!r} has no IPv4 or IPv6 address")
    return found


async def _attempt(address: Address) -> socket.socket:
    """One non-blocking connect; OSError (with only the reason) when it fails."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        err = sock.connect_ex(address.sockaddr)
        if err == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return sock


async def connect_any(
    host: str,
    port: int,
    *,
    deadline: float,
    target: str | None = None,
    attempt_delay: float = ATTEMPT_DELAY,
) -> socket.socket:
    """A connected, non-blocking TCP socket to any address of ``host``.

    Attempts start ``attempt_delay`` apart (sooner when the previous one has already
    failed) and run side by side until one connects or ``deadline`` (Trio time)
    passes. When none connects, the OSError names every address and its fate, e.g.
    ``cannot connect to localhost:80 ([::1]:80: Connection refused; 127.0.0.1:80:
    Connection refused)``; its errno is that of the first failure. ``target`` is how
    the message names what was dialled (default ``host:port``).
    """
    target = target or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    addresses: list[Address] = []
    with trio.move_on_at(deadline) as resolving:
        addresses = interleave(await resolve_all(host, port))
    if resolving.cancelled_caught:
        raise OSError(errno.ETIMEDOUT, f"cannot connect to {target}: resolving {host} timed out")
    outcome: dict[Address, OSError | None] = {}
    winner: list[socket.socket] = []

    async def attempt(address: Address, failed: trio.Event) -> None:
        try:
            sock = await _attempt(address)
        except OSError as exc:
            outcome[address] = exc
            failed.set()
            return
        if winner:  # another attempt won meanwhile
            sock.close()
            return
        winner.append(sock)
        nursery.cancel_scope.cancel()

    try:
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for address in addresses:
                    outcome[address] = None  # started, no result yet
                    failed = trio.Event()
                    nursery.start_soon(attempt, address, failed)
                    with trio.move_on_after(attempt_delay):
                        await failed.wait()
    except BaseException:
        for sock in winner:  # cancelled from outside just as one connected
            sock.close()
        raise
    if winner:
        return winner[0]
    raise all_failed(target, addresses, outcome)


def all_failed(
    target: str, addresses: Sequence[Address], outcome: dict[Address, OSError | None]
) -> OSError:
    """The one error for a dial that failed everywhere: each address and why."""
    reasons: list[str] = []
    errnos: list[int] = []
    for address in addresses:
        if address not in outcome:
            reasons.append("not tried (out of time)")
        elif (exc := outcome[address]) is None:
            reasons.append("timed out")
        else:
            reasons.append(exc.strerror or str(exc))
            errnos.append(exc.errno or errno.EIO)
    code = errnos[0] if errnos else errno.ETIMEDOUT
    if len(addresses) == 1:
        return OSError(code, f"cannot connect to {target}: {reasons[0]}")
    tried = "; ".join(f"{a}: {why}" for a, why in zip(addresses, reasons, strict=True))
    return OSError(code, f"cannot connect to {target} ({tried})")


def bind_all_addresses(host: str, port: int, what: str, *, backlog: int) -> list[socket.socket]:
    """Listening, non-blocking TCP sockets on every address of ``host``, or SetupError.

    Bound now (before the host is touched), so a taken port fails early. A lone IPv6
    address is bound dual-stack (``::`` then also takes IPv4); next to IPv4 addresses
    it is bound IPv6-only, so ``::`` and ``0.0.0.0`` can both be bound. With port 0
    every socket gets the port the first one was given.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SetupError(f"{what}: cannot resolve address {host!r}: {exc.strerror}") from None
    addresses = _addresses(infos)
    if not addresses:
        raise SetupError(f"{what}: {host!r} has no IPv4 or IPv6 address")
    v6only = any(a.family == socket.AF_INET for a in addresses)
    made: list[socket.socket] = []
    try:
        for address in addresses:
            sockaddr = address.sockaddr
            if made and port == 0:
                sockaddr = (sockaddr[0], made[0].getsockname()[1], *sockaddr[2:])
            made.append(listen_socket(address.family, sockaddr, v6only=v6only, backlog=backlog))
    except OSError as exc:
        for sock in made:
            sock.close()
        name = address.ip
        hint = _BIND_HINTS.get(exc.errno or 0, "")
        several = f" ({host} is {show_addresses(addresses)})" if len(addresses) > 1 else ""
        raise SetupError(
            f"{what}: cannot listen on {name} port {port}{several}: {exc.strerror}{hint}"
        ) from None
    return made


def listen_socket(
    family: socket.AddressFamily,
    sockaddr: tuple[Any, ...],
    *,
    kind: socket.SocketKind = socket.SOCK_STREAM,
    v6only: bool | None = None,
    backlog: int = 128,
) -> socket.socket:
    """One non-blocking socket bound to ``sockaddr`` (and listening, for TCP); OSError.

    The part every listener shares: :func:`bind_all_addresses` (a name's every address,
    its own errors) and the port forwards (one given IP address, TCP or UDP, their own
    errors) both bind through it. On TCP, SO_REUSEADDR overrides only TIME_WAIT
    leftovers: a live listener still says EADDRINUSE. ``v6only`` None leaves an IPv6
    socket as the host's default has it (``net.ipv6.bindv6only``).
    """
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(sockaddr)
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def normalize_ip(host: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 (``::ffff:1.2.3.4``, as a dual-stack
    listener reports IPv4 clients) becomes ``1.2.3.4``; IPv6 is compressed; a scope id
    stays. Limits, logs and the API all key clients by this form."""
    addr, pct, scope = host.partition("%")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip) + pct + scope


def peer_address(addr: object) -> tuple[str, str | None]:
    """``(remote, remote_ip)`` of a socket peer address: ``1.2.3.4:5678`` or
    ``[2001:db8::1]:5678`` and the bare normalized IP; for anything that is not an
    (host, port, ...) tuple (unix sockets), ``(str(addr), None)``."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        ip = normalize_ip(str(addr[0]))
        host = f"[{ip}]" if ":" in ip else ip
        return f"{host}:{addr[1]}", ip
    return str(addr), None
