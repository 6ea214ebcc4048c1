"""Per-namespace sysctls the server may change, read and written through /proc/sys.

Only ``net.ipv4.ip_forward`` is changed today (for NAT). Values are strings, exactly as
the kernel shows them, so restoring writes back the very text that was read.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["IP_FORWARD", "ignore_ipv6_routers", "read_sysctl", "write_sysctl"]

IP_FORWARD = "net.ipv4.ip_forward"


def _path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str:
    return _path(name).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    _path(name).write_text(value + "\n")


#: Per-device IPv6 settings that let a LAN client configure the host: router
#: advertisements (routes, default route, addresses by SLAAC) and ICMPv6 redirects.
_ROUTER_TRUST = ("accept_ra", "autoconf", "accept_redirects")


def ignore_ipv6_routers(device: str, *, no_ipv6: bool = False) -> bool:
    """Make a device we created deaf to what a client could claim as an IPv6 router.

    These are the device's own sysctls: they go away with the device, so there is
    nothing to restore. ``no_ipv6`` turns IPv6 off on it altogether (a bridge port
    needs no addresses of its own). A host without IPv6 has nothing to change. False
    when /proc/sys cannot be written (a read-only mount in some containers): the
    server's frame rules still drop every router advertisement from clients.
    """
    conf = Path("/proc/sys/net/ipv6/conf") / device
    if not conf.is_dir():
        return True
    settings = dict.fromkeys(_ROUTER_TRUST, "0")
    if no_ipv6:
        settings["disable_ipv6"] = "1"
    try:
        for name, value in settings.items():
            (conf / name).write_text(value + "\n")
    except OSError:
        return False
    return True
