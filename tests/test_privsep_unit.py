"""--user without a host: who the server becomes, what it reads in /proc/self/status, and
the root helper's side of the socket (with stand-ins for the LAN: nothing is built)."""

from __future__ import annotations

import array
import json
import os
import pwd
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from wsnic_trio.config import Config
from wsnic_trio.errors import ConfigError
from wsnic_trio.lan import privsep as _privsep
from wsnic_trio.lan.nsproto import (
    MAX_MESSAGE,
    Reply,
    Request,
    decode_reply,
    encode_request,
)
from wsnic_trio.lan.privsep import (
    _answer_taps,
    _session,
    caps_of,
    resolve_account,
    unreadable_files,
)
from wsnic_trio.lan.rootless import _fds_of


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this system has no user nobody")


def test_no_user_means_no_drop() -> None:
    assert resolve_account(Config(), euid=0) is None


@pytest.mark.parametrize(
    ("config", "euid", "message"),
    [
        (Config(user="nobody"), 1000, "needs a server started as root"),
        (Config(user="root"), 0, "is root"),
        (Config(group="nogroup"), 0, "--group needs --user"),
    ],
    ids=["user-needs-root", "root-is-not-a-drop", "group-needs-user"],
)
def test_refused_account(config: Config, euid: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_account(config, euid=euid)


def test_unknown_user_and_group() -> None:
    with pytest.raises(ConfigError, match="--user wsnic-no-such-user-7: no such user"):
        resolve_account(Config(user="wsnic-no-such-user-7"), euid=0)
    _nobody()
    with pytest.raises(ConfigError, match="--group wsnic-no-such-group-7: no such group"):
        resolve_account(Config(user="nobody", group="wsnic-no-such-group-7"), euid=0)


def test_user_with_rootless_contradicts() -> None:
    with pytest.raises(ConfigError, match="contradict"):
        Config(user="nobody", rootless=True)


def test_account_of_nobody() -> None:
    entry = _nobody()
    account = resolve_account(Config(user="nobody"), euid=0)
    assert account is not None
    assert (account.user, account.uid, account.gid) == ("nobody", entry.pw_uid, entry.pw_gid)
    assert entry.pw_gid in account.groups and 0 not in account.groups
    by_id = resolve_account(Config(user=str(entry.pw_uid)), euid=0)
    assert by_id == account


def test_caps_of() -> None:
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000001000\n"
    status += "CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n"
    caps = caps_of(status)
    assert caps["CapPrm"] == 1 << 12
    assert caps["CapEff"] == caps["CapBnd"] == (1 << 41) - 1
    assert caps["CapInh"] == caps["CapAmb"] == 0


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    config = Config(auth_token_file=missing, pcap=missing)
    problems = unreadable_files(config)
    assert any("--auth-token-file" in p and "SIGHUP" in p for p in problems)
    assert any("--pcap" in p for p in problems)
    assert unreadable_files(Config()) == []


# -- the root helper's side of the socket: only its protocol, one request at a time ------


class _FakeLan:
    """Stands in for the root helper's Lan: each TAP is the write end of a pipe, so the
    test can see when the helper lets go of it (the read end then reads EOF)."""

    def __init__(self, before_reply: Callable[[], None] = lambda: None) -> None:
        self.read_ends: list[int] = []
        self.before_reply = before_reply

    async def create_tap(self) -> tuple[int, str]:
        r, w = os.pipe()
        self.read_ends.append(r)
        self.before_reply()
        return w, f"wstap{len(self.read_ends) - 1}"

    def close(self) -> None:
        for fd in self.read_ends:
            os.close(fd)


def _all_closed(read_ends: list[int]) -> bool:
    """Whether every pipe's write end is closed everywhere (no copy left in the helper)."""
    return all(os.read(fd, 1) == b"" for fd in read_ends)


@pytest.mark.parametrize(
    "data",
    [
        encode_request(Request("setup", {"config": {}})),  # valid only as the first request
        encode_request(Request("connect", {"protocol": "tcp", "host": "10.0.0.1", "port": 22})),
        b'{"op": "tap", "args": {"name": "eth0"}}',
        b'{"op": "exec", "args": {"argv": ["sh"]}}',
        b'{"op": "tap", "ar',  # truncated
        b'{"op": "tap", "args": {}}' + b" " * (2 * MAX_MESSAGE),  # oversized
        b"\xff\xfe",
    ],
)
async def test_root_helper_answers_only_tap(data: bytes) -> None:
    """After set-up the root helper of --user does one thing: make a TAP. Anything else,
    malformed, truncated or oversized, is one error reply and no TAP; the next request
    on the same socket gets its TAP (as the only fd, which the helper does not keep)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lan = _FakeLan()
    with trio.socket.from_stdlib_socket(ours) as server, theirs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_answer_taps, trio.socket.from_stdlib_socket(theirs), lan)
            await server.send(data)
            msg, ancdata, _, _ = await server.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(16))
            reply = decode_reply(msg)
            assert not reply.ok and reply.error, reply
            assert ancdata == [] and lan.read_ends == []
            await server.send(encode_request(Request("tap")))
            msg, ancdata, _, _ = await server.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(16))
            assert decode_reply(msg) == Reply(True, {"name": "wstap0"})
            fds = _fds_of(ancdata)
            assert len(fds) == 1
            os.close(fds[0])
            server.close()  # EOF: the helper's loop ends
    assert _all_closed(lan.read_ends)
    lan.close()


async def test_root_helper_when_the_server_vanishes_mid_request() -> None:
    """The server goes away while its TAP is being made: the helper's loop ends without
    an error, and the new TAP's fd is closed (so the TAP is deleted)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lan = _FakeLan(before_reply=ours.close)
    with theirs:
        ours.send(encode_request(Request("tap")))
        with trio.fail_after(10):
            await _answer_taps(trio.socket.from_stdlib_socket(theirs), lan)
    assert len(lan.read_ends) == 1 and _all_closed(lan.read_ends)
    lan.close()


class _NoLan:
    def __init__(self, config: Config) -> None:
        raise AssertionError("a malformed setup request reached Lan()")


@pytest.mark.parametrize(
    "args",
    [
        {"config": [1]},
        {"config": {"bridge": {"name": "x"}}},
        {"config": {}, "owner": [1, 2, 3]},
        {"config": {}, "owner": "ab"},
        {"config": {}, "sockets": 5},
        {"config": {}, "sockets": [["/run/x.sock", "dev", 1]]},
        {"config": {"mtu": "9"}},  # valid JSON, refused by Config itself
    ],
)
async def test_root_helper_refuses_a_malformed_setup(
    args: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed set-up request is one error reply: the root helper builds nothing
    (Lan is a stub here that fails the test if reached) and does not crash."""
    monkeypatch.setattr(_privsep, "Lan", _NoLan)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with trio.socket.from_stdlib_socket(ours) as server, theirs:
        await server.send(json.dumps({"op": "setup", "args": args}).encode())
        with trio.fail_after(10):
            await _session(trio.socket.from_stdlib_socket(theirs))
        reply = decode_reply(await server.recv(MAX_MESSAGE))
        assert not reply.ok and reply.error, reply


def test_socket_files_removed_through_the_checked_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At exit the root helper removes the socket files the server bound. If the
    server's user switches a directory on the path for a symlink between the check and
    the unlink, root still unlinks only the socket it checked, never a file of the same
    name in the directory the symlink points to."""
    own, elsewhere = tmp_path / "api", tmp_path / "elsewhere"
    own.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "api.sock"
    victim.write_text("not a socket of ours")
    path = own / "api.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    st = path.stat()
    real_stat, real_lstat = os.stat, os.lstat
    switched: list[bool] = []

    def switch_after(real: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
        def checked(target: object, *args: object, **kwargs: object) -> os.stat_result:
            result = real(target, *args, **kwargs)
            if not switched and str(target) in (str(path), "api.sock"):
                switched.append(True)  # right after the check: switch the directory
                own.rename(tmp_path / "api.old")
                own.symlink_to(elsewhere)
            return result

        return checked

    monkeypatch.setattr(os, "stat", switch_after(real_stat))
    monkeypatch.setattr(os, "lstat", switch_after(real_lstat))
    with listener:
        _privsep._remove_sockets([[str(path), st.st_dev, st.st_ino]])
    monkeypatch.undo()
    assert switched
    assert victim.read_text() == "not a socket of ours"
    assert not (tmp_path / "api.old" / "api.sock").exists()  # the checked one is gone


async def test_root_helper_drops_fds_sent_to_it() -> None:
    """File descriptors attached to a request are not received by the root helper: the
    kernel drops them with the message, so the helper holds no copy."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    lan = _FakeLan()
    with trio.socket.from_stdlib_socket(ours) as server, theirs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_answer_taps, trio.socket.from_stdlib_socket(theirs), lan)
            fds = array.array("i", [w])
            await server.sendmsg([b'{"op": "exec"}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            os.close(w)
            assert not decode_reply(await server.recv(MAX_MESSAGE)).ok
            assert os.read(r, 1) == b""  # the in-flight copy was the last one: gone
            server.close()
    os.close(r)
    lan.close()
