"""Helpers for rootless tests: throw-away users, a Python tree they can read, and a
server started as such a user inside a test namespace.

The test itself runs as root, but only to set the stage: it creates the user, the
namespace and (see :data:`_STAGE`) a world-usable /dev/net/tun as a stock Debian has
one (udev makes it 0666; some containers leave it 0600), visible only inside the
server's private mount namespace. The server and everything it starts then run with
the user's uid and no capabilities at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import trio
from packaging.requirements import Requirement

from .conftest import require
from .lanhost import require_tools
from .netns import REPO, NetNS, NsProcess, run

DEBIAN_PYTHON = "/usr/bin/python3"
_counter = itertools.count()

# Run as root inside the test namespace, in a private mount namespace; then become the
# user for good (setpriv execs, so the server keeps this process's pid). The node is
# root's, with the mode given ("666" as udev makes it, "600" as some containers have it).
_STAGE = r"""
set -eu
cd /
mount -t tmpfs -o mode=755,size=64k wsnic-test-dev "$1"
mknod -m "$2" "$1/tun" c 10 200
mount --bind "$1/tun" /dev/net/tun
uid="$3"; pythonpath="$4"; shift 4
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH="$pythonpath" PYTHONUNBUFFERED=1 \
    HOME=/ "$@"
"""


# Root, in a private mount namespace: /dev/net holds no tun node ("missing"), or one on
# a filesystem mounted nodev ("nodev"), which even root may not open: what a container
# without the device, or with device rules that deny it, looks like to the server.
_UNUSABLE_TUN = r"""
set -eu
mount -t tmpfs -o mode=755,size=64k,nodev wsnic-test-dev /dev/net
if [ "$1" = nodev ]; then mknod -m 666 /dev/net/tun c 10 200; fi
shift
exec "$@"
"""


def with_unusable_tun(kind: str) -> list[str]:
    """An argv prefix that runs the rest of the argv (as root) with a /dev/net/tun that
    is ``missing`` or on a ``nodev`` mount, visible only to it and its children."""
    assert kind in ("missing", "nodev")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _UNUSABLE_TUN, "x", kind]


def _closure(names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        for text in importlib.metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _copy_distributions(names: set[str], site: Path) -> None:
    for name in sorted(names):
        dist = importlib.metadata.distribution(name)
        for file in dist.files or []:
            if file.parts[0].endswith(".dist-info") or file.parts[0] in ("..", "bin"):
                continue
            src = Path(str(dist.locate_file(file)))
            if src.is_file() and "__pycache__" not in file.parts:
                target = site / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)


def make_runtime(dest: Path) -> Path:
    """A site directory any user can read: the project's packages from this tree and
    every runtime dependency copied from the interpreter running the tests (pure Python
    packages, so Debian's python3 runs them). A dependency the project imports but does
    not declare yet is found by trying the import, and copied too."""
    site = dest / "site"
    site.mkdir(parents=True)
    for package in ("wsnic_trio", "transports"):
        shutil.copytree(
            REPO / package, site / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    copied: set[str] = set()
    wanted = _closure([Requirement(text).name for text in project["dependencies"]])
    owners = importlib.metadata.packages_distributions()
    for _ in range(20):
        _copy_distributions(wanted - copied, site)
        copied |= wanted
        probe = subprocess.run(
            [DEBIAN_PYTHON, "-c", "import wsnic_trio.cli.main, wsnic_trio.lan.helper"],
            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
            cwd="/",
            capture_output=True,
            text=True,
            check=False,
        )
        m = re.search(r"No module named '([^'.]+)", probe.stderr)
        if probe.returncode == 0 or m is None or m.group(1) not in owners:
            break
        wanted = _closure(owners[m.group(1)])
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return site


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    """A temporary directory other users can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="wsnic-rootless-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: For :func:`require_user_tools`: the tests that create throw-away users themselves.
USERADD = ("useradd", "useradd (passwd)")


def require_user_tools(*commands: tuple[str, str]) -> None:
    """Skip unless the LAN tools, setpriv, Debian's python3 and each ``(command, what is
    missing)`` of ``commands`` are there."""
    require_tools()
    for command, missing in (("setpriv", "setpriv (util-linux)"), *commands):
        require(shutil.which(command) is not None, f"{missing} is not installed")
    require(os.access(DEBIAN_PYTHON, os.X_OK), f"{DEBIAN_PYTHON} is missing")


@contextlib.asynccontextmanager
async def user_runtime(*commands: tuple[str, str]) -> AsyncIterator[Path]:
    """A temporary directory other users can read, with the code a test user's server
    runs (:func:`make_runtime`); skipped as :func:`require_user_tools` says."""
    require_user_tools(*commands)
    with temp_dir() as path:
        await trio.to_thread.run_sync(make_runtime, path)
        yield path


class ThrowawayUser:
    """A throw-away unprivileged user, removed with all its processes afterwards."""

    def __init__(self, name: str, uid: int) -> None:
        self.name = name
        self.uid = uid

    def pids(self) -> list[int]:
        return user_pids(self.uid)


def user_pids(uid: int) -> list[int]:
    """Live processes (not zombies) whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            found.append(int(entry))
    return found


_NS_GET_USERNS = 0xB701
_NS_GET_OWNER_UID = 0xB704


def user_netns(uid: int) -> set[int]:
    """Inodes of the network namespaces that any process still has and that belong to
    a user namespace created by ``uid`` (what a rootless helper makes). Other tests'
    namespaces, running at the same time, are not counted."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{entry}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            inode = os.fstat(fd).st_ino
            owner_fd = fcntl.ioctl(fd, _NS_GET_USERNS)
        except OSError:
            continue  # the initial namespace has no owner we may see, or it just went
        finally:
            os.close(fd)
        try:
            buf = bytearray(4)
            fcntl.ioctl(owner_fd, _NS_GET_OWNER_UID, buf, True)
        except OSError:
            continue
        finally:
            os.close(owner_fd)
        if int.from_bytes(buf, sys.byteorder) == uid:
            found.add(inode)
    return found


def run_dirs(uid: int) -> list[Path]:
    """Rootless run directories (made by the helper) that belong to ``uid``."""
    return [p for p in Path(tempfile.gettempdir()).glob("wsnic-trio-*") if p.stat().st_uid == uid]


@contextlib.contextmanager
def throwaway_user() -> Iterator[ThrowawayUser]:
    name = f"wsrt{os.getpid() % 100000}x{next(_counter)}"
    run(
        "useradd",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--user-group",
        name,
    )
    try:
        uid = int(run("id", "-u", name).stdout)
        yield ThrowawayUser(name, uid)
    finally:
        with contextlib.suppress(Exception):
            uid = int(run("id", "-u", name).stdout)
            # SIGTERM first, so a helper still running removes its run directory.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in user_pids(uid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + 5
                while user_pids(uid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            for path in run_dirs(uid):
                shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["userdel", name], capture_output=True, check=False)


async def launch_rootless(
    ns: NetNS,
    user: ThrowawayUser,
    runtime: Path,
    *args: str,
    label: str = "wsnic-trio",
    tun_mode: str = "666",
) -> NsProcess:
    """Start ``wsnic-trio ARGS`` as ``user`` in ``ns``, its /dev/net/tun root's with
    ``tun_mode``; do not wait for anything."""
    stage = runtime / f"dev{next(_counter)}"
    stage.mkdir(mode=0o755)
    return await ns.start(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            _STAGE,
            "stage",
            str(stage),
            tun_mode,
            str(user.uid),
            str(runtime / "site"),
            DEBIAN_PYTHON,
            "-m",
            "wsnic_trio",
            *args,
        ],
        label=label,
    )


async def start_rootless(
    ns: NetNS, user: ThrowawayUser, runtime: Path, *args: str, label: str = "wsnic-trio"
) -> NsProcess:
    """Start ``wsnic-trio ARGS`` as ``user`` in ``ns`` and wait until it is ready."""
    proc = await launch_rootless(ns, user, runtime, *args, label=label)
    await proc.log.wait_for(r"INFO ready: ", timeout=40)
    return proc


async def run_as_user(
    ns: NetNS, user: ThrowawayUser, runtime: Path, *args: str
) -> subprocess.CompletedProcess[bytes]:
    """Run ``wsnic-trio ARGS`` as ``user`` in ``ns`` (its uid and group, a clean
    environment, from /) to the end: for what is refused before any set-up."""
    return await ns.exec(
        "setpriv",
        f"--reuid={user.uid}",
        f"--regid={user.uid}",
        "--clear-groups",
        "env",
        "-i",
        "-C",
        "/",
        f"PYTHONPATH={runtime / 'site'}",
        DEBIAN_PYTHON,
        "-m",
        "wsnic_trio",
        *args,
    )


def helper_pid(proc: NsProcess) -> int:
    m = proc.log.find(r"in the namespace of helper pid (\d+)")
    assert m is not None, proc.log.text()
    return int(m.group(1))


async def refused_at_start(server: NsProcess, timeout: float) -> list[str]:
    """The log lines of a server that must refuse to start: it never says "ready" and
    exits 2; returned are the lines that look like a problem (an error, a warning, a
    traceback), which a refusal keeps to its one ``wsnic-trio: error:`` line."""
    await server.log.wait_for(r"wsnic-trio: error: | ready: ", timeout=timeout)
    assert not server.log.find(r"\bready\b"), server.log.text()
    assert await server.wait() == 2, server.log.text()
    return [
        line
        for line in server.log.lines
        if re.search(r"error|ERROR|WARNING|Traceback|Exception", line)
    ]
