"""Unix socket files that root binds (before ``--user`` drops it) in a directory that
another user can write (issue 12, item 5): that user, acting between two of root's
steps, must not get root to change the mode of, bind over, or remove anything but the
socket root made.

The races are played deterministically: a step of the code under test is wrapped so
that the "other user" (the test, as root; the directory is uid 65534's) acts right
before or after it.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wsnic_trio.net.unixpath as unixpath
from wsnic_trio.errors import SetupError
from wsnic_trio.lan.privsep import _remove_sockets, socket_files
from wsnic_trio.net.unixpath import bind_unix

OTHER = 65534


@pytest.fixture(autouse=True)
def _as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (the other user's directory is made with chown)")


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    path = tmp_path / "u"
    path.mkdir()
    os.chown(path, OTHER, OTHER)
    return path


def _switch(directory: Path, to: Path) -> Path:
    """What the directory's owner can do at any moment: move it away and put a symlink
    to another directory in its place. Returns where the real one went."""
    moved = directory.with_name(directory.name + ".old")
    directory.rename(moved)
    directory.symlink_to(to)
    return moved


@pytest.fixture
def around_bind(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[str], None]]:
    """Hooks run once each: ``[before, after]`` the next ``bind`` of a unix socket."""
    hooks: list[Callable[[str], None]] = []
    real = socket.socket.bind

    def bind(self: socket.socket, address: Any) -> None:
        if self.family == socket.AF_UNIX and hooks:
            before = hooks.pop(0)
            before(str(address))
        real(self, address)
        if self.family == socket.AF_UNIX and hooks:
            hooks.pop(0)(str(address))

    monkeypatch.setattr(socket.socket, "bind", bind)
    return hooks


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path`` itself, None if there is none."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _sock_at(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_mode_goes_to_the_socket_not_to_what_replaced_it(
    user_dir: Path, tmp_path: Path, around_bind: list[Callable[[str], None]]
) -> None:
    """Right after the bind, the directory's owner replaces the new socket file with a
    symlink to a root file (as if /etc/shadow): root must not chmod the target (with
    --socket-mode 0666 it would be writable by every user)."""
    shadow = tmp_path / "shadow"
    shadow.write_text("root:secret\n")
    shadow.chmod(0o600)
    path = user_dir / "qemu.sock"

    def replace(_: str) -> None:
        path.unlink()
        path.symlink_to(shadow)

    around_bind += [lambda _: None, replace]
    error = ""
    try:
        unix = bind_unix(str(path), socket.SOCK_STREAM, 0o666, "QEMU stream listener")
    except SetupError as exc:
        error = str(exc)
    else:
        unix.sock.close()
    assert stat.S_IMODE(shadow.stat().st_mode) == 0o600
    assert shadow.read_text() == "root:secret\n"
    assert "was replaced by another program right after it was bound" in error
    assert path.is_symlink()  # not ours: left alone


def test_socket_is_bound_in_the_directory_that_was_checked(
    user_dir: Path, tmp_path: Path, around_bind: list[Callable[[str], None]]
) -> None:
    """The owner switches the directory for a symlink to a directory of root's just
    before the bind: the socket still goes into the directory root opened, never
    into the other one, and close() removes it from there."""
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    path = user_dir / "qemu.sock"
    moved: list[Path] = []
    around_bind.append(lambda _: moved.append(_switch(user_dir, elsewhere)))
    unix = bind_unix(str(path), socket.SOCK_STREAM, 0o660, "QEMU stream listener")
    try:
        assert list(elsewhere.iterdir()) == []
        real = moved[0] / "qemu.sock"
        assert real.is_socket() and stat.S_IMODE(real.stat().st_mode) == 0o660
        assert (real.stat().st_dev, real.stat().st_ino) == unix.identity
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(real))  # and it is the listening socket
    finally:
        unix.close()
    assert not (moved[0] / "qemu.sock").exists()
    assert list(elsewhere.iterdir()) == []


def test_stale_socket_removed_only_in_the_checked_directory(
    user_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale socket file at the path is replaced; if the owner switches the directory
    between the check and the removal, the socket of the same name in the directory
    the symlink now leads to (root's, in use) stays."""
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    victim = _sock_at(elsewhere / "api.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(user_dir / "api.sock"))
    stale.close()  # nobody listens: a stale file
    real_is_live = unixpath._is_live
    moved: list[Path] = []

    def is_live(path: str, kind: socket.SocketKind) -> bool:
        live = real_is_live(path, kind)
        if not moved:
            moved.append(_switch(user_dir, elsewhere))
        return live

    monkeypatch.setattr(unixpath, "_is_live", is_live)
    victim_id = _identity(elsewhere / "api.sock")
    with victim:
        unix = bind_unix(str(user_dir / "api.sock"), socket.SOCK_STREAM, 0o600, "control API")
        try:
            assert _identity(elsewhere / "api.sock") == victim_id
            assert _identity(moved[0] / "api.sock") == unix.identity
        finally:
            unix.close()
        assert _identity(elsewhere / "api.sock") == victim_id


class _Listener:
    def __init__(self, unix: unixpath.UnixPath) -> None:
        self.unix = unix


def test_helper_removes_only_the_socket_bound_whatever_the_path_shows(
    user_dir: Path, tmp_path: Path
) -> None:
    """The root helper removes the server's socket files at exit by the identity it got
    at start. Taken from the path after the bind, a directory switched for a symlink
    gave it the identity of another socket of the same name, which it then removed."""
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    victim = _sock_at(elsewhere / "api.sock")
    unix = bind_unix(str(user_dir / "api.sock"), socket.SOCK_STREAM, 0o600, "control API")
    with victim:
        try:
            victim_id = _identity(elsewhere / "api.sock")
            moved = _switch(user_dir, elsewhere)  # before the server reports its sockets
            files = socket_files([_Listener(unix)])
            _remove_sockets(files)  # at exit, the path still leads to `elsewhere`
            assert _identity(elsewhere / "api.sock") == victim_id
            real = (moved / "api.sock").lstat()
            assert files == [(str(user_dir / "api.sock"), real.st_dev, real.st_ino)]
        finally:
            unix.sock.close()
