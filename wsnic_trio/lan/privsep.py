"""Privilege separation for ``--user``: a root helper keeps the LAN, the server drops all.

A server started as root with ``--user NAME`` binds its listeners (ports below 1024
need root), then starts ``python -m wsnic_trio.lan.helper --in-place FD``: the same
helper as rootless mode, but it stays real root in the server's own network namespace
(no unshare). The helper builds the LAN with the root-mode code itself (:class:`Lan`
with its leftover detection and "not ours" refusal, :func:`lan_services` with NAT and
the ``ip_forward`` record and restore, the supervised dnsmasq with its restarts), and
hands the server a TAP fd per peer over the seqpacket socket, exactly as in rootless
mode (``nsproto``); it tries one TAP before it reports the LAN ready, and after set-up
it answers nothing but ``tap``. With several LANs there is still one helper: ``setup``
builds none, and each LAN is an ``add`` (built as above) until its ``remove``, so the
LANs made on demand after the drop are built as root too. Then the server drops every
privilege for good: supplementary groups, gid, uid (glibc applies ``setuid`` to every
thread, which matters because Trio makes netlink calls from worker threads), and checks
that no thread kept a capability and that ``setuid(0)`` fails.

Capabilities are per thread and the server would need more than ``CAP_NET_ADMIN``
anyway (dnsmasq restarts, nft clean-up and the sysctl restore at exit), so the server
keeps none at all: the only holder of privileges is the small single-purpose helper.

Lifetime: the helper tears everything down when its socket reads EOF, which is also
what happens when the server is killed with SIGKILL (the server cannot signal a root
process after the drop, and does not need to). At the same time it removes the unix
socket files the server bound as root (the server may no longer be allowed to).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import grp
import logging
import os
import pwd
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio
from pyroute2.netlink.exceptions import NetlinkError

from wsnic_trio.config import Config
from wsnic_trio.config.lans import DEFAULT_LAN
from wsnic_trio.errors import ConfigError, SetupError, WsnicError, first_error
from wsnic_trio.host.dnsmasq import serve_dnsmasq
from wsnic_trio.host.paths import RUN_ROOT, release_run_root
from wsnic_trio.lan.bridge import Lan
from wsnic_trio.lan.nsproto import (
    MAX_MESSAGE,
    HelperProtocolError,
    Reply,
    Request,
    config_from_wire,
    config_to_wire,
    decode_request,
    encode_reply,
    lan_of,
)
from wsnic_trio.lan.rootless import HelperLan, HelperPart, probe_lan
from wsnic_trio.lan.services import lan_services
from wsnic_trio.util.log import setup_logging

__all__ = [
    "Account",
    "SeparatedLan",
    "caps_of",
    "drop_privileges",
    "helper_main",
    "resolve_account",
    "unreadable_files",
]

log = logging.getLogger("wsnic_trio.privsep")

_STOP_TIMEOUT = 30.0
_DOCS = "docs/security.md"


# -- who the server becomes ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Account:
    """The user (and groups) the server runs as after set-up."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.user} (uid {self.uid}, gid {self.gid})"


def _lookup_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if name.isdigit():
        with contextlib.suppress(KeyError):
            return pwd.getpwuid(int(name))
    raise ConfigError(f"--user {name}: no such user")


def _lookup_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    if name.isdigit():
        with contextlib.suppress(KeyError):
            return grp.getgrgid(int(name)).gr_gid
    raise ConfigError(f"--group {name}: no such group")


def resolve_account(config: Config, *, euid: int) -> Account | None:
    """Check ``--user``/``--group`` before anything is touched (ConfigError: exit 2).

    Supplementary groups are the user's own from the group database (as a login, or
    nginx and dnsmasq, would give them), so access to e.g. a TLS key can be granted
    through a group; ``--group`` replaces only the primary group.
    """
    if config.server.user is None:
        if config.server.group is not None:
            raise ConfigError("--group needs --user (the user the server becomes)")
        return None
    if euid != 0:
        raise ConfigError(
            f"--user {config.server.user} needs a server started as root (it drops from root to "
            "that user after set-up); start it as root, or leave out --user"
        )
    entry = _lookup_user(config.server.user)
    if entry.pw_uid == 0:
        raise ConfigError(
            f"--user {config.server.user} is root: name an unprivileged user to run the server as"
        )
    gid = _lookup_group(config.server.group) if config.server.group is not None else entry.pw_gid
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    if 0 in groups and gid != 0:
        groups = tuple(g for g in groups if g != 0)
    return Account(entry.pw_name, entry.pw_uid, gid, groups)


def caps_of(status: str) -> dict[str, int]:
    """The capability sets (CapInh, CapPrm, CapEff, CapBnd, CapAmb) of a status file."""
    return {
        key: int(value.strip(), 16)
        for key, _, value in (line.partition(":") for line in status.splitlines())
        if key.startswith("Cap")
    }


def _ids_of(status: str, key: str) -> list[int]:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return [int(v) for v in line.split()[1:]]
    return []


def _verify_dropped(account: Account) -> None:
    """Every thread runs as the user with no capability, and root is out of reach."""
    for task in Path("/proc/self/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # a worker thread that just exited
        uids, gids = _ids_of(status, "Uid"), _ids_of(status, "Gid")
        caps = caps_of(status)
        if set(uids) != {account.uid} or set(gids) != {account.gid}:
            raise SetupError(f"thread {task.name} kept uids {uids} / gids {gids}")
        if caps.get("CapEff") or caps.get("CapPrm") or caps.get("CapAmb"):
            raise SetupError(f"thread {task.name} kept capabilities: {caps}")
    for regain in (os.setuid, os.seteuid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise SetupError("the server could become root again after dropping its privileges")


def drop_privileges(account: Account) -> None:
    """Become ``account`` for good (all threads), then prove it; SetupError if not."""
    os.setgroups(list(account.groups))
    os.setgid(account.gid)  # setresgid: real, effective and saved
    os.setuid(account.uid)  # as root: real, effective and saved; capabilities cleared
    _verify_dropped(account)
    log.info(
        "dropped privileges: running as %s, groups %s, no capabilities",
        account.describe(),
        ",".join(str(g) for g in account.groups) or "none",
    )


def unreadable_files(config: Config) -> list[str]:
    """Files the server re-reads on SIGHUP (or writes) that it cannot use after the drop."""
    problems = []
    for what, path in (
        ("--auth-token-file", config.server.auth_token_file),
        ("--wss-certificate", config.server.wss_certificate),
        ("--wss-private-key", config.server.wss_private_key),
    ):
        if path is not None and not os.access(path, os.R_OK):
            problems.append(f"{what} {path} is not readable (SIGHUP reloads will fail)")
    if config.server.pcap is not None and not os.access(config.server.pcap, os.W_OK | os.X_OK):
        problems.append(f"--pcap {config.server.pcap} is not writable (captures will fail)")
    return problems


# -- the server's side -----------------------------------------------------------------


def socket_files(listeners: Iterable[object]) -> list[tuple[str, int, int]]:
    """(path, dev, inode) of the unix socket files of ``listeners`` (anything with a
    ``unix`` attribute holding a ``transports._unixpath.UnixPath``).

    The identity is the one recorded when the socket was bound, not what the path shows
    now: a directory on the path that another user can write may meanwhile lead to
    another socket of the same name, which the helper must never remove."""
    found = []
    for listener in listeners:
        unix = getattr(listener, "unix", None)
        path, identity = getattr(unix, "path", None), getattr(unix, "identity", None)
        if isinstance(path, str) and isinstance(identity, tuple):
            dev, ino = identity
            found.append((path, int(dev), int(ino)))
    return found


class SeparatedLan(HelperLan):
    """Root mode with ``--user``: the LAN is built and kept by a root helper in this
    network namespace, so the server can give up every privilege after set-up."""

    helper_flags = ("--in-place",)
    helper_name = "privileged helper"

    def __init__(
        self,
        config: Config,
        account: Account,
        sockets: Sequence[tuple[str, int, int]] = (),
        *,
        several: bool = False,
    ) -> None:
        super().__init__(config)
        self.account = account
        self.sockets = list(sockets)
        #: Several LANs: the helper builds none at set-up, each comes by open_lan().
        self.several = several

    async def _start(self) -> None:
        if not self.several:
            log.info("mode: root mode, privilege separation (--user %s)", self.account.user)
        await self._spawn_helper()
        await self._call(
            Request(
                "setup",
                {
                    "config": config_to_wire(self.config, one_lan=self.several),
                    "owner": [self.account.uid, self.account.gid],
                    "sockets": [list(s) for s in self.sockets],
                    **({"several": True} if self.several else {}),
                },
            )
        )
        if not self.several:
            log.info("LAN ready: bridge %s, kept by the helper (pid %d, root)", *self._ids())
        else:
            log.info("LANs kept by the helper (pid %d, root)", self.helper_pid)

    def _ready(self, part: HelperPart) -> None:
        log.info(
            "LAN %s built: bridge %s, kept by the helper (pid %d, root)",
            part.name,
            part.bridge,
            self.helper_pid,
        )

    def _ids(self) -> tuple[str, int]:
        assert self.helper_pid is not None
        return self.bridge, self.helper_pid

    async def _stop(self) -> None:
        """Close the socket and wait for the helper's clean-up; after the drop the
        server may not signal it (it is root), so there is no kill here."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with trio.move_on_after(_STOP_TIMEOUT):
            await proc.wait()
            return
        with contextlib.suppress(PermissionError):
            proc.kill()  # still root: start-up failed before the drop
        log.warning("the privileged helper (pid %d) is still cleaning up", proc.pid)


# -- the helper's side: python -m wsnic_trio.lan.helper --in-place FD ----------------------


def _remove_sockets(sockets: Sequence[Any]) -> None:
    """Remove the server's unix socket files if they are still the ones it bound.

    The check and the unlink go through one open directory: after the drop the server's
    user may own a directory on a socket's path, and a path looked up twice can be
    switched in between (a symlink to another directory) to make root unlink a file of
    the same name somewhere else.
    """
    for entry in sockets:
        try:
            path, dev, ino = str(entry[0]), int(entry[1]), int(entry[2])
        except (ValueError, TypeError, IndexError):
            continue
        parent, name = os.path.split(os.path.abspath(path))
        try:
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) != (dev, ino):
                continue
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
        except OSError:
            continue
        finally:
            os.close(dir_fd)
        if parent == str(RUN_ROOT):
            release_run_root()


async def _send(sock: trio.socket.SocketType, reply: Reply, fd: int | None = None) -> None:
    if fd is None:
        await sock.send(encode_reply(reply))
    else:
        fds = array.array("i", [fd])
        await sock.sendmsg([encode_reply(reply)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])


class _TapMaker(Protocol):
    """All that answering requests needs of the LAN (tests pass a stand-in)."""

    async def create_tap(self) -> tuple[int, str]: ...


#: A request handler after set-up: (reply, fd to pass with it or None).
_Handler = Callable[[Request], Awaitable[tuple[Reply, int | None]]]


async def _answer(sock: trio.socket.SocketType, handle: _Handler) -> None:
    """Answer requests until the server's end of the socket closes: each one, malformed
    or failing, gets one reply and the loop goes on."""
    while True:
        data = await sock.recv(MAX_MESSAGE + 1)
        if not data:
            log.debug("server closed the control socket: stopping")
            return
        fd: int | None = None
        try:
            reply, fd = await handle(decode_request(data))
        except (WsnicError, OSError) as exc:
            reply = Reply(False, error=str(exc))
        except NetlinkError as exc:
            reply = Reply(False, error=f"netlink: {os.strerror(exc.code)}")
        try:
            await _send(sock, reply, fd)
        except OSError:
            return  # the server is gone
        finally:
            if fd is not None:
                os.close(fd)  # the TAP now lives as long as the server's copy


async def _answer_taps(sock: trio.socket.SocketType, lan: _TapMaker) -> None:
    """Answer ``tap`` requests (one LAN) until the server's end of the socket closes."""

    async def handle(request: Request) -> tuple[Reply, int | None]:
        if request.op != "tap":
            raise HelperProtocolError(f"{request.op} is not valid after setup")
        if lan_of(request) != DEFAULT_LAN:
            raise HelperProtocolError(f"no such LAN: {lan_of(request)}")
        fd, name = await lan.create_tap()
        return Reply(True, {"name": name}), fd

    await _answer(sock, handle)


@contextlib.asynccontextmanager
async def _built_lan(config: Config, owner: tuple[int, int]) -> AsyncIterator[Lan]:
    """One LAN as root mode builds it (bridge, trial TAP, leftovers, host filter and
    NAT, supervised dnsmasq), for as long as the block runs."""
    async with Lan(config) as lan:
        await probe_lan(lan, _DOCS)
        async with lan_services(config), trio.open_nursery() as nursery:
            if not config.lan.disable_dhcp:
                # The lease file becomes the server user's (mode 0600) before dnsmasq
                # opens it: only that user and root may read it, and dnsmasq rewrites
                # it in place, so owner and mode survive every update. It is handed
                # over through its open fd, and only in a directory that only root
                # can change (the user could otherwise put a link to any file there).
                await nursery.start(partial(serve_dnsmasq, config, lease_owner=owner))
            yield lan
            nursery.cancel_scope.cancel()


@dataclasses.dataclass
class _Running:
    lan: Lan
    scope: trio.CancelScope
    gone: trio.Event


class _Lans:
    """The LANs of a helper that serves several (``setup`` with ``several``): each one
    a task of the helper's nursery that owns all of it, made by ``add`` and ended by
    ``remove`` (or by EOF, which ends them all)."""

    def __init__(self, nursery: trio.Nursery, owner: tuple[int, int]) -> None:
        self.nursery = nursery
        self.owner = owner
        self.lans: dict[str, _Running] = {}
        self._busy: set[str] = set()

    def _get(self, name: str) -> _Running:
        running = self.lans.get(name)
        if running is None:
            raise HelperProtocolError(f"no such LAN: {name}")
        return running

    async def handle(self, request: Request) -> tuple[Reply, int | None]:
        name = lan_of(request)
        if request.op == "tap":
            fd, tap = await self._get(name).lan.create_tap()
            return Reply(True, {"name": tap}), fd
        if request.op == "add":
            return await self._add(name, config_from_wire(request.args["config"])), None
        if request.op == "remove":
            running = self._get(name)
            running.scope.cancel()
            await running.gone.wait()
            return Reply(True), None
        raise HelperProtocolError(f"{request.op} is not valid after setup")

    async def _add(self, name: str, config: Config) -> Reply:
        if name in self.lans:
            raise HelperProtocolError(f"LAN {name} exists already")
        taken = {r.lan.bridge for r in self.lans.values()}
        if config.lan.bridge in taken:
            raise HelperProtocolError(f"bridge {config.lan.bridge} is another LAN's")
        try:
            await self.nursery.start(self._run, name, config)
        except Exception as exc:  # also a group of them (the LAN's own nursery)
            error = first_error(exc)
            if not isinstance(error, WsnicError | OSError | NetlinkError):
                raise
            raise SetupError(_error_text(error)) from None
        return Reply(True, {"bridge": config.lan.bridge})

    async def _run(self, name: str, config: Config, *, task_status: trio.TaskStatus[None]) -> None:
        running: _Running | None = None
        try:
            with trio.CancelScope() as scope:
                async with _built_lan(config, self.owner) as lan:
                    running = self.lans[name] = _Running(lan, scope, trio.Event())
                    task_status.started()
                    await trio.sleep_forever()
        except Exception as exc:  # after add's reply: this LAN ends, the others go on
            if running is None:
                raise
            error = first_error(exc)
            expected = isinstance(error, WsnicError | OSError | NetlinkError)
            log.error("LAN %s failed: %s", name, _error_text(error), exc_info=not expected)
        finally:
            if running is not None:
                del self.lans[name]
                running.gone.set()


def _error_text(error: BaseException) -> str:
    return f"netlink: {os.strerror(error.code)}" if isinstance(error, NetlinkError) else str(error)


async def _session(sock: trio.socket.SocketType) -> None:
    data = await sock.recv(MAX_MESSAGE + 1)
    if not data:
        return
    try:
        request = decode_request(data)
        if request.op != "setup":
            raise HelperProtocolError(f"expected setup, got {request.op}")
        config = config_from_wire(request.args.get("config", {}))
        uid, gid = (int(v) for v in request.args.get("owner", [0, 0]))
    except (WsnicError, ValueError, TypeError) as exc:
        await _send(sock, Reply(False, error=str(exc)))
        return
    setup_logging(config.server.verbose, config.server.quiet, "wsnic-trio-helper")
    sockets = request.args.get("sockets", [])
    replied = False
    try:
        if request.args.get("several"):
            async with trio.open_nursery() as nursery:
                await _send(sock, Reply(True, {"pid": os.getpid()}))
                replied = True
                await _answer(sock, _Lans(nursery, (uid, gid)).handle)
                nursery.cancel_scope.cancel()
            return
        async with _built_lan(config, (uid, gid)) as lan:
            await _send(sock, Reply(True, {"pid": os.getpid()}))
            replied = True
            await _answer_taps(sock, lan)
    except* (WsnicError, OSError, NetlinkError) as group:
        text = _error_text(first_error(group))
        if replied:
            log.error("the LAN failed: %s", text)
        else:
            with contextlib.suppress(OSError):
                await _send(sock, Reply(False, error=text))
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_sockets, sockets)


async def _serve(sock: socket.socket) -> None:
    trio_sock = trio.socket.from_stdlib_socket(sock)
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_sigterm() -> None:
                async for _ in signals:
                    log.info("received SIGTERM: stopping")
                    nursery.cancel_scope.cancel()

            nursery.start_soon(on_sigterm)
            await _session(trio_sock)
            nursery.cancel_scope.cancel()


def helper_main(argv: list[str]) -> int:
    """``python -m wsnic_trio.lan.helper --in-place FD`` (started by wsnic-trio --user)."""
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m wsnic_trio.lan.helper --in-place FD", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("wsnic-trio helper: --in-place needs root", file=sys.stderr)
        return 2
    # It runs in its own session; a stray SIGINT/SIGHUP must not end the LAN.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    try:
        trio.run(_serve, sock)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    return 0
