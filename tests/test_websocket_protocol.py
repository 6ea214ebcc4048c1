"""The sans-IO WebSocket codec, fed bytes from a real wsproto client: no sockets."""

from __future__ import annotations

import itertools

import wsproto
import wsproto.events as ev
from hypothesis import given
from hypothesis import strategies as st

from wsnic_trio.transports.base import FrameCheck
from wsnic_trio.transports.websocket import choose_subprotocol
from wsnic_trio.transports.websocket_protocol import Phase, WebSocketProtocol

CHECK = FrameCheck(max_frame=1518)
FRAME = bytes(range(14)) + b"payload" * 10


class Pair:
    """Our server codec and a wsproto client, wired back to back."""

    def __init__(self, subprotocols: list[str] | None = None) -> None:
        self.server = WebSocketProtocol(client=False, check=CHECK)
        self.client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        request = self.client.send(
            ev.Request(host="lan", target="/x", subprotocols=subprotocols or [])
        )
        self.server.receive(request)
        assert self.server.request is not None
        offered = self.server.request.subprotocols
        self.to_client(self.server.accept(offered[0] if offered else None))
        self.accepted = self.client_events()

    def to_client(self, data: bytes) -> None:
        self.client.receive_data(data)

    def client_events(self) -> list[ev.Event]:
        return list(self.client.events())

    def send(self, event: ev.Event) -> list[bytes]:
        frames = self.server.receive(self.client.send(event))
        self.to_client(self.server.data_to_send())
        return frames


def test_handshake_declines_compression_and_echoes_subprotocol() -> None:
    pair = Pair(subprotocols=["binary", "other"])
    [accept] = pair.accepted
    assert isinstance(accept, ev.AcceptConnection)
    assert accept.subprotocol == "binary"
    assert accept.extensions == []
    assert pair.server.phase is Phase.OPEN
    assert pair.server.request is not None and pair.server.request.path == "/x"


def test_binary_message_is_one_frame_each_way() -> None:
    pair = Pair()
    assert pair.send(ev.BytesMessage(FRAME)) == [FRAME]
    pair.to_client(pair.server.encode_frames([FRAME, FRAME[::-1]]))
    got = [e.data for e in pair.client_events() if isinstance(e, ev.BytesMessage)]
    assert got == [FRAME, FRAME[::-1]]


def test_ping_is_answered_with_pong() -> None:
    pair = Pair()
    assert pair.send(ev.Ping(b"hi")) == []
    [pong] = pair.client_events()
    assert isinstance(pong, ev.Pong) and pong.payload == b"hi"


def test_text_message_closes_with_1003() -> None:
    pair = Pair()
    assert pair.send(ev.TextMessage("hello")) == []
    closed = pair.server.closed
    assert closed is not None and closed.code == 1003 and closed.protocol_error
    [close] = pair.client_events()
    assert isinstance(close, ev.CloseConnection) and close.code == 1003


def test_runt_and_empty_messages_are_dropped_and_counted() -> None:
    pair = Pair()
    assert pair.send(ev.BytesMessage(b"")) == []
    assert pair.send(ev.BytesMessage(b"x" * 13)) == []
    assert pair.server.drops["runt"] == 2
    assert pair.server.closed is None
    assert pair.send(ev.BytesMessage(FRAME)) == [FRAME]


def test_oversized_message_closes_with_1009() -> None:
    pair = Pair()
    assert pair.send(ev.BytesMessage(b"x" * 1519)) == []
    assert pair.server.closed is not None and pair.server.closed.code == 1009
    [close] = pair.client_events()
    assert isinstance(close, ev.CloseConnection) and close.code == 1009


def test_largest_allowed_frame_passes() -> None:
    pair = Pair()
    assert pair.send(ev.BytesMessage(b"y" * 1518)) == [b"y" * 1518]


def test_fragmented_message_is_reassembled() -> None:
    pair = Pair()
    assert pair.send(ev.BytesMessage(FRAME[:5], message_finished=False)) == []
    assert pair.send(ev.BytesMessage(FRAME[5:20], message_finished=False)) == []
    assert pair.send(ev.BytesMessage(FRAME[20:], message_finished=True)) == [FRAME]


def test_fragmented_message_over_the_limit_closes_before_the_end() -> None:
    pair = Pair()
    for _ in range(3):
        pair.send(ev.BytesMessage(b"z" * 600, message_finished=False))
    assert pair.server.closed is not None and pair.server.closed.code == 1009


def test_unmasked_client_frame_closes_with_1002() -> None:
    pair = Pair()
    unmasked = b"\x82" + bytes([len(FRAME)]) + FRAME  # FIN+binary, no MASK bit
    assert pair.server.receive(unmasked) == []
    assert pair.server.closed is not None and pair.server.closed.code == 1002


def test_peer_close_is_answered_and_recorded() -> None:
    pair = Pair()
    pair.send(ev.CloseConnection(code=1000, reason="bye"))
    closed = pair.server.closed
    assert closed is not None and closed.code == 1000 and not closed.protocol_error
    [reply] = pair.client_events()
    assert isinstance(reply, ev.CloseConnection)


def test_eof_without_close_frame() -> None:
    pair = Pair()
    pair.server.receive(b"")
    assert pair.server.closed is not None and pair.server.closed.code == 1006


def test_plain_http_request_gets_a_page() -> None:
    server = WebSocketProtocol(client=False, check=CHECK)
    server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = server.data_to_send()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"WebSocket endpoint" in reply
    assert server.phase is Phase.CLOSED


def test_garbage_and_huge_handshakes_are_refused() -> None:
    cases = [
        (b"\x16\x03\x01 not http\r\n\r\n", b"HTTP/1.1 400 "),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000, b"HTTP/1.1 431 "),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"HTTP/1.1 426 ",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
            b"HTTP/1.1 400 ",
        ),
    ]
    for data, status in cases:
        server = WebSocketProtocol(client=False, check=CHECK)
        server.receive(data)
        assert server.data_to_send().startswith(status), data[:40]
        assert server.closed is not None and server.closed.protocol_error


def test_client_side_round_trip() -> None:
    client = WebSocketProtocol(client=True, check=CHECK)
    server = WebSocketProtocol(client=False, check=CHECK)
    server.receive(client.start_client("lan", "/"))
    client.receive(server.accept())
    assert client.phase is Phase.OPEN
    assert server.receive(client.encode_frames([FRAME, FRAME])) == [FRAME, FRAME]
    assert client.receive(server.encode_frames([FRAME])) == [FRAME]


def test_client_sees_rejection() -> None:
    client = WebSocketProtocol(client=True, check=CHECK)
    server = WebSocketProtocol(client=False, check=CHECK)
    server.receive(client.start_client("lan", "/"))
    client.receive(server.reject(403, b"no\n"))
    assert client.rejected_status == 403
    assert client.closed is not None


@given(
    frames=st.lists(st.binary(min_size=14, max_size=1518), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_any_split_of_the_byte_stream_gives_the_same_frames(
    frames: list[bytes], cuts: list[int]
) -> None:
    """Frames survive TCP cutting the stream anywhere (h11's tr() idea, with hypothesis)."""
    client = WebSocketProtocol(client=True, check=CHECK)
    server = WebSocketProtocol(client=False, check=CHECK)
    server.receive(client.start_client("lan", "/"))
    client.receive(server.accept())
    wire = client.encode_frames(frames)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    got: list[bytes] = []
    for start, end in itertools.pairwise(points):
        if end > start:
            got += server.receive(wire[start:end])
    assert got == frames


def test_byte_by_byte() -> None:
    client = WebSocketProtocol(client=True, check=CHECK)
    server = WebSocketProtocol(client=False, check=CHECK)
    handshake = client.start_client("lan", "/")
    for i in range(len(handshake)):
        server.receive(handshake[i : i + 1])
    response = server.accept()
    for i in range(len(response)):
        client.receive(response[i : i + 1])
    wire = client.encode_frames([FRAME])
    got: list[bytes] = []
    for i in range(len(wire)):
        got += server.receive(wire[i : i + 1])
    assert got == [FRAME]


def upgrade_head(size: int) -> bytes:
    """A valid upgrade request whose head (up to and including the blank line) is ``size``."""
    start = (
        b"GET / HTTP/1.1\r\nHost: lan\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Pad: "
    )
    head = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    return head


def feed(data: bytes, chunk: int) -> WebSocketProtocol:
    server = WebSocketProtocol(client=False, check=CHECK)
    for i in range(0, len(data), chunk):
        server.receive(data[i : i + chunk])
    return server


def test_handshake_limit_is_16384_bytes_however_the_bytes_arrive() -> None:
    """The server reads 16 KiB at a time; a head must not pass by completing in the
    read after the one that filled the limit (it used to, up to ~32 KiB)."""
    # Whole, in the server's read size, and in small pieces; with a frame right behind.
    frame = b"\x82\x8e" + bytes(4) + bytes(14)  # a masked binary frame (all-zero mask)
    for chunk in (1 << 20, 16 * 1024, 1000, 1):
        ok = feed(upgrade_head(16384) + frame, chunk)
        assert ok.phase is Phase.HANDSHAKE and ok.request is not None, chunk
        assert ok.data_to_send() == b""
        assert ok.accept().startswith(b"HTTP/1.1 101 ")
        assert ok.receive(None) == [bytes(14)], "the frame behind the head is kept"
        for size in (16385, 30000):
            refused = feed(upgrade_head(size), chunk)
            reply = refused.data_to_send()
            assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), (size, chunk)
            assert b"over the 16384-byte limit" in reply
            assert refused.request is None and refused.phase is Phase.CLOSED


def test_subprotocol_choice_never_echoes_a_token() -> None:
    assert choose_subprotocol(("token.s3cret", "binary"), tokens=True) == "binary"
    assert choose_subprotocol(("token.s3cret", "binary"), tokens=False) == "binary"
    # Only tokens offered: nothing to echo (a browser then fails; docs say offer binary).
    assert choose_subprotocol(("token.s3cret",), tokens=True) is None
    assert choose_subprotocol(("token.s3cret",), tokens=False) is None
    # With a token file every subprotocol is tried as a token: only binary is echoed.
    assert choose_subprotocol(("s3cret",), tokens=True) is None
    assert choose_subprotocol(("token.s3cret", "chat"), tokens=False) == "chat"
    assert choose_subprotocol((), tokens=False) is None


@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_a_client_reads_the_reason_of_a_refusal(cuts: list[int]) -> None:
    """The body is the server's reason; a client keeps its first line, however TCP cuts
    the answer (and whether the server then closes or not)."""
    client = WebSocketProtocol(client=True, check=CHECK)
    server = WebSocketProtocol(client=False, check=CHECK)
    server.receive(client.start_client("lan", "/lan/b"))
    answer = server.reject(403, b"this token does not open LAN b\nsecond line\n")
    for start, end in itertools.pairwise([0, *sorted(cuts), len(answer)]):
        if client.closed is None and end > start:  # b"" would mean EOF
            client.receive(answer[start:end])
    assert client.rejected_status == 403
    assert client.closed is not None
    assert client.closed.reason == "server answered HTTP 403: this token does not open LAN b"


def test_a_refusal_without_a_body_is_its_status() -> None:
    client = WebSocketProtocol(client=True, check=CHECK)
    client.start_client("lan", "/")
    client.receive(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
    assert client.closed is not None and client.closed.reason == "server answered HTTP 404"
