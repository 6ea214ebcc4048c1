"""Packet capture: files tshark reads, holding the frames that really crossed the relay."""

from __future__ import annotations

import shutil
from pathlib import Path

import trio

from wsnic_trio.control.pcap import Capture

from .apihelp import api, require_curl
from .conftest import require
from .lanhost import add_client, require_tools
from .netns import NetNS, NsFactory
from .test_api import lan0_mac

BRIDGE = "02:77:73:00:00:01"


def require_tshark() -> None:
    require(shutil.which("tshark") is not None, "tshark is not installed (apt-get install tshark)")


def capture_world(world: NsFactory, tmp_path: Path) -> tuple[NetNS, Path, str]:
    """Skips without tshark or curl; the server's namespace, an empty directory for its
    captures and the path for its API socket."""
    require_tshark()
    require_curl()
    srv = world.new("srv")
    captures = tmp_path / "pcap"
    captures.mkdir()
    return srv, captures, str(tmp_path / "api.sock")


async def tshark(path: Path | str, *fields: str, filter: str | None = None) -> list[list[str]]:
    argv = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for field in fields:
        argv += ["-e", field]
    if filter:
        argv += ["-Y", filter]
    with trio.fail_after(60):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return [line.split("|") for line in result.stdout.decode().splitlines()]


async def test_capture_file_is_valid_and_bounded(tmp_path: Path) -> None:
    """Without a server: what Capture writes is a pcap tshark reads frame for frame,
    and it stops (complete) at its size limit."""
    require_tshark()
    frames = [
        bytes.fromhex("ffffffffffff020000000001") + b"\x88\xb5" + bytes([i]) * (46 + i)
        for i in range(20)
    ]
    async with trio.open_nursery() as nursery:
        capture = Capture(tmp_path / "a.pcap", 1_000_000, 1)
        nursery.start_soon(capture.run)
        capture.add(frames[:10], True)
        capture.add(frames[10:], False)
        capture.close()
        await capture.done.wait()
        small = Capture(tmp_path / "b.pcap", 24 + 3 * (16 + 60), 2)
        nursery.start_soon(small.run)
        small.add(frames, True)  # frame i is 60 + i bytes: only frames 0 and 1 fit whole
        await small.done.wait()
    rows = await tshark(tmp_path / "a.pcap", "frame.len", "eth.src", "eth.type")
    assert rows == [[str(60 + i), "02:00:00:00:00:01", "0x88b5"] for i in range(20)]
    assert capture.frames == 20 and capture.size == (tmp_path / "a.pcap").stat().st_size
    assert small.full and small.frames == 2
    assert (tmp_path / "b.pcap").stat().st_size <= small.max_bytes
    assert len(await tshark(tmp_path / "b.pcap", "frame.len")) == 2


async def test_capture_every_client_and_on_demand(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    srv, captures, sock = capture_world(world, tmp_path)
    server = await srv.start_wsnic(
        "-a", "0.0.0.0", "--api", f"unix:{sock}", "--pcap", str(captures)
    )
    client = await add_client(world, srv, tmp_path, 0, "cap")
    await client.dhcp("cap")
    mac = lan0_mac(client)
    # Five pings with a payload pattern nobody else sends.
    result = await client.ns.exec("ping", "-c", "5", "-i", "0.2", "-p", "c0ffee", "192.168.86.1")
    assert result.returncode == 0, result.stdout.decode()

    info = (await api(sock, "GET", "/clients")).json()["clients"][0]
    assert info["capture"]["path"].startswith(str(captures))
    stopped = await api(sock, "DELETE", f"/clients/{info['id']}/pcap")
    assert stopped.status == 200, stopped
    path = stopped.json()["capture"]["path"]
    rows = await tshark(
        path, "eth.src", "eth.dst", "icmp.type", filter="icmp && data.data contains c0:ff:ee"
    )
    requests = [r for r in rows if r[2] == "8"]
    replies = [r for r in rows if r[2] == "0"]
    assert requests == [[mac, BRIDGE, "8"]] * 5, rows
    assert replies == [[BRIDGE, mac, "0"]] * 5, rows
    # The DHCP exchange was captured too (the capture started at connect).
    assert await tshark(path, "dhcp.option.hostname", filter='dhcp.option.hostname == "cap"')
    assert (await api(sock, "GET", "/clients")).json()["clients"][0]["capture"] is None

    # Start again on demand: a new file, holding only what came after.
    started = await api(sock, "POST", f"/clients/{info['id']}/pcap")
    assert started.status == 201, started
    second = started.json()["capture"]["path"]
    assert second != path
    result = await client.ns.exec("ping", "-c", "2", "-i", "0.2", "-p", "bada55", "192.168.86.1")
    assert result.returncode == 0
    # Stopping the server completes the file too.
    assert await server.stop() == 0
    rows = await tshark(second, "icmp.type", filter="icmp && data.data contains ba:da:55")
    assert sorted(r[0] for r in rows) == ["0", "0", "8", "8"]
    assert not await tshark(second, "icmp.type", filter="data.data contains c0:ff:ee")


async def test_capture_stops_at_its_size_limit(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    srv, captures, sock = capture_world(world, tmp_path)
    server = await srv.start_wsnic(
        "-a",
        "0.0.0.0",
        "--api",
        f"unix:{sock}",
        "--pcap",
        str(captures),
        "--pcap-max-bytes",
        "4096",
        "--pcap-on-demand",
    )
    client = await add_client(world, srv, tmp_path, 0, "cap")
    info = (await api(sock, "GET", "/clients")).json()["clients"][0]
    assert info["capture"] is None, "--pcap-on-demand: nobody is captured from the start"
    assert list(captures.iterdir()) == []
    started = await api(sock, "POST", f"/clients/{info['id']}/pcap")
    assert started.status == 201, started
    await client.dhcp("cap")
    result = await client.ns.exec("ping", "-c", "20", "-i", "0.05", "-s", "400", "192.168.86.1")
    assert result.returncode == 0
    state = (await api(sock, "GET", "/clients")).json()["clients"][0]["capture"]
    assert state["full"] is True and state["bytes"] <= 4096, state
    stopped = (await api(sock, "DELETE", f"/clients/{info['id']}/pcap")).json()["capture"]
    path = trio.Path(stopped["path"])
    assert (await path.stat()).st_size == stopped["bytes"] <= 4096
    assert len(await tshark(str(path), "frame.len")) == stopped["frames"] > 0
    assert server.log.find(r"capture of client \d+ reached --pcap-max-bytes \(4096 B\)")
    assert await server.stop() == 0
