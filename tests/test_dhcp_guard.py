"""What a locked peer may say in DHCP, who owns a MAC, and the broadcast limit (sans-IO).

A peer whose source MAC is locked must also be that MAC in DHCP (chaddr, client-id),
so it can neither drain the pool with made-up clients nor release another client's
lease. Every peer's first MAC is its own, whatever the transport. Broadcasts and
multicasts are rate limited per peer.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
from collections.abc import Callable
from typing import cast

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnic_trio import Config, PeerProtocolError
from wsnic_trio.core.guard import FramePolicy, GatewayRules, SourceGuard
from wsnic_trio.core.relay import RelayStats
from wsnic_trio.core.server import PeerInfo, Server
from wsnic_trio.lan.bridge import LanBackend
from wsnic_trio.transports.base import FrameCheck, PeerLink

from . import packets as pk

BRIDGE = pk.mac("02:77:73:00:00:01")
GATEWAY = "192.168.86.1"
ME = pk.mac("02:00:00:00:00:05")
OTHER = pk.mac("02:00:00:00:00:06")
MY_ID = b"\x01" + ME
RULES = GatewayRules(BRIDGE, pk.ip4(GATEWAY))


def locked(leased_ip: Callable[[bytes], bytes | None] | None = None) -> SourceGuard:
    return SourceGuard(BRIDGE, leased_ip=leased_ip)


def message(
    *options: tuple[int, bytes],
    end: bool = True,
    op: int = 1,
    htype: int = 1,
    hlen: int = 6,
    cookie: bytes = pk.DHCP_COOKIE,
) -> bytes:
    """A DHCP request frame from ME (as ``chaddr``) with a hand-made BOOTP message."""
    options_bytes = pk.dhcp_options(*options, end=end)
    body = pk.bootp(ME, options_bytes, op=op, htype=htype, hlen=hlen, cookie=cookie)
    return pk.udp(ME, pk.BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, body)


def with_lengths(frame: bytes, size: int) -> bytes:
    """``frame`` cut to ``size`` bytes with consistent IP and UDP lengths (a short but
    well-formed datagram)."""
    out = bytearray(frame[:size])
    out[16:18] = struct.pack("!H", size - 14)
    out[38:40] = struct.pack("!H", size - 34)
    return bytes(out)


def extended(frame: bytes, extra: bytes) -> bytes:
    """``frame``'s datagram with ``extra`` bytes of options appended."""
    return with_lengths(frame + extra, len(frame) + len(extra))


def cut(frame: bytes, count: int) -> bytes:
    """``frame``'s datagram without its last ``count`` bytes."""
    return with_lengths(frame, len(frame) - count)


DISCOVER = pk.dhcp(ME, pk.DHCPDISCOVER)
RENEW = pk.dhcp(
    ME,
    pk.DHCPREQUEST,
    client_id=MY_ID,
    ciaddr="192.168.86.50",
    dst_mac=BRIDGE,
    src_ip="192.168.86.50",
    dst_ip=GATEWAY,
)


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        # What real clients send (busybox udhcpc sends client-id 01:MAC; dhclient none).
        (DISCOVER, None),
        (pk.dhcp(ME, pk.DHCPDISCOVER, client_id=MY_ID), None),
        (pk.dhcp(ME, pk.DHCPREQUEST, requested="192.168.86.50", server=GATEWAY), None),
        (RENEW, None),
        (pk.dhcp(ME, pk.DHCPRELEASE, ciaddr="192.168.86.50", server=GATEWAY), None),
        (pk.dhcp(ME, pk.DHCPDECLINE, requested="192.168.86.50", server=GATEWAY), None),
        (pk.dhcp(ME, pk.DHCPINFORM, ciaddr="192.168.86.50", client_id=MY_ID), None),
        (message((53, b"\x01"), end=False), None),  # no END: the options fill the datagram
        (message((53, b"\x01"), (61, MY_ID)) + b"\0" * 20, None),  # Ethernet padding
        (message((53, b"\x01")) + b"\x3d\x07\x01" + OTHER, None),  # after END: never read
        # Another client's hardware address: starvation, or its lease released.
        (pk.dhcp(ME, pk.DHCPDISCOVER, chaddr=OTHER), "dhcp-chaddr"),
        (pk.dhcp(ME, pk.DHCPREQUEST, chaddr=OTHER, requested="192.168.86.51"), "dhcp-chaddr"),
        (pk.dhcp(ME, pk.DHCPRELEASE, chaddr=OTHER, ciaddr="192.168.86.51"), "dhcp-chaddr"),
        (pk.dhcp(ME, pk.DHCPDECLINE, chaddr=OTHER, requested="192.168.86.51"), "dhcp-chaddr"),
        (message((53, b"\x01"), htype=6), "dhcp-chaddr"),  # same bytes, another lease
        (message((53, b"\x01"), hlen=16), "dhcp-chaddr"),
        # dnsmasq keys a lease by the client-id when there is one.
        (pk.dhcp(ME, pk.DHCPDISCOVER, client_id=b"\x01" + OTHER), "dhcp-client-id"),
        (pk.dhcp(ME, pk.DHCPRELEASE, client_id=b"\x01" + OTHER), "dhcp-client-id"),
        (pk.dhcp(ME, pk.DHCPDISCOVER, client_id=MY_ID + b"\0"), "dhcp-client-id"),
        (pk.dhcp(ME, pk.DHCPDISCOVER, client_id=b"\xff" + b"\0" * 17), "dhcp-client-id"),
        (pk.dhcp(ME, pk.DHCPDISCOVER, client_id=b"\x00lab-pc-7"), "dhcp-client-id"),
        (pk.dhcp(ME, pk.DHCPDISCOVER, client_id=b""), "dhcp-client-id"),
        (message((53, b"\x01"), (61, MY_ID), (61, b"\x01" + OTHER)), "dhcp-client-id"),
        (message((53, b"\x01"), (12, b"pc"), (61, b"\xffdu")), "dhcp-client-id"),
        # What cannot be read the way dnsmasq reads it.
        (message((53, b"\x01"), cookie=b"\0\0\0\0"), "dhcp-malformed"),  # plain BOOTP
        (message((53, b"\x01"), op=2), "dhcp-malformed"),
        (message((53, b"\x01"), (52, b"\x03")), "dhcp-malformed"),  # options in sname/file
        (extended(message((53, b"\x01"), end=False), b"\x0c\xff" + b"ab"), "dhcp-malformed"),
        (cut(message((53, b"\x01"), (12, b"x" * 10), end=False), 3), "dhcp-malformed"),
        (with_lengths(DISCOVER, 14 + 20 + 8 + 239), "dhcp-malformed"),
        (extended(message((53, b"\x01"), end=False), b"\0"), None),
        (extended(message((53, b"\x01"), end=False), b"\x0c"), "dhcp-malformed"),
        (DISCOVER[:200], "dhcp-malformed"),  # the IP header claims more than there is
        (DISCOVER[:38] + b"\0\x07" + DISCOVER[40:], "dhcp-malformed"),  # UDP length < 8
        (DISCOVER[:38] + b"\x10\x00" + DISCOVER[40:], "dhcp-malformed"),  # UDP > IP
        (
            pk.udp(ME, BRIDGE, "192.168.86.50", GATEWAY, 68, 67, flags_fragment=0x2000),
            "dhcp-malformed",
        ),
        # Not DHCP to the server: untouched.
        (pk.udp(ME, BRIDGE, "192.168.86.50", GATEWAY, 40000, 53), None),
        (pk.udp(ME, BRIDGE, "192.168.86.50", GATEWAY, 67, 4000), None),
        # A later fragment whose data happen to look like a port 67 header.
        (
            pk.udp(ME, BRIDGE, "192.168.86.50", GATEWAY, 40000, 67, flags_fragment=0x0010),
            None,
        ),
    ],
    ids=[
        "discover",
        "discover-client-id",
        "request",
        "renew",
        "release",
        "decline",
        "inform",
        "no-end",
        "padding",
        "after-end",
        "forged-discover",
        "forged-request",
        "forged-release",
        "forged-decline",
        "htype",
        "hlen",
        "client-id-other-mac",
        "release-client-id-other-mac",
        "client-id-too-long",
        "client-id-duid",
        "client-id-name",
        "client-id-empty",
        "second-client-id",
        "client-id-later",
        "no-cookie",
        "bootreply",
        "overload",
        "overlong-option",
        "option-past-udp-end",
        "truncated-header",
        "trailing-pad",
        "option-without-length",
        "ip-truncated",
        "udp-length-short",
        "udp-length-long",
        "first-fragment",
        "dns",
        "from-port-67",
        "later-fragment",
    ],
)
def test_locked_peer_is_its_own_mac_in_dhcp(frame: bytes, problem: str | None) -> None:
    """(issue 12: DHCP starvation and forged RELEASE under --lock-mac)"""
    assert locked().problem(frame) == problem
    leases = {ME: pk.ip4("192.168.86.50")}
    assert locked(leased_ip=leases.get).problem(frame) == problem, "the same with --lock-ip"


def test_dhcp_rules_apply_before_lock_ip() -> None:
    """A forged request from 0.0.0.0 is what --lock-ip lets through before a lease."""
    guard = locked(leased_ip=lambda mac: None)
    assert guard.problem(DISCOVER) is None
    assert guard.problem(pk.dhcp(ME, pk.DHCPDISCOVER, chaddr=OTHER)) == "dhcp-chaddr"


def test_unlocked_peers_are_not_parsed() -> None:
    """VMs (``--lock-mac ws``) may run DHCP for nested guests: only locked peers' DHCP
    is tied to their MAC."""
    drops: collections.Counter[str] = collections.Counter()
    policy = FramePolicy(FrameCheck(1518), drops, rules=RULES)
    forged = pk.dhcp(ME, pk.DHCPDISCOVER, chaddr=OTHER, client_id=b"\xffx")
    assert policy.inbound([forged], 0.0) == [forged]
    locked_policy = FramePolicy(FrameCheck(1518), drops, locked(), rules=RULES)
    assert locked_policy.inbound([DISCOVER, forged], 0.0) == [DISCOVER]
    assert drops == {"dhcp-chaddr": 1}


VALID = [
    DISCOVER,
    RENEW,
    pk.dhcp(ME, pk.DHCPRELEASE, client_id=MY_ID, ciaddr="192.168.86.50"),
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
    st.integers(14, 400),
)
def test_mangled_dhcp_never_raises(base: bytes, changes: list[tuple[int, int]], cut: int) -> None:
    frame = bytearray(base)
    for at, value in changes:
        if at < len(frame):
            frame[at] = value
    for candidate in (bytes(frame), bytes(frame[:cut])):
        problem = locked().problem(candidate)
        assert problem is None or isinstance(problem, str)


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes_after_the_udp_header_never_raise(payload: bytes) -> None:
    frame = pk.udp(ME, pk.BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, payload)
    assert locked().problem(frame) in (None, "dhcp-malformed", "dhcp-chaddr", "dhcp-client-id")
    drops: collections.Counter[str] = collections.Counter()
    FramePolicy(FrameCheck(1518), drops, locked(), rules=RULES).inbound([frame], 0.0)


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=14, max_size=400))
def test_random_frames_never_raise(raw: bytes) -> None:
    frame = bytearray(raw)
    frame[6:12] = ME
    for kind in (b"\x08\x00", b"\x08\x06", b"\x86\xdd", raw[12:14]):
        frame[12:14] = kind
        drops: collections.Counter[str] = collections.Counter()
        policy = FramePolicy(
            FrameCheck(1518),
            drops,
            locked(leased_ip=lambda mac: None),
            rate_limit=1e6,
            rules=RULES,
            broadcast_limit=10,
        )
        assert len(policy.inbound([bytes(frame)], 0.0)) + sum(drops.values()) == 1


# -- broadcast limit ---------------------------------------------------------------


def test_broadcast_limit_is_a_token_bucket_in_frames() -> None:
    """(issue 12: one client's broadcast flood) 100 frames/s, bursts of 200."""
    drops: collections.Counter[str] = collections.Counter()
    policy = FramePolicy(FrameCheck(1518), drops, rules=RULES, broadcast_limit=100)
    flood = [pk.probe_frame(pk.BROADCAST, ME, b"flood")] * 64
    passed = sum(len(policy.inbound(flood, 0.0)) for _ in range(4))
    assert passed == 200 and drops == {"broadcast-limit": 56}
    unicast = [pk.probe_frame(OTHER, ME, b"to someone")] * 64
    assert len(policy.inbound(unicast, 0.0)) == 64, "unicast is not limited"
    mdns = pk.udp(ME, pk.mac("01:00:5e:00:00:fb"), "192.168.86.50", "224.0.0.251", 5353, 5353)
    assert policy.inbound([mdns], 0.0) == [], "multicast counts like broadcast"
    assert len(policy.inbound(flood, 0.5)) == 50, "refilled at 100 frames/s"
    assert len(policy.inbound(flood, 100.0)) == 64
    assert drops["broadcast-limit"] == 56 + 1 + 14


def test_broadcast_limit_off() -> None:
    drops: collections.Counter[str] = collections.Counter()
    policy = FramePolicy(FrameCheck(1518), drops, rules=RULES, broadcast_limit=0)
    flood = [pk.probe_frame(pk.BROADCAST, ME, b"flood")] * 64
    assert sum(len(policy.inbound(flood, 0.0)) for _ in range(10)) == 640
    assert policy.bucket_group is None


def test_broadcast_limit_is_the_servers_default() -> None:
    assert Config().lan.broadcast_limit == 100
    server = Server(Config(disable_dhcp=True), cast("LanBackend", None), [])
    for transport in ("ws", "qemu"):
        state = server.lans["default"]
        policy = server._policy(state, 1, cast("PeerLink", FakeLink(transport, None)), RelayStats())
        assert policy.bucket_group is not None
        assert policy.bucket_group.rate == 100 and policy.bucket_group.burst == 200


# -- who owns a MAC ----------------------------------------------------------------


@dataclasses.dataclass
class FakeLink:
    transport: str
    remote_ip: str | None


def test_policy_claims_the_first_mac_of_an_unlocked_peer() -> None:
    claims: list[bytes] = []
    drops: collections.Counter[str] = collections.Counter()
    policy = FramePolicy(FrameCheck(1518), drops, rules=RULES, claim=claims.append)
    assert policy.inbound([b"short"], 0.0) == [] and claims == []
    multicast_source = pk.probe_frame(pk.BROADCAST, pk.mac("03:00:00:00:00:09"), b"")
    nested = pk.probe_frame(pk.BROADCAST, OTHER, b"a nested guest")
    policy.inbound([multicast_source, pk.probe_frame(pk.BROADCAST, ME, b""), nested], 0.0)
    policy.inbound([nested], 0.0)
    assert claims == [ME] and policy.mac == ME


def test_a_refused_claim_leaves_no_mac() -> None:
    def refuse(mac: bytes) -> None:
        raise PeerProtocolError("in use", 1008)

    policy = FramePolicy(FrameCheck(1518), collections.Counter(), rules=RULES, claim=refuse)
    with pytest.raises(PeerProtocolError):
        policy.inbound([pk.probe_frame(pk.BROADCAST, ME, b"")], 0.0)
    assert policy.mac is None


class Peers:
    """A server without a LAN, and peers joined to it by hand."""

    def __init__(self) -> None:
        self.server = Server(Config(disable_dhcp=True), cast("LanBackend", None), [])
        self.ids = iter(range(1, 100))

    def join(self, transport: str, remote_ip: str | None) -> tuple[PeerInfo, FramePolicy]:
        peer_id = next(self.ids)
        link = FakeLink(transport, remote_ip)
        info = PeerInfo(
            peer_id, transport, "x", remote_ip, f"wstap{peer_id}", RelayStats(), trio.CancelScope()
        )
        self.server.peers[peer_id] = info
        state = self.server.lans["default"]
        return info, self.server._policy(state, peer_id, cast("PeerLink", link), info.stats)


FIRST = [pk.probe_frame(pk.BROADCAST, ME, b"first frame")]


@pytest.mark.parametrize(
    ("owner", "newcomer"),
    [
        (("qemu", None), ("ws", "127.0.0.1")),  # issue 12: a guest on a unix socket
        (("qemu", "127.0.0.1"), ("ws", "127.0.0.1")),  # a web page on the same host
        (("dgram", None), ("wss", "198.51.100.7")),
        (("ws", "198.51.100.7"), ("qemu", None)),
        (("ws", "198.51.100.7"), ("ws", "198.51.100.8")),
        (("ws", "198.51.100.7"), ("wss", "198.51.100.7")),
        (("bess", None), ("qemu", None)),
    ],
)
async def test_a_mac_in_use_is_refused_whatever_the_transports(
    owner: tuple[str, str | None], newcomer: tuple[str, str | None]
) -> None:
    """(issue 12: a WebSocket client took a QEMU guest's MAC)"""
    peers = Peers()
    first, first_policy = peers.join(*owner)
    assert first_policy.inbound(FIRST, 0.0) == FIRST
    _second, second_policy = peers.join(*newcomer)
    with pytest.raises(PeerProtocolError, match="is in use by another client") as info:
        second_policy.inbound(FIRST, 0.0)
    assert info.value.close_code == 1008
    assert peers.server.mac_owners == {ME: first.id}
    assert not first.cancel_scope.cancel_called


@pytest.mark.parametrize(("transport", "ip"), [("ws", "198.51.100.7"), ("qemu", None)])
async def test_a_reconnect_from_the_same_address_takes_the_mac_over(
    transport: str, ip: str | None
) -> None:
    """v86 reconnecting after a network drop (and a VM restarted on its socket)."""
    peers = Peers()
    first, first_policy = peers.join(transport, ip)
    first_policy.inbound(FIRST, 0.0)
    second, second_policy = peers.join(transport, ip)
    assert second_policy.inbound(FIRST, 0.0) == FIRST
    assert first.cancel_scope.cancel_called and first.replaced_by == second.id
    assert peers.server.mac_owners == {ME: second.id}


async def test_an_unlocked_peer_claims_only_its_first_mac() -> None:
    peers = Peers()
    vm, vm_policy = peers.join("qemu", None)
    vm_policy.inbound([*FIRST, pk.probe_frame(pk.BROADCAST, OTHER, b"nested")], 0.0)
    _, ws_policy = peers.join("ws", "198.51.100.7")
    assert ws_policy.inbound([pk.probe_frame(pk.BROADCAST, OTHER, b"")], 0.0)
    assert peers.server.mac_owners == {ME: vm.id, OTHER: vm.id + 1}
