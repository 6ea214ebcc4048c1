"""Smaller holes a hostile client could use, each against a real server: the size of a
handshake, TLS renegotiation, peer-chosen socket names in logs and tables, and the
token of ``wsnic-trio connect``'s URL in its log."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from pathlib import Path

import trio
import trustme

from . import packets as pk
from .apihelp import api, require_curl
from .conftest import require
from .netns import NsFactory, NsProcess
from .test_ctl import ctl
from .test_security import arp_works, client_context, write_cert
from .test_websocket_protocol import upgrade_head
from .vmclients import PacketClient, arp_bridge, wsnic
from .wsclients import close_ws, ws_client

#: What a hostile VM may bind as its socket name: a forged log line and terminal escapes.
FORGED = "2025-01-01 00:00:00,000 wsnic-trio[1] INFO client 9 connected"
HOSTILE = f"vm\n{FORGED}\x1b[2J\x07"


async def test_handshake_head_limit_is_16384_bytes_on_the_wire(world: NsFactory) -> None:
    """docs/websocket.md: over 16384 bytes gets 431; it used to pass up to ~32 KiB when
    the head completed in the read after the one that filled the limit."""
    ns = world.new("srv")
    server = await ns.start_wsnic()
    for size, answer in (
        (16384, b"HTTP/1.1 101 "),
        (16385, b"HTTP/1.1 431 "),
        (30000, b"HTTP/1.1 431 "),
    ):
        stream = await ns.connect_tcp("127.0.0.1", 8086)
        reply = b""
        with trio.fail_after(10):
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(upgrade_head(size))
            while b"\r\n\r\n" not in reply:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                reply += chunk
        await stream.aclose()
        assert reply.startswith(answer), (size, reply[:200])
    await server.log.wait_for(r"client 1 connected: ws ")
    assert not server.log.find(r"client 2 connected"), "only the 16384-byte head joined"
    assert await server.stop() == 0


#: An OpenSSL configuration that allows client-initiated renegotiation (OpenSSL 1.1.1's
#: default; OpenSSL 3 refuses it unless told otherwise, as here).
ALLOW_RENEGOTIATION = """\
openssl_conf = init
[init]
ssl_conf = ssl
[ssl]
system_default = defaults
[defaults]
Options = ClientRenegotiation
"""


S_CLIENT = ("-connect", "127.0.0.1:8087", "-servername", "localhost")


async def test_tls_client_renegotiation_is_refused(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    require(shutil.which("openssl") is not None, "openssl is not installed")
    ca = trustme.CA()
    chain, key = write_cert(ca, tmp_path, "server")
    conf = tmp_path / "openssl.cnf"
    conf.write_text(ALLOW_RENEGOTIATION)
    ns = world.new("srv")
    argv = [*wsnic(), "-r", str(chain), "-k", str(key)]
    server = await ns.start(argv, label="wsnic-trio", env={"OPENSSL_CONF": str(conf)})
    await server.log.wait_for(r"INFO ready: ", timeout=30)
    client = await trio.lowlevel.open_process(
        [*("ip", "netns", "exec", ns.name, "openssl", "s_client", "-tls1_2"), *S_CLIENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert client.stdin is not None and client.stdout is not None
    out = b""
    try:
        with trio.fail_after(20):
            # The TLS 1.2 session is up once s_client has printed its summary.
            while not (b"Verify return code" in out and out.rstrip().endswith(b"---")):
                chunk = await client.stdout.receive_some(65536)
                assert chunk, out.decode(errors="replace")
                out += chunk
        await client.stdin.send_all(b"R\n")  # s_client's command: renegotiate
        with trio.move_on_after(20):
            while chunk := await client.stdout.receive_some(65536):
                out += chunk
    finally:
        with contextlib.suppress(OSError):
            client.kill()
        await client.wait()
        await client.stdin.aclose()
        await client.stdout.aclose()
    text = out.decode(errors="replace")
    assert "RENEGOTIATING" in text, text[-2000:]
    assert "no renegotiation" in text, text[-2000:]
    # That connection alone ended; the server goes on (a new TLS client joins the LAN).
    conn = await ws_client(ns, nursery, port=8087, ssl_context=client_context(ca))
    await arp_works(conn)
    await close_ws(conn)
    assert await server.stop() == 0


async def test_peer_chosen_socket_names_are_escaped(
    world: NsFactory, sockdir: str, tmp_path: Path
) -> None:
    """A VM names itself by the path it binds; its name reaches the log, the API and
    ``ctl`` tables escaped, so it cannot forge a log line or drive a terminal."""
    require_curl()
    ns = world.new("srv")
    api_sock = str(tmp_path / "api.sock")
    server = await ns.start_wsnic(
        "--dgram", f"{sockdir}/dg", "--bess", f"{sockdir}/bess", "--api", f"unix:{api_sock}"
    )
    vm = await PacketClient.dgram(f"{sockdir}/dg", f"{sockdir}/{HOSTILE}")
    try:
        uml = await PacketClient.bess(f"{sockdir}/bess", src=f"{sockdir}/u{HOSTILE}")
        try:
            await names_are_escaped(server, vm, uml, sockdir, api_sock)
        finally:
            uml.close()
    finally:
        vm.close()
    assert await server.stop() == 0


async def names_are_escaped(
    server: NsProcess, vm: PacketClient, uml: PacketClient, sockdir: str, api_sock: str
) -> None:
    await arp_bridge(vm, pk.mac("02:00:00:00:0d:01"), "192.168.86.31")
    await arp_bridge(uml, pk.mac("02:00:00:00:0d:02"), "192.168.86.32")
    shown = "vm\\x0a" + FORGED + "\\x1b[2J\\x07"
    await server.log.wait_for(r"connected: dgram unix:.*/vm\\x0a2025-01-01 .*\\x1b\[2J\\x07 on")
    await server.log.wait_for(r"connected: bess unix:.*/uvm\\x0a2025-01-01 .*\\x1b\[2J\\x07 on")
    assert not any(line.startswith(FORGED[:10]) for line in server.log.lines), "a forged line"
    assert "\x1b" not in server.log.text() and "\x07" not in server.log.text()

    clients = (await api(api_sock, "GET", "/clients")).json()["clients"]
    assert {c["transport"]: c["remote"] for c in clients} == {
        "dgram": f"unix:{sockdir}/{shown}",
        "bess": f"unix:{sockdir}/u{shown}",
    }
    code, out, _ = await ctl(api_sock, "clients")
    assert code == 0 and len(out.splitlines()) == 3, out  # header and one line per client
    assert "\x1b" not in out and shown in out


async def test_connect_never_logs_its_token(world: NsFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-token\n")
    ns = world.new("srv")
    server = await ns.start_wsnic("--auth-token-file", str(tokens))
    url = "ws://127.0.0.1:8086/lan?token=s3cret-token"
    client = await ns.start([*wsnic(), "connect", url, "--tap", "lan0"], label="connect")
    await client.log.wait_for(r"connected to ws://127\.0\.0\.1:8086/lan\?token=\*\*\*;")
    await server.log.wait_for(r"client 1 connected")
    assert await client.stop(signal.SIGTERM) == 0
    await client.log.wait_for(r"disconnected from ws://127\.0\.0\.1:8086/lan\?token=\*\*\* ")
    wrong = url.replace("s3cret-token", "s3cret-guess")
    refused = await ns.start([*wsnic(), "connect", wrong, "--once"], label="connect")
    await refused.log.wait_for(
        r"error: ws://127\.0\.0\.1:8086/lan\?token=\*\*\* refused: server answered HTTP 403"
    )
    assert await refused.wait() == 2
    for log in (client.log, refused.log, server.log):
        assert "s3cret" not in log.text(), log.text()
    assert await server.stop() == 0
