"""Every kind of bad WebSocket input ends that client alone; nothing leaks.

Each case runs against a real server in its own namespace while a well-behaved client
stays connected; afterwards that client still gets ARP replies, the bad client's TAP is
gone, and the server's task and fd counts are back where they were.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio
import trio_websocket
import wsproto.events as ev

from . import packets as pk
from .netns import NetNS, NsFactory, NsProcess, wait_taps
from .wsclients import RawClient, close_code_of, receive_until, ws_client

GOOD_MAC = pk.mac("02:00:00:00:00:99")


async def status(server: NsProcess) -> tuple[int, int, int]:
    """(clients, tasks, fds) from the server's SIGUSR1 status line."""
    start = len(server.log.lines)
    server.send_signal(signal.SIGUSR1)
    m = await server.log.wait_for(
        r"status: (\d+) clients, (\d+) tasks, (\d+) open fds", start=start
    )
    return int(m[1]), int(m[2]), int(m[3])


async def status_settles(
    server: NsProcess, baseline: tuple[int, int, int], timeout: float = 10.0
) -> tuple[int, int, int]:
    """The status once it is back at ``baseline`` (or the last one seen, after ``timeout``)."""
    now = await status(server)
    with trio.move_on_after(timeout):
        while now != baseline:
            await trio.sleep(0.2)
            now = await status(server)
    return now


async def good_client_still_works(conn: trio_websocket.WebSocketConnection) -> None:
    await conn.send_message(pk.arp_request(GOOD_MAC, "192.168.86.99", "192.168.86.1"))
    reply = await receive_until(conn, pk.parse_arp_reply)
    assert pk.parse_arp_reply(reply) == ("02:77:73:00:00:01", "192.168.86.1")


async def expect_close(ns: NetNS, frames: Sequence[ev.Event], code: int) -> None:
    client = await RawClient.open(ns)
    for event in frames:
        await client.send(event)
    assert await close_code_of(client) == code
    await client.aclose()


async def arp_answered(client: RawClient) -> None:
    """Wait (5 s at most) for the bridge's ARP reply; other messages are passed over."""
    with trio.fail_after(5):
        while True:
            event = await client.wait_for(ev.BytesMessage)
            assert isinstance(event, ev.BytesMessage)
            if pk.parse_arp_reply(bytes(event.data)):
                return


async def case_text(ns: NetNS, server: NsProcess) -> None:
    await expect_close(ns, [ev.TextMessage("hello")], 1003)
    await server.log.wait_for(r"disconnected \(text messages are not Ethernet frames\)")


async def case_oversized(ns: NetNS, server: NsProcess) -> None:
    await expect_close(ns, [ev.BytesMessage(b"\x00" * 1519)], 1009)
    await server.log.wait_for(r"disconnected \(message larger than the 1518-byte frame limit\)")


async def case_oversized_fragments(ns: NetNS, server: NsProcess) -> None:
    parts = [ev.BytesMessage(b"\x00" * 1000, message_finished=False) for _ in range(2)]
    await expect_close(ns, parts, 1009)


async def case_unmasked(ns: NetNS, server: NsProcess) -> None:
    client = await RawClient.open(ns)
    frame = pk.probe_frame(pk.BROADCAST, pk.mac("02:00:00:00:00:01"), b"x")
    await client.send_raw(b"\x82" + bytes([len(frame)]) + frame)
    assert await close_code_of(client) == 1002
    await client.aclose()
    await server.log.wait_for(r"disconnected \(.*mask")


async def case_empty_and_runt(ns: NetNS, server: NsProcess) -> None:
    client = await RawClient.open(ns)
    await client.send(ev.BytesMessage(b""))
    await client.send(ev.BytesMessage(b"\x01" * 13))
    # Still connected: a valid ARP request after the runts is answered.
    me = pk.mac("02:00:00:00:00:0c")
    await client.send(ev.BytesMessage(pk.arp_request(me, "192.168.86.12", "192.168.86.1")))
    await arp_answered(client)
    await client.send(ev.CloseConnection(code=1000))
    await client.wait_for(ev.CloseConnection)
    await client.aclose()
    await server.log.wait_for(r"disconnected .*dropped 2 \(runt 2\)")


async def case_fragmented_ok(ns: NetNS, server: NsProcess) -> None:
    client = await RawClient.open(ns)
    me = pk.mac("02:00:00:00:00:0d")
    arp = pk.arp_request(me, "192.168.86.13", "192.168.86.1")
    for i in range(0, len(arp), 10):
        await client.send(ev.BytesMessage(arp[i : i + 10], message_finished=i + 10 >= len(arp)))
    await arp_answered(client)
    await client.aclose()


async def case_plain_http(ns: NetNS, server: NsProcess) -> None:
    stream = await ns.connect_tcp("127.0.0.1", 8086)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: lan\r\nUser-Agent: curl/8\r\n\r\n")
    reply = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(4096):
            reply += chunk
    await stream.aclose()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"content-type: text/plain" in reply.lower()
    assert b"WebSocket endpoint that carries Ethernet frames" in reply


async def case_huge_handshake(ns: NetNS, server: NsProcess) -> None:
    stream = await ns.connect_tcp("127.0.0.1", 8086)
    request = b"GET / HTTP/1.1\r\nHost: lan\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    reply = b""
    with trio.fail_after(5):
        # The server may close before reading it all; its reply was sent first.
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(request)
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(4096):
                reply += chunk
    await stream.aclose()
    assert reply.startswith(b"HTTP/1.1 431 ")  # Request Header Fields Too Large


async def case_handshake_never_ends(ns: NetNS, server: NsProcess) -> None:
    stream = await ns.connect_tcp("127.0.0.1", 8086)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: lan\r\n")  # ...and nothing more
    with trio.fail_after(10):
        assert await stream.receive_some(4096) == b"", "server closes the stalled connection"
    await stream.aclose()
    await server.log.wait_for(r"no complete WebSocket handshake within 1 s; closed")


async def case_reset_mid_frame(ns: NetNS, server: NsProcess) -> None:
    client = await RawClient.open(ns)
    before = len(server.log.lines)
    frame = pk.probe_frame(pk.BROADCAST, pk.mac("02:00:00:00:00:0e"), b"cut", size=1000)
    wire = client.ws.send(ev.BytesMessage(frame))
    await client.send_raw(wire[: len(wire) // 2])
    sock = client.stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()  # RST, not FIN
    m = await server.log.wait_for(r"client \d+ disconnected \((.*)\)", start=before)
    assert re.search(r"reset|closed", m[1])


CASES: dict[str, Callable[[NetNS, NsProcess], Awaitable[None]]] = {
    "text": case_text,
    "oversized": case_oversized,
    "oversized-fragments": case_oversized_fragments,
    "unmasked": case_unmasked,
    "empty-and-runt": case_empty_and_runt,
    "fragmented-ok": case_fragmented_ok,
    "plain-http": case_plain_http,
    "huge-handshake": case_huge_handshake,
    "handshake-never-ends": case_handshake_never_ends,
    "reset-mid-frame": case_reset_mid_frame,
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_input_ends_only_that_client(
    case: str, world: NsFactory, nursery: trio.Nursery
) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic("--handshake-timeout", "1")
    good = await ws_client(ns, nursery)
    await wait_taps(ns, 1)
    await good_client_still_works(good)
    baseline = await status(server)
    assert baseline[0] == 1

    await CASES[case](ns, server)

    await wait_taps(ns, 1)
    await good_client_still_works(good)
    with trio.fail_after(5):
        while (now := await status(server)) != baseline:
            await trio.sleep(0.1)
    assert now == baseline, "clients, tasks and fds are back to what they were"
    await good.aclose()
    assert await server.stop() == 0
    assert not [line for line in server.log.lines if "Traceback" in line]


async def test_ping_keeps_live_clients_and_drops_silent_ones(
    world: NsFactory, nursery: trio.Nursery
) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic("--ping-interval", "0.3", "--ping-timeout", "1.5")
    live = await ws_client(ns, nursery)  # trio-websocket answers pings by itself
    silent = await RawClient.open(ns)  # completes the handshake, then never reads
    await wait_taps(ns, 2)
    await server.log.wait_for(r"client 2 disconnected \(no sign of life for 1\.\d s\)", timeout=10)
    await wait_taps(ns, 1)
    # The silent client's socket holds what the server sent: pings, then close 1001.
    events: list[ev.Event] = []
    with trio.move_on_after(2):
        while await silent.pump():
            pass
    events = silent.events
    assert any(isinstance(e, ev.Ping) for e in events)
    closes = [e for e in events if isinstance(e, ev.CloseConnection)]
    assert closes and closes[0].code == 1001
    await silent.aclose()
    # Far past the timeout, the client that answers pings is still on the LAN.
    await trio.sleep(2.0)
    assert server.log.find(r"client 1 disconnected") is None
    await good_client_still_works(live)
    await live.aclose()


async def test_200_clients_connecting_and_disconnecting(
    world: NsFactory, nursery: trio.Nursery
) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic()
    good = await ws_client(ns, nursery)
    await wait_taps(ns, 1)
    await good_client_still_works(good)  # the good client is fully set up
    baseline = await status(server)
    assert baseline[0] == 1

    async def churn(worker: int) -> None:
        for i in range(20):
            if i % 3 == 0:  # abrupt: TCP reset right after the handshake
                client = await RawClient.open(ns)
                client.stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                await client.aclose()
            else:
                async with trio.open_nursery() as own:
                    conn = await ws_client(ns, own)
                    await conn.send_message(
                        pk.probe_frame(
                            pk.BROADCAST, pk.mac(f"02:00:00:00:{worker:02x}:{i:02x}"), b"x"
                        )
                    )
                    await conn.aclose()

    async with trio.open_nursery() as crowd:
        for worker in range(10):
            crowd.start_soon(churn, worker)

    await wait_taps(ns, 1, timeout=10)
    now = await status_settles(server, baseline)
    assert now == baseline, f"(clients, tasks, fds) {now} != {baseline} before the churn"
    await good_client_still_works(good)
    assert len(re.findall(r"client \d+ connected", server.log.text())) == 201
    await good.aclose()
    assert await server.stop() == 0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_slow_client_gets_drops_not_memory(world: NsFactory, nursery: trio.Nursery) -> None:
    """A client that stops reading while others flood the LAN costs frames, not memory.

    The flood is unicast to a MAC nobody has, which the bridge floods to every port like
    a broadcast but ``--broadcast-limit`` does not count (that limit would otherwise
    stop the flood at its source)."""
    ns = world.new("srv")
    server = await ns.start_wsnic()
    slow = await RawClient.open(ns)  # never reads again
    try:
        good = await ws_client(ns, nursery)
        flooder = await ws_client(ns, nursery)
        [slow_tap, *_] = await wait_taps(ns, 3)
        rss_before = rss_kib(server.pid)
        src = pk.mac("02:00:00:00:00:f1")
        frame = pk.probe_frame(pk.mac("02:00:00:00:00:5e"), src, b"flood", size=1514)
        for _ in range(20):  # 20 x 500 frames of 1514 bytes = 15 MB flooded at the LAN
            for _ in range(500):
                await flooder.send_message(frame)
            await good_client_still_works(good)
        rss_after = rss_kib(server.pid)
        stats = ns.ip("-s", "link", "show", slow_tap).stdout
        tx_line = stats.split("TX:")[1].splitlines()[1].split()
        tx_dropped = int(tx_line[3])
        assert tx_dropped > 0, f"the kernel queue of the slow client's TAP overflowed:\n{stats}"
        assert rss_after - rss_before < 20_000, "server memory did not grow with the flood"
    finally:
        await slow.aclose()
    await server.log.wait_for(r"client 1 disconnected .*peer-too-slow \d+")
    await good.aclose()
    await flooder.aclose()
