"""A real browser on the LAN: headless Chromium's own WebSocket, as v86 uses it.

The page opens the relay URL (token in the query string, or in the subprotocol list
over wss://), sends an ARP request for the bridge from JavaScript, and reports what came
back to a tiny HTTP collector the test runs in the same namespace.
"""

from __future__ import annotations

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


async def browse(ns: NetNS, page: Path, url: str, protocols: str = "[]") -> str:
    """Open the page in headless Chromium inside ``ns``; return what it reported."""
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
        f"file://{page}?{query}",
    ]
    browser = await ns.start(argv, label="chromium")
    try:
        with trio.fail_after(60):
            stream = await listener.accept()
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                request += chunk
            await stream.send_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await stream.aclose()
    finally:
        browser.proc.kill()
        await browser.wait()
        await listener.aclose()
    line = request.split(b"\r\n", 1)[0].decode()
    path = line.split(" ")[1]
    return urllib.parse.unquote(path.partition("?")[2])


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
