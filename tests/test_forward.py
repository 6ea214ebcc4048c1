"""Port forwards into the LAN: a guest behind ``wsnic-trio connect`` runs real TCP and UDP
services; the forwards' local side is in the server's namespace, as an operator's would be."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from .apihelp import api, require_curl, start_echo
from .lanhost import add_client, require_tools
from .netns import NetNS, NsFactory


async def tcp_roundtrip(ns: NetNS, port: int, payload: bytes) -> bytes:
    stream = await ns.connect_tcp("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()  # the echo answers at EOF: the half-close is forwarded too
        answer = b""
        with trio.fail_after(15):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    return answer


async def udp_roundtrip(ns: NetNS, port: int, payload: bytes) -> bytes:
    sock = trio.socket.from_stdlib_socket(ns.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sock:
        await sock.connect(("127.0.0.1", port))
        # UDP may lose the first datagram while the guest's ARP entry is made: resend.
        for _ in range(10):
            await sock.send(payload)
            with trio.move_on_after(1):
                return await sock.recv(65536)
    raise AssertionError("no UDP answer through the forward")


async def tcp_and_udp_to_the_guest(ns: NetNS, sock: str, guest_ip: str) -> tuple[bytes, str]:
    """The forward at 127.0.0.1:2222 carries TCP to and from the guest's echo, more than
    one socket buffer, half-close passed on; a UDP forward added through the API (port 0:
    any free port) to its port 7001 carries a datagram both ways. The TCP payload and the
    UDP forward's local address."""
    payload = bytes(range(256)) * 1024
    assert await tcp_roundtrip(ns, 2222, payload) == b"guest-web tcp " + payload
    reply = await api(
        sock,
        "POST",
        "/forwards",
        {"local": "127.0.0.1:0", "remote": f"{guest_ip}:7001", "protocol": "udp"},
    )
    assert reply.status == 201, reply
    udp_local: str = reply.json()["local"]
    udp_port = int(udp_local.rpartition(":")[2])
    assert await udp_roundtrip(ns, udp_port, b"ping 1") == b"guest-web udp ping 1"
    return payload, udp_local


async def test_tcp_and_udp_forwards_to_a_guest(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    require_curl()
    srv = world.new("srv")
    sock = str(tmp_path / "api.sock")
    # A start-up forward to the guest by name (resolved through its DHCP lease).
    server = await srv.start_wsnic(
        "-a", "0.0.0.0", "--api", f"unix:{sock}", "--forward", "127.0.0.1:2222=web:7000"
    )
    assert server.log.find(r"forwarding tcp 127\.0\.0\.1:2222 to web:7000")
    guest = await add_client(world, srv, tmp_path, 0, "web")
    lease = await guest.dhcp("web")
    await start_echo(guest.ns, "guest-web")

    # TCP by name, UDP added through the API by address.
    payload, udp_local = await tcp_and_udp_to_the_guest(srv, sock, lease["ip"])
    assert int(udp_local.rpartition(":")[2]) != 0

    # The same port for TCP is a different forward; a second UDP one on it is a conflict.
    dup = await api(
        sock,
        "POST",
        "/forwards",
        {"local": udp_local, "remote": f"{lease['ip']}:7001", "protocol": "udp"},
    )
    assert dup.status == 409 and "already forwarded" in dup.json()["error"], dup

    listed = {
        (f["protocol"], f["local"]): f
        for f in (await api(sock, "GET", "/forwards")).json()["forwards"]
    }
    tcp = listed[("tcp", "127.0.0.1:2222")]
    assert tcp["remote"] == "web:7000" and tcp["resolved"] == lease["ip"]
    assert tcp["total"] == 1 and tcp["bytes_to_remote"] == len(payload)
    assert tcp["bytes_from_remote"] == len(payload) + len(b"guest-web tcp ")
    assert listed[("udp", udp_local)]["total"] == 1

    # Removing: by local address (and protocol); afterwards nothing listens there.
    gone = await api(sock, "DELETE", "/forwards", {"local": "127.0.0.1:2222"})
    assert gone.status == 200 and [f["protocol"] for f in gone.json()["removed"]] == ["tcp"]
    with pytest.raises(ConnectionRefusedError):
        await srv.connect_tcp("127.0.0.1", 2222)
    gone = await api(sock, "DELETE", f"/forwards?local={udp_local}&protocol=udp")
    assert gone.status == 200, gone
    assert (await api(sock, "GET", "/forwards")).json()["forwards"] == []
    again = await api(sock, "DELETE", "/forwards", {"local": "127.0.0.1:2222"})
    assert again.status == 404

    # A freed port can be forwarded again at once.
    readd = await api(
        sock, "POST", "/forwards", {"local": "127.0.0.1:2222", "remote": f"{lease['ip']}:7000"}
    )
    assert readd.status == 201, readd
    assert await tcp_roundtrip(srv, 2222, b"again") == b"guest-web tcp again"
    assert await server.stop() == 0


async def test_forward_to_a_name_without_a_lease_fails_per_connection(
    world: NsFactory, tmp_path: Path
) -> None:
    """A name nobody holds yet is accepted (the guest may come later); a connection
    meanwhile is closed and the reason shows in GET /forwards; the server goes on."""
    require_tools()
    require_curl()
    srv = world.new("srv")
    sock = str(tmp_path / "api.sock")
    server = await srv.start_wsnic("--api", f"unix:{sock}")
    reply = await api(sock, "POST", "/forwards", {"local": "127.0.0.1:0", "remote": "ghost:22"})
    assert reply.status == 201, reply
    port = int(reply.json()["local"].rpartition(":")[2])
    stream = await srv.connect_tcp("127.0.0.1", port)
    async with stream:
        with trio.fail_after(15):
            assert await stream.receive_some(100) == b""
    fwd = (await api(sock, "GET", "/forwards")).json()["forwards"][0]
    assert fwd["failed"] == 1 and "no DHCP lease for host name 'ghost'" in fwd["last_error"]
    assert await server.stop() == 0


async def test_forward_option_outside_the_lan_is_refused(world: NsFactory) -> None:
    srv = world.new("srv")
    server = await srv.start_wsnic("--forward", "127.0.0.1:2222=10.0.0.5:22", ready=False)
    assert await server.wait() == 2
    assert server.log.find(r"outside the LAN 192\.168\.86\.0/24")
