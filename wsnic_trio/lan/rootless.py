"""Rootless mode: the same LAN, built by a namespace helper for an unprivileged user.

:class:`RootlessLan` has the interface of :class:`~wsnic_trio.lan.bridge.Lan` (an async
context manager with ``open_tap()``), so the server and the relay code do not know
which one they use. The server itself never changes namespace: its listeners and
sockets stay where it was started. The helper (``lan.nshelper``, a fresh single-threaded
process) owns a user + network namespace with the bridge, NAT and dnsmasq in it, and
sends each TAP back as a file descriptor. The uplink (slirp4netns, or pasta) is
started here, in the host namespace, against the helper's pid.

Lifetimes need no thread and no ``PR_SET_PDEATHSIG`` (Trio forks from worker threads,
so the "parent" that signal watches is a thread that may be long gone): the helper
exits on EOF of its socket, slirp4netns on EOF of its ``--exit-fd`` pipe, dnsmasq when
the helper goes. Only this process holds the other ends, so ``kill -9`` of the server
ends them all and the kernel frees the namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import trio
from pyroute2.netlink.exceptions import NetlinkError

from wsnic_trio.config import Config
from wsnic_trio.errors import ConfigError, SetupError, WsnicError
from wsnic_trio.host.dnsmasq import describe_dns, uses_host_resolvers
from wsnic_trio.host.tap import TapDevice
from wsnic_trio.lan.bridge import Lan
from wsnic_trio.lan.nshelper import account_name, keep_bridge_mtu, tap_failure, tun_problem
from wsnic_trio.lan.nsproto import (
    FD_OPS,
    MAX_MESSAGE,
    HelperProtocolError,
    Reply,
    Request,
    config_to_wire,
    connect_request,
    decode_reply,
    encode_request,
)
from wsnic_trio.lan.services import lan_services

__all__ = [
    "SLIRP_HOST",
    "HelperLan",
    "HelperPart",
    "RootlessLan",
    "choose_rootless",
    "has_net_admin",
    "open_backend",
    "pasta_argv",
    "probe_lan",
    "slirp4netns_argv",
    "this_mode",
    "uplink_dns",
]

log = logging.getLogger("wsnic_trio.rootless")

#: slirp4netns's fixed addresses: the namespace side, and the host's loopback.
SLIRP_DEVICE = "tap0"
SLIRP_HOST = "10.0.2.2"
PASTA_DEVICE = "pasta0"
#: The uplinks' DNS forwarders: what is sent there goes to this host's resolvers, from
#: the host's side (so a stub resolver on the host's loopback serves the LAN as well).
SLIRP_DNS = "10.0.2.3"
PASTA_DNS = "169.254.1.1"  # any address pasta routes; --dns-forward makes it the forwarder
_REQUEST_TIMEOUT = 30.0
_UPLINK_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
_CAP_NET_ADMIN = 12


# -- sans-IO: which mode, which command line ------------------------------------------


def has_net_admin(status: str) -> bool:
    """Whether /proc/self/status text shows CAP_NET_ADMIN in the effective set."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    return False


def choose_rootless(config: Config, *, euid: int, net_admin: bool) -> tuple[bool, str]:
    """(rootless?, why) for the log line that tells the user which mode runs."""
    if config.server.rootless:
        return True, "rootless mode (--rootless)"
    if euid == 0 or net_admin:
        return False, "root mode"
    return True, "rootless mode (not root and no CAP_NET_ADMIN: chosen automatically)"


def uplink_dns(config: Config) -> str | None:
    """The uplink's DNS forwarder that dnsmasq uses in rootless mode, where root mode
    reads the host's resolv.conf (which may name the host's loopback, a different one
    from the namespace's); None when the LAN gets no forwarding or --dns-upstream's."""
    if config.lan.disable_dhcp or not uses_host_resolvers(config):
        return None
    return PASTA_DNS if config.server.uplink == "pasta" else SLIRP_DNS


def slirp4netns_argv(
    binary: str, pid: int, *, ready_fd: int, exit_fd: int, host_loopback: bool, dns: bool = False
) -> list[str]:
    argv = [
        binary,
        "--configure",
        "--mtu=65520",
        f"--ready-fd={ready_fd}",
        f"--exit-fd={exit_fd}",
        "--enable-sandbox",
        "--enable-seccomp",
    ]
    if not dns:
        argv.append("--disable-dns")
    if not host_loopback:
        argv.append("--disable-host-loopback")
    return [*argv, str(pid), SLIRP_DEVICE]


def pasta_argv(
    binary: str, pid: int, *, pid_file: Path, host_loopback: bool, dns: bool = False
) -> list[str]:
    """pasta configures the namespace like the host's uplink, then detaches; it quits
    by itself when the namespace is gone."""
    argv = [
        binary,
        "--config-net",
        "--quiet",
        f"--ns-ifname={PASTA_DEVICE}",
        f"--pid={pid_file}",
        # "--dns=none" would stop the forwarding too; not "--dns=": older pasta (2023)
        # refuses an empty address.
        f"--dns-forward={PASTA_DNS}" if dns else "--dns=none",
    ]
    if not host_loopback:
        argv.append("--no-map-gw")
    return [*argv, str(pid)]


# -- I/O ------------------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SetupError(
            f"rootless mode with --enable-inet needs {name} (Debian: apt-get install {package})"
        )
    return path


def _check_prerequisites(config: Config) -> None:
    if config.lan.inet_iface is not None:
        raise ConfigError(
            "--inet-iface has no meaning in rootless mode: the uplink is --uplink "
            f"({config.server.uplink})"
        )
    if not os.path.exists("/dev/net/tun"):
        raise SetupError("/dev/net/tun is missing (is the tun module loaded?)")
    if (
        not config.lan.disable_dhcp
        and shutil.which("dnsmasq") is None
        and not any(os.access(p, os.X_OK) for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq"))
    ):
        raise SetupError(
            "dnsmasq is not installed (Debian: apt-get install dnsmasq-base); "
            "or run without DHCP/DNS with --disable-dhcp"
        )
    if config.lan.enable_inet:
        _tool("nft", "nftables")
        if config.server.uplink == "pasta":
            _tool("pasta", "passt")
        else:
            _tool("slirp4netns", "slirp4netns")


@dataclasses.dataclass
class _Uplink:
    """A running uplink process and the fd whose closing tells it to stop."""

    proc: trio.Process | None
    exit_fd: int | None = None
    pid: int | None = None  # pasta's daemon, which is not our child


class HelperLan:
    """A LAN whose bridge, NAT and dnsmasq belong to a helper process (``lan.nshelper``);
    the server asks it for each TAP and gets the fd over a seqpacket socketpair.

    Two kinds: :class:`RootlessLan` (the helper unshares a user + network namespace) and
    ``lan.privsep.SeparatedLan`` (``--user``: the helper stays root in the server's own
    namespace while the server drops its privileges). ``config`` is the effective one.
    """

    #: Extra arguments of ``python -m wsnic_trio.lan.helper`` before the fd number.
    helper_flags: tuple[str, ...] = ()
    #: What the helper is called in error messages.
    helper_name = "helper"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bridge = config.lan.bridge
        self.helper_pid: int | None = None
        self._proc: trio.Process | None = None
        self._sock: trio.socket.SocketType | None = None
        self._lock = trio.Lock()
        self._broken: str | None = None

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self._stop()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _spawn_helper(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "wsnic_trio.lan.helper",
                    *self.helper_flags,
                    str(theirs.fileno()),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Its own session: a Ctrl-C for the server's terminal must not reach the
                # helper or the uplink; they stop when the server lets go of them.
                start_new_session=True,
            )
        finally:
            theirs.close()
        self._sock = trio.socket.from_stdlib_socket(ours)
        self.helper_pid = self._proc.pid

    async def _stop(self) -> None:
        """Let go of the helper and wait (bounded) until it is gone."""
        if self._sock is not None:
            self._sock.close()  # the helper reads EOF: dnsmasq stops, the helper exits
            self._sock = None
        if self._proc is not None:
            await _wait_or_kill(self._proc)
            self._proc = None

    async def _call(self, request: Request) -> Reply:
        reply, fd = await self._exchange(request)
        if fd is not None:
            os.close(fd)
        return reply

    async def _exchange(self, request: Request) -> tuple[Reply, int | None]:
        """One request and its reply; shielded, so a cancelled caller cannot leave a
        reply in the socket for the next one. A helper that stops answering breaks the
        LAN for every later request."""
        if self._broken is not None:
            raise SetupError(self._broken)
        sock = self._sock
        assert sock is not None
        async with self._lock:
            try:
                with trio.fail_after(_REQUEST_TIMEOUT, shield=True):
                    await sock.send(encode_request(request))
                    data, ancdata, _, _ = await sock.recvmsg(
                        MAX_MESSAGE + 1,
                        socket.CMSG_SPACE(4 * 4),
                        socket.MSG_CMSG_CLOEXEC,
                    )
            except (trio.TooSlowError, OSError) as exc:
                self._broken = f"the {self.helper_name} does not answer ({exc or 'timeout'})"
                raise SetupError(self._broken) from None
        fds = _fds_of(ancdata)
        if not data:
            for fd in fds:
                os.close(fd)
            self._broken = f"the {self.helper_name} exited (see its log lines above)"
            raise SetupError(self._broken)
        try:
            reply = decode_reply(data)
            if not reply.ok:
                raise SetupError(reply.error)
            if len(fds) > 1 or (request.op not in FD_OPS and fds):
                raise HelperProtocolError(f"unexpected fds with the reply to {request.op}")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return reply, (fds[0] if fds else None)

    def open_tap(self) -> contextlib.AbstractAsyncContextManager[TapDevice]:
        """A fresh TAP on the bridge, made by the helper; deleted when the block ends."""
        return self._open_tap(None)

    @contextlib.asynccontextmanager
    async def _open_tap(self, lan: str | None) -> AsyncIterator[TapDevice]:
        args = {} if lan is None else {"lan": lan}
        reply, fd = await self._exchange(Request("tap", args))
        if fd is None:
            raise HelperProtocolError("the helper's tap reply carried no fd")
        tap = TapDevice(fd, str(reply.values.get("name", "?")))
        try:
            yield tap
        finally:
            tap.close()

    # -- several LANs: one helper, a LAN per add/remove --------------------------------

    @contextlib.asynccontextmanager
    async def open_lan(self, name: str, config: Config) -> AsyncIterator[HelperPart]:
        """LAN ``name`` (``config`` is its view, ``Config.for_lan``), built by this
        helper, which must have been set up for several LANs; removed when the block
        ends (and with all the others when the helper goes)."""
        wire = config_to_wire(self._wire(config), one_lan=True)
        reply = await self._call(Request("add", {"lan": name, "config": wire}))
        try:
            part = HelperPart(self, name, self._effective(config, reply))
            self._ready(part)
            yield part
        finally:
            with trio.CancelScope(shield=True):
                await self._remove(name)

    async def _remove(self, name: str) -> None:
        if self._sock is None or self._broken is not None:
            return  # the helper goes (or went) with every LAN
        try:
            await self._call(Request("remove", {"lan": name}))
        except (SetupError, HelperProtocolError) as exc:
            log.warning("LAN %s: the %s did not remove it: %s", name, self.helper_name, exc)

    def _wire(self, config: Config) -> Config:
        """A LAN's config as the helper gets it."""
        return config

    def _effective(self, config: Config, reply: Reply) -> Config:
        """A LAN's config as the server uses it, once the helper built it."""
        return config

    def _ready(self, part: HelperPart) -> None:
        """Say that a LAN is up (the log line of this mode)."""


class HelperPart:
    """One of the LANs of a helper that serves several: the LAN backend of that LAN."""

    def __init__(self, helper: HelperLan, name: str, config: Config) -> None:
        self.helper = helper
        self.name = name
        self.config = config
        self.bridge = config.lan.bridge

    def open_tap(self) -> contextlib.AbstractAsyncContextManager[TapDevice]:
        return self.helper._open_tap(self.name)


class RootlessLan(HelperLan):
    """The LAN of rootless mode; ``config`` is the effective one (its lease file is the
    helper's, so ``--lock-ip`` reads the leases where dnsmasq writes them)."""

    helper_name = "rootless helper"

    def __init__(self, config: Config, *, lans: Sequence[Config] | None = None) -> None:
        """``lans``: several LANs, one namespace. Each comes by :meth:`open_lan`; these
        are the views (``Config.for_lan``) of those known at start and of the LANs made
        on demand, which say whether the namespace needs its uplink."""
        super().__init__(config)
        self.rundir: Path | None = None
        self._uplink: _Uplink | None = None
        self.lans = None if lans is None else list(lans)
        self._uplink_dns = uplink_dns(config) is not None

    async def open_remote(self, protocol: str, host: str, port: int) -> trio.socket.SocketType:
        """A socket connected to ``host:port`` from inside the LAN's namespace: the
        remote side of a port forward (see ``control.forward``), made by the helper.

        TCP: the helper hands the socket over while its connect is in progress; here we
        wait until it is writable and read ``SO_ERROR`` (the caller bounds the wait).
        Failures are ``OSError``; a helper that does not answer is a ``SetupError``.
        """
        _, fd = await self._exchange(connect_request(protocol, host, port))
        if fd is None:
            raise HelperProtocolError("the helper's connect reply carried no fd")
        # No checkpoint before the socket owns the fd: a cancellation cannot leak it.
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
        try:
            if protocol == "tcp":
                await trio.lowlevel.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _start(self) -> None:
        if self.lans is not None:
            await self._start_several(self.lans)
            return
        config = self.config
        await trio.to_thread.run_sync(_check_prerequisites, config)
        await self._spawn_helper()
        dns = uplink_dns(config)
        # The helper's dnsmasq gets the uplink's forwarder as its --dns-upstream.
        wire = config.replace(dns_upstream=(ipaddress.IPv4Address(dns),)) if dns else config
        reply = await self._call(Request("setup", {"config": config_to_wire(wire)}))
        self.rundir = Path(str(reply.values["rundir"]))
        if not config.lan.disable_dhcp and config.lan.dhcp_lease_file is None:
            self.config = config.replace(dhcp_lease_file=self.rundir / "dnsmasq.leases")
        uplink_device: str | None = None
        host_address: str | None = None
        if config.lan.enable_inet:
            uplink_device, host_address = await self._start_uplink()
        await self._call(Request("start", {"uplink": uplink_device, "host_address": host_address}))
        if dns:
            log.info(
                "DNS: forwarding non-LAN names to %s, the DNS forwarder of %s (it asks "
                "this host's resolvers, from /etc/resolv.conf)",
                dns,
                config.server.uplink,
            )
        elif not config.lan.disable_dhcp:
            level, text = describe_dns(config)
            log.log(level, "%s", text)
        log.info(
            "rootless LAN ready: bridge %s in the namespace of helper pid %d%s",
            self.bridge,
            self.helper_pid,
            f", uplink {config.server.uplink}"
            if uplink_device
            else ", no uplink (no --enable-inet)",
        )

    async def _start_several(self, lans: Sequence[Config]) -> None:
        """The namespace and its one uplink, and no LAN yet (see :meth:`open_lan`)."""
        for lan in lans:
            await trio.to_thread.run_sync(_check_prerequisites, lan)
        await self._spawn_helper()
        setup = {"config": config_to_wire(self.config, one_lan=True), "several": True}
        reply = await self._call(Request("setup", setup))
        self.rundir = Path(str(reply.values["rundir"]))
        self._uplink_dns = any(uplink_dns(lan) is not None for lan in lans)
        uplink_device: str | None = None
        host_address: str | None = None
        if any(lan.lan.enable_inet for lan in lans):
            uplink_device, host_address = await self._start_uplink()
        await self._call(Request("start", {"uplink": uplink_device, "host_address": host_address}))
        if self._uplink_dns:
            log.info(
                "DNS: forwarding non-LAN names to the DNS forwarder of %s (it asks this "
                "host's resolvers, from /etc/resolv.conf)",
                self.config.server.uplink,
            )
        log.info(
            "rootless namespace up: helper pid %d%s",
            self.helper_pid,
            f", uplink {self.config.server.uplink}" if uplink_device else ", no uplink",
        )

    def _wire(self, config: Config) -> Config:
        dns = uplink_dns(config)
        # The helper's dnsmasq gets the uplink's forwarder as its --dns-upstream.
        return config.replace(dns_upstream=(ipaddress.IPv4Address(dns),)) if dns else config

    def _effective(self, config: Config, reply: Reply) -> Config:
        if config.lan.disable_dhcp or config.lan.dhcp_lease_file is not None:
            return config
        rundir = Path(str(reply.values.get("rundir", "")))
        return config.replace(dhcp_lease_file=rundir / "dnsmasq.leases")

    def _ready(self, part: HelperPart) -> None:
        log.info(
            "rootless LAN %s built: bridge %s in the namespace of helper pid %d",
            part.name,
            part.bridge,
            self.helper_pid,
        )

    async def _start_uplink(self) -> tuple[str, str | None]:
        assert self.helper_pid is not None
        assert self.rundir is not None
        config = self.config
        if config.server.uplink == "pasta":
            return await self._start_pasta()
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        log_path = self.rundir / "slirp4netns.log"
        self._uplink = _Uplink(None, exit_w)
        try:
            with open(log_path, "wb") as log_file:  # noqa: ASYNC230 (a local tmpfs, once)
                self._uplink.proc = await trio.lowlevel.open_process(
                    slirp4netns_argv(
                        _tool("slirp4netns", "slirp4netns"),
                        self.helper_pid,
                        ready_fd=ready_w,
                        exit_fd=exit_r,
                        host_loopback=config.server.host_loopback,
                        dns=self._uplink_dns,
                    ),
                    pass_fds=[ready_w, exit_r],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                )
        finally:
            os.close(ready_w)
            os.close(exit_r)
        ready = trio.lowlevel.FdStream(ready_r)
        got = b""  # also what a timeout leaves
        try:
            with trio.move_on_after(_UPLINK_TIMEOUT) as waited:
                got = await ready.receive_some(16)
        finally:
            await ready.aclose()
        if not got.startswith(b"1"):
            text = await trio.to_thread.run_sync(_tail, log_path)
            what = (
                f"did not report ready within {_UPLINK_TIMEOUT:g} s"
                if waited.cancelled_caught
                else "did not come up"
            )
            raise SetupError(f"slirp4netns {what}: {text or 'no output'}")
        log.info(
            "uplink: slirp4netns (pid %d)%s",
            self._uplink.proc.pid,
            f"; {SLIRP_HOST} is this host's loopback" if config.server.host_loopback else "",
        )
        return SLIRP_DEVICE, SLIRP_HOST if config.server.host_loopback else None

    async def _start_pasta(self) -> tuple[str, str | None]:
        assert self.helper_pid is not None
        assert self.rundir is not None
        pid_file = self.rundir / "pasta.pid"
        result = await trio.run_process(
            pasta_argv(
                _tool("pasta", "passt"),
                self.helper_pid,
                pid_file=pid_file,
                host_loopback=self.config.server.host_loopback,
                dns=self._uplink_dns,
            ),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if result.returncode != 0:
            why = (result.stderr or result.stdout).decode(errors="replace").strip()
            raise SetupError(f"pasta did not come up: {why.splitlines()[-1] if why else ''}")
        with contextlib.suppress(OSError, ValueError):
            self._uplink = _Uplink(None, pid=int(pid_file.read_text().strip()))
        log.info("uplink: pasta (pid %s)", self._uplink.pid if self._uplink else "?")
        # pasta maps the host's default gateway address to its loopback; the LAN may
        # reach it only when asked to (found by the helper as its default gateway).
        return PASTA_DEVICE, None

    async def _stop(self) -> None:
        """Let go of the helper and the uplink, and wait (bounded) until they are gone."""
        if self._sock is not None:
            self._sock.close()  # the helper reads EOF: dnsmasq stops, the helper exits
            self._sock = None
        uplink, self._uplink = self._uplink, None
        if uplink is not None:
            if uplink.exit_fd is not None:
                os.close(uplink.exit_fd)  # slirp4netns reads EOF on --exit-fd and exits
            if uplink.proc is not None:
                await _wait_or_kill(uplink.proc)
            if uplink.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(uplink.pid, signal.SIGTERM)
        if self._proc is not None:
            await _wait_or_kill(self._proc)
            self._proc = None


def _fds_of(ancdata: Sequence[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, usable, 4))
    return fds


def _tail(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError as exc:
        return "" if exc.errno == errno.ENOENT else str(exc)
    return " / ".join(lines[-3:])


async def _wait_or_kill(proc: trio.Process) -> None:
    with trio.move_on_after(_STOP_TIMEOUT):
        await proc.wait()
        return
    proc.kill()
    await proc.wait()


async def probe_lan(lan: Lan, docs: str) -> None:
    """Make and remove one TAP, as every client will need one (root mode, and the root
    helper of ``--user``): a LAN that cannot give any client a TAP (no /dev/net/tun, a
    container's device rules) refuses to start with one line, instead of the server
    saying "ready" and failing every client. Rootless mode's helper does the same."""
    euid = os.geteuid()  # not root: CAP_NET_ADMIN alone, which the mode still binds

    def check() -> str | None:
        return tun_problem(account_name(euid), docs, mode_matters=euid != 0)

    problem = await trio.to_thread.run_sync(check)
    if problem is not None:
        raise SetupError(problem)
    try:
        fd, _ = await lan.create_tap()
        os.close(fd)  # the TAP goes with its only fd
        await trio.to_thread.run_sync(keep_bridge_mtu, lan.bridge, lan.config.lan.mtu)
    except (WsnicError, OSError, NetlinkError) as exc:
        raise SetupError(tap_failure(lan.bridge, exc, docs)) from None


async def this_mode(config: Config) -> tuple[bool, str]:
    """:func:`choose_rootless` for this process."""
    try:
        status = await trio.Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    return choose_rootless(config, euid=os.geteuid(), net_admin=has_net_admin(status))


@contextlib.asynccontextmanager
async def open_backend(
    config: Config, *, several: bool = False
) -> AsyncIterator[Lan | RootlessLan]:
    """The LAN for this run, root or rootless (the log says which, and why).

    In root mode the host-side services (leftover cleanup, NAT) come with the bridge;
    in rootless mode the helper runs NAT and dnsmasq in its namespace.
    """
    rootless, why = await this_mode(config)
    if not several:  # with several LANs the server says it once for all of them
        log.info("mode: %s", why)
    if rootless:
        async with RootlessLan(config) as lan:
            yield lan
    else:
        async with Lan(config) as lan:
            await probe_lan(lan, "docs/user-guide.md")
            async with lan_services(config):
                yield lan
