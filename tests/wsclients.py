"""WebSocket clients for tests: trio-websocket (an independent, real client) and a raw
wsproto client for sending what a well-behaved client never would."""

from __future__ import annotations

import ssl
import weakref

import trio
import trio_websocket
import wsproto
import wsproto.events as ev

from .netns import NetNS


async def ws_client(
    ns: NetNS,
    nursery: trio.Nursery,
    port: int = 8086,
    path: str = "/",
    host: str = "127.0.0.1",
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str = "localhost",
    subprotocols: list[str] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> trio_websocket.WebSocketConnection:
    """A trio-websocket client connected from inside ``ns`` (wss when given a context)."""
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = await ns.connect_tcp(host, port)
    try:
        if ssl_context is not None:
            assert isinstance(stream, trio.SocketStream)
            tls = trio.SSLStream(stream, ssl_context, server_hostname=server_hostname)
            await tls.do_handshake()
            stream = tls
        conn = await trio_websocket.wrap_client_stream(
            nursery,
            stream,
            host,
            path,
            message_queue_size=1024,
            subprotocols=subprotocols,
            extra_headers=headers,
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    _streams[conn] = stream
    return conn


# trio-websocket's client never closes its TCP stream when the *server* ends the
# connection (it waits for the server's FIN, then returns early from aclose()), so the
# tests keep the stream to close it themselves.
_streams: weakref.WeakKeyDictionary[
    trio_websocket.WebSocketConnection, trio.SocketStream | trio.SSLStream[trio.SocketStream]
] = weakref.WeakKeyDictionary()


async def close_ws(conn: trio_websocket.WebSocketConnection) -> None:
    """Close a client completely, also after the server closed it."""
    await conn.aclose()
    stream = _streams.pop(conn, None)
    if stream is not None:
        await trio.aclose_forcefully(stream)


async def receive_until(
    conn: trio_websocket.WebSocketConnection, match: object, timeout: float = 5.0
) -> bytes:
    """Receive binary messages until ``match(frame)`` is truthy; return that frame."""
    with trio.fail_after(timeout):
        while True:
            msg = await conn.get_message()
            assert isinstance(msg, bytes), f"server sent a text message: {msg!r}"
            if match(msg):  # type: ignore[operator]
                return msg


class RawClient:
    """A wsproto client over a plain stream, for crafting bad input byte by byte."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list[ev.Event] = []

    @classmethod
    async def open(cls, ns: NetNS, port: int = 8086, path: str = "/") -> RawClient:
        client = cls(await ns.connect_tcp("127.0.0.1", port))
        await client.send(ev.Request(host="127.0.0.1", target=path))
        await client.wait_for(ev.AcceptConnection)
        return client

    async def send(self, event: ev.Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def pump(self) -> bool:
        """Read once; False at EOF."""
        data = await self.stream.receive_some(65536)
        self.ws.receive_data(data or None)
        self.events.extend(self.ws.events())
        return bool(data)

    async def wait_for(self, kind: type[ev.Event], timeout: float = 5.0) -> ev.Event:
        with trio.fail_after(timeout):
            while True:
                for event in self.events:
                    if isinstance(event, kind):
                        self.events.remove(event)
                        return event
                if not await self.pump():
                    for event in self.events:
                        if isinstance(event, kind):
                            return event
                    raise AssertionError(f"EOF before {kind.__name__}; events: {self.events}")

    async def read_to_eof(self, timeout: float = 5.0) -> bytes:
        data = b""
        with trio.fail_after(timeout):
            while True:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return data
                if not chunk:
                    return data
                data += chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


async def close_code_of(client: RawClient, timeout: float = 5.0) -> int:
    event = await client.wait_for(ev.CloseConnection, timeout)
    assert isinstance(event, ev.CloseConnection)
    return int(event.code)
