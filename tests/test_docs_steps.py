"""The step-by-step command lines of the README and the VM transport pages, run as printed.

The lines are read out of the Markdown files, so a change to a documented step changes
what is tested. Only what the reader must fill in (``SERVER``), the program name
(``wsnic-trio`` becomes this tree's ``python -m wsnic_trio``) and the name of the
documented network namespace (``lan``, made unique per run) are substituted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import stat
import sys
from pathlib import Path

import pytest
import trio

from .lanhost import require_tools
from .netns import NsFactory, NsProcess, run

REPO = Path(__file__).resolve().parent.parent
WSNIC = f"{shlex.quote(sys.executable)} -m wsnic_trio"
COMMENT = re.compile(r"\s{2,}#.*$")


def code_blocks(path: Path, section: str | None = None) -> list[list[str]]:
    """The indented code blocks of a page (or of one ``## section``), as lines."""
    text = path.read_text()
    if section is not None:
        start = text.index(f"## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end != -1 else None]
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("    "):
            current.append(line[4:])
        elif current and line.strip():
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def command(line: str) -> str:
    """A documented line without its trailing comment."""
    return COMMENT.sub("", line).strip()


def as_run_here(line: str) -> str:
    return re.sub(r"^wsnic-trio\b", WSNIC, command(line))


# -- docs/qemu.md, uml.md, vfkit.md: the server lines with unix sockets under /run/wsnic --

VM_PAGES = ("qemu.md", "uml.md", "vfkit.md")


def server_steps() -> list[tuple[str, tuple[str, ...], str]]:
    """(page, the block's set-up lines before it, server line) for every server line."""
    steps: list[tuple[str, tuple[str, ...], str]] = []
    for page in VM_PAGES:
        for block in code_blocks(REPO / "docs" / page):
            setup: list[str] = []
            for line in block:
                if line.startswith("install "):
                    setup.append(command(line))
                elif line.startswith("wsnic-trio --"):
                    steps.append((page, tuple(setup), command(line)))
    return steps


def unix_paths(server_line: str) -> list[str]:
    return re.findall(r"(?:unix:|--bess |--dgram |--vfkit )(/\S+)", server_line)


def test_the_vm_pages_have_server_lines() -> None:
    """The pages still show a server line for every VM transport (else nothing is run)."""
    lines = {line for _, _, line in server_steps()}
    for needle in ("--qemu unix:", "--qemu tcp:", "--qemu-connect", "--bess", "--dgram"):
        assert any(needle in line for line in lines), needle


def in_fresh_run(*lines: str) -> list[str]:
    """A shell running ``lines`` in a mount namespace whose /run is a new, empty tmpfs.

    /run/wsnic on the real host is shared with whatever else runs there (another server,
    a user following the docs); the documented path is run exactly, but on a private
    /run that starts as empty as a freshly booted host's, and vanishes with the server.
    The last line is exec'd, so the server is this process (``/proc/PID/root`` shows its
    files).
    """
    mount = "mount -t tmpfs -o mode=0755 wsnic-docs-run /run"
    script = "\n".join(["set -e", mount, *lines[:-1], "exec " + lines[-1]])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


@pytest.mark.parametrize(
    "step",
    sorted(set(server_steps())),
    ids=lambda s: f"{s[0]}:{s[2].removeprefix('wsnic-trio ')}",
)
async def test_vm_page_server_line_starts_as_printed(
    world: NsFactory, step: tuple[str, tuple[str, ...], str]
) -> None:
    require_tools()
    page, setup, line = step
    paths = unix_paths(line)
    listened = [p for p in paths if "--qemu-connect" not in line]
    for path in listened:
        parent = str(Path(path).parent)
        assert any(parent in s for s in setup), f"{page}: nothing creates {parent} for {line}"
    ns = world.new("doc")
    server = await ns.start(in_fresh_run(*setup, as_run_here(line)), label="wsnic-trio")
    await server.log.wait_for(r"INFO ready: ", timeout=30)
    for path in listened:
        mode = os.stat(f"/proc/{server.pid}/root{path}").st_mode
        assert stat.S_ISSOCK(mode), f"{path} is not a socket"
    assert await server.stop() == 0, server.log.text()
    assert server.log.find(r"Traceback") is None, server.log.text()


async def test_without_the_install_line_the_socket_directory_is_missing(
    world: NsFactory,
) -> None:
    """Why the pages create /run/wsnic: the server makes no directory for a socket."""
    ns = world.new("doc")
    line = next(line for _, _, line in server_steps() if "--bess" in line)
    server = await ns.start(in_fresh_run(as_run_here(line)), label="wsnic-trio")
    assert await server.wait(timeout=30) == 2, server.log.text()
    assert server.log.find(r"/run/wsnic\b") is not None, server.log.text()


# -- README: joining the LAN from a Linux host, in a namespace of its own -----------------

README_SECTION = "Joining the LAN from a Linux host"


def readme_blocks() -> list[list[str]]:
    return code_blocks(REPO / "README.md", README_SECTION)


def test_readme_names_the_listen_address_and_a_dhcp_client_debian_has() -> None:
    blocks = readme_blocks()
    server = [command(line) for line in blocks[0]]
    assert server == ["wsnic-trio -a 0.0.0.0"], server
    host = [command(line) for line in blocks[1]]
    assert host[0] == "apt-get install udhcpc", "udhcpc is not a command on a stock Debian"
    assert any(line.startswith("udhcpc -i lan0") for line in host), host


def _subst(line: str, server_ip: str, netns: str) -> str:
    line = line.replace("SERVER", server_ip)
    line = re.sub(r"(?<![\w.])lan(?![\w.])", netns, line)  # the namespace (not lan0, not NAME.lan)
    return re.sub(r"^wsnic-trio\b", WSNIC, line)


async def test_readme_namespace_client_gets_a_lease_and_pings_the_gateway(
    world: NsFactory, tmp_path: Path
) -> None:
    """The README's namespace recipe, line by line, on a host linked to the server by veth.

    The "host" is a test namespace, so the README's own ``ip netns add`` makes a further
    namespace, named uniquely; every line runs with the host's network namespace entered
    (nsenter --net) and the real mount namespace, as a user's shell would.
    """
    require_tools()
    if shutil.which("udhcpc") is None:
        pytest.skip("udhcpc (Debian package udhcpc) is not installed")
    blocks = readme_blocks()
    recipes = [block for block in blocks if any("ip netns add" in line for line in block)]
    assert recipes, "the README shows no namespace for a test client"
    recipe = recipes[0]
    srv = world.new("srv")
    host = world.new("host")
    world.link(srv, "198.18.0.1/30", host, "198.18.0.2/30")
    server = await srv.start_wsnic(*shlex.split(command(blocks[0][0]))[1:])
    netns = f"wt{os.getpid()}readme"
    host_resolv = await trio.Path("/etc/resolv.conf").read_bytes()
    connect: NsProcess | None = None
    try:
        for line in recipe:
            cmd = _subst(command(line), "198.18.0.1", netns)
            wait = re.search(r'# until it logs "([^"]+)"', line.replace("SERVER", "198.18.0.1"))
            if wait is not None:
                assert cmd.startswith("sleep") and connect is not None, line
                await connect.log.wait_for(re.escape(wait.group(1)), timeout=30)
                continue
            if cmd.endswith("&"):
                connect = await host.start(["sh", "-c", "exec " + cmd[:-1]], label="connect")
                continue
            with trio.fail_after(60):
                result = await trio.run_process(
                    ["nsenter", f"--net=/run/netns/{host.name}", "sh", "-c", cmd],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            output = (result.stdout + result.stderr).decode()
            assert result.returncode == 0, f"{line}: {output}"
            if "udhcpc" in cmd:
                assert re.search(
                    r"lease of 192\.168\.86\.\d+ obtained from 192\.168\.86\.1", output
                )
            if "ping" in cmd:
                assert " 0% packet loss" in output, output
        resolv = await trio.Path("/etc/netns", netns, "resolv.conf").read_text()
        assert "nameserver 192.168.86.1" in resolv, "the namespace got the LAN's DNS server"
        assert await trio.Path("/etc/resolv.conf").read_bytes() == host_resolv, "not the host"
        assert connect is not None and connect.proc.returncode is None
        assert await connect.stop() == 0
    finally:
        for pid in run("ip", "netns", "pids", netns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGTERM)  # the README's udhcpc, in our namespace
        run("ip", "netns", "del", netns, check=False)
        shutil.rmtree(Path("/etc/netns", netns), ignore_errors=True)
    assert await server.stop() == 0
