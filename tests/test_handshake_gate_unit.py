"""The cap on connections still in their handshake, as pure logic (no sockets).

Issue 12: silent connections used up the server's open files. The gate counts them,
and at a cap closes the oldest pending connection of the address with the most, so a
newcomer from an address that holds few always gets its turn.
"""

from __future__ import annotations

import collections
import logging
import random

import pytest
import trio
import trio.testing

from wsnic_trio.net.listen import (
    TOO_MANY_HANDSHAKES,
    TOO_MANY_HANDSHAKES_FROM_ADDRESS,
    HandshakeGate,
    Pending,
    address_key,
)


def evicted(pendings: list[Pending]) -> list[int]:
    return [i for i, p in enumerate(pendings) if p.evicted is not None]


async def test_per_address_the_oldest_of_that_address_makes_room() -> None:
    gate = HandshakeGate(0, 3, what="test")
    reasons: list[str] = []
    mine = [gate.enter("10.0.0.1", 60, reasons.append) for _ in range(3)]
    other = gate.enter("10.0.0.2", 60, reasons.append)
    mine.append(gate.enter("10.0.0.1", 60, reasons.append))
    assert evicted(mine) == [0]
    assert mine[0].evicted == TOO_MANY_HANDSHAKES_FROM_ADDRESS
    assert mine[0].scope.cancel_called, "its handshake is cut short"
    assert reasons == [TOO_MANY_HANDSHAKES_FROM_ADDRESS]
    assert other.evicted is None
    assert (gate.pending_from("10.0.0.1"), gate.pending_from("10.0.0.2"), len(gate)) == (3, 1, 4)
    # A connection whose handshake is over leaves room: the next one closes nobody.
    mine[1].done()
    mine[1].done()  # twice is harmless
    mine.append(gate.enter("10.0.0.1", 60, reasons.append))
    assert evicted(mine) == [0] and len(gate) == 4


async def test_at_the_total_cap_the_address_with_the_most_pays() -> None:
    gate = HandshakeGate(6, 0, what="test")
    heavy = [gate.enter("192.0.2.1", 60) for _ in range(4)]
    light = [gate.enter(f"198.51.100.{i}", 60) for i in (1, 2)]
    newcomers = [gate.enter(f"203.0.113.{i}", 60) for i in range(1, 4)]
    # Three places were needed: each time the oldest of the address with the most went.
    assert evicted(heavy) == [0, 1, 2]
    assert all(p.evicted == TOO_MANY_HANDSHAKES for p in heavy[:3])
    assert evicted(light) == [] and evicted(newcomers) == []
    assert len(gate) == 6
    # Now every address holds one: whoever goes, the total stays at the cap.
    gate.enter("203.0.113.9", 60)
    assert len(gate) == 6
    assert sum(p.evicted is not None for p in heavy + light + newcomers) == 4


async def test_many_addresses_coming_and_going() -> None:
    """The bookkeeping of who has the most survives any order of comings and goings:
    checked against a plain count after every step."""
    rng = random.Random(12)
    gate = HandshakeGate(50, 5, what="test")
    live: list[Pending] = []
    for _ in range(3000):
        before = collections.Counter(p.key for p in live)
        newcomer = gate.enter(f"10.0.{rng.randrange(7)}.{rng.randrange(13)}", 60)
        gone = [p for p in live if p.evicted is not None]
        live = [p for p in live if p.evicted is None]
        assert len(gone) <= 1
        if gone and gone[0].evicted == TOO_MANY_HANDSHAKES:
            assert before[gone[0].key] == max(before.values()), "not the address with the most"
        if gone and gone[0].evicted == TOO_MANY_HANDSHAKES_FROM_ADDRESS:
            assert gone[0].key == newcomer.key and before[newcomer.key] == 5
        live.append(newcomer)
        if rng.random() < 0.4:
            live.pop(rng.randrange(len(live))).done()
        counts = collections.Counter(p.key for p in live)
        assert len(gate) == len(live) <= 50
        assert all(gate.pending_from(key) == n for key, n in counts.items())
        assert max(counts.values(), default=0) <= 5


async def test_a_deadline_and_no_limits() -> None:
    gate = HandshakeGate(0, 0, what="test")
    many = [gate.enter("10.0.0.1", 7.5) for _ in range(1000)]
    assert evicted(many) == [] and len(gate) == 1000
    assert many[0].scope.deadline == pytest.approx(trio.current_time() + 7.5, abs=1)


def test_ipv6_clients_count_by_their_64() -> None:
    assert address_key("2001:db8:1:2::5") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:ffff:ffff:ffff:1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::5") == "2001:db8:1:3::/64"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key(None) == "a unix socket"


async def test_one_ipv6_host_cannot_dodge_the_per_address_cap() -> None:
    gate = HandshakeGate(0, 2, what="test")
    pendings = [gate.enter(f"2001:db8:0:1::{i:x}", 60) for i in range(1, 6)]
    assert evicted(pendings) == [0, 1, 2]


async def test_closes_are_logged_once_per_address_per_interval(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "wsnic_trio.listen")
    gate = HandshakeGate(0, 2, what="WebSocket", names=("--max-h", "--max-h-per-ip"))
    for _ in range(20):
        gate.enter("10.0.0.1", 60)
    gate.enter("10.0.0.2", 60)
    gate.enter("10.0.0.2", 60)
    gate.enter("10.0.0.2", 60)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "WebSocket: 2 connections from 10.0.0.1 are in their handshake, the most "
        "--max-h-per-ip allows: closed the oldest of them",
        "WebSocket: 2 connections from 10.0.0.2 are in their handshake, the most "
        "--max-h-per-ip allows: closed the oldest of them",
    ]
    caplog.clear()
    mock_clock.jump(61)
    gate.enter("10.0.0.1", 60)
    assert [r.getMessage() for r in caplog.records] == [
        "WebSocket: 2 connections from 10.0.0.1 are in their handshake, the most "
        "--max-h-per-ip allows: closed the oldest of them (and 17 more since the last "
        "such line for 10.0.0.1)"
    ]


async def test_the_log_table_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "wsnic_trio.listen")
    gate = HandshakeGate(10, 0, what="test", max_logged=100)
    for i in range(1000):
        gate.enter(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 60)
    assert len(gate._said) == 100
    assert len(gate) == 10
