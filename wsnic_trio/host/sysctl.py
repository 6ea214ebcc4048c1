"""Per-namespace sysctls the server may change, read and written through /proc/sys.

``net.ipv4.ip_forward`` (for NAT) is the only one of the whole namespace that is
changed; the others belong to devices the server made and go away with them. Values
are strings, exactly as the kernel shows them, so restoring writes back the very text
that was read.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "IP_FORWARD",
    "answer_arp_for_own_address",
    "ignore_ipv6_routers",
    "read_sysctl",
    "write_sysctl",
]

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


def answer_arp_for_own_address(device: str) -> bool:
    """Make a bridge we created answer ARP only for its own address.

    Linux answers an ARP request on any interface for any of the host's addresses
    (``arp_ignore=0``): a client of one LAN would learn the bridge MAC for another LAN's
    gateway, and so see which other LANs exist. ``arp_ignore=1`` answers only for an
    address on the interface the request came in on; ``arp_announce=2`` makes the host's
    own requests on the bridge name the bridge's address as their sender, never another
    LAN's. Like :func:`ignore_ipv6_routers`, these go with the device. False when
    /proc/sys cannot be written.
    """
    conf = Path("/proc/sys/net/ipv4/conf") / device
    try:
        (conf / "arp_ignore").write_text("1\n")
        (conf / "arp_announce").write_text("2\n")
    except OSError:
        return False
    return True
