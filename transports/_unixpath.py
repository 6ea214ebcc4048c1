"""Unix socket files the server listens on: bound safely, and removed only if still ours.

Shared by every unix-socket transport (QEMU stream, UML bess, vfkit / QEMU dgram), so
they all follow one rule set:

- The socket is bound when the transport is created, before the host is touched, so a
  problem ends start-up with exit code 2 (like a taken TCP port).
- A socket file left by a run that died (nobody accepts on it: ``ECONNREFUSED``) is
  replaced; a path that a live server answers on is an error, never stolen.
- Anything at the path that is not a socket (a regular file, a directory) is refused:
  the server never deletes what it cannot prove is a stale socket.
- The file gets ``--socket-mode`` (0660 by default: owner and group may connect).
- On exit the file is removed only when it is still the one we bound (same inode), so a
  server started later on the same path keeps its socket.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from wsnic_trio._exceptions import SetupError

__all__ = ["UnixPath", "bind_unix"]

_TYPES = {
    socket.SOCK_STREAM: "stream",
    socket.SOCK_SEQPACKET: "seqpacket",
    socket.SOCK_DGRAM: "datagram",
}


class UnixPath:
    """A bound unix socket and the file it made; ``close()`` undoes both."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.sock.close()
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)


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


def bind_unix(path: str, kind: socket.SocketKind, mode: int, what: str) -> UnixPath:
    """Bind (and for connection types, listen on) a unix socket at ``path``."""
    if not path:
        raise SetupError(f"{what}: empty socket path")
    if len(os.fsencode(path)) > 107:
        raise SetupError(f"{what}: socket path {path!r} is longer than the 107 bytes unix allows")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SetupError(
            f"{what}: directory {directory} does not exist; create it first "
            f"(for example: install -d -m 0755 {directory})"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SetupError(f"{what}: cannot inspect {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SetupError(f"{what}: {path} exists and is not a socket; refusing to replace it")
        if _is_live(path, kind):
            raise SetupError(
                f"{what}: {path} is in use by a running program; stop it or choose another path"
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise SetupError(f"{what}: cannot bind {path}: {exc.strerror}") from None
    try:
        os.chmod(path, mode)
        if kind != socket.SOCK_DGRAM:
            sock.listen(128)
        sock.setblocking(False)
        return UnixPath(sock, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise SetupError(
            f"{what}: cannot set up {_TYPES.get(kind, 'unix')} socket {path}: {exc.strerror}"
        ) from None
