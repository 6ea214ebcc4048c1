"""Every netlink call of the server, as plain blocking functions for worker threads.

pyroute2's sync ``IPRoute`` keeps per-thread state, so each function opens its own
socket (``with IPRoute()``) and never shares it across Trio's thread cache. Callers run
these through ``trio.to_thread.run_sync``; none of them is on the per-frame path.

Devices we create carry an ``ifalias`` that starts with :data:`ALIAS_PREFIX` and names
the creating process, so a later run can tell its own leftovers from a device that
belongs to somebody else.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wsnic_trio.errors import SetupError, TapUnavailable
from wsnic_trio.host.sysctl import answer_arp_for_own_address, ignore_ipv6_routers
from wsnic_trio.host.tap import open_tap_fd

__all__ = [
    "ALIAS_PREFIX",
    "LinkInfo",
    "create_bridge",
    "create_tap_on_bridge",
    "default_route_interface",
    "delete_link",
    "find_link",
    "our_bridges",
    "owner_alias",
    "parse_owner",
]

ALIAS_PREFIX = "wsnic-trio"

log = logging.getLogger("wsnic_trio.netlink")


def owner_alias(role: str, pid: int | None = None) -> str:
    """The ifalias that marks a device as created by this process."""
    return f"{ALIAS_PREFIX} {role} pid={os.getpid() if pid is None else pid}"


def parse_owner(alias: str | None) -> int | None:
    """The owning pid of one of our devices, or None when the alias is not ours."""
    if not alias or not alias.startswith(ALIAS_PREFIX + " "):
        return None
    for word in alias.split():
        if word.startswith("pid="):
            try:
                return int(word[4:])
            except ValueError:
                return 0
    return 0


@dataclasses.dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    kind: str | None
    alias: str | None
    master: int | None


def _info(msg: object) -> LinkInfo:
    get = msg.get  # type: ignore[attr-defined]
    linkinfo = get("IFLA_LINKINFO")
    kind = linkinfo.get("IFLA_INFO_KIND") if linkinfo is not None else None
    return LinkInfo(
        index=int(get("index")),
        name=str(get("IFLA_IFNAME")),
        kind=kind,
        alias=get("IFLA_IFALIAS"),
        master=get("IFLA_MASTER"),
    )


def find_link(name: str) -> LinkInfo | None:
    with IPRoute() as ipr:
        try:
            msgs = ipr.get_links(ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return _info(msgs[0]) if msgs else None


def our_bridges() -> dict[str, int]:
    """Every bridge in this namespace that a wsnic-trio process made (by its alias): its
    maker's pid, by name."""
    with IPRoute() as ipr:
        links = [_info(msg) for msg in ipr.get_links()]
    return {
        link.name: owner
        for link in links
        if link.kind == "bridge" and (owner := parse_owner(link.alias)) is not None
    }


def delete_link(name: str) -> bool:
    """Delete a link by name; False when it was already gone."""
    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
    return True


def create_bridge(
    name: str, mac: str, address: ipaddress.IPv4Interface, mtu: int, alias: str
) -> None:
    """Create the LAN's bridge with its address and bring it up (STP off, no forward delay)."""
    with IPRoute() as ipr:
        try:
            ipr.link(
                "add",
                ifname=name,
                kind="bridge",
                address=mac,
                mtu=mtu,
                br_stp_state=0,
                br_forward_delay=0,
            )
        except NetlinkError as exc:
            raise SetupError(f"cannot create bridge {name}: {os.strerror(exc.code)}") from None
        if not ignore_ipv6_routers(name):
            log.warning(
                "cannot turn off accept_ra/autoconf/accept_redirects on %s (read-only "
                "/proc/sys?); router advertisements from clients are still dropped",
                name,
            )
        if not answer_arp_for_own_address(name):
            log.warning(
                "cannot set arp_ignore/arp_announce on %s (read-only /proc/sys?); its "
                "clients get ARP answers for the host's other addresses",
                name,
            )
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, ifalias=alias)
        ipr.addr(
            "add",
            index=index,
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
            broadcast=str(address.network.broadcast_address),
        )
        ipr.link("set", index=index, state="up")


def create_tap_on_bridge(
    pattern: str,
    bridge: str,
    mtu: int,
    alias: str,
    mac: str | None = None,
    txqlen: int | None = None,
) -> tuple[int, str]:
    """Create a TAP, attach it to ``bridge`` and bring it up; returns (fd, name).

    One netlink request does it all (MTU, alias, queue length, master, up). If it fails
    the fd is closed, which deletes the TAP again.
    """
    fd, name = open_tap_fd(pattern)
    try:
        ignore_ipv6_routers(name, no_ipv6=True)
        # if_nametoindex is one ioctl; pyroute2's link_lookup is a netlink round trip.
        index = socket.if_nametoindex(name)
        try:
            master = socket.if_nametoindex(bridge)
        except OSError:
            raise TapUnavailable(f"bridge {bridge} is gone") from None
        with IPRoute() as ipr:
            settings: dict[str, object] = {"mtu": mtu, "ifalias": alias, "master": master}
            if mac is not None:
                settings["address"] = mac
            if txqlen is not None:
                settings["txqlen"] = txqlen
            ipr.link("set", index=index, state="up", **settings)
    except NetlinkError as exc:
        os.close(fd)
        raise _attach_failure(exc.code, bridge) from None
    except OSError as exc:
        os.close(fd)
        raise _attach_failure(exc.errno or errno.EIO, bridge) from None
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _attach_failure(code: int, bridge: str) -> TapUnavailable:
    if code == errno.EXFULL:
        try:
            ports = len(os.listdir(f"/sys/class/net/{bridge}/brif"))
        except OSError:
            ports = 0
        held = f"has {ports} ports, " if ports else "has "
        return TapUnavailable(f"LAN full: bridge {bridge} {held}the most a Linux bridge holds")
    if code in (errno.EMFILE, errno.ENFILE):
        return TapUnavailable(
            f"out of file descriptors ({os.strerror(code)}): raise the server's limit "
            "(ulimit -n, or LimitNOFILE= in a systemd unit)"
        )
    return TapUnavailable(f"cannot attach a TAP to bridge {bridge}: {os.strerror(code)}")


def create_tap(pattern: str, mtu: int, mac: str | None = None) -> tuple[int, str]:
    """Create a standalone TAP (for the client tool) and bring it up; returns (fd, name)."""
    fd, name = open_tap_fd(pattern)
    try:
        ignore_ipv6_routers(name)
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=name)[0]
            settings: dict[str, object] = {"mtu": mtu}
            if mac is not None:
                settings["address"] = mac
            ipr.link("set", index=index, **settings)
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        os.close(fd)
        raise SetupError(f"cannot configure TAP {name}: {os.strerror(exc.code)}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def default_route_interface() -> str | None:
    """The interface of the IPv4 default route with the lowest metric (the NAT uplink)."""
    with IPRoute() as ipr:
        routes = ipr.get_default_routes(family=2)
        best: tuple[int, int] | None = None
        for route in routes:
            oif = route.get("RTA_OIF")
            if oif is None:  # a multipath route: take its first hop
                hops = route.get("RTA_MULTIPATH") or []
                oif = hops[0]["oif"] if hops else None
            if oif is None:
                continue
            metric = route.get("RTA_PRIORITY") or 0
            if best is None or metric < best[0]:
                best = (metric, int(oif))
        if best is None:
            return None
        links = ipr.get_links(best[1])
        return str(links[0].get("IFLA_IFNAME")) if links else None
