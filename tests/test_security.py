"""wss://, tokens, limits, rate limits and anti-spoofing against a real server."""

from __future__ import annotations

import contextlib
import datetime
import re
import signal
import ssl
from pathlib import Path

import pytest
import trio
import trio_websocket
import trustme

from . import packets as pk
from .netns import NetNS, NsFactory, NsProcess, wait_taps
from .wsclients import close_ws, receive_until, ws_client

BRIDGE = "02:77:73:00:00:01"


def write_cert(ca: trustme.CA, tmp: Path, name: str, **kw: object) -> tuple[Path, Path]:
    cert = ca.issue_cert("localhost", "127.0.0.1", **kw)  # type: ignore[arg-type]
    chain, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return chain, key


def new_tls(tmp: Path, name: str, **kw: object) -> tuple[trustme.CA, list[str]]:
    """A new CA, and the server's -r/-k options for a certificate it issued (as
    :func:`write_cert` writes it)."""
    ca = trustme.CA()
    chain, key = write_cert(ca, tmp, name, **kw)
    return ca, ["-r", str(chain), "-k", str(key)]


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def arp_works(
    conn: trio_websocket.WebSocketConnection, me: str = "02:00:00:00:00:21"
) -> None:
    await conn.send_message(pk.arp_request(pk.mac(me), "192.168.86.21", "192.168.86.1"))
    reply = await receive_until(conn, pk.parse_arp_reply)
    assert pk.parse_arp_reply(reply) == (BRIDGE, "192.168.86.1")


async def rejected_status(ns: NetNS, nursery: trio.Nursery, **kw: object) -> int:
    """The HTTP status of a refused handshake (trio-websocket also raises it in its nursery)."""
    status: list[int] = []
    try:
        async with trio.open_nursery() as own:
            conn = await ws_client(ns, own, **kw)  # type: ignore[arg-type]
            await conn.aclose()
    except* trio_websocket.ConnectionRejected as group:
        status = [
            int(exc.status_code)
            for exc in group.exceptions
            if isinstance(exc, trio_websocket.ConnectionRejected)
        ]
    assert status, "the connection was accepted"
    return status[0]


async def test_wss_with_real_certificate(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca, tls = new_tls(tmp_path, "server")
    ns = world.new("srv")
    server = await ns.start_wsnic(*tls, "--wss-port", "8443")
    assert server.log.find(r"listening on wss://127\.0\.0\.1:8443/")
    assert server.log.find(r"listening on ws://127\.0\.0\.1:8086/"), "ws and wss side by side"
    conn = await ws_client(ns, nursery, port=8443, ssl_context=client_context(ca))
    await arp_works(conn)
    # A browser opening https://host:8443/ to accept the certificate gets a short page.
    stream = trio.SSLStream(
        await ns.connect_tcp("127.0.0.1", 8443), client_context(ca), server_hostname="localhost"
    )
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    page = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(4096):
            page += chunk
    assert page.startswith(b"HTTP/1.1 200 ") and b"the TLS set-up works" in page
    await stream.aclose()
    await conn.aclose()
    assert await server.stop() == 0


async def test_wss_only_and_connect_tool(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``--ws-port 0`` leaves wss alone; ``wsnic-trio connect wss://`` trusts SSL_CERT_FILE."""
    ca, tls = new_tls(tmp_path, "server")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ns = world.new("srv")
    server = await ns.start_wsnic(*tls, "--ws-port", "0")
    assert server.log.find(r"listening on ws://") is None
    client = await ns.start(
        [*_wsnic(), "connect", "wss://localhost:8087/", "--tap", "lan0"],
        label="connect",
        env={"SSL_CERT_FILE": str(ca_file)},
    )
    await client.log.wait_for(r"connected to wss://localhost:8087/")
    await wait_taps(ns, 1)
    assert await client.stop() == 0


async def test_expired_certificate_fails_for_the_client_only(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    ca, tls = new_tls(tmp_path, "old", not_before=past, not_after=past + datetime.timedelta(days=1))
    ns = world.new("srv")
    server = await ns.start_wsnic(*tls)
    with pytest.raises(trio.BrokenResourceError) as info:
        await ws_client(ns, nursery, port=8087, ssl_context=client_context(ca))
    assert "certificate has expired" in str(info.value.__cause__)
    await server.log.wait_for(r"TLS handshake failed")
    good = await ws_client(ns, nursery)
    await arp_works(good)
    await good.aclose()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"TLS: cannot read certificate \S+/nope\.crt: No such file"),
        ("mismatch", r"TLS: the private key in \S+/b\.key does not match the certificate"),
        ("garbage", r"TLS: \S+/a\.txt holds no PEM certificate"),
    ],
)
async def test_bad_certificates_exit_2_untouched(
    world: NsFactory, tmp_path: Path, case: str, message: str
) -> None:
    ca = trustme.CA()
    chain, key = write_cert(ca, tmp_path, "a")
    _, other_key = write_cert(ca, tmp_path, "b")
    args = {
        "missing": ["-r", str(tmp_path / "nope.crt")],
        "mismatch": ["-r", str(chain), "-k", str(other_key)],
        "garbage": ["-r", str(key.with_suffix(".txt"))],
    }[case]
    key.with_suffix(".txt").write_text("not a certificate\n")
    ns = world.new("srv")
    server = await ns.start_wsnic(*args, ready=False)
    assert await server.wait() == 2
    assert server.log.find(f"error: {message}"), server.log.text()
    assert "wsbr0" not in ns.links()


def _wsnic() -> list[str]:
    import sys

    return [sys.executable, "-m", "wsnic_trio"]


async def token_server(ns: NetNS, tmp_path: Path, *extra: str) -> tuple[NsProcess, Path]:
    tokens = tmp_path / "tokens"
    tokens.write_text("# lab tokens\nsecret-alpha\nsecret-beta\n")
    return await ns.start_wsnic("--auth-token-file", str(tokens), *extra), tokens


async def test_tokens_in_query_subprotocol_and_bearer(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    ns = world.new("srv")
    server, _ = await token_server(ns, tmp_path)
    assert await rejected_status(ns, nursery) == 401
    assert await rejected_status(ns, nursery, path="/?token=wrong") == 403
    assert ns.links().count("wstap0") == 0, "no TAP for a refused client"
    by_query = await ws_client(ns, nursery, path="/lan?token=secret-alpha")
    await arp_works(by_query, "02:00:00:00:00:31")
    # A browser page: new WebSocket(url, ["binary", "token.secret-beta"]).
    by_proto = await ws_client(ns, nursery, subprotocols=["binary", "token.secret-beta"])
    assert by_proto.subprotocol == "binary", "the token is not echoed back"
    await arp_works(by_proto, "02:00:00:00:00:32")
    by_bearer = await ws_client(ns, nursery, headers=[(b"authorization", b"Bearer secret-beta")])
    await arp_works(by_bearer, "02:00:00:00:00:33")
    for conn in (by_query, by_proto, by_bearer):
        await conn.aclose()
    assert "secret-" not in server.log.text(), "tokens never reach the log"
    assert server.log.find(r"refused \(HTTP 401\): a token is required")
    assert server.log.find(r"refused \(HTTP 403\): invalid token")


async def test_login_flood_is_braked_but_keeps_no_valid_token_out(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """(issue 12) 20 failed logins from 127.0.0.1, then a valid token from 127.0.0.1
    (another user behind the same NAT): it joins, where it used to get 429. The
    guesses after the first five are braked (429, each after a wait)."""
    ns = world.new("srv")
    server, _ = await token_server(ns, tmp_path)
    first = [await rejected_status(ns, nursery, path=f"/?token=guess{i}") for i in range(5)]
    assert first == [403] * 5
    braked: list[int] = []

    async def guess(i: int) -> None:
        braked.append(await rejected_status(ns, nursery, path=f"/?token=guess{i}"))

    async with trio.open_nursery() as guesses:  # at once: each waits for its answer
        for i in range(5, 20):
            guesses.start_soon(guess, i)
    assert braked == [429] * 15
    conn = await ws_client(ns, nursery, path="/?token=secret-alpha")
    await arp_works(conn)
    await conn.aclose()
    assert server.log.find(r"refused \(HTTP 429\): invalid token, and too many failed logins")


async def test_sighup_reloads_tokens_and_keeps_clients(
    world: NsFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca, tls = new_tls(tmp_path, "first")
    ns = world.new("srv")
    server, tokens = await token_server(ns, tmp_path, *tls)
    old = await ws_client(ns, nursery, path="/?token=secret-alpha")
    tls_old = await ws_client(
        ns, nursery, port=8087, path="/?token=secret-alpha", ssl_context=client_context(ca)
    )
    tokens.write_text("secret-gamma\n")
    ca2 = trustme.CA()
    write_cert(ca2, tmp_path, "first")  # new certificate in the same files
    mark = len(server.log.lines)
    server.send_signal(signal.SIGHUP)
    await server.log.wait_for(r"reloaded 1 tokens", start=mark)
    await server.log.wait_for(r"TLS certificate reloaded", start=mark)
    assert await rejected_status(ns, nursery, path="/?token=secret-alpha") == 403
    new = await ws_client(ns, nursery, path="/?token=secret-gamma")
    tls_new = await ws_client(
        ns, nursery, port=8087, path="/?token=secret-gamma", ssl_context=client_context(ca2)
    )
    for i, conn in enumerate((old, tls_old, new, tls_new)):
        await arp_works(conn, f"02:00:00:00:00:4{i}")  # connected clients were not dropped
        await conn.aclose()
    # A broken file on reload keeps what worked.
    tokens.write_text("")
    mark = len(server.log.lines)
    server.send_signal(signal.SIGHUP)
    await server.log.wait_for(r"token reload failed, keeping the old tokens", start=mark)
    again = await ws_client(ns, nursery, path="/?token=secret-gamma")
    await again.aclose()


async def test_client_limits(world: NsFactory, nursery: trio.Nursery) -> None:
    ns = world.new("srv")
    await ns.start_wsnic("--max-clients", "2", "--max-clients-per-ip", "2")
    a = await ws_client(ns, nursery)
    b = await ws_client(ns, nursery)
    assert await rejected_status(ns, nursery) == 503
    await a.aclose()
    await wait_taps(ns, 1)
    c = await ws_client(ns, nursery)
    await arp_works(c)
    await b.aclose()
    await c.aclose()


async def test_rate_limit_drops_excess_of_that_client_only(
    world: NsFactory, nursery: trio.Nursery
) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic("--rate-limit", "200k")
    fast = await ws_client(ns, nursery)
    watcher = await ws_client(ns, nursery)
    await wait_taps(ns, 2)
    src = pk.mac("02:00:00:00:00:51")
    frame = pk.probe_frame(pk.BROADCAST, src, b"fast", size=1514)
    for _ in range(2000):  # 3 MB sent as fast as possible: far over 200 kB/s
        await fast.send_message(frame)
    await arp_works(watcher, "02:00:00:00:00:52")
    await fast.aclose()
    m = await server.log.wait_for(r"client 1 disconnected .*in (\d+) frames.*rate-limit (\d+)")
    passed, dropped = int(m[1]), int(m[2])
    assert passed + dropped == 2000 and dropped > passed
    await watcher.aclose()


async def test_spoofed_source_macs_are_dropped(world: NsFactory, nursery: trio.Nursery) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic()
    liar = await ws_client(ns, nursery)
    victim = await ws_client(ns, nursery)
    await wait_taps(ns, 2)
    mine, theirs = pk.mac("02:00:00:00:00:61"), pk.mac("02:00:00:00:00:62")
    await liar.send_message(pk.probe_frame(pk.BROADCAST, mine, b"honest"))
    await liar.send_message(pk.probe_frame(pk.BROADCAST, theirs, b"spoofed"))
    await liar.send_message(pk.probe_frame(pk.BROADCAST, pk.mac(BRIDGE), b"bridge"))
    await liar.send_message(pk.probe_frame(pk.BROADCAST, pk.mac("01:00:5e:00:00:01"), b"mc"))
    await liar.send_message(pk.probe_frame(pk.BROADCAST, mine, b"honest-again"))
    seen = [await receive_until(victim, lambda f: f[12:14] == b"\x88\xb5") for _ in range(2)]
    assert [f[14:26].rstrip(b"\0") for f in seen] == [b"honest", b"honest-again"]
    await liar.aclose()
    await server.log.wait_for(r"client 1 disconnected .*multicast-source 1, spoofed-mac 2")
    await victim.aclose()


async def test_reconnect_with_same_mac_replaces_the_old_connection(
    world: NsFactory, nursery: trio.Nursery
) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic()
    first = await ws_client(ns, nursery)
    await arp_works(first, "02:00:00:00:00:71")
    second = await ws_client(ns, nursery)  # same address: v86 after a network drop
    await arp_works(second, "02:00:00:00:00:71")
    await server.log.wait_for(r"client 1 disconnected \(replaced by client 2 with the same MAC\)")
    await wait_taps(ns, 1)
    with trio.fail_after(5):
        while first.closed is None:
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                await first.get_message()
    assert "replaced by client 2" in (first.closed.reason or "")
    await close_ws(first)
    await arp_works(second, "02:00:00:00:00:71")
    await second.aclose()


async def test_same_mac_from_another_address_is_refused(
    world: NsFactory, nursery: trio.Nursery
) -> None:
    srv, a, b = world.new("srv"), world.new("a"), world.new("b")
    world.link(srv, "198.18.0.1/30", a, "198.18.0.2/30")
    world.link(srv, "198.18.0.5/30", b, "198.18.0.6/30")
    server = await srv.start_wsnic("-a", "0.0.0.0")
    owner = await ws_client(a, nursery, host="198.18.0.1")
    await arp_works(owner, "02:00:00:00:00:81")
    thief = await ws_client(b, nursery, host="198.18.0.5")
    await thief.send_message(pk.probe_frame(pk.BROADCAST, pk.mac("02:00:00:00:00:81"), b"x"))
    with trio.fail_after(5):
        while not thief.closed:
            try:
                await thief.get_message()
            except trio_websocket.ConnectionClosed:
                break
    assert thief.closed is not None
    assert thief.closed.code == 1008
    assert "is in use by another client" in (thief.closed.reason or "")
    await close_ws(thief)
    await arp_works(owner, "02:00:00:00:00:81")
    await owner.aclose()
    await server.log.wait_for(r"client 2 disconnected \(MAC 02:00:00:00:00:81 is in use")


async def test_lock_ip_allows_only_the_leased_address(world: NsFactory, tmp_path: Path) -> None:
    """A real DHCP client gets its lease and works; the same client with a made-up
    address is cut off (frames dropped and counted), and the LAN is unharmed."""
    from .lanhost import add_client, require_tools

    require_tools()
    srv = world.new("srv")
    server = await srv.start_wsnic("-a", "0.0.0.0", "--lock-ip")
    client = await add_client(world, srv, tmp_path, 1)
    lease = await client.dhcp(hostname="honest")
    ok = await client.ns.exec("ping", "-c", "2", "-W", "2", "192.168.86.1")
    assert ok.returncode == 0, ok.stdout.decode()
    # Now the same client claims another address by hand.
    client.ns.ip("addr", "flush", "dev", "lan0")
    client.ns.ip("addr", "add", "192.168.86.200/24", "dev", "lan0")
    bad = await client.ns.exec("ping", "-c", "2", "-W", "1", "192.168.86.1")
    assert bad.returncode != 0, "a spoofed source address does not get through"
    assert lease["ip"] != "192.168.86.200"
    assert await client.connect.stop() == 0
    await server.log.wait_for(r"client 1 disconnected .*spoofed-ip \d+")


async def test_max_queued_bytes_caps_the_tap_queue(world: NsFactory, nursery: trio.Nursery) -> None:
    ns = world.new("srv")
    await ns.start_wsnic("--max-queued-bytes", "100000")
    conn = await ws_client(ns, nursery)
    [tap] = await wait_taps(ns, 1)
    # 100000 bytes / 1518-byte frames
    assert re.search(r"\bqlen 65\b", ns.ip("link", "show", tap).stdout)
    await conn.aclose()
