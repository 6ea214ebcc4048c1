"""Packet capture when the disk is slow: stopping mid-write still completes and closes
the file (a descriptor leaked per capture would pile up over a server's life)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from wsnic_trio.control import pcap as _pcap
from wsnic_trio.control.pcap import Capture

FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x88\xb5" + bytes(50)


def open_paths() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return paths


async def test_capture_stopped_during_a_slow_write_closes_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """The server stops while the writer is in a write, with more frames buffered; the
    final flush then takes longer than the close deadline (virtual time: the clock
    jumps while the writer's thread is held). The file must still be closed, whole."""
    token = trio.lowlevel.current_trio_token()
    entered = [trio.Event(), trio.Event()]
    gates = [threading.Event(), threading.Event()]
    writes = 0
    real_write = _pcap._write_all

    def held_write(fd: int, data: bytes | bytearray) -> None:
        nonlocal writes
        n, writes = writes, writes + 1
        token.run_sync_soon(entered[n].set)
        assert gates[n].wait(60)
        real_write(fd, data)

    monkeypatch.setattr(_pcap, "_write_all", held_write)
    path = tmp_path / "slow.pcap"
    capture = Capture(path, 1_000_000, 1)
    stopping = trio.CancelScope()

    async def run() -> None:
        with stopping:
            await capture.run()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        capture.add([FRAME], True)
        await entered[0].wait()  # the writer is inside its first write
        capture.add([FRAME], False)  # buffered meanwhile: the final flush has work
        stopping.cancel()  # the server stops
        gates[0].set()
        await entered[1].wait()  # the final flush
        await trio.sleep(10 * _pcap._CLOSE_TIMEOUT)  # ... outlasts the close deadline
        gates[1].set()
        await capture.done.wait()
    assert str(path) not in open_paths(), "the capture file is left open"
    assert path.stat().st_size == capture.size  # both frames are in it
    assert capture.frames == 2
