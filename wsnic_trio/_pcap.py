"""Packet capture: one classic pcap file per client, readable by tshark and Wireshark.

The relay hands each batch of a captured peer's frames to :meth:`Capture.add`, which
only appends records to an in-memory buffer (bounded: a capture whose writer falls
behind drops frames and counts them, it never slows the relay). A task per capture
writes the buffer out from a worker thread. A file never grows past its limit: the
capture stops there, leaving a complete, readable file. A peer that is not captured
costs the relay one attribute check per batch.

Classic pcap has no direction field; both directions go into one file in the order the
server saw them (use the MAC addresses to tell them apart).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ._safefs import UnsafePathError, create_new_file

if TYPE_CHECKING:
    from ._server import PeerInfo

__all__ = ["Capture", "PcapManager", "pcap_header"]

log = logging.getLogger("wsnic_trio.pcap")

SNAPLEN = 262144
LINKTYPE_ETHERNET = 1
_HEADER = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
#: Most bytes a capture holds in memory before its writer catches up.
BUFFER_MAX = 4 * 1024 * 1024
_CLOSE_TIMEOUT = 5.0


def pcap_header() -> bytes:
    return _HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create(path: Path) -> int:
    """A new capture file, mode 0600. Never an existing file, and never through a
    symlink someone else could have put on the way: a root server's --pcap directory
    may be in a directory another user can write, and that user could otherwise make
    root create (and fill) a file anywhere. Refusals are errors of this capture only."""
    try:
        return create_new_file(path, 0o600)
    except UnsafePathError as exc:
        raise PermissionError(errno.EPERM, str(exc)) from None


class Capture:
    """The capture of one client into one file."""

    def __init__(self, path: Path, max_bytes: int, peer_id: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.peer_id = peer_id
        self._buf = bytearray(pcap_header())
        #: Bytes the file will hold once the buffer is written (header included).
        self.size = len(self._buf)
        self.frames = 0
        #: Frames lost because the writer fell behind (the buffer was full).
        self.dropped = 0
        self.full = False
        self.closing = False
        self.error: str | None = None
        self._wake = trio.Event()
        self.done = trio.Event()

    def add(self, frames: list[bytes], inbound: bool) -> None:
        if self.full or self.closing:
            return
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1e6)
        buf = self._buf
        for frame in frames:
            size = len(frame)
            record = _RECORD.size + size
            if self.size + record > self.max_bytes:
                self.full = True
                log.info(
                    "capture of client %d reached --pcap-max-bytes (%d B): stopped, %s is complete",
                    self.peer_id,
                    self.max_bytes,
                    self.path,
                )
                break
            if len(buf) + record > BUFFER_MAX:
                self.dropped += 1
                continue
            buf += _RECORD.pack(sec, usec, size, size)
            buf += frame
            self.size += record
            self.frames += 1
        self._wake.set()

    def close(self) -> None:
        """Stop taking frames; the writer flushes what is buffered, then ``done`` is set."""
        self.closing = True
        self._wake.set()

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "bytes": self.size,
            "frames": self.frames,
            "dropped": self.dropped,
            "full": self.full,
            "max_bytes": self.max_bytes,
            "error": self.error,
        }

    async def _flush(self, fd: int) -> None:
        if self._buf:
            data, self._buf = self._buf, bytearray()
            await trio.to_thread.run_sync(_write_all, fd, data)

    async def run(self) -> None:
        fd = -1
        try:
            fd = await trio.to_thread.run_sync(_create, self.path)
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._flush(fd)
                if self.closing or self.full:
                    break
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            self.full = True
            log.error("capture of client %d: cannot write %s: %s", self.peer_id, self.path, exc)
        finally:
            # Nothing may escape from here: it would end the manager's nursery, and the
            # server with it. The close has its own shield: a flush that overran the
            # deadline must not leave the file open.
            if fd >= 0:
                with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    with contextlib.suppress(OSError):
                        await self._flush(fd)
                with trio.CancelScope(shield=True):
                    try:
                        await trio.to_thread.run_sync(os.close, fd)
                    except OSError as exc:  # a late EIO/ENOSPC (NFS reports them here)
                        self.error = self.error or exc.strerror or str(exc)
                        log.error(
                            "capture of client %d: closing %s: %s", self.peer_id, self.path, exc
                        )
            self.done.set()


class PcapManager:
    """Owns every capture's writer task; lives in the server's nursery."""

    def __init__(self, directory: Path, max_bytes: int, capture_all: bool) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.capture_all = capture_all
        self.captures: dict[int, Capture] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start(self, info: PeerInfo) -> Capture:
        """Capture this peer into a new file (replacing a capture it already has)."""
        assert self._nursery is not None, "PcapManager.run is not running"
        self.stop(info.id)
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")
        path = self.directory / f"wsnic-client{info.id}-{info.tap}-{stamp}.pcap"
        capture = Capture(path, self.max_bytes, info.id)
        self.captures[info.id] = capture
        info.stats.capture = capture
        self._nursery.start_soon(capture.run)
        log.info("capturing client %d (%s) into %s", info.id, info.tap, path)
        return capture

    def stop(self, peer_id: int, info: PeerInfo | None = None) -> Capture | None:
        capture = self.captures.pop(peer_id, None)
        if capture is None:
            return None
        if info is not None and info.stats.capture is capture:
            info.stats.capture = None
        capture.close()
        return capture
