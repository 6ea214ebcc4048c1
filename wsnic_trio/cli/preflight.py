"""Paths the server will write to, checked before the host is touched.

Options that name a file or directory are only used late (the first capture opens when a
client connects, dnsmasq opens its lease file once the bridge is up), so a typo there
would otherwise show up after the bridge, the firewall table and dnsmasq were made and
had to be undone. Each path is checked here, as the side that will use it: with
``--user`` the capture files are written by the server after it dropped to that user,
so that user must be able to write there, not root.

Files that are read at start (token files, the TLS certificate and key, the config
file) need no check of their own: they are read before the bridge is made, and their
errors name the file. Unix socket directories are checked when the listeners are bound,
which is also before the bridge.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from wsnic_trio.config import Config
from wsnic_trio.errors import ConfigError

if TYPE_CHECKING:
    from wsnic_trio.lan.privsep import Account

__all__ = ["check_lease_file", "check_paths", "directory_problem"]

#: Asks, as the account it runs as, whether it may create files in argv[1].
#: Run as the account by /bin/sh, which every account may execute (the server's own
#: Python may live where the account cannot go, e.g. a venv under /root). ``test -w``
#: and ``-x`` ask the kernel (access(2)) as the account.
_CAN_CREATE = 'test -d "$1" && test -w "$1" && test -x "$1"'


def check_paths(config: Config, account: Account | None) -> None:
    """ConfigError naming the first unusable path (blocking: stats, maybe a child)."""
    if config.server.pcap is not None:
        problem = directory_problem(config.server.pcap, account)
        if problem is not None:
            raise ConfigError(f"--pcap {config.server.pcap}: the directory {problem}")
    if not config.lan.disable_dhcp:
        check_lease_file(config)  # written by dnsmasq, started by root (or the helper)


def check_lease_file(config: Config) -> None:
    """ConfigError unless dnsmasq (started by root, or by the rootless helper as this
    user) can write ``--dhcp-lease-file``: it rewrites the file in place, so an existing
    file must be writable, and a new one needs a directory it may create files in."""
    if config.lan.dhcp_lease_file is None:
        return
    given = config.lan.dhcp_lease_file
    path = given.absolute()
    where = f"--dhcp-lease-file {given}"
    if path.is_dir():
        raise ConfigError(f"{where} is a directory")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{where}: the file is not writable{_read_only(path)}")
        return
    problem = directory_problem(path.parent)
    if problem is not None:
        raise ConfigError(f"{where}: directory {path.parent} {problem}")


def directory_problem(path: Path, account: Account | None = None) -> str | None:
    """Why files cannot be created in ``path`` (by ``account``, else by this process),
    said of the directory: "does not exist; create it first"; None when they can."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist; create it first"
    except NotADirectoryError:
        return "does not exist (a part of its path is a file)"
    except OSError as exc:
        return f"cannot be inspected: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if account is None:
        if os.access(path, os.W_OK | os.X_OK):
            return None
        return f"is not writable{_read_only(path)}"
    if _may_create_as(path, account):
        return None
    return f"is not writable by user {account.user}{_read_only(path)}"


def _read_only(path: Path) -> str:
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return ""
    return " (a read-only file system)" if read_only else ""


def _may_create_as(path: Path, account: Account) -> bool:
    """Ask the kernel as ``account`` (a child that runs as it): its answer counts ACLs,
    group memberships and read-only mounts, which copying the permission check would not."""
    result = subprocess.run(
        ["/bin/sh", "-c", _CAN_CREATE, "sh", os.fspath(path)],
        user=account.uid,
        group=account.gid,
        extra_groups=list(account.groups),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        cwd="/",
    )
    return result.returncode == 0
