"""Sans-IO framing of QEMU's ``-netdev stream``: a 4-byte big-endian length, then the frame.

QEMU writes ``htonl(size)`` followed by the packet (``net/stream_data.c``); both directions
use the same format, so one class serves the server and the client tool. It imports
neither Trio nor sockets: bytes go in, frames come out, and every rule is tested by
feeding bytes at every split point.

Rules:

- A length of 0 or over ``max_frame`` is a protocol error: there is no way to skip it
  and find the next frame boundary, so the peer must be closed.
- Frames of 1-13 bytes are valid *framing*; they are handed on, and the relay's
  :class:`~transports.base.FrameCheck` drops and counts them as runts.
- The buffer never holds more than one incomplete frame (at most ``4 + max_frame``
  bytes), because a too-large length is refused as soon as its 4 bytes are in.
- Errors are sticky, and frames that were complete before the bad header are still
  delivered first: the caller gets them, then the error on its next call.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

__all__ = ["HEADER", "StreamFramingError", "StreamProtocol"]

HEADER = 4
_LENGTH = struct.Struct("!I")


class StreamFramingError(ValueError):
    """The byte stream broke the length-prefix framing; the connection cannot go on."""


class StreamProtocol:
    """Length-prefixed frames in both directions, for one connection."""

    def __init__(self, max_frame: int) -> None:
        if not 0 < max_frame < 2**32:
            raise ValueError(f"max_frame {max_frame} does not fit the 4-byte length")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._error: StreamFramingError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame (header included) waiting for the rest."""
        return len(self._buf)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Every frame that ``data`` completes, in order (possibly none).

        Raises :class:`StreamFramingError` once the stream is broken.
        """
        if self._error is not None:
            raise self._error
        if self._buf:
            self._buf += data
            view: bytes | bytearray | memoryview = self._buf
        else:
            view = data  # the common case: parse the read buffer without copying it
        frames: list[bytes] = []
        pos = 0
        end = len(view)
        limit = self.max_frame
        while end - pos >= HEADER:
            (length,) = _LENGTH.unpack_from(view, pos)
            if length == 0 or length > limit:
                what = "zero" if length == 0 else f"{length}, over the limit of {limit}"
                self._error = StreamFramingError(f"frame length {what}")
                break
            stop = pos + HEADER + length
            if stop > end:
                break
            frames.append(bytes(view[pos + HEADER : stop]))
            pos = stop
        # Keep only the incomplete rest; after an error nothing more is parsed.
        self._buf = bytearray() if self._error is not None else bytearray(view[pos:])
        if self._error is not None and not frames:
            raise self._error
        return frames

    def end_of_stream(self) -> None:
        """The peer closed its side: an incomplete frame left behind is an error."""
        if self._buf:
            raise StreamFramingError(
                f"connection ended inside a frame ({len(self._buf)} bytes of it received)"
            )

    def encode(self, frames: Iterable[bytes | bytearray | memoryview]) -> bytes:
        """One buffer holding every frame, each behind its length, for a single send."""
        parts: list[bytes | bytearray | memoryview] = []
        for frame in frames:
            size = len(frame)
            if not 0 < size <= self.max_frame:
                raise ValueError(f"cannot send a frame of {size} bytes (limit {self.max_frame})")
            parts.append(_LENGTH.pack(size))
            parts.append(frame)
        return b"".join(parts)
