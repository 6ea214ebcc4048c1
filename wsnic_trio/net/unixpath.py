"""Unix socket files the server listens on: bound safely, and removed only if still ours.

Shared by every unix-socket transport (QEMU stream, UML bess, vfkit / QEMU dgram), so
they all follow one rule set:

- The socket is bound when the transport is created, before the host is touched, so a
  problem ends start-up with exit code 2 (like a taken TCP port).
- A socket file left by a run that died (nobody accepts on it: ``ECONNREFUSED``) is
  replaced; a path that a live server answers on is an error, never stolen.
- Anything at the path that is not a socket (a regular file, a directory, a symlink) is
  refused: the server never deletes what it cannot prove is a stale socket.
- The file gets ``--socket-mode`` (0660 by default: owner and group may connect).
- On exit the file is removed only when it is still the one we bound (same inode), so a
  server started later on the same path keeps its socket.

Root binds these before it drops privileges (``--user``), possibly in a directory that
another user can write. So the directory is opened once, by a walk that follows no
symlink such a user could have planted (``wsnic_trio.util.safefs``), and every step after
that goes through its fd: the stale file is checked and removed there, the socket is
bound there (by the path itself where nobody else can change the directory, else by
``/proc/self/fd/N/NAME``: a directory switched for a symlink meanwhile changes nothing),
and the mode is set on the file found there only if it is a socket with one name made
by this process, through an ``O_PATH`` fd (never by a name that could have become a
symlink to, say, /etc/shadow since the bind).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from wsnic_trio.errors import SetupError
from wsnic_trio.util.safefs import Directory, UnsafePathError, open_directory

__all__ = ["UnixPath", "bind_unix"]

_TYPES = {
    socket.SOCK_STREAM: "stream",
    socket.SOCK_SEQPACKET: "seqpacket",
    socket.SOCK_DGRAM: "datagram",
}

#: (st_dev, st_ino) of a socket file.
Identity = tuple[int, int]


class UnixPath:
    """A bound unix socket and the file it made; ``close()`` undoes both.

    It keeps its directory open (an ``O_PATH`` fd) for as long as the socket: the file
    is removed through it, and only while it is still the inode that was bound."""

    def __init__(
        self, sock: socket.socket, path: str, directory: Directory, name: str, identity: Identity
    ) -> None:
        self.sock = sock
        self.path = path
        #: (st_dev, st_ino) of the socket file as bound (the root helper removes it by this).
        self.identity = identity
        self._directory = directory
        self._name = name

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.sock.close()
        if self._directory.fd >= 0:
            _unlink_if(self._directory.fd, self._name, self.identity)
            self._directory.close()


def _unlink_if(dir_fd: int, name: str, identity: Identity) -> None:
    """Remove ``name`` from the directory if it is still the file ``identity``."""
    with contextlib.suppress(OSError):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(name, dir_fd=dir_fd)


def _is_live(path: str, kind: socket.SocketKind) -> bool:
    """Whether something answers on the socket at ``path`` (ECONNREFUSED: a stale file)."""
    probe = socket.socket(socket.AF_UNIX, kind)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except OSError as exc:
        # EAGAIN: a live listener with a full backlog. EPROTOTYPE: a live socket of
        # another type. Only "refused" proves that nobody is there.
        return exc.errno != errno.ECONNREFUSED
    finally:
        probe.close()
    return True


def _claim(directory: Directory, name: str, mode: int, by_name: bool) -> Identity | None:
    """Give the socket file just bound ``mode``; its identity, or None if what is at
    ``name`` now is not a socket file this process made (someone replaced it)."""
    node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.fd)
    try:
        st = os.fstat(node)
        if not stat.S_ISSOCK(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            return None
        try:
            os.chmod(f"/proc/self/fd/{node}", mode)  # the inode itself, not a name
        except FileNotFoundError:
            if not by_name:
                raise  # no /proc: only a name is left, and someone else could change it
            os.chmod(name, mode, dir_fd=directory.fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(node)


def bind_unix(path: str, kind: socket.SocketKind, mode: int, what: str) -> UnixPath:
    """Bind (and for connection types, listen on) a unix socket at ``path``."""
    if not path:
        raise SetupError(f"{what}: empty socket path")
    if len(os.fsencode(path)) > 107:
        raise SetupError(f"{what}: socket path {path!r} is longer than the 107 bytes unix allows")
    shown = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    if name in ("", ".", ".."):
        raise SetupError(f"{what}: {path} names a directory, not a socket file")
    try:
        directory = open_directory(os.path.dirname(path) or ".")
    except (FileNotFoundError, NotADirectoryError):
        raise SetupError(
            f"{what}: directory {shown} does not exist; create it first "
            f"(for example: install -d -m 0755 {shown})"
        ) from None
    except UnsafePathError as exc:
        raise SetupError(f"{what}: {path}: {exc}") from None
    except OSError as exc:
        raise SetupError(f"{what}: cannot open directory {shown}: {exc.strerror}") from None
    try:
        return _bind_in(directory, path, name, kind, mode, what)
    except BaseException:
        directory.close()
        raise


def _bind_in(
    directory: Directory, path: str, name: str, kind: socket.SocketKind, mode: int, what: str
) -> UnixPath:
    # By the path itself (what `ss -x` and peers then show) only where nobody else can
    # change the directory or the way to it; a sticky one is fine, since the socket file
    # there is ours. Elsewhere through the open directory.
    by_name = directory.problem is None and (directory.writers is None or directory.sticky)
    where = path if by_name else f"/proc/self/fd/{directory.fd}/{name}"
    try:
        st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SetupError(f"{what}: cannot inspect {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SetupError(f"{what}: {path} exists and is not a socket; refusing to replace it")
        if _is_live(where, kind):
            raise SetupError(
                f"{what}: {path} is in use by a running program; stop it or choose another path"
            )
        _unlink_if(directory.fd, name, (st.st_dev, st.st_ino))
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(where)
    except OSError as exc:
        sock.close()
        raise SetupError(f"{what}: cannot bind {path}: {exc.strerror or exc}") from None
    identity: Identity | None = None
    try:
        identity = _claim(directory, name, mode, by_name)
        if identity is None:
            raise SetupError(
                f"{what}: {path} was replaced by another program right after it was bound; "
                "not touching it"
            )
        if kind != socket.SOCK_DGRAM:
            sock.listen(128)
        sock.setblocking(False)
        return UnixPath(sock, path, directory, name, identity)
    except OSError as exc:
        sock.close()
        if identity is not None:
            _unlink_if(directory.fd, name, identity)
        raise SetupError(
            f"{what}: cannot set up {_TYPES.get(kind, 'unix')} socket {path}: {exc.strerror}"
        ) from None
    except BaseException:
        sock.close()
        if identity is not None:
            _unlink_if(directory.fd, name, identity)
        raise
