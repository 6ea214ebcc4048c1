"""docs/api.md, followed literally: its server line and every ``curl`` example it prints.

The server runs the page's own ``--api unix:/run/wsnic-trio/api.sock`` line, on a
private, empty /run (as docs/qemu.md's lines do in tests/test_docs_steps.py), with
three WebSocket clients on the LAN so that the page's ``client 3`` exists. Each example
is run by a shell exactly as printed, with ``S`` set as the page says (seen through the
server's ``/proc/PID/root``, its view of /run). An example must answer with a
successful status and JSON (Prometheus text for /metrics) that says what the page says.
"""

from __future__ import annotations

import json
import re
import shlex

import trio

from .apihelp import require_curl
from .netns import NsFactory, NsProcess
from .test_docs_steps import REPO, as_run_here, code_blocks, command, in_fresh_run
from .wsclients import close_ws, ws_client

PAGE = REPO / "docs" / "api.md"
SOCKET = "/run/wsnic-trio/api.sock"


def curl_examples() -> list[str]:
    """Every curl command of the page, continuation lines joined, comments dropped."""
    found: list[str] = []
    for block in code_blocks(PAGE):
        joined: list[str] = []
        for line in block:
            if joined and joined[-1].endswith("\\"):
                joined[-1] = joined[-1][:-1] + " " + line.strip()
            else:
                joined.append(line)
        found += [command(line) for line in joined if line.startswith("curl ")]
    return found


def server_line() -> str:
    [line] = [
        command(line)
        for block in code_blocks(PAGE, "Turning it on")
        for line in block
        if line.startswith("wsnic-trio ")
    ]
    return line


def test_the_page_shows_the_examples_this_test_runs() -> None:
    examples = curl_examples()
    assert f"--api unix:{SOCKET}" in server_line()
    for path in ("/clients", "/lans", "/stats", "/leases", "/forwards", "/metrics", "/events"):
        assert any(f"http://x{path}" in e for e in examples), path
    assert "S=/run/wsnic-trio/api.sock" in PAGE.read_text()


async def _run(example: str, sock: str, server: NsProcess) -> tuple[int, str]:
    """Run one example as printed; (HTTP status, body). ``-N`` streams end after a
    moment (a stream's first line is all the page promises)."""
    argv = ["sh", "-c", f'S={shlex.quote(sock)}; {example} -w "\\n%{{http_code}}"']
    if example.startswith("curl -N "):
        argv = ["timeout", "2", *argv]
    with trio.fail_after(30):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    out = result.stdout.decode()
    body, _, status = out.rpartition("\n")
    if example.startswith("curl -N "):
        return 200, out  # cut by timeout: no status line; the body is the evidence
    assert result.returncode == 0, f"{example}: {result.stderr.decode()}\n{server.log.text()}"
    return int(status), body


async def test_every_curl_example_works_as_printed(world: NsFactory, nursery: trio.Nursery) -> None:
    require_curl()
    ns = world.new("doc")
    server = await ns.start(in_fresh_run(as_run_here(server_line())), label="wsnic-trio")
    await server.log.wait_for(r"INFO ready: ", timeout=30)
    clients = [await ws_client(ns, nursery) for _ in range(3)]
    sock = f"/proc/{server.pid}/root{SOCKET}"
    pcap = [e for e in curl_examples() if "/pcap" in e]
    for example in curl_examples():
        if example in pcap:
            continue  # needs --pcap, which the page's server line does not turn on
        status, body = await _run(example, sock, server)
        assert 200 <= status < 300, f"{example}: HTTP {status} {body}"
        if "/metrics" in example:
            assert "wsnic_clients_connected" in body, body
        elif example.startswith("curl -N "):
            first = json.loads(body.splitlines()[0])
            assert first["event"] == "subscribed", body
        else:
            answer = json.loads(body)
            assert "error" not in answer, f"{example}: {answer}"
            if re.search(r"-X DELETE http://x/clients/3$", example):
                assert answer["kicked"] == 3 and answer["gone"] is True, answer
    for client in clients:
        await close_ws(client)
    assert await server.stop() == 0, server.log.text()
    assert server.log.find("Traceback") is None, server.log.text()
