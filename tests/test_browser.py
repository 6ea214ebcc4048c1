"""A real browser on the LAN: headless Chromium's own WebSocket, as v86 uses it.

The page opens the relay URL (token in the query string, or in the subprotocol list
over wss://), sends an ARP request for the bridge from JavaScript, and reports what came
back to a tiny HTTP collector the test runs in the same namespace.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import urllib.parse
from pathlib import Path

import trio
import trustme

from .conftest import require
from .netns import NetNS, NsFactory
from .test_security import write_cert

PAGE = """<!doctype html><meta charset="utf-8"><title>wsnic-trio browser test</title>
<script>
const report = (text) => fetch("http://127.0.0.1:8099/result?" + encodeURIComponent(text));
const url = new URLSearchParams(location.search).get("url");
const protocols = JSON.parse(new URLSearchParams(location.search).get("protocols") || "[]");
const ws = new WebSocket(url, protocols);
ws.binaryType = "arraybuffer";
const me = [0x02, 0, 0, 0, 0, 0x77], ip = [192, 168, 86, 77], target = [192, 168, 86, 1];
ws.onopen = () => {
  const f = new Uint8Array(42);
  f.set([255, 255, 255, 255, 255, 255], 0); f.set(me, 6); f.set([0x08, 0x06], 12);
  f.set([0, 1, 0x08, 0, 6, 4, 0, 1], 14); f.set(me, 22); f.set(ip, 28); f.set(target, 38);
  ws.send(f.buffer);
};
ws.onmessage = (ev) => {
  if (typeof ev.data === "string") { report("text " + ev.data); return; }
  const f = new Uint8Array(ev.data);
  if (f[12] === 0x08 && f[13] === 0x06 && f[21] === 2) {
    const mac = Array.from(f.slice(22, 28)).map((b) => b.toString(16).padStart(2, "0")).join(":");
    report("arp-reply " + mac + " " + f.slice(28, 32).join(".") + " protocol=" + ws.protocol);
    ws.close(1000);
  }
};
ws.onerror = () => report("error");
ws.onclose = (ev) => { if (ev.code !== 1000) report("closed " + ev.code); };
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require(path is not None, "Debian's chromium is not installed")
    assert path is not None
    return path


async def browse(
    ns: NetNS, page: Path, url: str, protocols: str = "[]", served: bool = False
) -> str:
    """Open the page in headless Chromium inside ``ns``; return what it reported.

    The page comes from its file, or with ``served`` from the collector itself, as
    ``http://127.0.0.1:8099/page.html`` (a web origin, which a browser names in its
    WebSocket handshake).
    """
    collector = ns.socket()
    collector.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    collector.bind(("127.0.0.1", 8099))
    collector.listen()
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(collector))
    query = urllib.parse.urlencode({"url": url, "protocols": protocols})
    profile = page.parent / "profile"
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--ignore-certificate-errors",
        f"--user-data-dir={profile}",
        f"http://127.0.0.1:8099/page.html?{query}" if served else f"file://{page}?{query}",
    ]
    body = await trio.Path(page).read_bytes()
    results: list[str] = []
    reported = trio.Event()

    async def answer(stream: trio.SocketStream) -> None:
        # Each connection on its own: the browser may open one it never uses.
        with contextlib.suppress(trio.BrokenResourceError):
            async with stream:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                path = request.split(b"\r\n", 1)[0].decode().split(" ")[1]
                if path.startswith("/result"):
                    results.append(urllib.parse.unquote(path.partition("?")[2]))
                    reported.set()
                    await stream.send_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                elif served and path.startswith("/page.html"):
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                    await stream.send_all(head + body)
                else:
                    await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    browser = await ns.start(argv, label="chromium")
    try:
        async with trio.open_nursery() as nursery:

            async def accept_all() -> None:
                while True:
                    nursery.start_soon(answer, await listener.accept())

            nursery.start_soon(accept_all)
            with trio.fail_after(60):
                await reported.wait()
            nursery.cancel_scope.cancel()
    finally:
        browser.proc.kill()
        await browser.wait()
        await listener.aclose()
    return results[0]


async def test_chromium_joins_with_a_token_in_the_query(world: NsFactory, tmp_path: Path) -> None:
    chromium()
    tokens = tmp_path / "tokens"
    tokens.write_text("browser-token\n")
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    ns = world.new("srv")
    server = await ns.start_wsnic("--auth-token-file", str(tokens))
    result = await browse(ns, page, "ws://127.0.0.1:8086/?token=browser-token")
    assert result == "arp-reply 02:77:73:00:00:01 192.168.86.1 protocol="
    await server.log.wait_for(r"client 1 disconnected \(closed by peer \(code 1000\)\)")
    assert "browser-token" not in server.log.text()


async def test_chromium_over_wss_with_a_token_subprotocol(world: NsFactory, tmp_path: Path) -> None:
    chromium()
    ca = trustme.CA()
    chain, key = write_cert(ca, tmp_path, "server")
    tokens = tmp_path / "tokens"
    tokens.write_text("sub-token\n")
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    ns = world.new("srv")
    await ns.start_wsnic("--auth-token-file", str(tokens), "-r", str(chain), "-k", str(key))
    result = await browse(ns, page, "wss://localhost:8087/", '["binary", "token.sub-token"]')
    assert result == "arp-reply 02:77:73:00:00:01 192.168.86.1 protocol=binary"
    refused = await browse(ns, page, "wss://localhost:8087/", '["binary", "token.wrong"]')
    assert refused.startswith(("error", "closed")), refused
    # Only the token offered: the server echoes no subprotocol (never the token), and a
    # browser fails such a connection; hence "offer binary too" in docs/security.md.
    only = await browse(ns, page, "wss://localhost:8087/", '["token.sub-token"]')
    assert only.startswith(("error", "closed")), only


async def test_chromium_page_of_another_origin_is_refused(world: NsFactory, tmp_path: Path) -> None:
    """A real cross-site WebSocket: only the page of the allowed origin joins."""
    chromium()
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    ns = world.new("srv")
    server = await ns.start_wsnic("--allow-origin", "http://127.0.0.1:8099")
    result = await browse(ns, page, "ws://127.0.0.1:8086/", served=True)
    assert result == "arp-reply 02:77:73:00:00:01 192.168.86.1 protocol="
    await server.log.wait_for(
        r"client 1 connected: ws .* on wstap\d+, origin http://127\.0\.0\.1:8099$"
    )
    # The same page opened from its file has the opaque origin "null": refused, no TAP.
    refused = await browse(ns, page, "ws://127.0.0.1:8086/")
    assert refused.startswith(("error", "closed")), refused
    await server.log.wait_for(r"refused \(HTTP 403\): origin null is not allowed on this server")
    assert not server.log.find(r"client 2 connected")
