"""DHCP and DNS for the LAN: a dnsmasq child the server supervises for its whole run.

dnsmasq runs in the foreground, reads no system configuration (only, with ``-i`` and
no ``--dns-upstream``, the host's resolv.conf for its upstream servers), binds only the
bridge, and logs to a pipe whose lines are relayed into our logger. It is "ready" only once it
said it started *and* /proc shows its sockets on ports 53 and 67. If it dies, the
supervisor logs why and starts it again with backoff; its leases survive in the lease
file. If it cannot start at all, start-up fails with a :class:`SetupError` naming the
cause (for a port conflict, the process that holds the port).

Lifetime: a dnsmasq must never outlive the server. Cancellation stops it (SIGTERM,
then SIGKILL). For ``kill -9`` of the server, each dnsmasq gets a tiny watchdog (``sh``)
whose stdin is a pipe only the server holds open: when the server dies, the pipe reads
EOF and the watchdog stops that dnsmasq. (``PR_SET_PDEATHSIG`` cannot do this job:
Trio forks from worker threads, and dnsmasq's switch to an unprivileged user clears
it.) Should even the watchdog be lost, the next start finds every dnsmasq whose
``--pid-file`` points into this LAN's run directory and stops it before starting over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import trio

from wsnic_trio.config import Config
from wsnic_trio.errors import SetupError
from wsnic_trio.host.paths import RUN_ROOT, release_run_root
from wsnic_trio.host.procs import (
    PortHolder,
    iter_processes,
    net_namespace_id,
    port_holders,
    read_cmdline,
)
from wsnic_trio.util.safefs import UnsafePathError, open_directory, prepare_private_file

__all__ = [
    "RESOLV_CONF",
    "DnsmasqPlan",
    "check_prerequisites",
    "clear_leftovers",
    "describe_dns",
    "dhcp_pool",
    "dnsmasq_argv",
    "dnsmasq_plan",
    "resolv_nameservers",
    "reverse_zones",
    "run_dir",
    "serve_dnsmasq",
    "uses_host_resolvers",
]

log = logging.getLogger("wsnic_trio.dnsmasq")
dnsmasq_log = logging.getLogger("wsnic_trio.dnsmasq.log")

#: The host's resolvers, for a LAN with -i and no --dns-upstream. dnsmasq runs in the
#: host's namespace, so a stub resolver on loopback (127.0.0.53) serves it as well.
RESOLV_CONF = Path("/etc/resolv.conf")
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
_BACKOFF_MIN = 1.0
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0  # an instance that ran this long resets the backoff
_TAIL = 12
_WATCHDOG = 'read -r _ ; kill -TERM "$1" 2>/dev/null'
_LOG_LINE = re.compile(r"^(dnsmasq(?:-\w+)?)(?:\[\d+\])?: (.*)$")


# -- sans-IO: what to run -------------------------------------------------------------


def dhcp_pool(
    subnet: ipaddress.IPv4Network, bridge_address: ipaddress.IPv4Address
) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """First and last pool address: the subnet minus network, bridge and broadcast."""
    first = subnet.network_address + 1
    last = subnet.broadcast_address - 1
    if bridge_address == first:
        first += 1
    elif bridge_address == last:
        last -= 1
    if first > last or subnet.prefixlen > 30:
        raise SetupError(f"subnet {subnet} leaves no address for DHCP clients")
    return first, last


@dataclasses.dataclass(frozen=True)
class DnsmasqPlan:
    """Everything the dnsmasq command line depends on."""

    bridge: str
    subnet: ipaddress.IPv4Network
    bridge_address: ipaddress.IPv4Address
    lease_time: int
    domain: str
    nameservers: Sequence[ipaddress.IPv4Address]
    upstream: Sequence[ipaddress.IPv4Address]
    lease_file: Path
    pid_file: Path
    mtu: int = 1500
    log_transactions: bool = False
    #: Forward other names to the servers this file lists (re-read when it changes);
    #: only when ``upstream`` is empty. None: no forwarding at all, unless ``upstream``.
    resolv_file: Path | None = None


def uses_host_resolvers(config: Config) -> bool:
    """Whether dnsmasq forwards non-LAN names to the host's resolvers (resolv.conf):
    with ``-i`` a LAN has the Internet and expects its names too, unless
    ``--dns-upstream`` chose the servers. Without ``-i`` the LAN gets its own names only."""
    return config.lan.enable_inet and not config.lan.dns_upstream


def reverse_zones(subnet: ipaddress.IPv4Network) -> list[str]:
    """The in-addr.arpa zones that hold the LAN's addresses: the LAN answers these
    itself (``--local``) and never asks upstream about them, also for a subnet that
    ``--bogus-priv`` (RFC 6303's private ranges) does not cover.

    One zone per whole octet: a /20 is 16 zones of a /24 each; a subnet smaller than
    a /24 is kept local with its whole /24.
    """
    octets = min(-(-subnet.prefixlen // 8), 3) or 1
    prefix = octets * 8
    if subnet.prefixlen > prefix:
        nets = [subnet.supernet(new_prefix=prefix)]
    else:
        nets = list(subnet.subnets(new_prefix=prefix))
    return [
        ".".join(reversed(str(net.network_address).split(".")[:octets])) + ".in-addr.arpa"
        for net in nets
    ]


def dnsmasq_argv(plan: DnsmasqPlan, binary: str = "dnsmasq") -> list[str]:
    first, last = dhcp_pool(plan.subnet, plan.bridge_address)
    pool_size = int(last) - int(first) + 1
    nameservers = ",".join(str(a) for a in plan.nameservers or [plan.bridge_address])
    if plan.upstream or plan.resolv_file is None:
        resolv = "--no-resolv"
    else:
        # dnsmasq re-reads the file when it changes (inotify, or a poll once a second):
        # a laptop that moves between networks keeps working. It ignores a server that
        # is its own listening address, so a resolv.conf naming the bridge cannot loop.
        resolv = f"--resolv-file={plan.resolv_file}"
    argv = [
        binary,
        "--keep-in-foreground",
        "--log-facility=-",
        "--conf-file=/dev/null",
        "--no-hosts",
        resolv,
        "--bind-interfaces",
        f"--interface={plan.bridge}",
        "--except-interface=lo",
        f"--pid-file={plan.pid_file}",
        f"--dhcp-leasefile={plan.lease_file}",
        f"--dhcp-range={first},{last},{plan.subnet.netmask},{plan.lease_time}",
        f"--dhcp-lease-max={pool_size}",
        # The LAN is ours: answer clients whose lease we forgot (e.g. a fresh lease file).
        "--dhcp-authoritative",
        f"--dhcp-option=option:router,{plan.bridge_address}",
        f"--dhcp-option=option:dns-server,{nameservers}",
        f"--domain={plan.domain}",
        f"--local=/{plan.domain}/",
        f"--local=/{'/'.join(reverse_zones(plan.subnet))}/",
        # Plain names (no dot) and private reverse zones are answered here or not at
        # all: they mean nothing to an upstream server.
        "--domain-needed",
        "--bogus-priv",
    ]
    if plan.mtu != 1500:
        argv.append(f"--dhcp-option=option:mtu,{plan.mtu}")
    if plan.upstream:
        argv += [f"--server={a}" for a in plan.upstream]
    if plan.log_transactions:
        argv += ["--log-queries", "--log-dhcp"]
    return argv


def run_dir(bridge: str, netns: int | None) -> Path:
    """This LAN's run directory. Bridge names are unique only within a network namespace,
    so the namespace's inode is part of the name: two LANs called wsbr0 in two
    namespaces never share (or clean up) each other's files."""
    return RUN_ROOT / f"net{netns or 0}-{bridge}"


def dnsmasq_plan(config: Config, rundir: Path) -> DnsmasqPlan:
    lease_file = config.lan.dhcp_lease_file
    return DnsmasqPlan(
        bridge=config.lan.bridge,
        subnet=config.lan.subnet,
        bridge_address=config.lan.bridge_address,
        lease_time=config.lan.dhcp_lease_time,
        domain=config.lan.dhcp_domain_name,
        nameservers=config.lan.dhcp_nameserver,
        upstream=config.lan.dns_upstream,
        lease_file=lease_file.absolute() if lease_file is not None else rundir / "dnsmasq.leases",
        pid_file=rundir / "dnsmasq.pid",
        mtu=config.lan.mtu,
        log_transactions=config.server.verbose >= 2,
        resolv_file=RESOLV_CONF if uses_host_resolvers(config) else None,
    )


def resolv_nameservers(text: str) -> list[str]:
    """The name servers a resolv.conf lists, as written (an IPv6 one may carry a
    ``%zone``); lines that are no address are skipped, as the resolver does."""
    found = []
    for line in text.splitlines():
        words = re.split(r"[#;]", line, maxsplit=1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(words[1].split("%", 1)[0])
                found.append(words[1])
    return found


def describe_dns(
    config: Config, resolv_text: str | None = None, unreadable: str = ""
) -> tuple[int, str]:
    """(log level, line) saying where the LAN's DNS sends names it does not know.

    ``resolv_text`` is the host's resolv.conf (None: it could not be read, because of
    ``unreadable``), used only when dnsmasq forwards to the host's resolvers. No usable
    server there is a warning, not an error: LAN names keep working, and dnsmasq starts
    forwarding as soon as the file lists one.
    """
    if config.lan.dns_upstream:
        servers = ", ".join(str(a) for a in config.lan.dns_upstream)
        return logging.INFO, f"DNS: forwarding non-LAN names to {servers} (--dns-upstream)"
    if not uses_host_resolvers(config):
        return logging.INFO, "DNS: LAN names only (no --enable-inet, no --dns-upstream)"
    hint = (
        "so only LAN names resolve for now; dnsmasq forwards other names as soon as the "
        "file lists a name server (it is re-read when it changes), or give --dns-upstream"
    )
    if resolv_text is None:
        return logging.WARNING, f"DNS: cannot read {RESOLV_CONF} ({unreadable}), {hint}"
    listed = resolv_nameservers(resolv_text)
    own = str(config.lan.bridge_address)
    usable = [s for s in listed if s != own]
    ignored = f" (ignoring {own}: that is this LAN's own dnsmasq)" if own in listed else ""
    if not usable:
        return logging.WARNING, f"DNS: {RESOLV_CONF} lists no usable name server{ignored}, {hint}"
    return (
        logging.WARNING if ignored else logging.INFO,
        f"DNS: forwarding non-LAN names to {', '.join(usable)} (from {RESOLV_CONF}, "
        f"re-read when it changes){ignored}",
    )


def _read_resolv_conf() -> tuple[str | None, str]:
    try:
        return RESOLV_CONF.read_text(errors="replace"), ""
    except OSError as exc:
        return None, exc.strerror or str(exc)


def lease_file_path(config: Config) -> Path:
    """Where dnsmasq keeps this LAN's leases (read by the server for --lock-ip)."""
    return dnsmasq_plan(config, run_dir(config.lan.bridge, net_namespace_id())).lease_file


def _classify(text: str) -> int:
    lower = text.lower()
    if "no upstream servers configured" in lower or lower.startswith("compile time options"):
        return logging.DEBUG  # expected: we pass --no-resolv on purpose
    if lower.startswith("warning") or "warning:" in lower:
        return logging.WARNING
    if "failed" in lower or "error" in lower or "illegal" in lower or "bad " in lower:
        return logging.ERROR
    return logging.INFO


# -- host checks and leftovers ----------------------------------------------------------


def _binary() -> str | None:
    return shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None
    )


def check_prerequisites(config: Config) -> None:
    """What can be checked before the host is touched (blocking; for a worker thread)."""
    if config.lan.disable_dhcp:
        return
    if _binary() is None:
        raise SetupError(
            "dnsmasq is not installed (Debian: apt-get install dnsmasq-base); "
            "or run without DHCP/DNS with --disable-dhcp"
        )
    # --dhcp-lease-file was checked before the bridge was made (wsnic_trio.cli.preflight).


def _leftover_pids(rundir: Path) -> list[int]:
    marker = f"--pid-file={rundir / 'dnsmasq.pid'}"
    me = os.getpid()
    return [pid for pid, argv in iter_processes() if pid != me and marker in argv]


def clear_leftovers(bridge: str) -> None:
    """Stop every dnsmasq a killed run of this LAN left, and remove its run directory.

    Blocking (it waits for those processes to go); call it from a worker thread. The
    caller has already made sure no live wsnic-trio owns this LAN.
    """
    rundir = run_dir(bridge, net_namespace_id())
    pids = _leftover_pids(rundir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            log.warning("stopping dnsmasq (pid %d) left behind by an earlier run", pid)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [p for p in pids if p in _leftover_pids(rundir)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if rundir.exists():
        _remove_run_dir(rundir)
        log.warning("removed %s left behind by an earlier run that did not stop cleanly", rundir)
    _prune_dead_namespaces()


_NET_INODE = re.compile(r"net:\[(\d+)\]")
_RUN_DIR_NAME = re.compile(r"^net(\d+)-")


def _live_namespaces() -> set[int]:
    """Inodes of network namespaces that still exist: those of a process or a mount."""
    live = {ino for ino in (net_namespace_id(pid) for pid, _ in iter_processes()) if ino}
    with contextlib.suppress(OSError):
        live.update(int(m) for m in _NET_INODE.findall(Path("/proc/self/mountinfo").read_text()))
    return live


def _prune_dead_namespaces() -> None:
    """Remove run directories of namespaces that are gone (a test's, or a container's,
    deleted while its server was being killed): nobody else would ever clear them, and
    a later namespace could be given the same inode."""
    try:
        entries = list(RUN_ROOT.iterdir())
    except OSError:
        return
    live = _live_namespaces()
    for entry in entries:
        m = _RUN_DIR_NAME.match(entry.name)
        if m and int(m.group(1)) not in live:
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s: its network namespace no longer exists", entry)
    release_run_root()


# -- supervision ----------------------------------------------------------------------


class _NotReady(Exception):
    """dnsmasq exited (or hung) before it was serving; ``args[0]`` says why."""


async def _relay_log(
    stream: trio.abc.ReceiveStream, tail: list[str], started: trio.Event, done: trio.Event
) -> None:
    buf = b""
    try:
        async for chunk in stream:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                _relay_line(raw.decode(errors="replace"), tail, started)
        if buf:
            _relay_line(buf.decode(errors="replace"), tail, started)
    finally:
        done.set()


def _relay_line(line: str, tail: list[str], started: trio.Event) -> None:
    line = line.rstrip()
    if not line:
        return
    m = _LOG_LINE.match(line)
    text = m.group(2) if m else line
    dnsmasq_log.log(_classify(text), "dnsmasq: %s", text)
    tail.append(text)
    del tail[:-_TAIL]
    if text.startswith("started, version"):
        started.set()


def _why(tail: Sequence[str]) -> str:
    """The line that explains a failure best: dnsmasq's last error, else its last line."""
    for text in reversed(tail):
        if _classify(text) >= logging.ERROR:
            return text
    return tail[-1] if tail else "no output"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _bound(pid: int, address: ipaddress.IPv4Address) -> bool:
    """Whether /proc shows ``pid`` holding DNS on ``address`` and DHCP (67)."""
    holders = port_holders([53, 67], address)
    dns = any(h.port == 53 and h.proto == "udp" and h.pid == pid for h in holders)
    dhcp = any(h.port == 67 and h.proto == "udp" and h.pid == pid for h in holders)
    return dns and dhcp


async def _guard(pid: int) -> None:
    """Keep a watchdog that stops dnsmasq ``pid`` if this process dies without cleanup."""
    read_end, write_end = os.pipe()
    try:
        watchdog = await trio.lowlevel.open_process(
            ["sh", "-c", _WATCHDOG, "wsnic-trio-dnsmasq-watchdog", str(pid)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    try:
        await trio.sleep_forever()
    finally:
        # The watchdog goes first: closing the pipe while it lives would make it signal a
        # pid that may, by then, belong to somebody else.
        with trio.move_on_after(_STOP_TIMEOUT, shield=True):
            watchdog.kill()
            await watchdog.wait()
        os.close(write_end)


async def _run_instance(
    argv: Sequence[str], address: ipaddress.IPv4Address, on_ready: Callable[[int], None]
) -> tuple[int | None, str]:
    """Run one dnsmasq until it exits; returns (exit status, why it ended).

    Raises :class:`_NotReady` when it never got to serving. Cancellation stops it.
    """
    tail: list[str] = []
    started, log_done = trio.Event(), trio.Event()
    failure: str | None = None
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        assert proc.stderr is not None
        nursery.start_soon(_relay_log, proc.stderr, tail, started, log_done)
        nursery.start_soon(_guard, proc.pid)
        ready = False
        with trio.move_on_after(_START_TIMEOUT):
            async with trio.open_nursery() as race:

                async def until_exit() -> None:
                    await proc.wait()
                    race.cancel_scope.cancel()

                race.start_soon(until_exit)
                await started.wait()
                # "started" is logged after the sockets are made; /proc is the proof.
                while True:
                    if await trio.to_thread.run_sync(_bound, proc.pid, address):
                        break
                    await trio.sleep(0.02)
                ready = True
                race.cancel_scope.cancel()
        if ready:
            on_ready(proc.pid)
        elif proc.returncode is None:
            failure = f"not serving after {_START_TIMEOUT:g} s: {_why(tail)}"
            nursery.cancel_scope.cancel()
        await proc.wait()
        with trio.move_on_after(1):
            await log_done.wait()  # the last lines say why it ended
        if not ready and failure is None:
            failure = f"{_why(tail)} ({_exit_text(proc.returncode)})"
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise _NotReady(failure)
    return proc.returncode, _why(tail)


def serves_another_interface(holder: PortHolder, bridge: str) -> bool:
    """A dnsmasq serving DHCP on one other interface only (``--bind-interfaces`` with one
    ``--interface``, as every LAN's dnsmasq runs): its socket on 0.0.0.0:67 is bound to
    that device (SO_BINDTODEVICE, which /proc/net/udp does not show), so it leaves this
    bridge's DHCP alone. That is how several LANs each have a dnsmasq of their own."""
    if holder.port != 67 or holder.pid is None:
        return False
    argv = read_cmdline(holder.pid)
    interfaces = [a.removeprefix("--interface=") for a in argv if a.startswith("--interface=")]
    return "--bind-interfaces" in argv and len(interfaces) == 1 and interfaces[0] != bridge


def _conflicts(address: ipaddress.IPv4Address, bridge: str) -> list[PortHolder]:
    return [
        h
        for h in port_holders([53, 67], address)
        if (h.proto == "udp" or h.port == 53) and not serves_another_interface(h, bridge)
    ]


def _start_error(why: str, address: ipaddress.IPv4Address, bridge: str) -> SetupError:
    holders = _conflicts(address, bridge)
    if holders:
        held = "; ".join(h.describe() for h in holders)
        return SetupError(
            f"dnsmasq cannot serve DHCP/DNS on {address}: port {held}. Stop that service "
            "or make it leave this bridge alone, or run with --disable-dhcp"
        )
    return SetupError(f"dnsmasq could not start: {why}")


async def serve_dnsmasq(
    config: Config,
    on_restart: Callable[[], None] | None = None,
    *,
    lease_owner: tuple[int, int] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run dnsmasq for the LAN until cancelled; ``started(pid)`` once it serves.

    ``on_restart`` is called before each start after the first (for the metrics).
    ``lease_owner`` (uid, gid): whom the lease file is handed to before dnsmasq opens it
    (``--user``: the server reads it after the drop). The run directory (pid file,
    temporary lease file) is removed when this ends.
    """
    binary = _binary()
    if binary is None:
        raise SetupError("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
    rundir = run_dir(config.lan.bridge, net_namespace_id())
    plan = dnsmasq_plan(config, rundir)
    argv = dnsmasq_argv(plan, binary)
    address = config.lan.bridge_address
    resolv_text, unreadable = None, ""
    if plan.resolv_file is not None:
        resolv_text, unreadable = await trio.to_thread.run_sync(_read_resolv_conf)
    level, text = describe_dns(config, resolv_text, unreadable)
    log.log(level, "%s", text)

    if await trio.to_thread.run_sync(_conflicts, address, config.lan.bridge):
        raise _start_error("", address, config.lan.bridge)
    await trio.to_thread.run_sync(_make_run_dir, rundir)
    # Leases name every client's MAC, address and hostname: readable by root (and with
    # --user the server's user) only. dnsmasq keeps the owner and mode of a file that
    # exists (it rewrites it in place).
    what = (
        f"--dhcp-lease-file {config.lan.dhcp_lease_file}"
        if config.lan.dhcp_lease_file is not None
        else f"lease file {plan.lease_file}"
    )
    try:
        await trio.to_thread.run_sync(prepare_private_file, plan.lease_file, what, lease_owner)
        await _supervise(argv, plan, address, task_status, on_restart)
    finally:
        with trio.move_on_after(_STOP_TIMEOUT, shield=True):
            await trio.to_thread.run_sync(_remove_run_dir, rundir)


def _make_run_dir(rundir: Path) -> None:
    """Make the LAN's run directory (and /run/wsnic-trio): root's alone, since dnsmasq
    (as root) writes its pid file and maybe the lease file there by name."""
    try:
        directory = open_directory(rundir, create=0o755)
    except OSError as exc:
        raise SetupError(f"cannot create {rundir}: {exc.strerror}") from None
    with directory:
        why = directory.problem or f"it can be written by {directory.writers}"
        if not directory.private:
            raise UnsafePathError(f"cannot use {rundir}: {why}")


def _remove_run_dir(rundir: Path) -> None:
    """Remove the LAN's run directory, and /run/wsnic-trio too once no LAN uses it."""
    shutil.rmtree(rundir, ignore_errors=True)
    release_run_root()  # stays while another LAN has its directory there


async def _supervise(
    argv: Sequence[str],
    plan: DnsmasqPlan,
    address: ipaddress.IPv4Address,
    task_status: trio.TaskStatus[int],
    on_restart: Callable[[], None] | None = None,
) -> None:
    reported = False
    delay = _BACKOFF_MIN
    restarting = False
    while True:
        if restarting and on_restart is not None:
            on_restart()
        restarting = True
        began = trio.current_time()

        def on_ready(pid: int) -> None:
            nonlocal reported
            first, last = dhcp_pool(plan.subnet, plan.bridge_address)
            if not reported:
                reported = True
                log.info(
                    "dnsmasq ready (pid %d): DHCP %s-%s, DNS domain %s on %s",
                    pid,
                    first,
                    last,
                    plan.domain,
                    address,
                )
                task_status.started(pid)
            else:
                log.info("dnsmasq ready again (pid %d); leases kept in %s", pid, plan.lease_file)

        try:
            code, why = await _run_instance(argv, address, on_ready)
        except _NotReady as exc:
            if not reported:
                raise _start_error(str(exc), address, plan.bridge) from None
            log.error("dnsmasq could not start again: %s; next try in %g s", exc, delay)
        else:
            if trio.current_time() - began > _STABLE_AFTER:
                delay = _BACKOFF_MIN
            log.error(
                "dnsmasq (pid file %s) ended unexpectedly (%s): %s; restarting in %g s",
                plan.pid_file,
                _exit_text(code),
                why,
                delay,
            )
        await trio.sleep(delay)
        delay = min(delay * 2, _BACKOFF_MAX)
