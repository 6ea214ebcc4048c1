"""The rules every client's frames pass, whatever the lock settings (sans-IO).

The server is the LAN's only gateway, DHCP server and router: a client's frames that
claim the gateway's address or MAC, answer DHCP or DHCPv6, or advertise routes never
reach the bridge.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from wsnic_trio.core.guard import GatewayRules

from . import packets as pk

BRIDGE = pk.mac("02:77:73:00:00:01")
GATEWAY = "192.168.86.1"
ME = pk.mac("02:00:00:00:00:05")
LL = "fe80::ff:fe00:5"
RULES = GatewayRules(BRIDGE, pk.ip4(GATEWAY))


def _udp6(sport: int, dport: int, *, dst: str = "ff02::1:2") -> bytes:
    datagram = struct.pack("!HHHH", sport, dport, 12, 0) + b"dhcp"
    return pk.ipv6(ME, pk.BROADCAST, LL, dst, 17, datagram)


def _with_extension(frame: bytes, header: int, ext: bytes) -> bytes:
    """Insert an extension header of type ``header`` right after the IPv6 header."""
    inner = frame[20]
    body = bytes([inner]) + ext
    out = bytearray(frame[:54] + body + frame[54:])
    out[20] = header
    out[18:20] = struct.pack("!H", len(out) - 54)
    return bytes(out)


RA = pk.router_advert(ME, LL, "2001:db8:66::/64")
HOP_BY_HOP_PAD = b"\x00" + b"\x01\x04\x00\x00\x00\x00"  # hdr-ext-len 0, PadN of 4
FIRST_FRAGMENT = b"\x00" + b"\x00\x00\x00\x00\x00\x01"
LATER_FRAGMENT = b"\x00" + b"\x00\x08\x00\x00\x00\x01"


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        # Fine: what clients send every day.
        (pk.arp_request(ME, "192.168.86.50", GATEWAY), None),
        (pk.icmp_echo(ME, BRIDGE, "192.168.86.50", GATEWAY, 1, 1), None),
        (pk.udp(ME, pk.BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67), None),
        (pk.udp(ME, BRIDGE, "192.168.86.50", GATEWAY, 40000, 53), None),
        (_udp6(546, 547), None),  # a DHCPv6 client's solicit
        (pk.probe_frame(pk.BROADCAST, ME, b"custom ethertype"), None),
        (_with_extension(RA, 44, LATER_FRAGMENT), None),  # judged with its first fragment
        # Gateway impersonation.
        (pk.probe_frame(pk.BROADCAST, BRIDGE, b""), "spoofed-mac"),
        (pk.arp_request(ME, GATEWAY, "192.168.86.50"), "claims-gateway"),
        (pk.icmp_echo(ME, BRIDGE, GATEWAY, "192.168.86.50", 1, 1), "claims-gateway"),
        # A rogue DHCP server.
        (pk.udp(ME, pk.BROADCAST, "192.168.86.66", "255.255.255.255", 67, 68), "dhcp-server"),
        (pk.udp(ME, pk.BROADCAST, "192.168.86.66", "192.168.86.50", 4000, 68), "dhcp-server"),
        (
            pk.udp(
                ME, pk.BROADCAST, "192.168.86.66", "255.255.255.255", 67, 68, flags_fragment=0x2000
            ),
            "dhcp-server",
        ),
        (_udp6(547, 546, dst="fe80::1"), "dhcpv6-server"),
        (_udp6(5000, 546, dst="fe80::1"), "dhcpv6-server"),
        # IPv6 routing.
        (RA, "router-advert"),
        (_with_extension(RA, 0, HOP_BY_HOP_PAD), "router-advert"),
        (_with_extension(RA, 44, FIRST_FRAGMENT), "router-advert"),
        (
            pk.ipv6(ME, pk.BROADCAST, LL, "ff02::1", 58, pk.icmpv6(LL, "ff02::1", 137, 0, b"")),
            "redirect",
        ),
        # Truncated header chains cannot hide anything.
        (RA[:54], "ipv6-header-chain"),
        (_with_extension(RA, 0, HOP_BY_HOP_PAD)[:56], "ipv6-header-chain"),
        (pk.arp_request(ME, "192.168.86.50", GATEWAY)[:30], "runt"),
    ],
    ids=[
        "arp",
        "ping-gateway",
        "dhcp-discover",
        "dns-query",
        "dhcpv6-solicit",
        "other-ethertype",
        "later-fragment",
        "bridge-mac",
        "arp-claims-gateway",
        "ipv4-from-gateway",
        "dhcp-offer",
        "udp-to-dhcp-client",
        "dhcp-offer-first-fragment",
        "dhcpv6-reply",
        "udp-to-dhcpv6-client",
        "ra",
        "ra-behind-hop-by-hop",
        "ra-in-first-fragment",
        "redirect",
        "ipv6-truncated",
        "extension-truncated",
        "arp-truncated",
    ],
)
def test_gateway_rules(frame: bytes, problem: str | None) -> None:
    assert RULES.problem(frame) == problem


def test_router_advert_checksum_is_valid() -> None:
    """The RA the integration tests send must be one a kernel accepts."""
    icmp = RA[54:]
    pseudo = ipaddress.IPv6Address(LL).packed + ipaddress.IPv6Address("ff02::1").packed
    pseudo += struct.pack("!IxxxB", len(icmp), 58)
    assert pk._checksum(pseudo + icmp) == 0
