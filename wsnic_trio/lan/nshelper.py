"""The rootless namespace helper: ``python -m wsnic_trio.lan.helper FD``.

A fresh, single-threaded, blocking process: ``unshare(CLONE_NEWUSER)`` fails with
EINVAL in a process that has more than one thread, and a Trio server always has worker
threads. So the server starts this helper, which first unshares a user, network and
mount namespace, maps its own uid and gid to root there, and mounts a sysfs that shows
its own network namespace. As that namespace's root it builds the bridge, the NAT
rules and dnsmasq, and creates a TAP for each peer on request, passing the fd to the
server over the seqpacket socket ``FD`` (see ``nsproto``) and keeping no copy: a TAP
lives exactly as long as the server's fd. At ``setup`` it makes and removes one TAP
first, so that a /dev/net/tun the user may not open stops start-up with one line
(the server exits 2) instead of failing every client later.

Lifetime: the helper ignores terminal signals (it runs in its own session anyway) and
exits when its socket reads EOF, which is also what happens when the server is killed
with SIGKILL. dnsmasq, its only child, gets ``PR_SET_PDEATHSIG`` (reliable here: the
helper forks it from its only thread) and is stopped explicitly as well. With the
helper and dnsmasq gone, nothing holds the namespace and the kernel frees it.

``--in-place FD`` is the other mode (``--user``, see ``privsep``): no namespace, real
root in the server's own network namespace, and the root-mode LAN code run with Trio.
This helper does not run that code after unsharing (Trio itself would be fine then: it
starts threads only for ``to_thread``), because little of it holds in a user namespace.
``serve_dnsmasq`` keeps its run directory under /run/wsnic-trio and checks it and the
lease file with ``safefs``, whose trust is by owner: here the host's ``/``, ``/run`` and
``/tmp`` show as the overflow uid 65534, so every path would be refused; this helper
uses a private directory under $XDG_RUNTIME_DIR (or /tmp), adds dnsmasq options
(``--user=root``, ``--group=``, ``--no-ping``), and leaves the DNS line to the server,
which knows the uplink's forwarder. ``lan_services`` is host code: its leftover sweep
judges namespaces by /proc/PID/ns/net, which other users' processes do not let us read,
and ``host_filter`` takes the uplink from the default route at set-up, while slirp4netns
or pasta attach only afterwards (hence ``start``, with ``host_address`` added to the
allowed addresses). ``probe_lan`` takes the account from ``geteuid()``, 0 in here. The requests
differ too: ``--in-place`` answers one ``setup`` and then only ``tap`` (and ``add`` and
``remove`` with several LANs); here ``start``, ``tap`` and ``connect`` come in any
order, and an unshare failure answers all of them. Several LANs share the namespace
and its uplink: ``setup`` builds none, each is an ``add`` with its own bridge, table
(NAT or isolated) and dnsmasq, supervised by the same loop.
Finally, Trio creates a child's ``Popen`` in a worker thread, so ``PR_SET_PDEATHSIG``
would fire when that thread is retired: the Trio supervisor needs a watchdog process
per dnsmasq, while one thread forking makes it exact here. What both could share is
the dnsmasq restart loop (some 75 lines less here), at the price of that watchdog,
another backoff, and bypassing ``serve_dnsmasq``'s own checks: not worth it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import ipaddress
import logging
import os
import pwd
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wsnic_trio.config import Config
from wsnic_trio.config.lans import DEFAULT_LAN
from wsnic_trio.errors import SetupError, WsnicError
from wsnic_trio.host import netlink
from wsnic_trio.host.dnsmasq import _binary, _bound, _classify, _why, dnsmasq_argv, dnsmasq_plan
from wsnic_trio.host.nat import NatPlan, TableNote, build_ruleset, delete_script
from wsnic_trio.host.sysctl import IP_FORWARD, write_sysctl
from wsnic_trio.lan.bridge import BRIDGE_MAC, _bridge_up, _forwarding
from wsnic_trio.lan.nsproto import (
    MAX_MESSAGE,
    HelperProtocolError,
    Reply,
    Request,
    config_from_wire,
    connect_args,
    decode_request,
    encode_reply,
    lan_of,
)
from wsnic_trio.util.log import setup_logging

__all__ = [
    "account_name",
    "enter_namespaces",
    "keep_bridge_mtu",
    "main",
    "tap_failure",
    "tun_problem",
]

log = logging.getLogger("wsnic_trio.nshelper")

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
_CARRIER_TIMEOUT = 3.0
_TAIL = 12
TUN = "/dev/net/tun"
ROOTLESS_DOCS = "docs/rootless.md"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_namespaces() -> None:
    """Become root of a new user namespace that owns a new network and mount namespace.

    A process may map only its own ids, one each, and must deny setgroups before it may
    write its gid map; that is all wsnic needs.
    """
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    # Our own sysfs, so /sys/class/net shows this namespace's bridge and TAPs (the
    # bridge-port readiness check reads it). Mount changes stay in our mount namespace.
    _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    _check(_libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None), "mount sysfs")


def account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def tun_problem(user: str, docs: str, *, mode_matters: bool) -> str | None:
    """Why ``user`` cannot open /dev/net/tun here, and what to do; None if it can.

    Tried once at start-up, where the TAPs will be made, so that a LAN no client could
    join refuses to start with one line instead of starting and failing every client.
    ``mode_matters`` is False for real root, whom the mode does not stop.
    """
    try:
        fd = os.open(TUN, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.ENOENT:
            return (
                f"{TUN} is missing: load the tun module (modprobe tun), or pass the device "
                f"into the container (e.g. docker run --device {TUN}); see {docs}"
            )
        if exc.errno in (errno.ENXIO, errno.ENODEV):
            return f"{TUN} does not reach the TUN/TAP driver ({why}): modprobe tun; see {docs}"
        if exc.errno not in (errno.EACCES, errno.EPERM):
            return f"{TUN} cannot be opened by user {user}: {why}; see {docs}"
        try:
            mode: int | None = stat.S_IMODE(os.stat(TUN).st_mode)
        except OSError:
            mode = None
        shown = "" if mode is None else f" (mode {mode:04o})"
        if mode_matters and mode is not None and mode & 0o006 != 0o006:
            what = (
                f"make it usable by every user as udev does: chmod 0666 {TUN} (the driver "
                "checks the rest itself), or pass it into the container with that mode"
            )
        else:
            what = (
                "something other than its mode denies it (a container's device rules, or a "
                f"filesystem mounted nodev): allow the device (e.g. docker run --device {TUN})"
            )
        return f"{TUN} is not usable by user {user}{shown}: {why}; {what}; see {docs}"
    os.close(fd)
    return None


def keep_bridge_mtu(bridge: str, mtu: int) -> None:
    """Give the bridge its MTU back after the trial TAP, and for good.

    A bridge whose MTU was only given at creation follows its ports: when the last one
    goes (the trial TAP at start-up, or the last client later) the kernel sets it to
    1500. An MTU set on the existing bridge counts as the administrator's and stays.
    """
    with IPRoute() as ipr:
        ipr.link("set", index=socket.if_nametoindex(bridge), mtu=mtu)


def tap_failure(bridge: str, exc: BaseException, docs: str) -> str:
    """The start-up error when /dev/net/tun opens but the trial TAP still fails."""
    why = f"netlink: {os.strerror(exc.code)}" if isinstance(exc, NetlinkError) else str(exc)
    return f"cannot put a TAP on bridge {bridge}, so no client could join ({why}); see {docs}"


def _set_pdeathsig() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclasses.dataclass
class _Dnsmasq:
    proc: subprocess.Popen[bytes]
    tail: list[str]
    buf: bytes = b""


@dataclasses.dataclass
class _NsLan:
    """One LAN in the namespace: its config, its run directory and its dnsmasq."""

    name: str
    config: Config
    rundir: Path
    dnsmasq: _Dnsmasq | None = None
    dnsmasq_argv: list[str] = dataclasses.field(default_factory=list)
    restart_at: float | None = None
    #: What add() has made so far, for remove() (and for a failed add).
    bridge_made: bool = False
    table_made: bool = False


class Helper:
    """The request handlers and the little state the helper keeps."""

    def __init__(self, sock: socket.socket, unshare_error: str | None, user: str) -> None:
        self.sock = sock
        self.unshare_error = unshare_error
        self.user = user  # the account outside the namespace, for error messages
        self.started = False
        self.config: Config | None = None
        self.rundir: Path | None = None
        #: Several LANs (setup said so): each comes by add, none by setup.
        self.several = False
        #: The LANs, by name; the one LAN that setup builds is ``default``.
        self.lans: dict[str, _NsLan] = {}
        #: The uplink ``start`` named (several LANs: for each LAN that add NATs).
        self.uplink: str | None = None
        self.host_address: str | None = None

    # -- requests ---------------------------------------------------------------------

    def handle(self, request: Request) -> tuple[Reply, int | None]:
        if self.unshare_error is not None:
            return Reply(False, error=self.unshare_error), None
        if request.op == "setup":
            return self.setup(request), None
        if self.config is None:
            return Reply(False, error=f"{request.op} before setup"), None
        if request.op == "start":
            if self.started:
                return Reply(False, error="start twice"), None
            self.started = True  # also when it fails: its NAT rules may be in place
            return self.start(self.config, request), None
        if request.op == "connect":
            return connect(request)
        name = lan_of(request)
        if request.op == "tap":
            if not self.several and name == DEFAULT_LAN:
                return self.tap(self.config)
            return self.tap(self._lan(name).config)
        if not self.several:
            return Reply(False, error=f"{request.op}: this helper was set up for one LAN"), None
        if not self.started:
            return Reply(False, error=f"{request.op} before start"), None
        if request.op == "add":
            return self.add(name, config_from_wire(request.args["config"])), None
        self.remove(self._lan(name))
        return Reply(True), None

    def _lan(self, name: str) -> _NsLan:
        lan = self.lans.get(name)
        if lan is None:
            raise HelperProtocolError(f"no such LAN: {name}")
        return lan

    def setup(self, request: Request) -> Reply:
        if self.config is not None:
            return Reply(False, error="setup twice")
        config = config_from_wire(request.args.get("config", {}))
        setup_logging(config.server.verbose, config.server.quiet, "wsnic-trio-nshelper")
        self.config = config
        self.several = bool(request.args.get("several"))
        base = os.environ.get("XDG_RUNTIME_DIR") or None
        if base is not None and not os.access(base, os.W_OK):
            base = None
        self.rundir = Path(tempfile.mkdtemp(prefix="wsnic-trio-", dir=base))
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        if self.several:
            # Before the uplink (slirp4netns needs /dev/net/tun as well, and says less).
            problem = tun_problem(self.user, ROOTLESS_DOCS, mode_matters=True)
            if problem is not None:
                raise SetupError(problem)
            log.info("namespace made (helper pid %d) for several LANs", os.getpid())
            return Reply(True, {"rundir": str(self.rundir), "pid": os.getpid()})
        lan = self.lans[DEFAULT_LAN] = _NsLan(DEFAULT_LAN, config, self.rundir)
        self._build_bridge(lan)
        log.info(
            "namespace ready (helper pid %d): bridge %s with %s",
            os.getpid(),
            config.lan.bridge,
            _address(config),
        )
        return Reply(True, {"rundir": str(self.rundir), "pid": os.getpid()})

    def _build_bridge(self, lan: _NsLan) -> None:
        config = lan.config
        lan_ = config.lan
        alias = netlink.owner_alias("bridge")
        netlink.create_bridge(lan_.bridge, BRIDGE_MAC, _address(config), lan_.mtu, alias)
        lan.bridge_made = True
        self.probe(config)
        if config.lan.enable_inet or config.lan.route_to:
            write_sysctl(IP_FORWARD, "1")  # this namespace's own forwarding switch

    def start(self, config: Config, request: Request) -> Reply:
        uplink = request.args.get("uplink")
        host = request.args.get("host_address")
        if self.several:
            self.uplink, self.host_address = uplink, host
            return Reply(True)
        if uplink is not None:
            self._apply_table(config, uplink, host)
            log.info("NAT on: %s masqueraded out of %s", config.lan.subnet, uplink)
        lan = self.lans.get(DEFAULT_LAN)
        if not config.lan.disable_dhcp:
            assert self.rundir is not None
            if lan is None:  # only a test sets a config without setup
                lan = self.lans[DEFAULT_LAN] = _NsLan(DEFAULT_LAN, config, self.rundir)
            self._start_dnsmasq(lan)
        return Reply(True)

    def _apply_table(self, config: Config, uplink: str | None, host: str | None) -> None:
        """The LAN's nftables table: its NAT out of ``uplink``, or (None) no forwarding
        into or out of its bridge at all, as root mode's host filter."""
        allowed = list(config.lan.allow_private)
        if host is not None and uplink is not None:
            allowed.append(ipaddress.IPv4Network(f"{host}/32"))
        plan = NatPlan(
            bridge=config.lan.bridge,
            subnet=config.lan.subnet,
            bridge_address=config.lan.bridge_address,
            uplink=uplink,
            allow_private=allowed,
            note=TableNote(os.getpid(), config.lan.bridge, "1"),
            route_to=config.lan.route_to,
        )
        _nft(build_ruleset(plan))

    def add(self, name: str, config: Config) -> Reply:
        """Another LAN (several LANs): bridge, table (NAT if the LAN has it, else an
        isolated LAN), dnsmasq. A failure undoes what this add made."""
        if name in self.lans:
            raise HelperProtocolError(f"LAN {name} exists already")
        if any(lan.config.lan.bridge == config.lan.bridge for lan in self.lans.values()):
            raise HelperProtocolError(f"bridge {config.lan.bridge} is another LAN's")
        uplink = self.uplink if config.lan.enable_inet else None
        if config.lan.enable_inet and uplink is None:
            raise SetupError(f"LAN {name} has --enable-inet, but the namespace has no uplink")
        assert self.rundir is not None
        rundir = self.rundir / name
        rundir.mkdir(mode=0o700)
        lan = _NsLan(name, config, rundir)
        try:
            self._build_bridge(lan)
            self._apply_table(config, uplink, self.host_address)
            lan.table_made = True
            if not config.lan.disable_dhcp:
                self._start_dnsmasq(lan)
        except BaseException:
            self._undo(lan)
            raise
        self.lans[name] = lan
        log.info(
            "LAN %s ready in the namespace: bridge %s with %s, %s",
            name,
            config.lan.bridge,
            _address(config),
            f"NAT out of {uplink}" if uplink else "isolated",
        )
        return Reply(True, {"rundir": str(rundir)})

    def remove(self, lan: _NsLan) -> None:
        del self.lans[lan.name]
        self._undo(lan)
        log.info("LAN %s removed from the namespace", lan.name)

    def _undo(self, lan: _NsLan) -> None:
        self.stop_dnsmasq(lan)
        if lan.table_made:
            with contextlib.suppress(SetupError, OSError):
                _nft(delete_script(lan.config.lan.bridge))
        if lan.bridge_made:
            with contextlib.suppress(OSError, NetlinkError):
                netlink.delete_link(lan.config.lan.bridge)
        if lan.rundir != self.rundir:
            shutil.rmtree(lan.rundir, ignore_errors=True)

    def probe(self, config: Config) -> None:
        """Make and remove one TAP as a client will need it (SetupError if that fails):
        the server must not say "ready" when every client would fail."""
        problem = tun_problem(self.user, ROOTLESS_DOCS, mode_matters=True)
        if problem is not None:
            raise SetupError(problem)
        try:
            fd, _ = _create_tap(config)
            os.close(fd)  # the TAP goes with its only fd
            keep_bridge_mtu(config.lan.bridge, config.lan.mtu)
        except (WsnicError, OSError, NetlinkError) as exc:
            raise SetupError(tap_failure(config.lan.bridge, exc, ROOTLESS_DOCS)) from None

    def tap(self, config: Config) -> tuple[Reply, int | None]:
        fd, name = _create_tap(config)
        deadline = time.monotonic() + _CARRIER_TIMEOUT
        while not (_forwarding(name) and _bridge_up(config.lan.bridge)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
        return Reply(True, {"name": name}), fd

    # -- dnsmasq ----------------------------------------------------------------------

    def _start_dnsmasq(self, lan: _NsLan) -> None:
        if not lan.dnsmasq_argv:
            binary = _binary()
            if binary is None:
                raise SetupError("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
            # As the namespace's root: no switch to "nobody" (unmapped here), no group
            # change (only our own gid exists), and no ICMP probing of offered addresses.
            lan.dnsmasq_argv = [
                *dnsmasq_argv(dnsmasq_plan(lan.config, lan.rundir), binary),
                "--user=root",
                "--group=",
                "--no-ping",
            ]
        proc = subprocess.Popen(
            lan.dnsmasq_argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_set_pdeathsig,
        )
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        lan.dnsmasq = dm = _Dnsmasq(proc, [])
        address = lan.config.lan.bridge_address
        deadline = time.monotonic() + _START_TIMEOUT
        started = False
        while time.monotonic() < deadline:
            said_started, eof = self._pump_dnsmasq(lan)
            started = started or said_started
            if eof:
                tail = list(dm.tail)
                self.stop_dnsmasq(lan)
                raise SetupError(f"dnsmasq could not start: {_why(tail)}")
            if started and _bound(proc.pid, address):
                log.info("dnsmasq ready (pid %d) on %s", proc.pid, address)
                return
            select.select([proc.stderr], [], [], 0.02)
        self.stop_dnsmasq(lan)
        raise SetupError(f"dnsmasq not serving after {_START_TIMEOUT:g} s")

    def _pump_dnsmasq(self, lan: _NsLan) -> tuple[bool, bool]:
        """Relay what dnsmasq logged: (it said it started, its stderr is at EOF)."""
        dm = lan.dnsmasq
        if dm is None or dm.proc.stderr is None:
            return False, False
        started = False
        try:
            chunk = os.read(dm.proc.stderr.fileno(), 65536)
        except BlockingIOError:
            return False, False
        if not chunk:
            return False, True
        dm.buf += chunk
        *lines, dm.buf = dm.buf.split(b"\n")
        for raw in lines:
            text = raw.decode(errors="replace").rstrip()
            if not text:
                continue
            text = text.split(": ", 1)[1] if text.startswith("dnsmasq") and ": " in text else text
            log.log(_classify(text), "dnsmasq: %s", text)
            dm.tail.append(text)
            del dm.tail[:-_TAIL]
            started = started or text.startswith("started, version")
        return started, False

    def stop_dnsmasq(self, lan: _NsLan) -> None:
        dm, lan.dnsmasq = lan.dnsmasq, None
        lan.restart_at = None
        if dm is None:
            return
        if dm.proc.poll() is None:
            dm.proc.terminate()
            try:
                dm.proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                dm.proc.kill()
                dm.proc.wait()
        if dm.proc.stderr is not None:
            dm.proc.stderr.close()

    def _restart_dnsmasq(self, lan: _NsLan) -> None:
        lan.restart_at = None
        try:
            self._start_dnsmasq(lan)
        except (SetupError, OSError) as exc:
            log.error("%s; next try in 5 s", exc)
            lan.restart_at = time.monotonic() + 5.0

    def _watch_dnsmasq(self, lan: _NsLan, readable: list[int]) -> None:
        dm = lan.dnsmasq
        if dm is None or dm.proc.stderr is None or dm.proc.stderr.fileno() not in readable:
            return
        _, eof = self._pump_dnsmasq(lan)
        if eof:
            code = dm.proc.wait()
            log.error("dnsmasq ended unexpectedly (exit %s); restarting in 1 s", code)
            self.stop_dnsmasq(lan)
            lan.restart_at = time.monotonic() + 1.0

    # -- the loop ---------------------------------------------------------------------

    def serve(self) -> None:
        """Answer requests until the server's end of the socket closes."""
        while True:
            watched: list[int] = [self.sock.fileno()]
            restarts: list[float] = []
            for lan in self.lans.values():
                if lan.dnsmasq is not None and lan.dnsmasq.proc.stderr is not None:
                    watched.append(lan.dnsmasq.proc.stderr.fileno())
                if lan.restart_at is not None:
                    restarts.append(lan.restart_at)
            timeout = max(0.0, min(restarts) - time.monotonic()) if restarts else None
            readable, _, _ = select.select(watched, [], [], timeout)
            for lan in list(self.lans.values()):
                if lan.restart_at is not None and time.monotonic() >= lan.restart_at:
                    self._restart_dnsmasq(lan)
                self._watch_dnsmasq(lan, readable)
            if self.sock.fileno() in readable and not self._one_request():
                return

    def _one_request(self) -> bool:
        data = self.sock.recv(MAX_MESSAGE + 1)
        if not data:
            log.debug("server closed the control socket: stopping")
            return False
        fd: int | None = None
        try:
            reply, fd = self.handle(decode_request(data))
        except (WsnicError, OSError) as exc:
            reply = Reply(False, error=str(exc))
        except NetlinkError as exc:
            reply = Reply(False, error=f"netlink: {os.strerror(exc.code)}")
        try:
            if fd is None:
                self.sock.send(encode_reply(reply))
            else:
                socket.send_fds(self.sock, [encode_reply(reply)], [fd])
        except OSError:
            return False  # the server is gone
        finally:
            if fd is not None:
                os.close(fd)
        return True

    def cleanup(self) -> None:
        for lan in self.lans.values():
            self.stop_dnsmasq(lan)
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)


def _address(config: Config) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"{config.lan.bridge_address}/{config.lan.subnet.prefixlen}")


def _nft(script: str) -> None:
    nft = shutil.which("nft") or "nft"
    result = subprocess.run([nft, "-f", "-"], input=script.encode(), capture_output=True)
    if result.returncode != 0:
        raise SetupError(f"nft failed: {result.stderr.decode(errors='replace').strip()}")


def _create_tap(config: Config) -> tuple[int, str]:
    queued = config.lan.max_queued_bytes
    return netlink.create_tap_on_bridge(
        config.lan.tap_prefix + "%d",
        config.lan.bridge,
        config.lan.mtu,
        netlink.owner_alias("tap"),
        txqlen=max(8, queued // config.lan.max_frame) if queued else None,
    )


def connect(request: Request) -> tuple[Reply, int | None]:
    """A socket connected from this namespace (the remote side of a port forward).

    Never blocks: a TCP socket is handed over while its connect is still in progress
    (EINPROGRESS), and the server waits for it; UDP's connect() only sets the peer.
    A connect that fails at once is an error reply; the socket is closed either way.
    """
    protocol, host, port = connect_args(request)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            return Reply(False, error=f"connect to {host}:{port}: {os.strerror(code)}"), None
        return Reply(True), sock.detach()
    finally:
        sock.close()  # a no-op after detach()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m wsnic_trio.lan.helper FD (started by wsnic-trio)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # SIGTERM (from an operator or a test's cleanup): exit through the same cleanup.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(fileno=int(argv[0]))
    user = account_name(os.getuid())  # before the namespace maps it to root
    error: str | None = None
    try:
        enter_namespaces()
    except OSError as exc:
        error = (
            f"cannot create a user namespace ({exc.strerror or exc}); unprivileged user "
            "namespaces may be disabled or restricted here: see docs/rootless.md"
        )
    helper = Helper(sock, error, user)
    try:
        helper.serve()
    finally:
        helper.cleanup()
        with contextlib.suppress(OSError):
            sock.close()
    return 0
