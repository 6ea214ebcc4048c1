"""Reading /proc: who holds a port, which processes a killed run left behind.

These are plain blocking functions for worker threads. They answer two questions the
server must be able to answer without any tool installed: "which process already has
UDP port 53 on our address?" (so the error names it instead of showing a traceback) and
"which dnsmasq did an earlier run of ours leave running in this network namespace?".
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "PortHolder",
    "describe_process",
    "iter_processes",
    "net_namespace_id",
    "parse_proc_net",
    "pid_is_wsnic",
    "port_holders",
]

_SOCKET_LINK = re.compile(r"^socket:\[(\d+)\]$")


def net_namespace_id(pid: int | str = "self") -> int | None:
    """The inode of a process's network namespace: equal inodes mean the same namespace."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def iter_processes() -> Iterator[tuple[int, list[str]]]:
    """Every live process with its argv (kernel threads, having none, are left out)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = read_cmdline(int(entry))
            if argv:
                yield int(entry), argv


def describe_process(pid: int) -> str:
    """``name (pid N: argv...)`` for an error message a user can act on."""
    argv = read_cmdline(pid)
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        name = os.path.basename(argv[0]) if argv else "?"
    shown = " ".join(argv)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return f"{name} (pid {pid}: {shown})" if shown else f"{name} (pid {pid})"


@dataclasses.dataclass(frozen=True)
class ProcSocket:
    """One line of /proc/net/{udp,tcp}."""

    address: ipaddress.IPv4Address
    port: int
    state: int
    inode: int


def parse_proc_net(text: str) -> list[ProcSocket]:
    """Parse /proc/net/udp or /proc/net/tcp (IPv4, addresses in host byte order hex)."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        addr_hex, port_hex = fields[1].split(":")
        address = ipaddress.IPv4Address(socket.inet_ntoa(struct.pack("=I", int(addr_hex, 16))))
        out.append(ProcSocket(address, int(port_hex, 16), int(fields[3], 16), int(fields[9])))
    return out


_TCP_LISTEN = 0x0A


@dataclasses.dataclass(frozen=True)
class PortHolder:
    proto: str
    address: ipaddress.IPv4Address
    port: int
    pid: int | None

    def describe(self) -> str:
        who = describe_process(self.pid) if self.pid is not None else "an unknown process"
        return f"{self.port}/{self.proto} on {self.address} is held by {who}"


def _socket_owners(inodes: set[int]) -> dict[int, int]:
    """Map socket inode -> pid by walking /proc/*/fd (socket inodes are unique host-wide)."""
    owners: dict[int, int] = {}
    if not inodes:
        return owners
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            m = _SOCKET_LINK.match(target)
            if m and int(m.group(1)) in inodes:
                owners.setdefault(int(m.group(1)), int(entry))
    return owners


def port_holders(
    ports: Iterable[int], address: ipaddress.IPv4Address, *, exclude_pid: int | None = None
) -> list[PortHolder]:
    """Sockets that keep us from binding ``address`` on one of ``ports``.

    A socket on the same address or on the wildcard 0.0.0.0 conflicts; for TCP only
    listening sockets count.
    """
    wanted = set(ports)
    wildcard = ipaddress.IPv4Address(0)
    found: list[tuple[str, ProcSocket]] = []
    for proto in ("udp", "tcp"):
        try:
            text = Path(f"/proc/net/{proto}").read_text()
        except OSError:
            continue
        for sock in parse_proc_net(text):
            if sock.port not in wanted or sock.address not in (address, wildcard):
                continue
            if proto == "tcp" and sock.state != _TCP_LISTEN:
                continue
            found.append((proto, sock))
    owners = _socket_owners({sock.inode for _, sock in found})
    holders = []
    for proto, sock in found:
        pid = owners.get(sock.inode)
        if exclude_pid is not None and pid == exclude_pid:
            continue
        holders.append(PortHolder(proto, sock.address, sock.port, pid))
    return holders


def pid_is_wsnic(pid: int) -> bool:
    """True when ``pid`` is a live wsnic-trio process (not merely a reused pid)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"wsnic" in cmdline
