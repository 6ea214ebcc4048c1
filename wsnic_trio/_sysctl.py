"""Per-namespace sysctls the server may change, read and written through /proc/sys.

Only ``net.ipv4.ip_forward`` is changed today (for NAT). Values are strings, exactly as
the kernel shows them, so restoring writes back the very text that was read.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["IP_FORWARD", "read_sysctl", "write_sysctl"]

IP_FORWARD = "net.ipv4.ip_forward"


def _path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str:
    return _path(name).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    _path(name).write_text(value + "\n")
