"""Port forwards whose ends vanish mid-flow: each costs its own connection only.

A TCP forward's client that resets while data streams both ways, and a guest service
that resets (or hangs up) while the client is still sending: the forward, its other
connections, the LAN and the server go on.
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

import trio

from .apihelp import api, require_curl
from .lanhost import add_client, require_tools
from .netns import NetNS, NsFactory, NsProcess

GUEST_IP = "192.168.86.50"

# Guest services: 7100 streams to its client for ever (and reads what comes);
# 7101 reads 64 KiB, then resets; 7102 reads 64 KiB, then hangs up (FIN).
SERVICES = """
import socket, struct, threading
def listen(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16); return s
def firehose(conn):
    def drain():
        try:
            while conn.recv(65536): pass
        except OSError: pass
    threading.Thread(target=drain, daemon=True).start()
    try:
        while True: conn.sendall(b"x" * 65536)
    except OSError: pass
    conn.close()
def read_then(conn, linger):
    got = 0
    try:
        while got < 65536:
            chunk = conn.recv(65536)
            if not chunk: break
            got += len(chunk)
    except OSError: pass
    if linger:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
def serve(port, handler, *args):
    s = listen(port)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handler, args=(conn, *args), daemon=True).start()
threading.Thread(target=serve, args=(7100, firehose), daemon=True).start()
threading.Thread(target=serve, args=(7101, read_then, True), daemon=True).start()
threading.Thread(target=serve, args=(7102, read_then, False), daemon=True).start()
print("services ready", flush=True)
threading.Event().wait()
"""


async def start_services(ns: NetNS) -> NsProcess:
    proc = await ns.start([sys.executable, "-c", SERVICES], label="services")
    await proc.log.wait_for(r"services ready")
    return proc


def rst(stream: trio.SocketStream) -> None:
    """Vanish: SO_LINGER 0, so the close is a TCP reset, mid-flow."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def add_forward(sock: str, port: int) -> int:
    reply = await api(
        sock, "POST", "/forwards", {"local": "127.0.0.1:0", "remote": f"{GUEST_IP}:{port}"}
    )
    assert reply.status == 201, reply
    return int(reply.json()["local"].rpartition(":")[2])


async def forwards(sock: str) -> dict[int, dict[str, object]]:
    rows = (await api(sock, "GET", "/forwards")).json()["forwards"]
    return {int(f["remote"].rpartition(":")[2]): f for f in rows}


async def test_tcp_forward_ends_that_vanish_mid_flow(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    require_curl()
    srv = world.new("srv")
    sock = str(tmp_path / "api.sock")
    server = await srv.start_wsnic("-a", "0.0.0.0", "--disable-dhcp", "--api", f"unix:{sock}")
    guest = await add_client(world, srv, tmp_path, 0, "guest")
    guest.ns.ip("addr", "add", f"{GUEST_IP}/24", "dev", "lan0")
    await start_services(guest.ns)
    firehose = await add_forward(sock, 7100)
    resetter = await add_forward(sock, 7101)
    hangup = await add_forward(sock, 7102)

    # A client of the forward that stays throughout, data flowing to it.
    steady = await srv.connect_tcp("127.0.0.1", firehose)
    with trio.fail_after(30):
        assert await steady.receive_some(65536)

    for _ in range(5):
        # The client resets while data streams both ways.
        stream = await srv.connect_tcp("127.0.0.1", firehose)
        received = 0
        with trio.fail_after(30):
            await stream.send_all(b"y" * 65536)
            while received < 256 * 1024:
                received += len(await stream.receive_some(65536))
            await stream.send_all(b"y" * 65536)
        rst(stream)
        # The guest's service resets, or hangs up, while the client is still sending.
        for port in (resetter, hangup):
            stream = await srv.connect_tcp("127.0.0.1", port)
            with trio.fail_after(30):
                try:
                    while True:
                        await stream.send_all(b"z" * 65536)
                except trio.BrokenResourceError:
                    pass  # the reset (or our write after the FIN), forwarded
            await trio.aclose_forcefully(stream)

    # Every vanished connection is gone from the server; the steady one still flows.
    with trio.fail_after(30):
        while True:
            rows = await forwards(sock)
            if rows[7100]["active"] == 1 and rows[7101]["active"] == rows[7102]["active"] == 0:
                break
            await trio.sleep(0.1)
    assert (rows[7100]["total"], rows[7101]["total"], rows[7102]["total"]) == (6, 5, 5)
    with trio.fail_after(30):
        for _ in range(20):
            assert await steady.receive_some(65536)
    await trio.aclose_forcefully(steady)
    # A new connection works, and so does the LAN behind the forwards.
    fresh = await srv.connect_tcp("127.0.0.1", firehose)
    with trio.fail_after(30):
        assert await fresh.receive_some(65536)
    await trio.aclose_forcefully(fresh)
    ping = await guest.ns.exec("ping", "-c", "1", "-W", "2", "192.168.86.1")
    assert ping.returncode == 0, ping.stdout.decode()
    assert server.log.find(r"Traceback|ERROR") is None, server.log.text()[-3000:]
    assert await server.stop() == 0
