"""Paths that root creates or changes, made safe against users who can write a directory
on them.

Root following a path that another user can change is how a lease file in that user's
directory turned into a chown of a root-owned file (issue 12): a symbolic or hard link
planted at the name, or a directory on the way switched for a symlink between root's
check and its use. So such a path is walked one component at a time from ``/``, each
step relative to the directory opened before it (an ``O_PATH`` fd, never a path looked
up twice), and the walk knows for every entry it goes through whether anyone but root
(and this process's own user) could change that entry:

- in a directory whose owner is trusted and that neither its group nor others may
  write, nobody else can;
- in a sticky directory such as ``/tmp`` (trusted owner), only the entry's owner may
  rename or remove it, so an entry of a trusted owner stays what it is;
- in any other directory, whoever may write it can.

A symbolic link is followed only where nobody else could have put it; anywhere else the
walk stops with :class:`UnsafePathError` (what the kernel's ``fs.protected_symlinks``
does in sticky directories, here in every directory, whatever that sysctl says). What is
then created or changed goes through the directory's fd: ``O_NOFOLLOW``, ``O_EXCL``, and
``fchmod``/``fchown`` of the opened file, never of a name.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import grp
import os
import pwd
import stat
from types import TracebackType

from wsnic_trio.errors import SetupError

__all__ = [
    "Directory",
    "UnsafePathError",
    "create_new_file",
    "open_directory",
    "prepare_private_file",
    "trusted_uids",
]

_MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
PRIVATE_DIR_ADVICE = (
    "use a directory that only root can write, e.g. one made with "
    "install -d -m 0755 /var/lib/wsnic-trio"
)


class UnsafePathError(SetupError):
    """A path that someone other than root (and this process's user) could redirect;
    at start-up it is one error line and exit code 2, like any SetupError."""


def trusted_uids() -> frozenset[int]:
    """Whose files and directories may steer what this process does: root's and its own."""
    return frozenset({0, os.geteuid()})


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"group {grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def writers(st: os.stat_result, trusted: frozenset[int]) -> str | None:
    """Who, besides the trusted users, may add, rename or remove entries of the directory
    ``st`` (None: nobody). A sticky directory is still named here: callers decide
    whether an entry's own owner is enough."""
    if st.st_uid not in trusted:
        return f"its owner, {_user(st.st_uid)}"
    if st.st_mode & stat.S_IWOTH:
        return "every user"
    if st.st_mode & stat.S_IWGRP:
        return f"the members of {_group(st.st_gid)}"
    return None


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _absolute(path: str | os.PathLike[str]) -> str:
    """The path from ``/``, without resolving anything: ``..`` and symlinks are the
    walk's job (a lexical ``..`` would be wrong after a symlink)."""
    text = os.fspath(path)
    return text if os.path.isabs(text) else os.path.join(os.getcwd(), text)


def _entry_problem(
    directory: str, dir_st: os.stat_result, name: str, st: os.stat_result, trusted: frozenset[int]
) -> str | None:
    """Why entry ``name`` of ``directory`` could be changed by someone else (None: it cannot)."""
    who = writers(dir_st, trusted)
    if who is None:
        return None
    if dir_st.st_mode & stat.S_ISVTX and dir_st.st_uid in trusted and st.st_uid in trusted:
        return None  # sticky: only its (trusted) owner may rename or remove it
    return f"{_join(directory, name)} is in {directory}, which {who} can write"


@dataclasses.dataclass
class Directory:
    """An open directory (``O_PATH``) and what the walk to it found."""

    fd: int
    #: The directory's path from ``/`` as walked, every symlink resolved.
    path: str
    #: Why an entry on the way could be changed by someone else; None: none can.
    problem: str | None
    #: Who else may add or remove entries in this directory (None: nobody).
    writers: str | None
    sticky: bool

    @property
    def private(self) -> bool:
        """Whether nobody else can change this directory or the way to it."""
        return self.problem is None and self.writers is None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Directory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_directory(path: str | os.PathLike[str], *, create: int | None = None) -> Directory:
    """Open directory ``path`` by a walk from ``/`` (see the module's docstring).

    ``create``: the mode of directories to make where they are missing (``mkdirat``).
    Raises UnsafePathError for a symlink someone else could have planted, OSError for
    what the kernel refuses (ENOENT, ENOTDIR, ELOOP after 40 symlinks, EACCES).
    """
    trusted = trusted_uids()
    todo = collections.deque(_parts(_absolute(path)))
    root = os.open("/", _DIR_FLAGS)
    stack: list[tuple[int, os.stat_result, str]] = [(root, os.fstat(root), "/")]
    problem: str | None = None
    links = 0
    try:
        while todo:
            name = todo.popleft()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            dir_fd, dir_st, dir_path = stack[-1]
            here = _join(dir_path, name)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                if create is None:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), here) from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, create, dir_fd=dir_fd)
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            entry = _entry_problem(dir_path, dir_st, name, st, trusted)
            if stat.S_ISLNK(st.st_mode):
                if entry is not None:
                    raise UnsafePathError(
                        f"{here} is a symbolic link in {dir_path}, which "
                        f"{writers(dir_st, trusted)} can write: not followed"
                    )
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), here)
                target = os.readlink(name, dir_fd=dir_fd)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                todo.extendleft(reversed(_parts(target)))
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), here)
            child = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                child_st = os.fstat(child)
            except BaseException:
                os.close(child)
                raise
            stack.append((child, child_st, here))
            if (child_st.st_dev, child_st.st_ino) != (st.st_dev, st.st_ino):
                raise UnsafePathError(f"{here} was replaced while it was being opened")
            problem = problem or entry
        fd, st, where = stack.pop()
        return Directory(fd, where, problem, writers(st, trusted), bool(st.st_mode & stat.S_ISVTX))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _split(path: str | os.PathLike[str], what: str) -> tuple[str, str]:
    parent, name = os.path.split(_absolute(path))
    if name in ("", ".", ".."):
        raise UnsafePathError(f"{what}: {os.fspath(path)} names a directory, not a file")
    return parent, name


def _open_existing_or_new(directory: Directory, name: str, what: str) -> int:
    """A read-only fd of regular file ``name`` (made, mode 0600, if missing)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        try:
            return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=directory.fd)
        except FileExistsError:
            raise UnsafePathError(
                f"{what} appeared while it was being created (another program made it)"
            ) from None
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=directory.fd)
        raise UnsafePathError(
            f"{what} is a symbolic link (to {target}): not followed; give the file's own path"
        )
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{what} exists and is not a regular file")
    fd = os.open(name, flags, dir_fd=directory.fd)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise UnsafePathError(f"{what} was replaced while it was being opened")
    return fd


def prepare_private_file(
    path: str | os.PathLike[str], what: str, owner: tuple[int, int] | None = None
) -> None:
    """Make sure ``path`` is a regular file of mode 0600 (created if missing, its content
    kept), owned by ``owner`` (uid, gid) when given, that root can go on using by name.

    For that, nobody but root (and this process's user) may be able to change the
    directories on the way to it; the file's own directory may be a sticky one only
    while the file stays root's (an ``owner`` who may write a sticky directory could
    replace the file there). A symlink at the name and a file with more than one name
    (a hard link: it may be a name of a file elsewhere) are refused, untouched.
    """
    parent, name = _split(path, what)
    trusted = trusted_uids()
    with open_directory(parent) as directory:
        if directory.problem is not None:
            raise UnsafePathError(f"{what}: {directory.problem}; {PRIVATE_DIR_ADVICE}")
        handed_over = owner is not None and owner[0] not in trusted
        if directory.writers is not None and (handed_over or not directory.sticky):
            raise UnsafePathError(
                f"{what}: directory {directory.path} can be written by {directory.writers}"
                f"; {PRIVATE_DIR_ADVICE}"
            )
        fd = _open_existing_or_new(directory, name, what)
        try:
            st = os.fstat(fd)
            if st.st_nlink != 1:
                raise UnsafePathError(
                    f"{what} has {st.st_nlink} names (hard links), so it may be a file that "
                    "belongs elsewhere: not touched; remove that name and start again"
                )
            if directory.writers is not None and st.st_uid not in trusted:
                raise UnsafePathError(
                    f"{what} belongs to {_user(st.st_uid)}, in {directory.path}, which "
                    f"{directory.writers} can write; {PRIVATE_DIR_ADVICE}"
                )
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            if owner is not None and (st.st_uid, st.st_gid) != owner:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)


def create_new_file(path: str | os.PathLike[str], mode: int) -> int:
    """A new file at ``path``, opened write-only: never an existing file (``O_EXCL``),
    never through a symlink someone else could have planted on the way (UnsafePathError)."""
    parent, name = _split(path, os.fspath(path))
    with open_directory(parent) as directory:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(name, flags, mode, dir_fd=directory.fd)
