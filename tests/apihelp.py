"""Helpers for control API tests: curl over the API's unix socket, guest-side echo servers.

curl is the HTTP client on purpose: an independent, real implementation talking to the
server's socket, so the tests prove the API speaks HTTP, not merely our own dialect.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

import trio

from .conftest import require
from .netns import NetNS, NsProcess

CURL = shutil.which("curl") or "curl"


def require_curl() -> None:
    require(shutil.which("curl") is not None, "curl is not installed (apt-get install curl)")


class Reply:
    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:300]!r}>"


async def api(
    sock: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: tuple[str, ...] = (),
    tcp: str | None = None,
    ns: NetNS | None = None,
) -> Reply:
    """One request with curl; ``raw`` sends bytes as they are (for malformed bodies).

    ``ns``: run curl inside that namespace (for a ``tcp`` API bound there)."""
    argv = [CURL, "-sS", "-X", method, "-w", "\n%{http_code} %{content_type}"]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns.name, *argv]
    if tcp is None:
        argv += ["--unix-socket", sock]
    for header in headers:
        argv += ["-H", header]
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        argv += ["-H", "content-type: application/json", "--data-binary", "@-"]
    argv.append(f"http://{tcp or 'wsnic'}{path}")
    with trio.fail_after(30):
        result = await trio.run_process(
            argv, stdin=data or b"", capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    body_bytes, _, trailer = result.stdout.rpartition(b"\n")
    status, _, content_type = trailer.decode().partition(" ")
    return Reply(int(status), body_bytes, content_type)


async def follow_events(ns: NetNS, sock: str) -> NsProcess:
    """``curl -N /events`` in the background; its output lines are JSON events."""
    proc = await ns.start(
        [CURL, "-sSN", "--unix-socket", sock, "http://wsnic/events"], label="events"
    )
    await proc.log.wait_for(r'"event": "subscribed"')
    return proc


def events(proc: NsProcess) -> list[dict[str, Any]]:
    out = []
    for line in proc.log.lines:
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


# A guest-side service that proves who answered: it prefixes every reply with its
# own name, so an echo cannot have come from anywhere but the guest.
ECHO = """
import socket, sys, threading
name = sys.argv[1].encode()
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 7000)); tcp.listen(8)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", 7001))
def serve_udp():
    while True:
        data, addr = udp.recvfrom(65535)
        udp.sendto(name + b" udp " + data, addr)
def serve_conn(conn):
    with conn:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(name + b" tcp " + data)
threading.Thread(target=serve_udp, daemon=True).start()
print("echo ready", flush=True)
while True:
    conn, _ = tcp.accept()
    threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()
"""


async def start_echo(ns: NetNS, name: str) -> NsProcess:
    """TCP (port 7000: reads to EOF, answers once) and UDP (7001) echo in ``ns``."""
    proc = await ns.start([sys.executable, "-c", ECHO, name], label=f"echo-{name}")
    await proc.log.wait_for(r"echo ready")
    return proc
