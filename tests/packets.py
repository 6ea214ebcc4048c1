"""Hand-built Ethernet frames for tests (ARP, ICMP echo, a custom EtherType)."""

from __future__ import annotations

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
