"""Port forwards on several LANs: each forward reaches one LAN, a name is looked up in
that LAN's leases only (two LANs may each have a guest called ``web``), and a LAN that
goes takes its forwards with it."""

from __future__ import annotations

from pathlib import Path

import trio

from .apihelp import Reply, api, require_curl, start_echo
from .lanhost import add_client, require_tools
from .netns import NsFactory
from .test_forward import tcp_roundtrip


async def _forward(sock: str, local: str, remote: str, lan: str) -> Reply:
    return await api(sock, "POST", "/forwards", {"local": local, "remote": remote, "lan": lan})


async def test_forwards_reach_the_lan_they_name(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    require_curl()
    srv, sock = world.new("srv"), str(tmp_path / "api.sock")
    lans = ["--lan", "a=10.86.1.0/24,forward=127.0.0.1:2222=web:7000", "--lan", "b=10.86.2.0/24"]
    server = await srv.start_wsnic(
        "-a", "0.0.0.0", "--api", f"unix:{sock}", *lans, "--lan-pool", "10.90.0.0/16"
    )
    assert server.log.find(r"forwarding tcp 127\.0\.0\.1:2222 to web:7000 on LAN a")
    # A guest called web on each LAN, each echo saying which one it is.
    for index, lan in enumerate("ab"):
        guest = await add_client(world, srv, tmp_path, index, f"web{lan}", path=f"/lan/{lan}")
        await guest.dhcp("web")
        await start_echo(guest.ns, f"guest-{lan}")
    added = await _forward(sock, "127.0.0.1:2223", "web:7000", "b")
    assert added.status == 201, added
    assert added.json()["lan"] == "b"

    assert await tcp_roundtrip(srv, 2222, b"hello") == b"guest-a tcp hello"
    assert await tcp_roundtrip(srv, 2223, b"hello") == b"guest-b tcp hello"

    listed = await api(sock, "GET", "/forwards?lan=b")
    assert [(f["local"], f["lan"]) for f in listed.json()["forwards"]] == [("127.0.0.1:2223", "b")]
    everything = await api(sock, "GET", "/forwards")
    assert sorted(f["lan"] for f in everything.json()["forwards"]) == ["a", "b"]

    # Mistakes: an unknown LAN; an address of LAN a given as LAN b's; the same local port.
    unknown = await _forward(sock, "127.0.0.1:0", "web:1", "zzz")
    assert unknown.status == 404 and "no such LAN: zzz" in unknown.json()["error"], unknown
    outside = await _forward(sock, "127.0.0.1:0", "10.86.1.9:1", "b")
    assert outside.status == 400 and "outside the LAN 10.86.2.0/24" in outside.json()["error"]
    taken = await _forward(sock, "127.0.0.1:2222", "web:7000", "b")
    assert taken.status == 409, taken

    # A LAN made on demand (here through the API) and a forward into it: both go at once.
    made = await api(sock, "POST", "/lans", {"name": "room"})
    assert made.status == 201, made
    into = await _forward(sock, "127.0.0.1:2224", "web:7000", "room")
    assert into.status == 201, into
    removed = await api(sock, "DELETE", "/lans/room")
    assert removed.status == 200, removed
    after = await api(sock, "GET", "/forwards")
    assert "127.0.0.1:2224" not in [f["local"] for f in after.json()["forwards"]]
    with trio.fail_after(10):
        while True:  # its socket closes as its task ends
            try:
                stream = await srv.connect_tcp("127.0.0.1", 2224)
            except OSError:
                break
            await stream.aclose()
            await trio.sleep(0.05)
    assert server.log.find(r"forward tcp 127\.0\.0\.1:2224 removed")
    assert await server.stop() == 0
