"""The capture budget with a real server: many WebSocket clients captured into a small
budget, and a nearly-full disk (a small tmpfs the test mounts) refusing new captures."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import trio

from . import packets as pk
from .apihelp import api, require_curl
from .conftest import require
from .netns import NetNS, NsFactory, wait_taps
from .test_pcap import capture_world, tshark
from .wsclients import close_ws, ws_client

BRIDGE = pk.mac("02:77:73:00:00:01")
BUDGET = 1_000_000
FRAMES = 200
FRAME_SIZE = 1514
#: Frames of each client connected at once: three of them need more than the budget.
LIVE_FRAMES = 300


def client_mac(n: int) -> str:
    return f"02:00:00:00:01:{n:02x}"


def captures(directory: Path) -> dict[int, Path]:
    """The capture files in ``directory``, by client id (from the file name)."""
    out = {}
    for path in directory.iterdir():
        m = re.fullmatch(r"wsnic-client(\d+)-.*\.pcap", path.name)
        if m:
            out[int(m.group(1))] = path
    return out


def total_size(directory: Path) -> int:
    total = 0
    for entry in os.scandir(directory):
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
            total += entry.stat(follow_symlinks=False).st_size
    return total


async def send_frames(ns: NetNS, nursery: trio.Nursery, n: int, directory: Path) -> None:
    """Client ``n`` sends FRAMES frames to the bridge; the directory is measured all along."""
    conn = await ws_client(ns, nursery)
    src = pk.mac(client_mac(n))
    for i in range(FRAMES):
        await conn.send_message(
            pk.probe_frame(BRIDGE, src, b"client %d frame %d" % (n, i), size=FRAME_SIZE)
        )
        if i % 20 == 0:
            assert total_size(directory) <= BUDGET
    await close_ws(conn)


async def test_many_captures_stay_within_the_budget_keeping_the_newest(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    srv, directory, sock = capture_world(world, tmp_path)
    server = await srv.start_wsnic(
        "--api", f"unix:{sock}", "--pcap", str(directory), "--pcap-budget", "1M"
    )
    assert server.log.find(r"at most 64000000 bytes per file, 1000000 bytes in all")

    # Six clients one after another: only the three newest files fit (3 x 306 kB).
    for n in range(1, 7):
        mark = len(server.log.lines)
        await send_frames(srv, nursery, n, directory)
        await server.log.wait_for(rf"client {n} disconnected", start=mark)
        assert total_size(directory) <= BUDGET
    await wait_taps(srv, 0)
    await server.log.wait_for(r"deleted .*wsnic-client3-.*the oldest capture file")
    assert sorted(captures(directory)) == [4, 5, 6]
    for n, path in captures(directory).items():
        rows = await tshark(path, "frame.len", filter=f"eth.src == {client_mac(n)}")
        assert rows == [[str(FRAME_SIZE)]] * FRAMES, (n, len(rows))

    # Three clients at once, all connected, need more than the budget: the finished
    # files go first, then a live capture is cut (a complete file, which the others then
    # delete for room), and the total never exceeds the budget.
    live = {n: await ws_client(srv, nursery) for n in (7, 8, 9)}
    for i in range(LIVE_FRAMES):
        for n, conn in live.items():
            payload = b"client %d frame %d" % (n, i)
            await conn.send_message(
                pk.probe_frame(BRIDGE, pk.mac(client_mac(n)), payload, FRAME_SIZE)
            )
        if i % 20 == 0:
            assert total_size(directory) <= BUDGET
    while True:  # until the server has relayed (and so captured) every frame
        clients = (await api(sock, "GET", "/clients")).json()["clients"]
        if [c["frames_in"] for c in clients] == [LIVE_FRAMES] * 3:
            break
        await trio.sleep(0.1)
    cut = [c["id"] for c in clients if c["capture"]["cut"] == "budget"]
    assert cut, clients
    stats = (await api(sock, "GET", "/stats")).json()["pcap"]
    assert stats["budget"] == BUDGET and stats["bytes"] <= BUDGET, stats
    assert stats["files_deleted"] >= 6 and stats["captures_cut"] == len(cut), stats
    metrics = (await api(sock, "GET", "/metrics")).body.decode()
    assert f"wsnic_pcap_files_deleted_total {stats['files_deleted']}.0" in metrics
    assert server.log.find(r"capture of client [789] cut: live captures hold all of --pcap-budget")
    for conn in live.values():
        await close_ws(conn)
    assert await server.stop() == 0

    left = captures(directory)
    assert set(left) <= {7, 8, 9}, "the older files went first"
    assert total_size(directory) <= BUDGET
    for n, path in left.items():
        rows = await tshark(path, "frame.len", filter=f"eth.src == {client_mac(n)}")
        if n in cut:  # not deleted yet: complete up to the cut
            assert 0 < len(rows) < LIVE_FRAMES, (n, len(rows))
        else:
            assert rows == [[str(FRAME_SIZE)]] * LIVE_FRAMES, (n, len(rows))
    assert set(left) >= {7, 8, 9} - set(cut), "a capture that was not cut is never deleted"


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``, unmounted afterwards (also on failure)."""
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        # Lazily if the server (another mount namespace) still holds a file open there.
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


async def test_a_nearly_full_disk_refuses_new_captures(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    require_curl()
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    with small_tmpfs(tmp_path / "pcap", "4m") as directory:
        # Fill it to less than 5 % free (about 100 KiB of 4 MiB).
        filler = directory / "filler"
        filler.write_bytes(bytes((4 << 20) - (100 << 10)))
        st = os.statvfs(directory)
        assert st.f_bavail * st.f_frsize < (4 << 20) // 20
        srv = world.new("srv")
        sock = str(tmp_path / "api.sock")
        server = await srv.start_wsnic("--api", f"unix:{sock}", "--pcap", str(directory))
        assert server.log.find(r"the disk holding .* is nearly full .*: new captures are refused")

        conn = await ws_client(srv, nursery)
        await server.log.wait_for(r"packet capture of client 1 refused: the disk holding")
        await conn.send_message(pk.probe_frame(BRIDGE, pk.mac(client_mac(1)), b"hello"))
        [client] = (await api(sock, "GET", "/clients")).json()["clients"]
        assert client["capture"] is None, "the client is served, without a capture"
        refused = await api(sock, "POST", "/clients/1/pcap")
        assert refused.status == 507, refused
        assert "capture refused: the disk holding" in refused.json()["error"]
        assert "nearly full" in refused.json()["error"]
        assert (await api(sock, "GET", "/stats")).json()["pcap"]["refused"] == {"disk-full": 2}
        metrics = (await api(sock, "GET", "/metrics")).body.decode()
        assert 'wsnic_pcap_refused_total{reason="disk-full"} 2.0' in metrics
        assert "wsnic_pcap_disk_nearly_full 1.0" in metrics
        assert sorted(p.name for p in directory.iterdir()) == ["filler"]

        # Room again: a capture starts (the API looks at the disk afresh).
        filler.unlink()
        started = await api(sock, "POST", "/clients/1/pcap")
        assert started.status == 201, started
        assert server.log.find(r"the disk holding .* has room again")
        await close_ws(conn)
        assert await server.stop() == 0
        assert len(captures(directory)) == 1
