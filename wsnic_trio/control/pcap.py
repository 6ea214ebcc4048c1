"""Packet capture: one classic pcap file per client, readable by tshark and Wireshark.

The relay hands each batch of a captured peer's frames to :meth:`Capture.add`, which
only appends records to an in-memory buffer (bounded: a capture whose writer falls
behind drops frames and counts them, it never slows the relay). A task per capture
writes the buffer out from a worker thread. A file never grows past its limit: the
capture stops there, leaving a complete, readable file. A peer that is not captured
costs the relay one attribute check per batch.

Classic pcap has no direction field; both directions go into one file in the order the
server saw them (use the MAC addresses to tell them apart).

All capture files in the directory share one budget (``--pcap-budget``, see
:class:`PcapBudget`): the oldest finished files are deleted to make room, and a capture
that finds the budget taken by live captures is cut (like at its own limit). A new
capture is refused while the disk holding the directory is nearly full.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import errno
import logging
import os
import re
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from wsnic_trio.util.safefs import UnsafePathError, create_new_file

if TYPE_CHECKING:
    from wsnic_trio.core import PeerInfo

__all__ = ["Capture", "PcapBudget", "PcapManager", "disk_nearly_full", "pcap_header"]

log = logging.getLogger("wsnic_trio.pcap")

SNAPLEN = 262144
LINKTYPE_ETHERNET = 1
_HEADER = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
#: Most bytes a capture holds in memory before its writer catches up.
BUFFER_MAX = 4 * 1024 * 1024
_CLOSE_TIMEOUT = 5.0
#: The names the manager gives its files: only these count against (and are deleted
#: for) the budget, from this run or an earlier one; nothing else in the directory is
#: ever touched.
CAPTURE_NAME = re.compile(r"wsnic-client\d+-.+-\d{8}T\d{6}\.\d{6}\.pcap")
#: New captures are refused when less than this share of the disk, or this many bytes,
#: whichever is less, is free (a big disk is not "full" at 5 %, a small one is at 1 GiB).
MIN_FREE_FRACTION = 0.05
MIN_FREE_BYTES = 1 << 30
#: How often the free space of the capture directory's disk is looked at.
DISK_POLL = 1.0


def pcap_header() -> bytes:
    return _HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class PeerGone(Exception):
    """The peer to capture has left (its TAP is gone)."""


def min_free(total: int) -> int:
    """The free bytes a disk of ``total`` bytes needs for new captures to start."""
    return min(MIN_FREE_BYTES, int(total * MIN_FREE_FRACTION))


def _create(path: Path) -> int:
    """A new capture file, mode 0600. Never an existing file, and never through a
    symlink someone else could have put on the way: a root server's --pcap directory
    may be in a directory another user can write, and that user could otherwise make
    root create (and fill) a file anywhere. Refusals are errors of this capture only."""
    try:
        return create_new_file(path, 0o600)
    except UnsafePathError as exc:
        raise PermissionError(errno.EPERM, str(exc)) from None


def disk_nearly_full(free: int, total: int) -> bool:
    return free < min_free(total)


class PcapBudget:
    """The bytes all capture files of the directory may hold together; sans-IO.

    ``used`` counts what the files hold once every buffer is written: a live capture
    takes its bytes record by record before buffering them (:meth:`take`); a finished
    file (or one of an earlier run) keeps its size until the budget *condemns* it to
    make room, oldest (by its last write) first. Condemned paths wait in ``doomed``; the
    manager deletes them before any capture writes again, so the files on disk never
    hold more than ``limit`` together. Live files are never condemned: when only they
    are left, :meth:`take` says no and the capture is cut, complete, and becomes the
    oldest finished file.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        #: Finished files and their sizes, oldest first (insertion order), and their sum
        #: (kept, not summed: a full budget asks for it at every frame).
        self._finished: dict[Path, int] = {}
        self.finished_bytes = 0
        self.doomed: list[tuple[Path, int]] = []
        self.deleted_files = 0
        self.deleted_bytes = 0
        #: Live captures cut because only live captures were left in the budget.
        self.cuts = 0

    @property
    def files(self) -> int:
        return len(self._finished)

    def add_finished(self, path: Path, size: int) -> None:
        """Count a complete file (``path`` is then the newest finished one)."""
        before = self._finished.pop(path, 0)
        self.used += size - before
        self.finished_bytes += size - before
        self._finished[path] = size

    def take(self, size: int) -> bool:
        """Room for ``size`` more bytes of a live capture, condemning the oldest finished
        files as needed; False, condemning nothing, when even all of them are too few."""
        over = self.used + size - self.limit
        if over > 0:
            if over > self.finished_bytes:
                return False
            self._condemn(over)
        self.used += size
        return True

    def trim(self) -> None:
        """Condemn the oldest finished files until ``used`` fits (a budget smaller than
        what earlier runs left behind)."""
        over = self.used - self.limit
        if over > 0:
            self._condemn(min(over, self.finished_bytes))

    def finish(self, path: Path, taken: int, written: int, created: bool) -> None:
        """A capture ended: of the ``taken`` bytes, ``written`` reached its file (which
        counts from now on, if the capture ``created`` it)."""
        self.used -= taken
        if created:
            self.add_finished(path, written)

    def undeletable(self, size: int) -> None:
        """A condemned file could not be deleted: its bytes are still on the disk."""
        self.used += size
        self.deleted_files -= 1
        self.deleted_bytes -= size

    def _condemn(self, nbytes: int) -> None:
        while nbytes > 0 and self._finished:
            path = next(iter(self._finished))
            size = self._finished.pop(path)
            self.used -= size
            self.finished_bytes -= size
            self.deleted_files += 1
            self.deleted_bytes += size
            self.doomed.append((path, size))
            nbytes -= size


def _unlink_all(paths: list[tuple[Path, int]]) -> list[tuple[Path, int, OSError]]:
    """Delete files in a worker thread; the failures (a vanished file is none)."""
    failed = []
    for path, size in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed.append((path, size, exc))
    return failed


def _earlier_captures(directory: Path) -> list[tuple[Path, int]]:
    """Capture files already in ``directory`` (regular files with our names), oldest
    (by last write) first; symbolic links and other files are not ours to count."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not CAPTURE_NAME.fullmatch(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((st.st_mtime_ns, Path(entry.path), st.st_size))
    return [(path, size) for _, path, size in sorted(found)]


def _statvfs(directory: Path) -> tuple[int, int]:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


class Capture:
    """The capture of one client into one file.

    With a ``budget``, its header is already taken from it (by the manager, which
    refuses the capture otherwise), every record is taken before it is buffered, and
    ``settle`` (deleting what the budget condemned) runs before every write.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        peer_id: int,
        budget: PcapBudget | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.peer_id = peer_id
        self.budget = budget
        self._settle = settle
        self._buf = bytearray(pcap_header())
        #: Bytes the file will hold once the buffer is written (header included).
        self.size = len(self._buf)
        #: Bytes handed to the file so far (at most what it holds: the budget's count).
        self.written = 0
        self.frames = 0
        #: Frames lost because the writer fell behind (the buffer was full).
        self.dropped = 0
        self.full = False
        #: Why the capture stopped before it was asked to: "max-bytes", "budget", "error".
        self.cut: str | None = None
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
                self.cut = "max-bytes"
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
            if self.budget is not None and not self.budget.take(record):
                self.full = True
                self.cut = "budget"
                self.budget.cuts += 1
                log.log(
                    logging.WARNING if self.budget.cuts == 1 else logging.INFO,
                    "capture of client %d cut: live captures hold all of --pcap-budget "
                    "(%d B), and no finished file is left to delete; %s is complete",
                    self.peer_id,
                    self.budget.limit,
                    self.path,
                )
                break
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
            "cut": self.cut,
            "max_bytes": self.max_bytes,
            "error": self.error,
        }

    async def _flush(self, fd: int) -> None:
        if self._buf:
            if self._settle is not None:
                await self._settle()  # the bytes this makes room for go in only now
            data, self._buf = self._buf, bytearray()
            self.written += len(data)  # counted before: a failed write may be partial
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
            self.cut = self.cut or "error"
            log.error("capture of client %d: cannot write %s: %s", self.peer_id, self.path, exc)
        finally:
            # Nothing may escape from here: it would end the manager's nursery, and the
            # server with it. The close has its own shield: a flush that overran the
            # deadline must not leave the file open.
            self.closing = True  # no more bytes taken from the budget once it is settled
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
            elif self._settle is not None:
                # Never opened: no flush deleted what taking its header condemned.
                with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    await self._settle()
            if self.budget is not None:
                self.budget.finish(self.path, self.size, self.written, created=fd >= 0)
            self.done.set()


class PcapManager:
    """Owns every capture's writer task and the directory's budget; lives in the
    server's nursery."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        capture_all: bool,
        budget: int,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.capture_all = capture_all
        self.captures: dict[int, Capture] = {}
        self.budget = PcapBudget(budget)
        self._deleting = trio.Lock()
        #: Whether the disk holding the directory is nearly full (new captures refused).
        self.disk_low = False
        self.disk_free: int | None = None
        self.disk_total: int | None = None
        self._disk_error: str | None = None
        #: Captures not started, by reason ("disk-full", "budget").
        self.refused: collections.Counter[str] = collections.Counter()
        self.last_refusal: str | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            earlier = await trio.to_thread.run_sync(_earlier_captures, self.directory)
        except OSError as exc:  # e.g. --user: writable and searchable, not readable
            log.warning(
                "packet capture: cannot list %s (%s): files of earlier runs do not count "
                "against --pcap-budget",
                self.directory,
                exc.strerror or exc,
            )
            earlier = []
        for path, size in earlier:
            self.budget.add_finished(path, size)
        if earlier:
            log.info(
                "packet capture: %d earlier capture files (%d B) in %s count against "
                "--pcap-budget (%d B)",
                len(earlier),
                self.budget.used,
                self.directory,
                self.budget.limit,
            )
        self.budget.trim()
        await self.settle()
        await self.check_disk()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_disk)
            task_status.started()
            await trio.sleep_forever()

    async def settle(self) -> None:
        """Delete the files the budget condemned; every writer waits for this before it
        writes, so the bytes it makes room for never reach the disk before the room."""
        async with self._deleting:
            while self.budget.doomed:
                batch, self.budget.doomed = self.budget.doomed, []
                failed = await trio.to_thread.run_sync(_unlink_all, batch)
                broken = {path for path, _, _ in failed}
                for path, size in batch:
                    if path not in broken:
                        log.info(
                            "packet capture: deleted %s (%d B), the oldest capture file, to "
                            "stay within --pcap-budget (%d B)",
                            path,
                            size,
                            self.budget.limit,
                        )
                for path, size, exc in failed:
                    self.budget.undeletable(size)
                    log.warning(
                        "packet capture: cannot delete %s to stay within --pcap-budget: %s",
                        path,
                        exc.strerror or exc,
                    )

    async def check_disk(self) -> None:
        """Look at the free space of the directory's disk now (logs each change once)."""
        try:
            free, total = await trio.to_thread.run_sync(_statvfs, self.directory)
        except OSError as exc:
            text = exc.strerror or str(exc)
            if self._disk_error != text:
                log.warning(
                    "packet capture: cannot see the free space of %s: %s", self.directory, text
                )
                self._disk_error = text
            return
        self._disk_error = None
        self.disk_free, self.disk_total = free, total
        low = disk_nearly_full(free, total)
        if low and not self.disk_low:
            log.warning(
                "packet capture: the disk holding %s is nearly full (%d B free of %d B, "
                "less than %d B): new captures are refused until there is room",
                self.directory,
                free,
                total,
                min_free(total),
            )
        elif self.disk_low and not low:
            log.info(
                "packet capture: the disk holding %s has room again (%d B free): new "
                "captures start again",
                self.directory,
                free,
            )
        self.disk_low = low

    async def _watch_disk(self) -> None:
        while True:
            await trio.sleep(DISK_POLL)
            await self.check_disk()

    def refusal(self) -> tuple[str, str] | None:
        """Why a new capture cannot start now, as (reason, message); None if it can."""
        if self.disk_low:
            total = self.disk_total or 0
            return (
                "disk-full",
                f"the disk holding {self.directory} is nearly full ({self.disk_free} B free "
                f"of {total} B; captures need {min_free(total)} B): no new captures until "
                "there is room",
            )
        return None

    def start(self, info: PeerInfo) -> Capture | None:
        """Capture this peer into a new file (replacing a capture it already has).

        None when the capture is refused (the disk is nearly full, or live captures hold
        the whole budget): counted in ``refused``, the reason in ``last_refusal``."""
        assert self._nursery is not None, "PcapManager.run is not running"
        if info.gone.is_set():
            # The peer left while the caller awaited something: a capture now would
            # never be stopped (its writer and file would outlive the peer).
            raise PeerGone(info.id)
        refused = self.refusal()  # before the stop: a refused restart keeps the capture
        if refused is None:
            self.stop(info.id, info)
        if refused is None and not self.budget.take(len(pcap_header())):
            refused = (
                "budget",
                f"live captures hold all of --pcap-budget ({self.budget.limit} B): stop "
                "one (DELETE /clients/ID/pcap) or give the server a larger budget",
            )
        if refused is not None:
            reason, self.last_refusal = refused
            if not self.refused[reason]:
                log.warning("packet capture of client %d refused: %s", info.id, self.last_refusal)
            else:
                log.debug("packet capture of client %d refused: %s", info.id, self.last_refusal)
            self.refused[reason] += 1
            return None
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")
        path = self.directory / f"wsnic-client{info.id}-{info.tap}-{stamp}.pcap"
        capture = Capture(path, self.max_bytes, info.id, self.budget, self.settle)
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

    def describe(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "budget": self.budget.limit,
            "bytes": self.budget.used,
            "files_finished": self.budget.files,
            "captures_live": sum(1 for c in self.captures.values() if not c.done.is_set()),
            "captures_cut": self.budget.cuts,
            "files_deleted": self.budget.deleted_files,
            "bytes_deleted": self.budget.deleted_bytes,
            "refused": dict(sorted(self.refused.items())),
            "disk_nearly_full": self.disk_low,
            "disk_free": self.disk_free,
        }
