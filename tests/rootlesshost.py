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
import importlib.metadata
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement

from .netns import REPO, NetNS, NsProcess, run

DEBIAN_PYTHON = "/usr/bin/python3"
_counter = itertools.count()

# Run as root inside the test namespace, in a private mount namespace; then become the
# user for good (setpriv execs, so the server keeps this process's pid).
_STAGE = r"""
set -eu
cd /
mount -t tmpfs -o mode=755,size=64k wsnic-test-dev "$1"
mknod -m 666 "$1/tun" c 10 200
mount --bind "$1/tun" /dev/net/tun
uid="$2"; pythonpath="$3"; shift 3
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH="$pythonpath" PYTHONUNBUFFERED=1 \
    HOME=/ "$@"
"""


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
            [DEBIAN_PYTHON, "-c", "import wsnic_trio._cli, wsnic_trio._nshelper"],
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


async def start_rootless(
    ns: NetNS, user: ThrowawayUser, runtime: Path, *args: str, label: str = "wsnic-trio"
) -> NsProcess:
    """Start ``wsnic-trio ARGS`` as ``user`` in ``ns`` and wait until it is ready."""
    stage = runtime / f"dev{next(_counter)}"
    stage.mkdir(mode=0o755)
    proc = await ns.start(
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
            str(user.uid),
            str(runtime / "site"),
            DEBIAN_PYTHON,
            "-m",
            "wsnic_trio",
            *args,
        ],
        label=label,
    )
    await proc.log.wait_for(r"INFO ready: ", timeout=40)
    return proc


def helper_pid(proc: NsProcess) -> int:
    m = proc.log.find(r"in the namespace of helper pid (\d+)")
    assert m is not None, proc.log.text()
    return int(m.group(1))
