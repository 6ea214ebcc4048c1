"""Resource exhaustion before authentication (issue 12, item 7), against a real server.

Before: 1,700 silent TCP connections (under a soft ``ulimit -n`` of 1024) used up the
server's open files and kept new clients out; 64 idle connections to the TCP control
API locked the operator out; failed logins from a shared address kept a valid token at
429. Each test here plays the attacker with raw sockets and asserts what the victim
sees: a well-behaved client joins, the operator's ``curl`` gets its answer.
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import trio
import trio_websocket

from . import packets as pk
from .apihelp import api, require_curl
from .netns import NetNS, NsFactory, NsProcess, wait_taps
from .wsclients import close_ws, receive_until, ws_client

API_TOKEN = "operator-7f3a9c2e41d8b6a5"
BEARER = f"authorization: Bearer {API_TOKEN}"


def connect_from(ns: NetNS, source: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A blocking TCP connection made inside ``ns`` from source address ``source``
    (every 127.0.0.0/8 address is the namespace's loopback: one more "host")."""
    sock = ns.socket()
    try:
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def silent_connections(ns: NetNS, source: str, port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte (each completes its TCP handshake:
    the server has it in its accept queue, or has accepted it, when this returns)."""

    def make() -> list[socket.socket]:
        made: list[socket.socket] = []
        try:
            for _ in range(count):
                made.append(connect_from(ns, source, port))
        except BaseException:
            for sock in made:
                sock.close()
            raise
        return made

    return await trio.to_thread.run_sync(make)


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (no EOF, no reset waiting)."""
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            count += 1
        except OSError:
            pass
        else:
            assert data == b"", data
    return count


async def ws_client_from(
    ns: NetNS, nursery: trio.Nursery, source: str
) -> tuple[trio_websocket.WebSocketConnection, trio.SocketStream]:
    sock = await trio.to_thread.run_sync(connect_from, ns, source, 8086)
    sock.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    try:
        with trio.fail_after(30):  # a server that never takes the connection: no answer
            conn = await trio_websocket.wrap_client_stream(
                nursery, stream, "127.0.0.1", "/", message_queue_size=1024
            )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return conn, stream


async def on_the_lan(conn: trio_websocket.WebSocketConnection, mac: str) -> None:
    """The client is on the LAN: the bridge answers its ARP request."""
    await conn.send_message(pk.arp_request(pk.mac(mac), "192.168.86.20", "192.168.86.1"))
    reply = await receive_until(conn, pk.parse_arp_reply, timeout=10)
    assert pk.parse_arp_reply(reply) == ("02:77:73:00:00:01", "192.168.86.1")


async def test_silent_connections_keep_no_client_out(
    world: NsFactory, nursery: trio.Nursery, sockdir: str
) -> None:
    """300 connections from one address that never send a byte, to a server with few
    open files: a client from another address joins, and so does one from the
    attacker's own address (a NAT shared with it). The attacker holds at most
    ``--max-handshakes-per-ip`` (16) connections, each newer one closing its oldest;
    that is logged once and counted in /metrics."""
    require_curl()
    ns = world.new("srv")
    api_sock = f"{sockdir}/api.sock"
    server = await ns.start(
        [
            "sh",
            "-c",
            # A timeout far beyond the test: only the cap can close silent connections.
            'ulimit -n 128 && exec "$0" -m wsnic_trio --disable-dhcp --handshake-timeout 300 '
            f"--api unix:{api_sock}",
            sys.executable,
        ],
        label="wsnic-trio",
    )
    await server.log.wait_for(r"INFO ready: ", timeout=30)
    silent = await silent_connections(ns, "127.0.0.2", 8086, 300)
    joined: list[tuple[trio_websocket.WebSocketConnection, trio.SocketStream]] = []
    try:
        # The server accepts in order: all 300 were taken before this client.
        joined.append(await ws_client_from(ns, nursery, "127.0.0.1"))
        await on_the_lan(joined[0][0], "02:00:00:00:0a:01")
        joined.append(await ws_client_from(ns, nursery, "127.0.0.2"))
        await on_the_lan(joined[1][0], "02:00:00:00:0b:01")
        await wait_taps(ns, 2)
        # The attacker keeps 15 places (bob took the 16th, and left it when he joined).
        assert still_open(silent) == 15
        metrics = (await api(api_sock, "GET", "/metrics")).body.decode()
        assert (
            'wsnic_refused_total{reason="handshake-limit-per-ip",transport="ws"} 285.0' in metrics
        ), metrics
        lines = re.findall(
            r"WARNING WebSocket: 16 connections from 127\.0\.0\.2 are in their handshake, the "
            r"most --max-handshakes-per-ip allows: closed the oldest of them",
            server.log.text(),
        )
        assert len(lines) == 1, "one line per address per minute, not one per connection"
    finally:
        for conn, stream in joined:
            await conn.aclose()
            await trio.aclose_forcefully(stream)
        for sock in silent:
            sock.close()
    assert "Traceback" not in server.log.text()
    assert await server.stop() == 0


# -- the TCP control API ------------------------------------------------------------------


async def read_answer(stream: trio.SocketStream, have: bytearray) -> bytes | None:
    """One HTTP answer (head and a content-length body); None when the server closed."""
    with trio.fail_after(15):
        while True:
            head, sep, rest = bytes(have).partition(b"\r\n\r\n")
            if sep:
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                size = int(length[1]) if length else 0
                if len(rest) >= size:
                    del have[: len(head) + 4 + size]
                    return head + sep + rest[:size]
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not chunk:
                return None
            have += chunk


async def ask(stream: trio.SocketStream, have: bytearray, token: str | None) -> bytes | None:
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    try:
        await stream.send_all(f"GET /clients HTTP/1.1\r\nhost: x\r\n{auth}\r\n".encode())
    except trio.BrokenResourceError:
        return None
    return await read_answer(stream, have)


def status(answer: bytes | None) -> int:
    assert answer is not None and answer.startswith(b"HTTP/1.1 "), answer
    return int(answer.split()[1])


async def nag(ns: NetNS, settled: list[int], hold: trio.Event) -> None:
    """Ask without a token again and again on one connection: in the old server each
    answer (401, then 429) renewed the idle timeout, so the connection held its slot
    for as long as it liked."""
    stream = await ns.connect_tcp("127.0.0.1", 8088)
    have = bytearray()
    try:
        answers = 0
        while answers < 2:
            answer = await ask(stream, have, None)
            if answer is None:
                break  # closed by the server
            assert status(answer) in (401, 429), answer
            answers += 1
            await trio.sleep(0.2)
        settled.append(answers)
        # Keep asking (and so the slot, where it has one) until the test is over.
        while answers and not hold.is_set():
            with trio.move_on_after(1):
                await hold.wait()
            if await ask(stream, have, None) is None:
                break
    finally:
        await trio.aclose_forcefully(stream)


async def api_server(ns: NetNS, tmp_path: Path) -> NsProcess:
    tokens = tmp_path / "api-tokens"
    tokens.write_text(API_TOKEN + "\n")
    return await ns.start_wsnic(
        "--disable-dhcp", "--api", "tcp:127.0.0.1:8088", "--api-token-file", str(tokens)
    )


async def operator(ns: NetNS) -> list[str]:
    """What ``curl`` with the valid token gets from /clients: the clients' TAPs."""
    reply = await api("", "GET", "/clients", tcp="127.0.0.1:8088", ns=ns, headers=(BEARER,))
    assert reply.status == 200, reply
    return [c["tap"] for c in reply.json()["clients"]]


async def test_connections_without_a_token_keep_no_operator_out(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """64 connections that keep asking without a token, and 16 that say nothing, all
    from the operator's own address: ``curl`` with the valid token still gets
    /clients, and a connection that has authenticated is not closed to make room for
    newer ones without a token. (Before, the naggers held all 64 slots for as long as
    they liked, and ``curl`` waited unanswered.)"""
    require_curl()
    ns = world.new("srv")
    server = await api_server(ns, tmp_path)
    client = await ws_client(ns, nursery)
    try:
        [tap] = await wait_taps(ns, 1)
        hold = trio.Event()
        settled: list[int] = []
        silent: list[socket.socket] = []
        async with trio.open_nursery() as attackers:
            for _ in range(64):
                attackers.start_soon(nag, ns, settled, hold)
            with trio.fail_after(60):
                while len(settled) < 64:
                    await trio.sleep(0.05)
            try:
                silent = await silent_connections(ns, "127.0.0.1", 8088, 16)
                # An operator whose connection is authenticated keeps it...
                mine = await ns.connect_tcp("127.0.0.1", 8088)
                async with mine:
                    have = bytearray()
                    assert status(await ask(mine, have, API_TOKEN)) == 200
                    silent += await silent_connections(ns, "127.0.0.1", 8088, 20)
                    assert status(await ask(mine, have, API_TOKEN)) == 200
                # ... and new ones get in, each on a new connection.
                for _ in range(3):
                    assert await operator(ns) == [tap]
            finally:
                hold.set()
                for sock in silent:
                    sock.close()
    finally:
        await close_ws(client)
    assert server.log.find(r"WARNING control API: \d+ connections from 127\.0\.0\.1 are in")
    assert "Traceback" not in server.log.text()
    assert await server.stop() == 0


async def test_api_slots_are_for_authenticated_connections(
    world: NsFactory, tmp_path: Path
) -> None:
    """64 authenticated connections take the TCP API's slots; the 65th valid token
    hears why (503) instead of waiting unanswered, and gets in once a slot is free."""
    require_curl()
    ns = world.new("srv")
    server = await api_server(ns, tmp_path)
    kept: list[trio.SocketStream] = []
    try:
        for _ in range(64):
            kept.append(await ns.connect_tcp("127.0.0.1", 8088))
            assert status(await ask(kept[-1], bytearray(), API_TOKEN)) == 200
        extra = await ns.connect_tcp("127.0.0.1", 8088)
        async with extra:
            answer = await ask(extra, bytearray(), API_TOKEN)
            assert status(answer) == 503, answer
            assert answer is not None and b"serves 64 connections already" in answer
        await kept.pop().aclose()
        # Its slot is free once the server has seen it go; then a valid token gets in.
        with trio.fail_after(10):
            while True:
                again = await ns.connect_tcp("127.0.0.1", 8088)
                async with again:
                    answer = await ask(again, bytearray(), API_TOKEN)
                if status(answer) == 200:
                    break
                assert status(answer) == 503, answer
                await trio.sleep(0.05)
        assert await operator(ns) == []
    finally:
        for stream in kept:
            await trio.aclose_forcefully(stream)
    assert "Traceback" not in server.log.text()
    assert await server.stop() == 0


async def test_failed_api_logins_of_others_keep_no_valid_token_out(
    world: NsFactory, tmp_path: Path
) -> None:
    """20 wrong tokens from 127.0.0.1, then the operator's valid one from 127.0.0.1: it
    gets its answer (after the brake's wait), where it used to get 429."""
    require_curl()
    ns = world.new("srv")
    server = await api_server(ns, tmp_path)
    tcp = "127.0.0.1:8088"

    async def guess(i: int, statuses: list[int]) -> None:
        headers = (f"authorization: Bearer guess-{i}",)
        statuses.append((await api("", "GET", "/stats", tcp=tcp, ns=ns, headers=headers)).status)

    first: list[int] = []
    for i in range(5):
        await guess(i, first)
    assert first == [403] * 5
    # Braked: each guess waits for its answer (so three at a time: the API keeps 4
    # places per address for connections without a valid token).
    braked: list[int] = []
    for group in range(5):
        async with trio.open_nursery() as guesses:
            for i in range(3):
                guesses.start_soon(guess, 5 + 3 * group + i, braked)
    assert braked == [429] * 15
    reply = await api("", "GET", "/stats", tcp=tcp, ns=ns, headers=(BEARER,))
    assert reply.status == 200, reply
    assert reply.json()["clients_connected"] == 0
    assert "Traceback" not in server.log.text()
    assert await server.stop() == 0
