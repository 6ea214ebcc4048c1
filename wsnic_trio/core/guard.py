"""Per-peer frame policy: size rules, anti-spoofing and rate limits, as pure functions of bytes.

One object per peer, called once per batch in each direction by the relay. Each check
is a few byte comparisons; the policy objects are built so that what is switched off
costs nothing. Only DHCP requests of locked peers (a few per minute) are parsed further.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from wsnic_trio.errors import PeerProtocolError
from wsnic_trio.transports.base import FrameCheck

__all__ = ["ByteBucket", "FramePolicy", "GatewayRules", "SourceGuard", "dhcp_request_problem"]

_ETH_ARP = b"\x08\x06"
_ETH_IPV4 = b"\x08\x00"
_ZERO_IP = b"\0\0\0\0"
_ARP_REQUEST = b"\0\x01"
_IPPROTO_UDP = 17
_DHCP_PORTS = b"\0\x44\0\x43"  # source port 68 (client), destination 67 (server)


class ByteBucket:
    """Token bucket in units per second (bytes for ``--rate-limit``, frames for
    ``--broadcast-limit``); a frame that does not fit is dropped, not delayed.

    Delaying would need a queue, and queues are what we do not grow; Ethernet is allowed
    to drop, and TCP inside the guest backs off when it sees the loss.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 4, 65536.0)
        self.level = self.burst
        self.when: float | None = None

    def take(self, size: int, now: float) -> bool:
        if self.when is not None:
            self.level = min(self.burst, self.level + (now - self.when) * self.rate)
        self.when = now
        if size > self.level:
            return False
        self.level -= size
        return True


_ETH_IPV6 = b"\x86\xdd"
_IPV6_EXTENSIONS = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_IPPROTO_ICMPV6 = 58
_ICMPV6_ROUTER_ADVERT = 134
_ICMPV6_REDIRECT = 137
_DHCP_SERVER_PORT = b"\0\x43"  # 67
_DHCP_CLIENT_PORT = b"\0\x44"  # 68
_DHCPV6_SERVER_PORT = b"\x02\x23"  # 547
_DHCPV6_CLIENT_PORT = b"\x02\x22"  # 546


class GatewayRules:
    """What no client may ever send, whatever the lock settings: the server is the LAN's
    only gateway, DHCP server and router.

    Dropped: frames from the bridge's MAC; ARP and IPv4 that claim the bridge's address
    (gateway impersonation); DHCP server messages (UDP from port 67 or to port 68: a
    rogue DHCP server); IPv6 router advertisements and redirects, DHCPv6 server
    messages (from port 547 or to 546); IPv6 whose header chain does not reach its
    upper-layer header inside the frame (an RA hidden behind extension headers).
    A few byte comparisons per frame; no state.
    """

    def __init__(self, bridge_mac: bytes, bridge_ip: bytes) -> None:
        self.bridge_mac = bridge_mac
        self.bridge_ip = bridge_ip

    def problem(self, frame: bytes) -> str | None:
        if frame[6:12] == self.bridge_mac:
            return "spoofed-mac"
        kind = frame[12:14]
        if kind == _ETH_IPV4:
            return self._ipv4(frame)
        if kind == _ETH_ARP:
            if len(frame) < 42:
                return "runt"
            if frame[28:32] == self.bridge_ip or frame[22:28] == self.bridge_mac:
                return "claims-gateway"
            return None
        if kind == _ETH_IPV6:
            return _ipv6_problem(frame)
        return None

    def _ipv4(self, frame: bytes) -> str | None:
        if len(frame) < 34:
            return "runt"
        if frame[26:30] == self.bridge_ip:
            return "claims-gateway"
        if frame[23] != _IPPROTO_UDP or frame[20] & 0x1F or frame[21]:
            # Not UDP, or a later fragment: it has no ports, and without its first
            # fragment (which has them, and is checked here) it never becomes a datagram.
            return None
        start = 14 + (frame[14] & 0x0F) * 4
        ports = frame[start : start + 4]
        if len(ports) < 4:
            return "runt"
        if ports[:2] == _DHCP_SERVER_PORT or ports[2:] == _DHCP_CLIENT_PORT:
            return "dhcp-server"
        return None


def _ipv6_problem(frame: bytes) -> str | None:
    if len(frame) < 54:
        return "runt"
    next_header = frame[20]
    offset = 54
    while True:
        if next_header in _IPV6_EXTENSIONS:
            if len(frame) < offset + 2:
                return "ipv6-header-chain"
            next_header, offset = frame[offset], offset + (frame[offset + 1] + 1) * 8
        elif next_header == _IPV6_FRAGMENT:
            if len(frame) < offset + 8:
                return "ipv6-header-chain"
            if (frame[offset + 2] << 8 | frame[offset + 3]) & 0xFFF8:
                return None  # not the first fragment: its headers were judged there
            next_header, offset = frame[offset], offset + 8
        else:
            break
    if next_header == _IPPROTO_ICMPV6:
        if len(frame) < offset + 1:
            return "ipv6-header-chain"
        if frame[offset] in (_ICMPV6_ROUTER_ADVERT, _ICMPV6_REDIRECT):
            return "router-advert" if frame[offset] == _ICMPV6_ROUTER_ADVERT else "redirect"
    elif next_header == _IPPROTO_UDP:
        ports = frame[offset : offset + 4]
        if len(ports) < 4:
            return "ipv6-header-chain"
        if ports[:2] == _DHCPV6_SERVER_PORT or ports[2:] == _DHCPV6_CLIENT_PORT:
            return "dhcpv6-server"
    return None


class SourceGuard:
    """Which source MAC (and optionally IPv4 address) a peer may send from.

    The first frame fixes the MAC (``claim`` asks the server whether it is free; it
    raises to refuse). DHCP requests must then name that MAC as the client (see
    :func:`dhcp_request_problem`). With ``leased_ip`` the peer may only send ARP and
    IPv4 from the address dnsmasq leased to its MAC, plus what DHCP needs before there
    is a lease.
    """

    def __init__(
        self,
        bridge_mac: bytes,
        claim: Callable[[bytes], None] | None = None,
        leased_ip: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.bridge_mac = bridge_mac
        self.claim = claim
        self.leased_ip = leased_ip
        self.mac: bytes | None = None

    def problem(self, frame: bytes) -> str | None:
        src = frame[6:12]
        if src[0] & 1:
            return "multicast-source"
        if src == self.bridge_mac:
            return "spoofed-mac"
        if self.mac is None:
            if self.claim is not None:
                self.claim(src)
            self.mac = src
        elif src != self.mac:
            return "spoofed-mac"
        kind = frame[12:14]
        if self.leased_ip is not None:
            problem = self._ip_problem(frame, kind, src)
            if problem is not None:
                return problem
        if kind == _ETH_IPV4 and frame[23:24] == _UDP:
            udp = 14 + (frame[14] & 0x0F) * 4
            if frame[udp + 2 : udp + 4] == _DHCP_SERVER_PORT:
                return _dhcp_client_problem(frame, udp, src)
        return None

    def _ip_problem(self, frame: bytes, kind: bytes, src: bytes) -> str | None:
        assert self.leased_ip is not None
        if kind == _ETH_IPV4:
            if len(frame) < 34:
                return "runt"
            sender = frame[26:30]
        elif kind == _ETH_ARP:
            if len(frame) < 42:
                return "runt"
            if frame[22:28] != src:
                return "spoofed-arp"
            sender = frame[28:32]
        else:
            return "ethertype-not-allowed"
        if sender == _ZERO_IP:
            return None if _may_come_from_nowhere(frame, kind) else "spoofed-ip"
        leased = self.leased_ip(src)
        if leased is None or sender != leased:
            return "spoofed-ip"
        return None


_UDP = bytes([_IPPROTO_UDP])
_BOOTREQUEST = 1
_HTYPE_ETHERNET = 1
_DHCP_COOKIE = b"\x63\x82\x53\x63"  # 99.130.83.99
_BOOTP_FIXED = 236  # op .. file, before the cookie
_OPTION_PAD = 0
_OPTION_END = 255
_OPTION_OVERLOAD = 52
_OPTION_CLIENT_ID = 61


def _dhcp_client_problem(frame: bytes, udp: int, mac: bytes) -> str | None:
    """For an IPv4 UDP frame whose bytes at ``udp`` look like a header to the DHCP
    server port (67): what :func:`dhcp_request_problem` says, unless it is no header."""
    if frame[20] & 0x1F or frame[21]:
        return None  # a later fragment: these are data (its first fragment was judged)
    if frame[20] & 0x20:
        # The first fragment of a DHCP request: the rest of it (chaddr, the options)
        # would only be seen once dnsmasq's kernel reassembled it. No DHCP client
        # fragments a request (they fit the 576 bytes every host must accept).
        return "dhcp-malformed"
    return dhcp_request_problem(frame, udp, mac)


def dhcp_request_problem(frame: bytes, udp: int, mac: bytes) -> str | None:
    """What is wrong with a DHCP request (the UDP header at ``udp``) from client ``mac``.

    dnsmasq finds a client's lease by its client-id (option 61) if it sends one, else
    by its hardware address (htype, hlen, chaddr). So a peer that may only send from
    ``mac`` must also be that client in DHCP: Ethernet, chaddr ``mac``, and a
    client-id, if any, of type 1 (Ethernet) with address ``mac``. Then every message
    (DISCOVER, REQUEST, RELEASE, DECLINE, INFORM) can only reach this peer's own lease,
    and one peer holds at most one lease. Other client-id types (RFC 4361 DUIDs, names)
    are refused: they would let one MAC hold a lease per made-up id, and a copied
    client-id (every client broadcasts its own) reaches its owner's lease.

    Parsed the way dnsmasq reads it: the datagram's bytes as its kernel delivers them
    (IP and UDP lengths), every option up to END, including those after the first of
    a kind. What cannot be read whole (truncated, overlong lengths, no magic cookie,
    options moved into sname/file by option 52) is ``dhcp-malformed``.
    """
    ip_end = 14 + (frame[16] << 8 | frame[17])
    if ip_end > len(frame) or len(frame) < udp + 8:
        return "dhcp-malformed"
    end = udp + (frame[udp + 4] << 8 | frame[udp + 5])
    bootp = udp + 8
    if end > ip_end or end - bootp < _BOOTP_FIXED + 4:
        return "dhcp-malformed"
    if frame[bootp] != _BOOTREQUEST or frame[bootp + 236 : bootp + 240] != _DHCP_COOKIE:
        return "dhcp-malformed"
    if (
        frame[bootp + 1] != _HTYPE_ETHERNET
        or frame[bootp + 2] != 6
        or frame[bootp + 28 : bootp + 34] != mac
    ):
        return "dhcp-chaddr"
    at = bootp + 240
    while at < end:
        code = frame[at]
        if code == _OPTION_PAD:
            at += 1
            continue
        if code == _OPTION_END:
            break
        if at + 2 > end:
            return "dhcp-malformed"
        value_end = at + 2 + frame[at + 1]
        if value_end > end:
            return "dhcp-malformed"
        if code == _OPTION_CLIENT_ID:
            if frame[at + 2 : value_end] != b"\x01" + mac:
                return "dhcp-client-id"
        elif code == _OPTION_OVERLOAD:
            return "dhcp-malformed"
        at = value_end
    return None


def _may_come_from_nowhere(frame: bytes, kind: bytes) -> bool:
    """What a client without an address needs: DHCP to the server (UDP 68 -> 67, a whole
    datagram) and ARP probes (RFC 5227 requests with sender 0.0.0.0); nothing else."""
    if kind == _ETH_ARP:
        return frame[20:22] == _ARP_REQUEST
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != _IPPROTO_UDP or ihl < 20 or len(frame) < 14 + ihl + 8:
        return False
    if frame[20:22] not in (b"\0\0", b"\x40\0"):  # a fragment: ports are not all there
        return False
    ports = frame[14 + ihl : 14 + ihl + 4]
    return ports == _DHCP_PORTS


class FramePolicy:
    """Everything a frame must pass on its way between one peer and the bridge.

    ``broadcast_limit`` (frames per second, bursts of twice that) caps the frames the
    peer sends to a group address (broadcast, multicast): the bridge copies each one to
    every other peer, so a flood costs everyone. ``claim`` is called once with the
    source MAC of the first frame that passes (for a peer without a ``guard``, which
    claims on its own).
    """

    def __init__(
        self,
        check: FrameCheck,
        drops: collections.Counter[str],
        guard: SourceGuard | None = None,
        rate_limit: float = 0.0,
        rules: GatewayRules | None = None,
        broadcast_limit: float = 0.0,
        claim: Callable[[bytes], None] | None = None,
    ) -> None:
        self.check = check
        self.drops = drops
        self.guard = guard
        self.rules = rules
        self.bucket_in = ByteBucket(rate_limit) if rate_limit else None
        self.bucket_out = ByteBucket(rate_limit) if rate_limit else None
        self.bucket_group = (
            ByteBucket(broadcast_limit, 2 * broadcast_limit) if broadcast_limit else None
        )
        self.claim = claim
        self._claimed: bytes | None = None

    @property
    def mac(self) -> bytes | None:
        """The MAC this peer claimed (None until a frame passed, or when refused)."""
        return self.guard.mac if self.guard is not None else self._claimed

    def inbound(self, frames: list[bytes], now: float) -> list[bytes]:
        """Frames from the peer that may enter the bridge."""
        check, guard, bucket, rules = self.check.problem, self.guard, self.bucket_in, self.rules
        group = self.bucket_group
        if guard is None and bucket is None and rules is None and group is None:
            good = [f for f in frames if check(f) is None]
            if len(good) != len(frames):
                for f in frames:
                    if (problem := check(f)) is not None:
                        self.drops[problem] += 1
        else:
            good = []
            for frame in frames:
                problem = check(frame)
                if problem is None and rules is not None:
                    problem = rules.problem(frame)
                if problem is None and guard is not None:
                    problem = guard.problem(frame)
                if problem is None and bucket is not None and not bucket.take(len(frame), now):
                    problem = "rate-limit"
                if (
                    problem is None
                    and frame[0] & 1
                    and group is not None
                    and not group.take(1, now)
                ):
                    problem = "broadcast-limit"
                if problem is None:
                    good.append(frame)
                else:
                    self.drops[problem] += 1
        if self.claim is not None and good:
            self._claim_first(good)
        return good

    def _claim_first(self, good: list[bytes]) -> None:
        assert self.claim is not None
        for frame in good:
            mac = frame[6:12]
            if not mac[0] & 1:  # a group address is nobody's MAC
                claim, self.claim = self.claim, None
                claim(mac)
                self._claimed = mac
                return

    def outbound(self, frames: list[bytes], now: float) -> list[bytes]:
        """Frames from the bridge that may go to the peer (only the rate limit applies)."""
        bucket = self.bucket_out
        if bucket is None:
            return frames
        good = [f for f in frames if bucket.take(len(f), now)]
        if len(good) != len(frames):
            self.drops["rate-limit-out"] += len(frames) - len(good)
        return good


def refuse_mac(mac: bytes, owner: str) -> PeerProtocolError:
    text = ":".join(f"{b:02x}" for b in mac)
    return PeerProtocolError(f"MAC {text} is in use by another client ({owner})", 1008)
