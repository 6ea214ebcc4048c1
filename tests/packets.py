"""Hand-built Ethernet frames for tests (ARP, ICMP echo, UDP, IPv6, DHCP, a custom EtherType)."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

BROADCAST = b"\xff" * 6
ETH_ARP = 0x0806
ETH_IP = 0x0800
ETH_TEST = 0x88B5  # IEEE "local experimental" EtherType


def mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def arp_request(src_mac: bytes, src_ip: str, target_ip: str) -> bytes:
    body = struct.pack(
        "!HHBBH6s4s6s4s", 1, ETH_IP, 6, 4, 1, src_mac, ip4(src_ip), b"\0" * 6, ip4(target_ip)
    )
    return ethernet(BROADCAST, src_mac, ETH_ARP, body)


def parse_arp_reply(frame: bytes) -> tuple[str, str] | None:
    """(sender MAC, sender IP) of an ARP reply, or None for any other frame."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_ARP:
        return None
    op = struct.unpack("!H", frame[20:22])[0]
    if op != 2:
        return None
    return mac_str(frame[22:28]), str(ipaddress.IPv4Address(frame[28:32]))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    ident: int,
    seq: int,
    payload: bytes = b"wsnic-trio-test",
) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0, ip4(src_ip), ip4(dst_ip)
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return ethernet(dst_mac, src_mac, ETH_IP, header + icmp)


def udp(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    sport: int,
    dport: int,
    payload: bytes = b"wsnic-trio-test",
    *,
    flags_fragment: int = 0x4000,
) -> bytes:
    """A UDP datagram in IPv4 in Ethernet (UDP checksum 0: "none", allowed in IPv4)."""
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(datagram),
        0,
        flags_fragment,
        64,
        17,
        0,
        ip4(src_ip),
        ip4(dst_ip),
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return ethernet(dst_mac, src_mac, ETH_IP, header + datagram)


def parse_icmp_echo_reply(frame: bytes) -> tuple[str, int, int] | None:
    """(source IP, ident, seq) of an ICMP echo reply, or None."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_IP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != 1:
        return None
    icmp = frame[14 + ihl :]
    if len(icmp) < 8 or icmp[0] != 0:
        return None
    ident, seq = struct.unpack("!HH", icmp[4:8])
    return str(ipaddress.IPv4Address(frame[26:30])), ident, seq


def probe_frame(dst: bytes, src: bytes, payload: bytes, size: int = 64) -> bytes:
    body = payload + b"\0" * max(0, size - 14 - len(payload))
    return ethernet(dst, src, ETH_TEST, body)


ETH_IPV6 = 0x86DD


def ipv6(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    next_header: int,
    payload: bytes,
    *,
    hop_limit: int = 255,
) -> bytes:
    """An IPv6 packet in Ethernet; ``payload`` starts with the header ``next_header`` names."""
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        next_header,
        hop_limit,
        ipaddress.IPv6Address(src_ip).packed,
        ipaddress.IPv6Address(dst_ip).packed,
    )
    return ethernet(dst_mac, src_mac, ETH_IPV6, header + payload)


def icmpv6(src_ip: str, dst_ip: str, kind: int, code: int, body: bytes) -> bytes:
    """An ICMPv6 message with its checksum over the IPv6 pseudo-header."""
    message = struct.pack("!BBH", kind, code, 0) + body
    pseudo = (
        ipaddress.IPv6Address(src_ip).packed
        + ipaddress.IPv6Address(dst_ip).packed
        + struct.pack("!IxxxB", len(message), 58)
    )
    checksum = _checksum(pseudo + message)
    return message[:2] + struct.pack("!H", checksum) + message[4:]


def router_advert(src_mac: bytes, src_ip: str, prefix: str) -> bytes:
    """An RA to all nodes: default router (lifetime 1800 s, preference high) with an
    autonomous on-link ``prefix`` (a /64) and the sender's MAC as its link address."""
    net = ipaddress.IPv6Network(prefix)
    body = struct.pack("!BBHII", 64, 0x08, 1800, 0, 0)  # hop limit, flags (prf high), ...
    body += struct.pack("!BB6s", 1, 1, src_mac)  # source link-layer address option
    body += struct.pack(
        "!BBBBIII16s", 3, 4, net.prefixlen, 0xC0, 86400, 14400, 0, net.network_address.packed
    )
    message = icmpv6(src_ip, "ff02::1", 134, 0, body)
    return ipv6(src_mac, mac("33:33:00:00:00:01"), src_ip, "ff02::1", 58, message)


# -- DHCP (RFC 2131: a BOOTP header, the magic cookie, then options) --------------------

DHCP_COOKIE = b"\x63\x82\x53\x63"
DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, DHCPDECLINE, DHCPACK, DHCPNAK, DHCPRELEASE = range(1, 8)
DHCPINFORM = 8


def dhcp_options(*options: tuple[int, bytes], end: bool = True) -> bytes:
    """Options as code, length, value (and the END option unless ``end`` is False)."""
    out = b"".join(bytes([code, len(value)]) + value for code, value in options)
    return out + (b"\xff" if end else b"")


def bootp(
    chaddr: bytes,
    options: bytes,
    *,
    op: int = 1,
    htype: int = 1,
    hlen: int = 6,
    xid: int = 0x5E1F,
    flags: int = 0x8000,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    cookie: bytes = DHCP_COOKIE,
) -> bytes:
    """A BOOTP message: the fixed header (broadcast flag set: replies come to everyone),
    ``cookie`` and ``options`` as given."""
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        op,
        htype,
        hlen,
        0,
        xid,
        0,
        flags,
        ip4(ciaddr),
        ip4("0.0.0.0"),
        ip4("0.0.0.0"),
        ip4(giaddr),
        chaddr,
        b"",
        b"",
    )
    return header + cookie + options


def dhcp(
    src_mac: bytes,
    kind: int,
    *,
    chaddr: bytes | None = None,
    client_id: bytes | None = None,
    requested: str | None = None,
    server: str | None = None,
    ciaddr: str = "0.0.0.0",
    xid: int = 0x5E1F,
    dst_mac: bytes = BROADCAST,
    src_ip: str = "0.0.0.0",
    dst_ip: str = "255.255.255.255",
) -> bytes:
    """A DHCP client message (UDP 68 -> 67) from ``src_mac``; the client it names is
    ``chaddr`` (default: ``src_mac``) with option 61 ``client_id`` if given."""
    options: list[tuple[int, bytes]] = [(53, bytes([kind]))]
    if client_id is not None:
        options.append((61, client_id))
    if requested is not None:
        options.append((50, ip4(requested)))
    if server is not None:
        options.append((54, ip4(server)))
    message = bootp(
        chaddr if chaddr is not None else src_mac, dhcp_options(*options), xid=xid, ciaddr=ciaddr
    )
    return udp(src_mac, dst_mac, src_ip, dst_ip, 68, 67, message)


@dataclasses.dataclass(frozen=True)
class DhcpReply:
    type: int  # option 53: DHCPOFFER, DHCPACK, DHCPNAK
    xid: int
    yiaddr: str
    chaddr: bytes
    options: dict[int, bytes]


def parse_dhcp_reply(frame: bytes) -> DhcpReply | None:
    """A DHCP server message (UDP 67 -> 68), or None for any other frame."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    udp_at = 14 + (frame[14] & 0x0F) * 4
    if frame[udp_at : udp_at + 4] != b"\x00\x43\x00\x44":
        return None
    message = frame[udp_at + 8 :]
    if len(message) < 240 or message[0] != 2 or message[236:240] != DHCP_COOKIE:
        return None
    options: dict[int, bytes] = {}
    at = 240
    while at + 1 < len(message) and message[at] != 255:
        if message[at] == 0:
            at += 1
            continue
        length = message[at + 1]
        options.setdefault(message[at], message[at + 2 : at + 2 + length])
        at += 2 + length
    return DhcpReply(
        type=options.get(53, b"\0")[0],
        xid=struct.unpack("!I", message[4:8])[0],
        yiaddr=str(ipaddress.IPv4Address(message[16:20])),
        chaddr=message[28:34],
        options=options,
    )
