"""Paths root creates or changes for the server, against a local user who can write a
directory on them (issue 12, item 5).

The attack: with ``--user`` and ``--dhcp-lease-file`` in a directory the unprivileged
user can write, that user put a symlink at the lease file's name; the root helper
chowned its target to the user (a root file, /etc/shadow in the report, became the
user's). The same went for a hard link, and without ``--user`` root's dnsmasq wrote
leases through such a link. Every target here is a file the test makes, never a real
system file. The server runs as in tests/test_privdrop.py: as root in a test
namespace, with ``--user`` a throw-away user (useradd), from a world-readable copy of
the tree with Debian's python3.
"""

from __future__ import annotations

import os
import re
import signal
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from .apihelp import api, require_curl
from .lanhost import add_client, forget_stale_run_dir, snapshot
from .netns import NetNS, NsFactory, NsProcess
from .rootlesshost import (
    DEBIAN_PYTHON,
    USERADD,
    ThrowawayUser,
    temp_dir,
    throwaway_user,
    user_runtime,
)

pytestmark = pytest.mark.integration

SHADOW = b"root:$y$j9T$not-a-real-hash:19000:0:99999:7:::\n"


@pytest.fixture
async def runtime(world: NsFactory) -> AsyncIterator[Path]:
    """A temporary directory the test user can read, with the code the server runs."""
    async with user_runtime(USERADD) as path:
        yield path


@pytest.fixture
def user() -> Iterator[ThrowawayUser]:
    with throwaway_user() as made:
        yield made


@pytest.fixture
def base() -> Iterator[Path]:
    """Root's directory (0755, under /tmp) for the test's files and directories."""
    with temp_dir() as path:
        yield path


class Victim:
    """A root-owned file standing for /etc/shadow, and what of it must never change."""

    def __init__(self, path: Path) -> None:
        path.write_bytes(SHADOW)
        os.chown(path, 0, 0)
        path.chmod(0o640)
        self.path = path
        self.before = self.state()

    def state(self) -> tuple[int, int, int, bytes]:
        st = self.path.stat()
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), self.path.read_bytes()


def _users_dir(path: Path, user: ThrowawayUser) -> Path:
    path.mkdir()
    os.chown(path, user.uid, user.uid)
    path.chmod(0o755)
    return path


async def _as_user(user: ThrowawayUser, *argv: str) -> None:
    """Run ``argv`` as the user (its uid and group, no other groups), from /."""
    result = await trio.run_process(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.uid}", "--clear-groups", *argv],
        cwd="/",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()


def _server_ns(world: NsFactory) -> NetNS:
    srv, _ = world.routed()
    forget_stale_run_dir(srv)
    return srv


async def _start(srv: NetNS, runtime: Path, *args: str) -> NsProcess:
    return await srv.start(
        [DEBIAN_PYTHON, "-m", "wsnic_trio", *args],
        label="wsnic-trio",
        env={"PYTHONPATH": str(runtime / "site")},
    )


def _problems(server: NsProcess) -> list[str]:
    return [
        line
        for line in server.log.lines
        if re.search(r"error|ERROR|WARNING|Traceback|Exception", line)
    ]


async def _plant(case: str, user: ThrowawayUser, base: Path, victim: Victim) -> Path:
    """Make the lease-file path of ``case``; returns it."""
    if case == "root-dir-hard-link":
        # A second name of the victim in root's own directory (left there, say, by an
        # earlier mistake): root must not chown a file that may be another one.
        private = base / "private"
        private.mkdir(mode=0o755)
        os.link(victim.path, private / "leases")
        return private / "leases"
    users = _users_dir(base / "u", user)
    leases = users / "leases"
    if case == "symlink":
        await _as_user(user, "ln", "-s", str(victim.path), str(leases))
    elif case == "hard-link":
        # fs.protected_hardlinks=1 (this host's default) keeps the user from linking a
        # file it cannot write; with 0 it can, so the test makes the link for it.
        os.link(victim.path, leases)
    return leases


_EXPECTED = {
    "symlink": r": directory {users} can be written by its owner, user {name} \(uid {uid}\)",
    "hard-link": r": directory {users} can be written by its owner, user {name} \(uid {uid}\)",
    "empty-user-dir": r": directory {users} can be written by its owner, user {name} \(uid {uid}\)",
    "root-dir-hard-link": r" has 2 names \(hard links\), so it may be a file that belongs "
    r"elsewhere: not touched",
}


@pytest.mark.parametrize("with_user", [True, False], ids=["user", "root"])
@pytest.mark.parametrize("case", list(_EXPECTED))
async def test_lease_file_where_the_user_can_plant_a_link(
    world: NsFactory,
    runtime: Path,
    user: ThrowawayUser,
    base: Path,
    case: str,
    with_user: bool,
) -> None:
    """The lease file in a directory the user can write (a symlink or a hard link to a
    root file planted there, or nothing yet), or a hard link in root's own directory:
    the server refuses to start, with exit code 2 and one line naming the lease file
    and why. The root file keeps its owner, mode and content, nothing is created in the
    user's directory, and the namespace is as before. Also without --user: root's
    dnsmasq would otherwise write through the link."""
    srv = _server_ns(world)
    victim = Victim(base / "shadow")
    leases = await _plant(case, user, base, victim)
    before = snapshot(srv)
    options = ["--user", user.name] if with_user else []
    server = await _start(srv, runtime, *options, "--dhcp-lease-file", str(leases))
    await server.log.wait_for(r"wsnic-trio: error: | ready: ", timeout=40)
    started = server.log.find(r"\bready\b") is not None
    if started:
        await server.stop(signal.SIGTERM)
    assert victim.state() == victim.before
    assert not started, server.log.text()
    assert await server.wait() == 2, server.log.text()
    reason = _EXPECTED[case].format(
        users=re.escape(str(leases.parent)), name=user.name, uid=user.uid
    )
    problems = _problems(server)
    assert len(problems) == 1, server.log.text()
    assert re.fullmatch(
        rf"wsnic-trio: error: --dhcp-lease-file {re.escape(str(leases))}{reason}.*", problems[0]
    ), problems
    if case == "empty-user-dir":
        assert not leases.exists()
    assert not user.pids()
    assert snapshot(srv) == before


async def test_user_writable_places_that_root_leaves_alone(
    world: NsFactory, runtime: Path, user: ThrowawayUser, base: Path, tmp_path: Path
) -> None:
    """What still works with --user: the lease file in a directory only root can write
    is handed to the user (0600); the API socket can be in a directory the user owns
    (bound there by root through the open directory: mode 0600, it answers, and it is
    gone after exit); captures in the user's directory are made by the dropped server,
    so they are the user's files, never root's."""
    require_curl()
    srv = _server_ns(world)
    private = base / "private"
    private.mkdir(mode=0o755)
    users = _users_dir(base / "u", user)
    captures = _users_dir(users / "caps", user)
    api_sock = users / "api.sock"
    client = await add_client(world, srv, tmp_path, 0, "a", wait=False)
    server = await _start(
        srv,
        runtime,
        "--user",
        user.name,
        "-a",
        "0.0.0.0",
        "--dhcp-lease-file",
        str(private / "leases"),
        "--api",
        f"unix:{api_sock}",
        "--pcap",
        str(captures),
    )
    await server.log.wait_for(r"INFO ready: ", timeout=40)
    st = (private / "leases").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.uid, 0o600)
    st = api_sock.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    await client.connect.log.wait_for(r"connected to ws://", timeout=30)
    reply = await api(str(api_sock), "GET", "/clients")
    assert reply.status == 200 and len(reply.json()["clients"]) == 1, reply
    with trio.fail_after(30):
        while not list(captures.iterdir()):
            await trio.sleep(0.05)
    assert [p.stat().st_uid for p in captures.iterdir()] == [user.uid]
    assert await server.stop(signal.SIGTERM) == 0, server.log.text()
    assert not api_sock.exists()
    assert "Traceback" not in server.log.text()


async def test_capture_directory_switched_for_a_symlink(
    world: NsFactory, runtime: Path, user: ThrowawayUser, base: Path, tmp_path: Path
) -> None:
    """A root server (no --user) captures into a directory inside one the user owns.
    While it runs, the user moves the capture directory away and puts a symlink to a
    directory of root's in its place: the next client's capture is refused (one error
    line; the client itself is served), and nothing is created in root's directory."""
    srv = _server_ns(world)
    users = _users_dir(base / "u", user)
    captures = _users_dir(users / "caps", user)
    roots = base / "etc"
    roots.mkdir(mode=0o755)
    server = await _start(srv, runtime, "-a", "0.0.0.0", "--pcap", str(captures))
    await server.log.wait_for(r"INFO ready: ", timeout=40)
    await _as_user(user, "mv", str(captures), str(users / "caps.old"))
    await _as_user(user, "ln", "-s", str(roots), str(captures))
    client = await add_client(world, srv, tmp_path, 0, "a")
    refused = r"capture of client \d+: cannot write"
    with trio.fail_after(30):  # either the capture is refused, or it lands in `roots`
        while not server.log.find(refused) and not list(roots.iterdir()):
            await trio.sleep(0.05)
    assert list(roots.iterdir()) == []
    line = server.log.find(refused)
    assert line is not None and "is a symbolic link" in line.string, server.log.text()
    assert "not followed" in line.string, line.string
    lease = await client.dhcp("a")
    assert lease["serverid"] == "192.168.86.1"
    assert await server.stop(signal.SIGTERM) == 0, server.log.text()
    assert list(roots.iterdir()) == []
