"""``wsnic-trio connect`` against a server that misbehaves or vanishes at every moment
of a connection: it must log why, keep its TAP and dial again, never die of it."""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

import trio

from . import packets as pk
from .netns import NetNS, NsFactory

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FRAME = pk.probe_frame(pk.BROADCAST, pk.mac("02:00:00:00:0c:01"), b"from the fake server")


def rst(conn: trio.socket.SocketType) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


async def read_request(conn: trio.socket.SocketType) -> bytes:
    data = b""
    with trio.fail_after(30):
        while b"\r\n\r\n" not in data:
            chunk = await conn.recv(65536)
            assert chunk, data
            data += chunk
    return data


def accept_response(request: bytes) -> bytes:
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: " + accept + b"\r\n\r\n"
    )


def binary(payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes([0x82, len(payload)]) + payload


async def upgrade(conn: trio.socket.SocketType) -> None:
    await conn.send(accept_response(await read_request(conn)))


async def reset_during_handshake(conn: trio.socket.SocketType) -> None:
    await read_request(conn)
    rst(conn)


async def garbage_answer(conn: trio.socket.SocketType) -> None:
    await read_request(conn)
    await conn.send(b"\x00\xffnot HTTP at all\r\n\r\n")
    conn.close()


async def reset_while_frames_flow(conn: trio.socket.SocketType) -> None:
    await upgrade(conn)
    for _ in range(50):
        await conn.send(binary(FRAME))
    rst(conn)  # whatever the client sent stays unread: a reset


async def hang_up_mid_frame(conn: trio.socket.SocketType) -> None:
    """An orderly TCP end (FIN), but in the middle of a WebSocket message."""
    await upgrade(conn)
    await conn.send(binary(FRAME) + binary(FRAME)[:20])
    conn.shutdown(socket.SHUT_WR)
    with trio.fail_after(30):
        while await conn.recv(65536):  # until the client hangs up too
            pass


def connect_argv(port: int, *extra: str) -> list[str]:
    """``wsnic-trio connect`` to a WebSocket server on 127.0.0.1:``port``, TAP lan0."""
    return [
        sys.executable,
        "-m",
        "wsnic_trio",
        "connect",
        f"ws://127.0.0.1:{port}/",
        "--tap",
        "lan0",
        *extra,
    ]


def listen_local(ns: NetNS, backlog: int) -> tuple[trio.socket.SocketType, int]:
    """A TCP listener on 127.0.0.1 of ``ns`` at a free port, and that port."""
    raw = ns.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen(backlog)
    port: int = raw.getsockname()[1]
    return trio.socket.from_stdlib_socket(raw), port


async def test_connect_survives_a_server_that_vanishes_at_any_moment(world: NsFactory) -> None:
    ns = world.new("c")
    listener, port = listen_local(ns, 8)
    tool = await ns.start(connect_argv(port, "--retry-max", "1"), label="connect")
    behaviours: list[Callable[[trio.socket.SocketType], Awaitable[None]]] = [
        reset_during_handshake,
        garbage_answer,
        reset_while_frames_flow,
        hang_up_mid_frame,
    ] * 2

    async def serve_one(behave: Callable[[trio.socket.SocketType], Awaitable[None]]) -> int:
        """Accept the tool's next dial and treat it so; where its log stood before."""
        mark = len(tool.log.lines)
        with trio.fail_after(30):
            conn, _ = await listener.accept()
        with conn:
            await behave(conn)
        return mark

    async def behave_well(conn: trio.socket.SocketType) -> None:
        await upgrade(conn)
        await tool.log.wait_for(r"connected to ws://", start=mark)
        assert await tool.stop() == 0

    with listener:
        for behave in behaviours:
            mark = await serve_one(behave)
            await tool.log.wait_for(r"WARNING connection to ws://\S+ ended: ", start=mark)
            await tool.log.wait_for(r"reconnecting in", start=mark)
            assert tool.proc.returncode is None, tool.log.text()
            assert "lan0" in ns.links(), "the TAP stays while the server misbehaves"
        mark = len(tool.log.lines)
        await serve_one(behave_well)  # the tool is connected again, then stopped
    assert tool.log.find(r"Traceback") is None, tool.log.text()
