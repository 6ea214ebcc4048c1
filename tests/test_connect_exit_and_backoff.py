"""``wsnic-trio connect`` as docs/user-guide.md describes it: the exit status of ``--once``
and when the reconnect backoff starts over, against a fake WebSocket server."""

from __future__ import annotations

import trio

from .netns import NsFactory
from .test_connect_faults import connect_argv, listen_local, read_request, rst, upgrade


async def test_once_exits_2_when_no_connection_is_made(world: NsFactory) -> None:
    ns = world.new("c")
    raw = ns.socket()
    raw.bind(("127.0.0.1", 0))
    port = raw.getsockname()[1]
    raw.close()  # nobody listens there: the dial is refused
    tool = await ns.start(connect_argv(port, "--once"), label="connect")
    assert await tool.wait() == 2, tool.log.text()
    assert (
        tool.log.find(r"wsnic-trio: error: no connection to ws://127\.0\.0\.1:\d+/: ") is not None
    )
    assert tool.log.find(r"Traceback") is None, tool.log.text()
    assert "lan0" not in ns.links(), "the TAP goes with the tool"


async def test_once_exits_0_after_a_connection_that_was_up(world: NsFactory) -> None:
    ns = world.new("c")
    listener, port = listen_local(ns, 1)
    with listener:
        tool = await ns.start(connect_argv(port, "--once"), label="connect")
        with trio.fail_after(30):
            conn, _ = await listener.accept()
        with conn:
            await upgrade(conn)
            await tool.log.wait_for(r"connected to ws://")
            rst(conn)
    assert await tool.wait() == 0, tool.log.text()
    assert tool.log.find(r"reconnecting in") is None, "--once does not dial again"
    assert "lan0" not in ns.links()


async def test_backoff_starts_over_after_a_session_that_stayed_up(world: NsFactory) -> None:
    """Drops right after the handshake back off; a drop after 5 s up waits 0.5 s again."""
    ns = world.new("c")
    listener, port = listen_local(ns, 8)
    tool = await ns.start(connect_argv(port, "--retry-max", "4"), label="connect")

    async def session(hold: float) -> float:
        """Accept one dial, keep it up for ``hold`` s, reset it; the wait the tool chose."""
        mark = len(tool.log.lines)
        with trio.fail_after(30):
            conn, _ = await listener.accept()
        with conn:
            await upgrade(conn)
            await tool.log.wait_for(r"connected to ws://", start=mark)
            await trio.sleep(hold)
            rst(conn)
        found = await tool.log.wait_for(r"reconnecting in ([\d.]+) s", start=mark)
        return float(found.group(1))

    with listener:
        # A server that takes the connection and drops it at once: the waits grow.
        assert [await session(0) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
        assert await session(0) == 4.0, "--retry-max caps the wait"
        # A session that was up well past 5 s: the next wait is short again, then grows.
        assert await session(8) == 0.5
        assert await session(0) == 1.0
    assert await tool.stop() == 0
    assert tool.log.find(r"Traceback") is None, tool.log.text()


async def test_a_full_server_is_dialled_again(world: NsFactory) -> None:
    """503 (a LAN or the server full) may pass: unlike 403 or 404 it is retried, with the
    server's reason in the log."""
    ns = world.new("c")
    listener, port = listen_local(ns, 4)
    with listener:
        tool = await ns.start(connect_argv(port), label="connect")
        body = b"no room for LAN x: 4 LANs made on demand (--max-lans)\n"
        with trio.fail_after(30):
            conn, _ = await listener.accept()
        with conn:
            await read_request(conn)
            await conn.send(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
        await tool.log.wait_for(
            r"connection to ws://127\.0\.0\.1:\d+/ refused: server answered HTTP 503: "
            r"no room for LAN x: 4 LANs made on demand \(--max-lans\)"
        )
        await tool.log.wait_for(r"reconnecting in 0\.5 s")
        with trio.fail_after(30):
            conn, _ = await listener.accept()
        with conn:
            await upgrade(conn)
            await tool.log.wait_for(r"connected to ws://")
    assert await tool.stop() == 0
    assert tool.log.find(r"Traceback") is None, tool.log.text()
