"""The frame codec against wsproto as the reference implementation (differential tests)."""

from __future__ import annotations

import os

import pytest
import wsproto
import wsproto.events as ev
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnic_trio.transports.websocket_frames import (
    CloseCode,
    FrameCodec,
    FrameError,
    _py_apply_mask,
    apply_mask,
)

LIMIT = 1518


def wsproto_pair() -> tuple[wsproto.WSConnection, wsproto.WSConnection]:
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(client.send(ev.Request(host="x", target="/")))
    list(server.events())
    client.receive_data(server.send(ev.AcceptConnection()))
    list(client.events())
    return client, server


# A client's conversation: messages (maybe fragmented), pings, pongs.
conversation = st.lists(
    st.one_of(
        st.tuples(st.just("msg"), st.binary(max_size=LIMIT), st.integers(min_value=1, max_value=4)),
        st.tuples(st.just("ping"), st.binary(max_size=125), st.just(1)),
        st.tuples(st.just("pong"), st.binary(max_size=125), st.just(1)),
    ),
    max_size=12,
)


def client_bytes(client: wsproto.WSConnection, items: list[tuple[str, bytes, int]]) -> bytes:
    out = b""
    for kind, data, parts in items:
        if kind == "msg":
            step = max(1, -(-len(data) // parts))
            chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
            for i, chunk in enumerate(chunks):
                out += client.send(ev.BytesMessage(chunk, message_finished=i == len(chunks) - 1))
        elif kind == "ping":
            out += client.send(ev.Ping(data))
        else:
            out += client.send(ev.Pong(data))
    return out


@settings(max_examples=300)
@given(items=conversation, cut=st.integers(min_value=0, max_value=10_000))
def test_server_codec_reads_what_wsproto_clients_write(
    items: list[tuple[str, bytes, int]], cut: int
) -> None:
    client, _ = wsproto_pair()
    wire = client_bytes(client, items)
    codec = FrameCodec(client=False, max_message=LIMIT)
    cut %= len(wire) + 1
    got = codec.receive(wire[:cut]) + codec.receive(wire[cut:])
    assert got == [data for kind, data, _ in items if kind == "msg"]
    pings = [data for kind, data, _ in items if kind == "ping"]
    # Every ping is answered with a pong that wsproto reads back as the same payload.
    client.receive_data(b"".join(codec.replies))
    pongs = [e.payload for e in client.events() if isinstance(e, ev.Pong)]
    assert pongs == pings


@settings(max_examples=200)
@given(messages=st.lists(st.binary(max_size=70_000), max_size=6))
def test_wsproto_reads_what_our_server_writes(messages: list[bytes]) -> None:
    client, _ = wsproto_pair()
    codec = FrameCodec(client=False, max_message=LIMIT)
    client.receive_data(codec.encode(messages))
    got = [bytes(e.data) for e in client.events() if isinstance(e, ev.BytesMessage)]
    assert got == messages


@settings(max_examples=200)
@given(messages=st.lists(st.binary(max_size=LIMIT), max_size=6))
def test_wsproto_server_reads_what_our_client_writes(messages: list[bytes]) -> None:
    _, server = wsproto_pair()
    codec = FrameCodec(client=True, max_message=LIMIT)
    server.receive_data(codec.encode(messages) + codec.ping(b"hi"))
    events = list(server.events())
    assert [bytes(e.data) for e in events if isinstance(e, ev.BytesMessage)] == messages
    assert [e.payload for e in events if isinstance(e, ev.Ping)] == [b"hi"]


@given(garbage=st.binary(max_size=300))
def test_garbage_raises_only_frame_errors(garbage: bytes) -> None:
    codec = FrameCodec(client=False, max_message=LIMIT)
    code = None
    try:
        codec.receive(garbage)
    except FrameError as exc:
        code = exc.code
    assert code in {None, 1002, 1003, 1007, 1009}


def test_byte_by_byte() -> None:
    client, _ = wsproto_pair()
    wire = client.send(ev.BytesMessage(b"x" * 300)) + client.send(ev.BytesMessage(b"y" * 70))
    codec = FrameCodec(client=False, max_message=LIMIT)
    got: list[bytes] = []
    for i in range(len(wire)):
        got += codec.receive(wire[i : i + 1])
    assert got == [b"x" * 300, b"y" * 70]


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (ev.TextMessage("hi"), CloseCode.UNSUPPORTED_DATA),
        (ev.BytesMessage(b"z" * (LIMIT + 1)), CloseCode.TOO_BIG),
    ],
)
def test_refused_messages(event: ev.Event, code: int) -> None:
    client, _ = wsproto_pair()
    with pytest.raises(FrameError) as info:
        FrameCodec(client=False, max_message=LIMIT).receive(client.send(event))
    assert info.value.code == code


def test_too_big_is_refused_at_the_header_before_the_payload_arrives() -> None:
    client, _ = wsproto_pair()
    wire = client.send(ev.BytesMessage(b"z" * 100_000))
    with pytest.raises(FrameError) as info:
        FrameCodec(client=False, max_message=LIMIT).receive(wire[:14])
    assert info.value.code == CloseCode.TOO_BIG


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"\x82\x05hello", 1002),  # unmasked client frame
        (b"\xc2\x80abcd", 1002),  # RSV1 set, no extension agreed
        (b"\x83\x80abcd", 1002),  # reserved opcode 3
        (b"\x09\x80abcd", 1002),  # fragmented ping
        (b"\x80\x80abcd", 1002),  # continuation with no message
        (b"\x88\x81abcd" + bytes([ord("x") ^ ord("a")]), 1002),  # 1-byte close payload
    ],
)
def test_framing_errors(wire: bytes, code: int) -> None:
    with pytest.raises(FrameError) as info:
        FrameCodec(client=False, max_message=LIMIT).receive(wire)
    assert info.value.code == code


def test_close_frames() -> None:
    client, _ = wsproto_pair()
    codec = FrameCodec(client=False, max_message=LIMIT)
    assert codec.receive(client.send(ev.CloseConnection(code=4001, reason="bye ☃"))) == []
    assert codec.peer_close == (4001, "bye ☃")
    client, _ = wsproto_pair()
    codec = FrameCodec(client=False, max_message=LIMIT)
    bad = b"\x88\x84" + b"\0\0\0\0" + (1004).to_bytes(2, "big") + b"ok"  # 1004 is reserved
    with pytest.raises(FrameError):
        codec.receive(bad)
    not_utf8 = b"\x88\x84" + b"\0\0\0\0" + (1000).to_bytes(2, "big") + b"\xff\xfe"
    with pytest.raises(FrameError) as info:
        FrameCodec(client=False, max_message=LIMIT).receive(not_utf8)
    assert info.value.code == CloseCode.INVALID_DATA


def test_our_close_frame_is_read_by_wsproto() -> None:
    client, _ = wsproto_pair()
    client.receive_data(FrameCodec(client=False, max_message=LIMIT).close(1009, "é" * 100))
    [close] = list(client.events())
    assert isinstance(close, ev.CloseConnection) and close.code == 1009
    assert close.reason is not None and 0 < len(close.reason.encode()) <= 123


@given(data=st.binary(max_size=3000), mask=st.binary(min_size=4, max_size=4))
def test_fast_and_pure_python_masks_agree(data: bytes, mask: bytes) -> None:
    assert apply_mask(data, mask) == _py_apply_mask(data, mask)
    assert _py_apply_mask(_py_apply_mask(data, mask), mask) == data


def test_memoryview_input_is_masked_in_place_of_bytes() -> None:
    data = os.urandom(100)
    assert apply_mask(memoryview(data)[10:50], b"abcd") == _py_apply_mask(data[10:50], b"abcd")
