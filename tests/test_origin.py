"""Pages of other sites stay off the LAN (``--allow-origin``), and what the server shows.

A browser tells the server which site's page opens a WebSocket (``Origin``) and a page
cannot change it; the clients here send the header byte for byte as a browser would
(headless Chromium itself is in test_browser.py). Every case looks at what a user
sees: the HTTP answer, whether the client is on the LAN (an ARP reply of the gateway),
the server's log line and the control API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import wsproto
import wsproto.events as ev

from . import packets as pk
from .apihelp import api, require_curl
from .netns import NetNS, NsFactory, NsProcess, taps
from .test_api import metric_samples

BRIDGE = "02:77:73:00:00:01"


class Upgrade:
    """One raw WebSocket upgrade: what the server answered, byte for byte."""

    def __init__(self, stream: trio.SocketStream, ws: wsproto.WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.status = 0
        self.response = b""  # the raw HTTP response head (and body, when refused)
        self.body = b""
        self.subprotocol: str | None = None
        self._body_done = False

    @classmethod
    async def open(
        cls,
        ns: NetNS,
        opened: list[trio.SocketStream],
        *,
        origin: str | None = None,
        subprotocols: list[str] | None = None,
        path: str = "/",
        port: int = 8086,
    ) -> Upgrade:
        stream = await ns.connect_tcp("127.0.0.1", port)
        opened.append(stream)  # closed by the fixture, also when the test fails
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        headers = [(b"origin", origin.encode("latin-1"))] if origin is not None else []
        request = ev.Request(
            host="127.0.0.1", target=path, extra_headers=headers, subprotocols=subprotocols or []
        )
        self = cls(stream, ws)
        await stream.send_all(ws.send(request))
        with trio.fail_after(10):
            while not self.status or (self.status != 101 and not self._body_done):
                data = await stream.receive_some(65536)
                self.response += data
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, ev.AcceptConnection):
                        self.status = 101
                        self.subprotocol = event.subprotocol
                    elif isinstance(event, ev.RejectConnection):
                        self.status = event.status_code
                        self._body_done = not event.has_body
                    elif isinstance(event, ev.RejectData):
                        self.body += event.data
                        self._body_done = event.body_finished
                if not data:
                    break
        return self

    async def arp_works(self, me: str) -> None:
        """On the LAN: the gateway answers an ARP request."""
        mac = pk.mac(me)
        await self.stream.send_all(
            self.ws.send(ev.BytesMessage(pk.arp_request(mac, "192.168.86.50", "192.168.86.1")))
        )
        with trio.fail_after(5):
            while True:
                self.ws.receive_data(await self.stream.receive_some(65536) or None)
                for event in self.ws.events():
                    if isinstance(event, ev.BytesMessage) and pk.parse_arp_reply(bytes(event.data)):
                        assert pk.parse_arp_reply(bytes(event.data)) == (BRIDGE, "192.168.86.1")
                        return

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.fixture
async def opened() -> AsyncIterator[list[trio.SocketStream]]:
    streams: list[trio.SocketStream] = []
    yield streams
    for stream in streams:
        await trio.aclose_forcefully(stream)


async def start(ns: NetNS, tmp_path: Path, *args: str) -> tuple[str, NsProcess]:
    sock = str(tmp_path / "api.sock")
    return sock, await ns.start_wsnic("--api", f"unix:{sock}", *args)


async def test_allow_origin_keeps_other_sites_pages_off_the_lan(
    world: NsFactory, tmp_path: Path, opened: list[trio.SocketStream]
) -> None:
    require_curl()
    ns = world.new("srv")
    sock, server = await start(
        ns, tmp_path, "--allow-origin", "https://lab.example.org", "--allow-origin", "*.example.net"
    )
    for evil in ("https://evil.example", "https://lab.example.org.evil.example", "null"):
        refused = await Upgrade.open(ns, opened, origin=evil)
        assert refused.status == 403, refused.response
        assert refused.body == f"wsnic-trio: origin {evil} is not allowed on this server\n".encode()
        await refused.aclose()
        await server.log.wait_for(rf"refused \(HTTP 403\): origin {evil} is not allowed")
    assert taps(ns, ready=False) == [], "a refused page never gets a TAP"

    page = await Upgrade.open(ns, opened, origin="https://lab.example.org")
    assert page.status == 101
    await page.arp_works("02:00:00:00:00:51")
    await server.log.wait_for(
        r"client 1 connected: ws 127\.0\.0\.1:\d+ on wstap\d+, origin https://lab\.example\.org$"
    )
    sub = await Upgrade.open(ns, opened, origin="https://app.example.net")
    await sub.arp_works("02:00:00:00:00:52")
    # Not a browser (v86 in Node, wsnic-trio connect, scripts): no Origin, and it passes.
    program = await Upgrade.open(ns, opened)
    await program.arp_works("02:00:00:00:00:53")
    await server.log.wait_for(r"client 3 connected: ws .* on wstap\d+, no Origin header$")

    clients = (await api(sock, "GET", "/clients")).json()["clients"]
    assert [c["origin"] for c in clients] == [
        "https://lab.example.org",
        "https://app.example.net",
        None,
    ]
    samples = metric_samples((await api(sock, "GET", "/metrics")).body.decode())
    assert samples[("wsnic_refused_total", (("reason", "origin"), ("transport", "ws")))] == 3
    for conn in (page, sub, program):
        await conn.aclose()
    assert await server.stop() == 0


async def test_by_default_every_origin_joins_and_is_shown_escaped(
    world: NsFactory, tmp_path: Path, opened: list[trio.SocketStream]
) -> None:
    """wsnic compatibility: no --allow-origin, no check; the operator sees the origin
    (escaped: a hostile header cannot forge log lines or drive a terminal)."""
    require_curl()
    ns = world.new("srv")
    sock, server = await start(ns, tmp_path)
    page = await Upgrade.open(ns, opened, origin="https://any.example")
    await page.arp_works("02:00:00:00:00:61")
    hostile = await Upgrade.open(ns, opened, origin="https://x.example\x1b[2J\x07")
    await hostile.arp_works("02:00:00:00:00:62")
    await server.log.wait_for(r"client 1 connected: .*, origin https://any\.example$")
    await server.log.wait_for(r"client 2 connected: .*, origin https://x\.example\\x1b\[2J\\x07$")
    assert "\x1b" not in server.log.text() and "\x07" not in server.log.text()
    clients = (await api(sock, "GET", "/clients")).json()["clients"]
    assert [c["origin"] for c in clients] == [
        "https://any.example",
        "https://x.example\\x1b[2J\\x07",
    ]
    for conn in (page, hostile):
        await conn.aclose()
    assert await server.stop() == 0


async def test_a_token_subprotocol_is_never_echoed(
    world: NsFactory, tmp_path: Path, opened: list[trio.SocketStream]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-token\n")
    ns = world.new("srv")
    server = await ns.start_wsnic("--auth-token-file", str(tokens))
    # Only the token offered: joined, and the 101 names no subprotocol at all.
    only = await Upgrade.open(ns, opened, subprotocols=["token.s3cret-token"])
    assert only.status == 101 and only.subprotocol is None
    assert b"s3cret" not in only.response and b"sec-websocket-protocol" not in only.response.lower()
    await only.arp_works("02:00:00:00:00:71")
    await server.log.wait_for(r"none of the 1 offered subprotocols can be echoed")
    # As docs/security.md says to: binary and the token; binary is echoed.
    both = await Upgrade.open(ns, opened, subprotocols=["token.s3cret-token", "binary"])
    assert both.status == 101 and both.subprotocol == "binary"
    assert b"s3cret" not in both.response
    await both.arp_works("02:00:00:00:00:72")
    for conn in (only, both):
        await conn.aclose()
    assert "s3cret" not in server.log.text()
    assert await server.stop() == 0
