"""Per-frame cost of the data path's RFC 6455 codec against wsproto's, server side.

``python -m bench.frame_codec``: one 1500-byte binary message, received masked from a
client and sent unmasked, one frame per call as a relay sees them at low load. The
figures are quoted in docs/development.md.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from wsnic_trio.transports.websocket_frames import FrameCodec

PAYLOAD = bytes(range(256)) * 5 + bytes(220)  # 1500 bytes
NUMBER = 20_000


def _wsproto_pair() -> tuple[WSConnection, WSConnection]:
    """A server connection past its handshake, and the client that masks for it."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    next(server.events())
    client.receive_data(server.send(AcceptConnection()))
    next(client.events())
    return server, client


def _ours() -> tuple[Callable[[], object], Callable[[], object]]:
    server = FrameCodec(client=False, max_message=2048)
    masked = FrameCodec(client=True, max_message=2048).encode([PAYLOAD])
    assert server.receive(masked) == [PAYLOAD]
    return (lambda: server.receive(masked)), (lambda: server.encode([PAYLOAD]))


def _wsproto() -> tuple[Callable[[], object], Callable[[], object]]:
    server, client = _wsproto_pair()
    masked = client.send(BytesMessage(data=PAYLOAD))

    def receive() -> list[object]:
        server.receive_data(masked)
        return list(server.events())

    (event,) = receive()
    assert isinstance(event, BytesMessage)
    assert event.data == PAYLOAD
    return receive, (lambda: server.send(BytesMessage(data=PAYLOAD)))


def main() -> None:
    for name, make in (("wsnic-trio FrameCodec", _ours), ("wsproto WSConnection", _wsproto)):
        receive, send = make()
        rx = min(timeit.repeat(receive, number=NUMBER, repeat=5)) / NUMBER * 1e6
        tx = min(timeit.repeat(send, number=NUMBER, repeat=5)) / NUMBER * 1e6
        print(f"{name:24} receive {rx:6.2f} µs  send {tx:6.2f} µs  per 1500-byte frame")


if __name__ == "__main__":
    main()
