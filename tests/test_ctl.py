"""``wsnic-trio ctl``: tables for people, JSON for scripts, exit codes for both."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import trio

from wsnic_trio.control.ctl import build_ctl_parser, table

from .apihelp import start_echo
from .lanhost import add_client, require_tools
from .netns import REPO, NsFactory
from .test_api import lan0_mac


async def ctl(sock: str, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "wsnic_trio", "ctl", "--api", f"unix:{sock}", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def test_table_aligns_columns() -> None:
    text = table(["id", "name"], [(1, "alpha"), (22, None)])
    assert text.splitlines() == ["ID  NAME", "1   alpha", "22  -"]


async def test_ctl_against_a_server(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    srv = world.new("srv")
    sock = str(tmp_path / "api.sock")
    server = await srv.start_wsnic("-a", "0.0.0.0", "--api", f"unix:{sock}")
    guest = await add_client(world, srv, tmp_path, 0, "dev", extra=("--once",))
    lease = await guest.dhcp("devbox")
    await start_echo(guest.ns, "devbox")

    code, out, _ = await ctl(sock, "clients")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:9] == [
        "ID",
        "LAN",
        "TRANSPORT",
        "REMOTE",
        "TAP",
        "MAC",
        "IP",
        "HOSTNAME",
        "SINCE",
    ]
    assert lan0_mac(guest) in row and lease["ip"] in row and "devbox" in row
    assert row.split()[1] == "default"

    code, out, _ = await ctl(sock, "lans")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["LAN", "SUBNET", "BRIDGE", "MADE", "NAT", "CLIENTS", "LEASES"]
    assert row.split() == ["default", "192.168.86.0/24", "wsbr0", "configured", "off", "1", "1"]
    code, _, err = await ctl(sock, "lans", "add", "x")
    assert code == 1 and "makes no LANs on demand (start it with --lan-pool) (HTTP 409)" in err

    code, out, _ = await ctl(sock, "--json", "clients")
    assert code == 0
    (client,) = json.loads(out)["clients"]
    assert client["hostname"] == "devbox"

    code, out, _ = await ctl(sock, "stats")
    assert (
        code == 0 and "1 clients connected" in out and out.splitlines()[1].startswith("TRANSPORT")
    )
    code, out, _ = await ctl(sock, "leases")
    assert code == 0 and lease["ip"] in out and "devbox" in out

    code, out, _ = await ctl(sock, "forward", "add", "127.0.0.1:2200", "devbox:7000")
    assert (
        code == 0 and out.strip() == "forwarding tcp 127.0.0.1:2200 to devbox:7000 on LAN default"
    )
    code, out, _ = await ctl(
        sock, "forward", "add", "127.0.0.1:2201", f"{lease['ip']}:7001", "--udp"
    )
    assert code == 0
    stream = await srv.connect_tcp("127.0.0.1", 2200)
    async with stream:
        await stream.send_all(b"hello")
        await stream.send_eof()
        with trio.fail_after(15):
            assert await stream.receive_some(100) == b"devbox tcp hello"
    code, out, _ = await ctl(sock, "forward", "ls")
    lines = out.splitlines()
    assert (
        code == 0
        and lines[0].split()[:4] == ["LAN", "PROTO", "LOCAL", "REMOTE"]
        and len(lines) == 3
    )
    assert "BOUND TO" in lines[0], "a forward to a name shows the MAC it follows"
    assert any(
        line.split()[:6]
        == ["default", "tcp", "127.0.0.1:2200", "devbox:7000", lan0_mac(guest), lease["ip"]]
        for line in lines
    ), out
    code, out, _ = await ctl(sock, "--json", "forward", "rm", "127.0.0.1:2201")
    assert code == 0 and json.loads(out)["removed"][0]["protocol"] == "udp"
    code, _, err = await ctl(sock, "forward", "rm", "127.0.0.1:2201")
    assert code == 1 and "no forward on 127.0.0.1:2201 (HTTP 404)" in err

    code, _, err = await ctl(sock, "kick", "99")
    assert code == 1 and "no client with id 99 is connected (HTTP 404)" in err
    code, out, _ = await ctl(sock, "kick", str(client["id"]))
    assert (
        code == 0 and out.strip() == f"client {client['id']} disconnected ({client['tap']} removed)"
    )
    assert client["tap"] not in srv.links()
    assert await server.stop() == 0

    code, _, err = await ctl(sock, "clients")
    assert code == 2 and "cannot reach the control API" in err


def _ctl_commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, set[str]]:
    """Each ctl command ("kick", "forward add") and the placeholders of its arguments."""
    found: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _ctl_commands(sub, f"{prefix}{name} ")
                args = {a.metavar for a in sub._actions if not a.option_strings}
                found.update(nested or {prefix + name: {m for m in args if m and m.isupper()}})
    return found


def test_api_docs_list_every_ctl_command() -> None:
    """docs/api.md's table of ctl commands names each command the parser accepts, with
    the placeholders --help shows (ID, LOCAL, REMOTE), and no command that does not exist."""
    want = _ctl_commands(build_ctl_parser())
    doc = (REPO / "docs" / "api.md").read_text().split("## `wsnic-trio ctl`", 1)[1]
    documented: dict[str, set[str]] = {}
    for line in doc.split("\n\n| command |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]:
        for usage in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            words = [w for w in usage.split() if w.isalpha()]
            two = " ".join(words[:2])
            name = two if two in want else words[0]
            documented.setdefault(name, set()).update(w for w in words if w.isupper())
    assert documented == want, "docs/api.md's ctl table and 'wsnic-trio ctl --help' differ"
