"""The safe walk and file operations root uses for paths other users may write on
(issue 12, item 5): which directories count as root's alone, which symlinks are
followed, and that a refused file is left exactly as it was.

The tests run as root; "another user" is uid 65534, given directories and links with
chown. Every path is under pytest's tmp_path (root's, 0700, under the sticky /tmp).
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from pathlib import Path

import pytest

from wsnic_trio.util.safefs import (
    UnsafePathError,
    create_new_file,
    open_directory,
    prepare_private_file,
)

OTHER = 65534


def _named(uid: int) -> str:
    """How messages name a user (as ``ls -l`` would, plus the uid)."""
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


WHO = _named(OTHER)


@pytest.fixture(autouse=True)
def _as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (files of another uid are made with chown)")


def _victim(path: Path) -> tuple[int, int, int, bytes]:
    """A root-owned file standing for /etc/shadow; returns what must never change."""
    path.write_bytes(b"root:secret:19000::::::\n")
    os.chown(path, 0, 0)
    path.chmod(0o640)
    return _state(path)


def _state(path: Path) -> tuple[int, int, int, bytes]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), path.read_bytes()


def _other_users_dir(path: Path, mode: int = 0o755) -> Path:
    path.mkdir()
    os.chown(path, OTHER, OTHER)
    path.chmod(mode)
    return path


def test_a_path_only_root_can_change_is_private(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    with open_directory(tmp_path / "a" / "b") as directory:
        assert directory.private
        assert directory.path == str(tmp_path / "a" / "b")
        assert os.path.samestat(os.fstat(directory.fd), (tmp_path / "a" / "b").stat())
    # The sticky /tmp is on the way: its entry pytest-of-root is root's, so it stays.
    assert str(tmp_path).startswith("/tmp/")


def test_another_users_directory_and_what_is_inside_it(tmp_path: Path) -> None:
    """The other user's directory itself can be opened (its entry is in root's
    directory), but it is not private, and whatever is inside it could be changed."""
    user_dir = _other_users_dir(tmp_path / "u")
    (user_dir / "sub").mkdir()
    with open_directory(user_dir) as directory:
        assert directory.problem is None
        assert directory.writers == f"its owner, {WHO}"
        assert not directory.private
    with open_directory(user_dir / "sub") as directory:
        assert (
            directory.problem
            == f"{user_dir}/sub is in {user_dir}, which its owner, {WHO} can write"
        )
        assert directory.writers is None


@pytest.mark.parametrize(("mode", "who"), [(0o775, "the members of group"), (0o757, "every user")])
def test_group_or_world_writable_directories_are_not_private(
    tmp_path: Path, mode: int, who: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with open_directory(shared) as directory:
        assert directory.writers is not None and directory.writers.startswith(who)


def test_a_symlink_someone_else_could_have_planted_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    user_dir = _other_users_dir(tmp_path / "u")
    (user_dir / "link").symlink_to(target)
    with pytest.raises(
        UnsafePathError, match=r"/u/link is a symbolic link in .*/u, which its owner"
    ):
        open_directory(user_dir / "link")
    # The same link in root's own directory is root's: followed.
    (tmp_path / "link").symlink_to(target)
    with open_directory(tmp_path / "link") as directory:
        assert directory.path == str(target) and directory.private


def test_sticky_directory_entries_count_by_their_owner(tmp_path: Path) -> None:
    """In a sticky world-writable directory (like /tmp), only an entry's owner can
    rename or remove it: root's entries are safe, another user's are not."""
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "roots").mkdir()
    _other_users_dir(sticky / "theirs")
    (sticky / "theirs-link").symlink_to(tmp_path)
    os.lchown(sticky / "theirs-link", OTHER, OTHER)
    (sticky / "roots-link").symlink_to(sticky / "roots")
    with open_directory(sticky / "roots") as directory:
        assert directory.private
    with open_directory(sticky / "roots-link") as directory:
        assert directory.path == str(sticky / "roots") and directory.private
    with open_directory(sticky / "theirs") as directory:
        assert directory.problem is not None and "every user" in directory.problem
    with pytest.raises(UnsafePathError, match="theirs-link is a symbolic link"):
        open_directory(sticky / "theirs-link")
    with open_directory(sticky) as directory:
        assert directory.sticky and directory.writers == "every user"


def test_dotdot_after_a_symlink_is_the_kernels(tmp_path: Path) -> None:
    """``..`` after a symlink goes up from where the link led, as the kernel does (a
    lexical clean-up of the path would land somewhere else)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "link").symlink_to("../b/c")
    with open_directory(f"{tmp_path}/a/link/..") as directory:
        assert directory.path == str(tmp_path / "b")
        assert os.path.samestat(os.fstat(directory.fd), (tmp_path / "b").stat())


def test_missing_directories_are_made_only_when_asked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_directory(tmp_path / "x" / "y")
    with open_directory(tmp_path / "x" / "y", create=0o755) as directory:
        assert directory.private
    assert stat.S_IMODE((tmp_path / "x" / "y").stat().st_mode) == 0o755
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        open_directory(tmp_path / "file")


def test_private_file_is_made_and_handed_over(tmp_path: Path) -> None:
    leases = tmp_path / "leases"
    prepare_private_file(leases, "lease file", (OTHER, OTHER))
    st = leases.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OTHER, OTHER, 0o600)
    # Again (the next start): the user's file stays, content and all.
    leases.write_text("1700000000 02:00:00:00:00:01 192.168.86.10 a *\n")
    leases.chmod(0o644)
    prepare_private_file(leases, "lease file", (OTHER, OTHER))
    assert _state(leases)[:3] == (OTHER, OTHER, 0o600)
    assert leases.read_text().startswith("1700000000 ")


def test_a_symlink_at_the_name_is_refused_untouched(tmp_path: Path) -> None:
    before = _victim(tmp_path / "shadow")
    (tmp_path / "leases").symlink_to(tmp_path / "shadow")
    with pytest.raises(UnsafePathError, match=r"lease file is a symbolic link \(to .*/shadow\)"):
        prepare_private_file(tmp_path / "leases", "lease file", (OTHER, OTHER))
    assert _state(tmp_path / "shadow") == before


def test_a_hard_link_at_the_name_is_refused_untouched(tmp_path: Path) -> None:
    """A second name of a root file (on a host with fs.protected_hardlinks=0 any user
    can make one): never chowned or chmodded through it."""
    before = _victim(tmp_path / "shadow")
    os.link(tmp_path / "shadow", tmp_path / "leases")
    with pytest.raises(UnsafePathError, match=r"lease file has 2 names \(hard links\)"):
        prepare_private_file(tmp_path / "leases", "lease file", (OTHER, OTHER))
    assert _state(tmp_path / "shadow") == before


def test_something_other_than_a_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "leases")
    with pytest.raises(UnsafePathError, match="exists and is not a regular file"):
        prepare_private_file(tmp_path / "leases", "lease file")


def test_a_directory_another_user_can_write_is_refused(tmp_path: Path) -> None:
    """Nothing is created there: the user could replace the file later (dnsmasq opens
    it by name, as root, at every restart)."""
    user_dir = _other_users_dir(tmp_path / "u")
    with pytest.raises(
        UnsafePathError,
        match=rf"lease file: directory {user_dir} can be written by its owner, {re.escape(WHO)}; "
        "use a directory that only root can write",
    ):
        prepare_private_file(user_dir / "leases", "lease file", (OTHER, OTHER))
    assert not (user_dir / "leases").exists()
    # Deeper down, a directory of root's inside it is no better: the user can swap it.
    (user_dir / "sub").mkdir()
    with pytest.raises(UnsafePathError, match=rf"{user_dir}/sub is in {user_dir}"):
        prepare_private_file(user_dir / "sub" / "leases", "lease file")
    assert not (user_dir / "sub" / "leases").exists()


def test_sticky_directory_only_while_the_file_stays_roots(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    prepare_private_file(sticky / "leases", "lease file")
    assert _state(sticky / "leases")[:3] == (0, 0, 0o600)
    with pytest.raises(UnsafePathError, match="can be written by every user"):
        prepare_private_file(sticky / "leases", "lease file", (OTHER, OTHER))
    assert _state(sticky / "leases")[:3] == (0, 0, 0o600)
    # Another user's file there is theirs to replace at any time: refused.
    (sticky / "theirs").write_text("")
    os.chown(sticky / "theirs", OTHER, OTHER)
    with pytest.raises(UnsafePathError, match=f"belongs to {re.escape(WHO)}"):
        prepare_private_file(sticky / "theirs", "lease file")


def test_new_file_is_never_an_existing_one(tmp_path: Path) -> None:
    before = _victim(tmp_path / "shadow")
    (tmp_path / "caps").mkdir()
    (tmp_path / "caps" / "a.pcap").symlink_to(tmp_path / "shadow")
    with pytest.raises(FileExistsError):
        create_new_file(tmp_path / "caps" / "a.pcap", 0o600)
    assert _state(tmp_path / "shadow") == before
    fd = create_new_file(tmp_path / "caps" / "b.pcap", 0o600)
    os.close(fd)
    assert _state(tmp_path / "caps" / "b.pcap")[2] == 0o600


def test_new_file_not_through_a_symlink_someone_else_planted(tmp_path: Path) -> None:
    """A capture directory inside another user's directory, switched by that user for
    a symlink to a directory of root's: the file is not created there."""
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    user_dir = _other_users_dir(tmp_path / "u")
    (user_dir / "caps").symlink_to(elsewhere)
    os.lchown(user_dir / "caps", OTHER, OTHER)
    with pytest.raises(UnsafePathError, match="caps is a symbolic link"):
        create_new_file(user_dir / "caps" / "a.pcap", 0o600)
    assert list(elsewhere.iterdir()) == []
