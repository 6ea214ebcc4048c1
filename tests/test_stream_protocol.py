"""The QEMU stream codec (4-byte big-endian length + frame), fed bytes without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsnic_trio.transports.stream_protocol import HEADER, StreamFramingError, StreamProtocol

LIMIT = 1518


def wire(*frames: bytes) -> bytes:
    return b"".join(struct.pack("!I", len(f)) + f for f in frames)


FRAMES = [bytes([i]) * size for i, size in enumerate((60, 1, 1514, 14, 1518))]
STREAM = wire(*FRAMES)


def feed(proto: StreamProtocol, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(proto.receive_data(chunk))
    return out


def test_whole_stream_in_one_read() -> None:
    proto = StreamProtocol(LIMIT)
    assert proto.receive_data(STREAM) == FRAMES
    assert proto.pending == 0


def test_byte_by_byte() -> None:
    proto = StreamProtocol(LIMIT)
    got = feed(proto, [STREAM[i : i + 1] for i in range(len(STREAM))])
    assert got == FRAMES
    assert proto.pending == 0


@pytest.mark.parametrize("split", range(1, len(wire(FRAMES[0], FRAMES[1]))))
def test_every_split_point(split: int) -> None:
    data = wire(FRAMES[0], FRAMES[1])
    proto = StreamProtocol(LIMIT)
    first = proto.receive_data(data[:split])
    assert proto.pending == split - sum(HEADER + len(f) for f in first)
    assert first + proto.receive_data(data[split:]) == [FRAMES[0], FRAMES[1]]


def test_memoryview_and_bytearray_input() -> None:
    proto = StreamProtocol(LIMIT)
    assert (
        proto.receive_data(memoryview(STREAM)[:100]) + proto.receive_data(bytearray(STREAM[100:]))
        == FRAMES
    )


def test_length_zero_is_an_error() -> None:
    proto = StreamProtocol(LIMIT)
    with pytest.raises(StreamFramingError, match="zero"):
        proto.receive_data(b"\0\0\0\0" + b"x" * 20)


def test_length_over_limit_is_refused_as_soon_as_the_header_is_in() -> None:
    proto = StreamProtocol(LIMIT)
    assert proto.receive_data(struct.pack("!I", LIMIT + 1)[:3]) == []
    with pytest.raises(StreamFramingError, match="over the limit of 1518"):
        proto.receive_data(struct.pack("!I", LIMIT + 1)[3:])


def test_limit_itself_is_allowed() -> None:
    proto = StreamProtocol(LIMIT)
    assert proto.receive_data(wire(b"m" * LIMIT)) == [b"m" * LIMIT]


def test_frames_before_a_bad_header_are_delivered_then_the_error_sticks() -> None:
    proto = StreamProtocol(LIMIT)
    assert proto.receive_data(wire(FRAMES[0]) + b"\xff\xff\xff\xff") == [FRAMES[0]]
    with pytest.raises(StreamFramingError):
        proto.receive_data(wire(FRAMES[1]))
    with pytest.raises(StreamFramingError):
        proto.receive_data(b"")


def test_garbage_is_an_error() -> None:
    proto = StreamProtocol(LIMIT)
    with pytest.raises(StreamFramingError):
        proto.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_end_of_stream_inside_a_frame() -> None:
    proto = StreamProtocol(LIMIT)
    proto.receive_data(wire(FRAMES[0])[:10])
    with pytest.raises(StreamFramingError, match="10 bytes"):
        proto.end_of_stream()


def test_end_of_stream_inside_a_header() -> None:
    proto = StreamProtocol(LIMIT)
    proto.receive_data(b"\0\0")
    with pytest.raises(StreamFramingError):
        proto.end_of_stream()


def test_end_of_stream_between_frames_is_fine() -> None:
    proto = StreamProtocol(LIMIT)
    proto.receive_data(STREAM)
    proto.end_of_stream()


def test_encode_is_the_inverse() -> None:
    proto = StreamProtocol(LIMIT)
    assert proto.encode(FRAMES) == STREAM
    assert proto.encode([]) == b""


@pytest.mark.parametrize("size", [0, LIMIT + 1])
def test_encode_refuses_what_the_peer_would_refuse(size: int) -> None:
    with pytest.raises(ValueError, match=f"{size} bytes"):
        StreamProtocol(LIMIT).encode([b"x" * size])


def test_buffer_holds_at_most_one_incomplete_frame() -> None:
    proto = StreamProtocol(LIMIT)
    data = wire(*[b"y" * LIMIT] * 50)
    got = feed(proto, [data[i : i + 7000] for i in range(0, len(data) - 1, 7000)])
    assert proto.pending <= HEADER + LIMIT
    assert got == [b"y" * LIMIT] * 50


frame_lists = st.lists(st.binary(min_size=1, max_size=LIMIT), max_size=20)


@given(frames=frame_lists, data=st.data())
def test_any_frames_any_chunking_round_trip(frames: list[bytes], data: st.DataObject) -> None:
    encoded = StreamProtocol(LIMIT).encode(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=12)))
    chunks = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
    proto = StreamProtocol(LIMIT)
    assert feed(proto, chunks) == frames
    assert proto.pending == 0
    proto.end_of_stream()


@given(garbage=st.binary(min_size=HEADER, max_size=300))
def test_arbitrary_bytes_never_yield_oversize_frames_or_crash(garbage: bytes) -> None:
    proto = StreamProtocol(64)
    try:
        frames = proto.receive_data(garbage)
    except StreamFramingError:
        return
    assert all(0 < len(f) <= 64 for f in frames)
    assert proto.pending <= HEADER + 64
