"""Control API clients that vanish, stall or send garbage cost their own connection only.

The server must go on serving the LAN (a WebSocket client connected throughout keeps
working, new ones can join) and the API must go on answering, whatever a client of the
API does and whenever it does it. Clients here are raw sockets on the API's unix socket,
so a test can reset one at an exact moment: closing a unix socket with unread data is
what a reset is there (its peer's next read says ECONNRESET, its next write EPIPE).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import trio
import trio_websocket

from . import packets as pk
from .apihelp import api, require_curl
from .netns import REPO, NetNS, NsFactory, NsProcess, wait_taps
from .wsclients import close_ws, receive_until, ws_client

GOOD_MAC = pk.mac("02:00:00:00:0a:01")
NEW_MAC = pk.mac("02:00:00:00:0b:01")
EVENTS = b"GET /events HTTP/1.1\r\nhost: wsnic\r\n\r\n"


# -- raw API clients ----------------------------------------------------------------------


async def connect(path: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def reset(sock: trio.socket.SocketType) -> None:
    """Vanish the way a killed client does: no goodbye, unread data left behind.

    SO_LINGER 0 makes that a TCP RST; on a unix socket the unread data does it.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def unread(sock: trio.socket.SocketType) -> int:
    """Bytes the server has written that this client has not read yet."""
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(raw, "little")


async def read_until(sock: trio.socket.SocketType, marker: bytes, have: bytes = b"") -> bytes:
    with trio.fail_after(15):
        while marker not in have:
            chunk = await sock.recv(65536)
            assert chunk, f"EOF before {marker!r}; got {have[-500:]!r}"
            have += chunk
    return have


async def subscribe(path: str) -> trio.socket.SocketType:
    """An /events subscriber that has seen its "subscribed" line (and reads no more)."""
    sock = await connect(path)
    await sock.send(EVENTS)
    await read_until(sock, b'"event": "subscribed"')
    return sock


async def exchange(path: str, request: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes, read the answer to EOF (the server closes after errors)."""
    sock = await connect(path)
    with sock:
        await sock.send(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        with trio.fail_after(15):
            while True:
                try:
                    chunk = await sock.recv(65536)
                except ConnectionResetError:  # it closed on a request we had not finished
                    break
                if not chunk:
                    break
                answer += chunk
                if not half_close and _complete(answer, request.startswith(b"HEAD ")):
                    break
    return answer


def _complete(answer: bytes, head_only: bool = False) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head_only:
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split()[1])


# -- the LAN around the API ---------------------------------------------------------------


class Churn:
    """WebSocket clients joining and leaving in a loop: a steady stream of events."""

    def __init__(self, ns: NetNS, server: NsProcess, nursery: trio.Nursery) -> None:
        self.ns = ns
        self.server = server
        self.nursery = nursery
        self.cycles = 0
        self.stopping = False
        self._tick = trio.Event()

    async def run(self) -> None:
        while not self.stopping:
            conn = await ws_client(self.ns, self.nursery)
            # A frame, so each cycle also publishes a client-mac event.
            src = pk.mac(f"02:00:00:00:01:{self.cycles % 256:02x}")
            await conn.send_message(pk.probe_frame(pk.BROADCAST, src, b"churn"))
            await close_ws(conn)
            self.cycles += 1
            self._tick.set()
            self._tick = trio.Event()

    async def wait_cycles(self, count: int) -> None:
        """Wait for ``count`` more cycles; fail at once if the server has ended."""
        target = self.cycles + count
        with trio.fail_after(60):
            while self.cycles < target:
                with trio.move_on_after(0.5):
                    await self._tick.wait()
                assert self.server.proc.returncode is None, self.server.log.text()[-3000:]


@contextlib.asynccontextmanager
async def churning(lan: Lan) -> AsyncIterator[Churn]:
    async with trio.open_nursery() as nursery:
        churn = Churn(lan.srv, lan.server, nursery)
        nursery.start_soon(churn.run)
        await churn.wait_cycles(1)
        yield churn
        churn.stopping = True  # ends after the cycle under way, its client closed


async def assert_works(conn: trio_websocket.WebSocketConnection, mac: bytes = GOOD_MAC) -> None:
    """The client is still on the LAN: the bridge answers its ARP request."""
    await conn.send_message(pk.arp_request(mac, "192.168.86.10", "192.168.86.1"))
    reply = await receive_until(conn, pk.parse_arp_reply, timeout=15)
    assert pk.parse_arp_reply(reply) == ("02:77:73:00:00:01", "192.168.86.1")


class Lan:
    """A server with the unix API and one good WebSocket client that must stay fine."""

    def __init__(self, srv: NetNS, server: NsProcess, sock: str, nursery: trio.Nursery) -> None:
        self.srv = srv
        self.server = server
        self.sock = sock
        self.nursery = nursery
        self.good: trio_websocket.WebSocketConnection | None = None
        self.good_tap = ""

    @classmethod
    async def start(cls, world: NsFactory, nursery: trio.Nursery, sockdir: str, *args: str) -> Lan:
        require_curl()
        srv = world.new("srv")
        sock = f"{sockdir}/api.sock"
        server = await srv.start_wsnic("--disable-dhcp", "--api", f"unix:{sock}", *args)
        lan = cls(srv, server, sock, nursery)
        lan.good = await ws_client(srv, nursery)
        await assert_works(lan.good)
        [lan.good_tap] = await wait_taps(srv, 1)
        return lan

    async def assert_alive(self) -> None:
        """The server runs and its API answers, still listing the good client."""
        assert self.server.proc.returncode is None, self.server.log.text()[-3000:]
        reply = await api(self.sock, "GET", "/clients")
        assert reply.status == 200, reply
        assert self.good_tap in [c["tap"] for c in reply.json()["clients"]], reply

    async def assert_intact(self) -> None:
        """Alive, the good client still works, a new one can join, nothing was logged
        as an error; then the good client leaves and the server stops cleanly."""
        assert self.good is not None
        await self.assert_alive()
        await assert_works(self.good)
        newcomer = await ws_client(self.srv, self.nursery)
        await assert_works(newcomer, NEW_MAC)
        clients = (await api(self.sock, "GET", "/clients")).json()["clients"]
        assert len(clients) == 2 and self.good_tap in [c["tap"] for c in clients]
        await close_ws(newcomer)
        await close_ws(self.good)
        log = self.server.log
        assert log.find(r"Traceback|ERROR") is None, log.text()[-3000:]
        assert await self.server.stop() == 0


# -- tests ----------------------------------------------------------------------------------


async def test_event_subscribers_reset_while_events_are_written(
    world: NsFactory, nursery: trio.Nursery, sockdir: str
) -> None:
    """Issue 11: a subscriber reset while the server writes it an event ended the server.

    Each subscriber here has stopped reading, so the server is in the middle of writing
    it an event when it resets: the write fails (EPIPE) at the same moment the reader
    task sees the reset. Before the fix, the first write to fail took the server down.
    """
    lan = await Lan.start(world, nursery, sockdir)
    subscribers = [await subscribe(lan.sock) for _ in range(8)]
    async with churning(lan) as churn:
        # Wait until the server can write no more to any subscriber (what it has
        # written stops growing while events go on): each has a write in progress.
        last: list[int] = []
        steady = 0
        while steady < 5:
            await churn.wait_cycles(1)
            now = [unread(s) for s in subscribers]
            steady = steady + 1 if now == last else 0
            last = now
        for subscriber in subscribers:
            reset(subscriber)
            await churn.wait_cycles(2)
            await lan.assert_alive()
    await lan.assert_intact()


async def test_api_clients_vanishing_at_any_moment(
    world: NsFactory, nursery: trio.Nursery, sockdir: str, tmp_path: Path
) -> None:
    """Resets mid-request, right after the answer's head, while events stream, during a
    long answer (/metrics, pipelined requests) and while a capture is stopped."""
    captures = tmp_path / "pcap"
    captures.mkdir()
    lan = await Lan.start(world, nursery, sockdir, "--pcap", str(captures), "--pcap-on-demand")
    sock = lan.sock
    good_id = (await api(sock, "GET", "/clients")).json()["clients"][0]["id"]
    pcap = f"/clients/{good_id}/pcap"

    async def mid_request(request: bytes) -> None:
        s = await connect(sock)
        await s.send(request[: len(request) // 2])
        reset(s)

    async def after_request(request: bytes) -> None:
        s = await connect(sock)
        await s.send(request)
        reset(s)

    async def after_head(request: bytes) -> None:
        s = await connect(sock)
        await s.send(request)
        await read_until(s, b"\r\n\r\n")
        reset(s)

    async def while_streaming(request: bytes) -> None:
        s = await connect(sock)
        await s.send(request)
        have = await read_until(s, b'"event": "subscribed"')
        # Let a few events arrive, leave the last ones unread, reset.
        await read_until(s, b'"event": "client-disconnected"', have)
        reset(s)

    def request(method: str, path: str, body: bytes = b"") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nhost: wsnic\r\ncontent-length: {len(body)}\r\n\r\n"
        return head.encode() + body

    metrics = request("GET", "/metrics")
    pipelined = request("GET", "/clients") * 200 + metrics * 50
    moments = [
        (mid_request, EVENTS),
        (after_request, EVENTS),
        (after_head, EVENTS),
        (while_streaming, EVENTS),
        (mid_request, metrics),
        (after_request, metrics),
        (after_head, metrics),
        (after_request, pipelined),
        (after_head, pipelined),
        (mid_request, request("POST", "/forwards", b'{"local": "127.0.0.1:0", "remote"')),
    ]
    async with churning(lan) as churn:
        for moment, req in moments:
            for _ in range(5):
                await moment(req)
                await churn.wait_cycles(1)
            await lan.assert_alive()
        # Capture: start it and stop it, each time vanishing before the answer (the
        # stop answers once the file is complete, long after the client left).
        for _ in range(3):
            await after_request(request("POST", pcap, b"{}"))
            await trio.sleep(0.2)
            await after_request(request("DELETE", pcap))
            await churn.wait_cycles(1)
            await lan.assert_alive()
    # Capture is still under control.
    started = await api(sock, "POST", pcap, {})
    assert started.status == 201, started
    stopped = await api(sock, "DELETE", pcap)
    assert stopped.status == 200 and stopped.json()["capture"]["error"] is None, stopped
    await lan.assert_intact()


async def test_bad_requests_and_half_closes_cost_their_connection_only(
    world: NsFactory, nursery: trio.Nursery, sockdir: str
) -> None:
    lan = await Lan.start(world, nursery, sockdir)
    sock = lan.sock

    def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "host: wsnic", *headers]
        if body:
            lines.append(f"content-length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    cases = [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n\r\n", 400),
        (b"GET /clients HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (request("GET", "/clients", "x-big: " + "a" * 100000), 431),
        (request("POST", "/forwards", body=b"[" * 30000 + b"]" * 30000), 400),
        (request("POST", "/forwards", body=b"{" + b" " * 70000 + b"}"), 413),
        (request("POST", "/forwards", "transfer-encoding: chunked") + b"zz\r\n", 400),
        (request("HEAD", "/clients"), 200),
        (request("HEAD", "/events"), 200),
        (request("HEAD", "/nowhere"), 404),
        (request("HEAD", "/forwards", "content-length: 100000"), 413),
        # (issue 12) Numbers too long for Python's int(): a 4xx, never a 500.
        (request("GET", "/clients/" + "9" * 5000), 404),
        (request("DELETE", "/clients/" + "7" * 20), 404),
        (request("POST", "/clients/" + "1" * 5000 + "/pcap"), 404),
        (request("DELETE", "/clients/" + "1" * 5000 + "/pcap"), 404),
        (request("POST", "/forwards", body=b'{"local": ' + b"1" * 5000 + b"}"), 400),
        (request("POST", "/forwards", "content-length: " + "9" * 5000), 400),
        (request("GET", "/clients", "content-length: 1" + "0" * 40), 400),
    ]
    for raw, status in cases:
        answer = await exchange(sock, raw)
        assert status_of(answer) == status, (raw[:80], answer[:300])
        if raw.startswith(b"HEAD"):
            assert answer.endswith(b"\r\n\r\n"), answer  # a HEAD answer has no body
        else:
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == status
        await lan.assert_alive()
    # Half-closed after the request: the answer still comes, then the connection ends.
    answer = await exchange(sock, request("GET", "/clients") * 3, half_close=True)
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer[:500]
    # Half-closed event subscriber: its stream ends; nobody else notices.
    answer = await exchange(sock, EVENTS, half_close=True)
    assert status_of(answer) == 200 and b'"event": "subscribed"' in answer, answer
    await lan.assert_intact()


async def test_clients_that_stop_reading_are_closed(
    world: NsFactory, nursery: trio.Nursery, sockdir: str
) -> None:
    """Every connection slot held by a client that sends requests but never reads the
    answers: the server closes them once they took nothing for a while, so the API
    answers again (before, it stayed locked for as long as they stayed)."""
    lan = await Lan.start(world, nursery, sockdir)
    sock = lan.sock
    metrics = b"GET /metrics HTTP/1.1\r\nhost: wsnic\r\n\r\n"
    stalled = []
    for _ in range(64):  # MAX_CONNECTIONS
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.append(s)
        s.connect(sock)
        s.setblocking(False)
        # Pipeline requests until the server, blocked writing answers nobody reads,
        # takes no more of them.
        with trio.fail_after(30):
            while True:
                try:
                    s.send(metrics * 64)
                except BlockingIOError:
                    break
                await trio.sleep(0.001)
    # Now nobody else gets an answer, until the server gives up on the stalled ones.
    late = await connect(sock)
    with late:
        await late.send(b"GET /clients HTTP/1.1\r\nhost: wsnic\r\n\r\n")
        answer = b""
        with trio.fail_after(120):
            while not _complete(answer):
                chunk = await late.recv(65536)
                assert chunk, answer
                answer += chunk
    assert status_of(answer) == 200 and lan.good_tap.encode() in answer, answer[:300]
    await lan.server.log.wait_for(r"INFO control API: client \(unix socket\) took nothing")
    for s in stalled:
        s.close()
    await lan.assert_intact()


# -- the command-line client ------------------------------------------------------------


class CtlEvents:
    """``wsnic-trio ctl events`` with its stdout a pipe we hold, and its stderr kept."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.stderr = b""
        self.stderr_done = trio.Event()

    async def collect_stderr(self) -> None:
        assert self.proc.stderr is not None
        async with self.proc.stderr:
            while chunk := await self.proc.stderr.receive_some(65536):
                self.stderr += chunk
        self.stderr_done.set()

    async def wait(self) -> tuple[int, str]:
        """Its exit code and everything it wrote to stderr."""
        with trio.fail_after(30):
            code = await self.proc.wait()
            await self.stderr_done.wait()
        return code, self.stderr.decode(errors="replace")


async def start_ctl_events(sock: str, nursery: trio.Nursery) -> CtlEvents:
    """Start ``ctl events`` and wait until it is subscribed."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "wsnic_trio", "ctl", "--api", f"unix:{sock}", "events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    ctl = CtlEvents(proc)
    nursery.start_soon(ctl.collect_stderr)
    assert proc.stdout is not None
    seen = b""
    with trio.fail_after(30):
        while b'"event": "subscribed"' not in seen:
            chunk = await proc.stdout.receive_some(65536)
            assert chunk, ctl.stderr
            seen += chunk
    return ctl


async def test_ctl_events_ends_quietly_when_its_reader_or_its_user_goes(
    world: NsFactory, nursery: trio.Nursery, sockdir: str
) -> None:
    """``ctl events | head -1`` and Ctrl-C on ``ctl events`` while events flow: the tool
    ends with its exit code and no traceback, and the server does not notice."""
    lan = await Lan.start(world, nursery, sockdir)
    async with churning(lan):
        for _ in range(3):
            ctl = await start_ctl_events(lan.sock, nursery)
            assert ctl.proc.stdout is not None
            await ctl.proc.stdout.aclose()  # the reader of its output is gone
            code, errors = await ctl.wait()  # it notices at its next event
            assert (code, errors) == (141, "")
        for _ in range(3):
            ctl = await start_ctl_events(lan.sock, nursery)
            ctl.proc.send_signal(signal.SIGINT)
            code, errors = await ctl.wait()
            assert (code, errors) == (130, "")
            assert ctl.proc.stdout is not None
            await ctl.proc.stdout.aclose()
        await lan.assert_alive()
    await lan.assert_intact()
