"""docs/lans.md, followed literally: its config file, its ``--lan`` line and both recipes.

The examples are read out of the page, so a change to one changes what is tested. As
in tests/test_docs_steps.py, only the program name (``wsnic-trio`` becomes this tree's
``python -m wsnic_trio``) is substituted, and each server runs on a private, empty /run.
Every example turns NAT on (``-i``, ``enable_inet = true``), which needs an uplink: the
server's namespace gets a veth to a namespace of its own and a default route through it,
as a host has. The ``--api`` socket added to the config file's line is the test's only
addition to a documented command.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import trio

from wsnic_trio.cli.main import config_from_args

from .conftest import require
from .lanhost import add_client, require_tools
from .netns import NetNS, NsFactory, NsProcess, child_env
from .test_docs_steps import REPO, as_run_here, code_blocks, command, in_fresh_run
from .test_lans import upgrade_answer
from .wsclients import close_ws, ws_client

PAGE = REPO / "docs" / "lans.md"
API = "unix:/run/wsnic-trio/api.sock"


def toml_example() -> str:
    [text] = re.findall(r"```toml\n(.*?)```", PAGE.read_text(), re.DOTALL)
    return str(text)


def joined(block: list[str]) -> list[str]:
    """A block's lines with ``\\`` continuations joined (a command is one line)."""
    lines: list[str] = []
    for line in block:
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1].rstrip() + " " + line.strip()
        else:
            lines.append(line)
    return lines


def block_with(section: str | None, needle: str) -> tuple[list[str], str]:
    """(the lines before it, the server line) of the one block whose server line has
    ``needle``."""
    for block in code_blocks(PAGE, section):
        lines = joined(block)
        for i, line in enumerate(lines):
            if line.startswith("wsnic-trio ") and needle in line:
                return lines[:i], command(line)
    raise AssertionError(f"docs/lans.md shows no server line with {needle!r}")


def lan_line() -> tuple[list[str], str]:
    return block_with("Named LANs", "--lan class3=")


def config_command() -> str:
    first = toml_example().splitlines()[0]
    found = re.fullmatch(r"# wsnic\.toml: (wsnic-trio .*)", first)
    assert found is not None, first
    return found.group(1)


def uplinked(world: NsFactory) -> NetNS:
    """A server namespace with a default route, out of which NAT can masquerade."""
    srv, upstream = world.new("srv"), world.new("up")
    world.link(srv, "198.18.1.1/30", upstream, "198.18.1.2/30")
    srv.ip("route", "add", "default", "via", "198.18.1.2")
    return srv


async def start(ns: NetNS, cwd: Path, setup: list[str], line: str) -> NsProcess:
    argv = in_fresh_run(f"cd {shlex.quote(str(cwd))}", *setup, as_run_here(line))
    return await ns.start(argv, label="wsnic-trio")


async def api_get(server: NsProcess, path: str) -> dict:  # type: ignore[type-arg]
    sock = f"/proc/{server.pid}/root/run/wsnic-trio/api.sock"
    result = await trio.run_process(
        ["curl", "-sf", "--unix-socket", sock, f"http://x{path}"], capture_stdout=True
    )
    answer: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    return answer


def qemu_socket_listens(server: NsProcess, path: str) -> bool:
    return Path(f"/proc/{server.pid}/root{path}").is_socket()


async def stops_cleanly(server: NsProcess) -> None:
    assert await server.stop() == 0, server.log.text()
    assert server.log.find("Traceback") is None, server.log.text()


# -- the page's examples, as configuration --------------------------------------------


def test_the_config_file_and_the_lan_line_say_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both examples configure class3 and class4 as the page describes them."""
    (tmp_path / "wsnic.toml").write_text(toml_example())
    monkeypatch.chdir(tmp_path)
    from_file = config_from_args(shlex.split(config_command())[1:])
    from_line = config_from_args(shlex.split(lan_line()[1])[1:])
    for config in (from_file, from_line):
        assert config.server.ws_address == "0.0.0.0"
        assert list(config.all_lans()) == ["default", "class3", "class4"]
        class3, class4 = config.lans["class3"], config.lans["class4"]
        assert str(class3.subnet) == "10.86.3.0/24" and str(class4.subnet) == "10.86.4.0/24"
        assert (class3.bridge, class4.bridge) == ("wsl-class3", "wsl-class4")
        assert [str(q) for q in class3.qemu] == ["unix:/run/wsnic/class3.sock"]
        assert config.lan.enable_inet and class3.enable_inet and not class4.enable_inet
        assert class4.max_clients == 10 and class3.max_clients == 0
    class3, class4 = from_file.lans["class3"], from_file.lans["class4"]
    assert from_file.lan.dhcp_domain_name == class3.dhcp_domain_name == "school"
    assert class4.dhcp_domain_name == "class4.school"
    assert class4.lock_mac == "all" and class3.lock_mac == from_file.lan.lock_mac == "ws"


def test_the_page_creates_the_socket_directory_it_uses() -> None:
    """/run/wsnic holds class3's socket, and the server makes no directory for a socket
    (tests/test_docs_steps.py): the page must create it before either example."""
    setup, _ = lan_line()
    assert "install -d -m 0755 /run/wsnic" in [command(line) for line in setup], setup
    text = PAGE.read_text()
    assert text.index("install -d -m 0755 /run/wsnic") < text.index("```toml")


# -- the config file, served -----------------------------------------------------------


async def test_the_config_file_serves_its_three_lans(
    world: NsFactory, tmp_path: Path, nursery: trio.Nursery
) -> None:
    require_tools()
    require(shutil.which("curl") is not None, "curl is not installed (apt-get install curl)")
    srv = uplinked(world)
    (tmp_path / "wsnic.toml").write_text(toml_example())
    setup, _ = lan_line()
    line = f"{config_command()} --api {API}"
    server = await start(srv, tmp_path, [command(s) for s in setup], line)
    await server.log.wait_for(r"INFO ready: LAN class4 10\.86\.4\.0/24 on bridge wsl-class4", 30)
    for lan, subnet, bridge in (
        ("default", r"192\.168\.86", "wsbr0"),
        ("class3", r"10\.86\.3", "wsl-class3"),
    ):
        assert server.log.find(rf"INFO ready: LAN {lan} {subnet}\.0/24 on bridge {bridge}$")
    assert qemu_socket_listens(server, "/run/wsnic/class3.sock")
    assert server.log.find(r"NAT on: 192\.168\.86\.0/24 masqueraded")
    assert server.log.find(r"NAT on: 10\.86\.3\.0/24 masqueraded")
    assert server.log.find(r"NAT on: 10\.86\.4\.") is None, server.log.text()

    lans = {row["name"]: row for row in (await api_get(server, "/lans"))["lans"]}
    assert list(lans) == ["default", "class3", "class4"]
    assert {n: (r["subnet"], r["bridge"], r["nat"]) for n, r in lans.items()} == {
        "default": ("192.168.86.0/24", "wsbr0", True),
        "class3": ("10.86.3.0/24", "wsl-class3", True),
        "class4": ("10.86.4.0/24", "wsl-class4", False),
    }
    # Each LAN's DHCP: its own subnet, gateway and domain (class3 inherits "school").
    three = await add_client(world, srv, tmp_path, 0, "three", path="/lan/class3")
    four = await add_client(world, srv, tmp_path, 1, "four", path="/lan/class4")
    lease3, lease4 = await three.dhcp("alice"), await four.dhcp("bob")
    assert ipaddress.IPv4Address(lease3["ip"]) in ipaddress.IPv4Network("10.86.3.0/24")
    assert (lease3["router"], lease3["domain"]) == ("10.86.3.1", "school"), lease3
    assert ipaddress.IPv4Address(lease4["ip"]) in ipaddress.IPv4Network("10.86.4.0/24")
    assert (lease4["router"], lease4["domain"]) == ("10.86.4.1", "class4.school"), lease4
    # max_clients = 10 on class4 (one client is there already); class3 has no limit.
    more = [await ws_client(srv, nursery, path="/lan/class4") for _ in range(9)]
    answer = await upgrade_answer(srv, "/lan/class4")
    assert answer.startswith("HTTP/1.1 503 ") and "10 clients" in answer, answer
    extra = await ws_client(srv, nursery, path="/lan/class3")
    for client in [*more, extra]:
        await close_ws(client)
    await three.connect.stop()
    await four.connect.stop()
    await stops_cleanly(server)


# -- the --lan line, served -----------------------------------------------------------


async def test_the_lan_line_starts_with_its_lans(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    srv = uplinked(world)
    setup, line = lan_line()
    server = await start(srv, tmp_path, [command(s) for s in setup], line)
    await server.log.wait_for(r"INFO ready: LAN class4 10\.86\.4\.0/24 on bridge wsl-class4", 30)
    assert server.log.find(r"INFO ready: LAN default 192\.168\.86\.0/24 on bridge wsbr0$")
    assert server.log.find(r"INFO ready: LAN class3 10\.86\.3\.0/24 on bridge wsl-class3$")
    assert qemu_socket_listens(server, "/run/wsnic/class3.sock")
    assert server.log.find(r"NAT on: 10\.86\.3\.0/24 masqueraded")
    assert server.log.find(r"NAT on: 10\.86\.4\.") is None, server.log.text()
    await stops_cleanly(server)


# -- the classroom recipe --------------------------------------------------------------


def _tokens(path: Path) -> dict[str, str]:
    """LAN (or ``*`` for every LAN) -> the token that opens it, from the tokens file."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        token, *lans = line.split("#", 1)[0].split()
        assert re.fullmatch(r"[0-9a-f]{32}", token), line
        found[lans[0] if lans else "*"] = token
    return found


async def _ctl(server: NsProcess, *args: str) -> str:
    """A documented ``wsnic-trio ctl`` line, run in the server's mount namespace (whose
    /run holds the API's default socket) with no option added."""
    argv = ["nsenter", f"--target={server.pid}", "--mount", sys.executable, "-m", "wsnic_trio"]
    with trio.fail_after(30):
        result = await trio.run_process(
            [*argv, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env([str(REPO)]),
        )
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, out
    return out


async def test_classroom_recipe(world: NsFactory, tmp_path: Path, nursery: trio.Nursery) -> None:
    require_tools()
    require(
        shutil.which("openssl") is not None, "openssl is not installed (apt-get install openssl)"
    )
    section = "Recipe: a classroom"
    srv = uplinked(world)
    setup, line = block_with(section, "--lan-pool")
    assert f"--api {API}" in line
    server = await start(srv, tmp_path, setup, line)
    await server.log.wait_for(r"INFO ready: no LAN until a client asks for one", 30)
    tokens = _tokens(tmp_path / "tokens")
    assert sorted(tokens) == ["*", *(f"lab{n:02}" for n in range(1, 31))]
    assert len(set(tokens.values())) == 31
    assert server.log.find(r"authentication on: 31 tokens from tokens")

    # A student joins the lab the URL names, with the token the file gives that lab.
    student = await add_client(
        world, srv, tmp_path, 0, "lab07", path=f"/lan/lab07?token={tokens['lab07']}"
    )
    lease = await student.dhcp("student7")
    assert ipaddress.IPv4Address(lease["ip"]) in ipaddress.IPv4Network("10.86.0.0/16"), lease
    answer = await upgrade_answer(srv, f"/lan/lab08?token={tokens['lab07']}")
    assert answer.startswith("HTTP/1.1 403 "), answer
    assert "this token does not open LAN lab08" in answer, answer
    teacher = await ws_client(srv, nursery, path=f"/lan/lab08?token={tokens['*']}")
    answer = await upgrade_answer(srv, f"/?token={tokens['*']}")
    assert answer.startswith("HTTP/1.1 404 "), f"--no-default-lan: {answer}"

    section_text = PAGE.read_text().split(f"## {section}\n", 1)[1]
    assert "`wsnic-trio ctl lans`" in section_text
    ctl = "wsnic-trio ctl lans"
    shown = await _ctl(server, *shlex.split(ctl)[1:])
    rows = {row.split()[0]: row.split() for row in shown.splitlines()[1:]}
    assert sorted(rows) == ["lab07", "lab08"], shown
    assert all("on demand" in " ".join(row) for row in rows.values()), shown
    await close_ws(teacher)
    await student.connect.stop()
    await stops_cleanly(server)


# -- the public relay ------------------------------------------------------------------


async def test_public_relay_line_serves_a_room(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    srv = uplinked(world)
    setup, line = block_with("Recipe: a public relay", "--lan-pool")
    server = await start(srv, tmp_path, setup, line)
    await server.log.wait_for(r"INFO ready: no LAN until a client asks for one", 30)
    assert server.log.find(r"LANs on demand: /26 blocks of 10\.96\.0\.0/12, at most 500")
    friend = await add_client(world, srv, tmp_path, 0, "friend", path="/lan/room1")
    lease = await friend.dhcp("friend")
    assert ipaddress.IPv4Address(lease["ip"]) in ipaddress.IPv4Network("10.96.0.0/12"), lease
    assert lease["mask"] == "26", lease  # busybox udhcpc: the prefix length
    await friend.connect.stop()
    await stops_cleanly(server)
