"""Private network namespaces for tests, and processes running inside them.

Every integration test builds its own little world: a namespace for the server, more
for clients, veth links between them. Nothing here touches the host's own namespace,
and everything made is removed in ``finally`` blocks, also when a test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()
#: ``ip netns exec NAME`` bind-mounts the files of /etc/netns/NAME/ over /etc/ (ip-netns(8)).
NETNS_ETC = Path("/etc/netns")


def debian_hosts() -> str:
    """Debian 12's default /etc/hosts: ``localhost`` is 127.0.0.1 *and* ::1.

    Every namespace a test makes gets this file, so programs there resolve names as on
    a stock Debian host, whatever this machine's own /etc/hosts says.
    """
    return (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{socket.gethostname()}\n"
        "\n"
        "# The following lines are desirable for IPv6 capable hosts\n"
        "::1     localhost ip6-localhost ip6-loopback\n"
        "ff02::1 ip6-allnodes\n"
        "ff02::2 ip6-allrouters\n"
    )


def hosts_lookup(text: str, name: str) -> list[str]:
    """The addresses a hosts file gives ``name``, in file order."""
    found: list[str] = []
    for line in text.splitlines():
        fields = line.partition("#")[0].split()
        if len(fields) >= 2 and name.lower() in (f.lower() for f in fields[1:]):
            found.append(fields[0])
    return found


def _write_netns_etc(name: str, files: dict[str, str]) -> None:
    # Another test run may remove an empty /etc/netns at any moment: try again then.
    for _ in range(5):
        try:
            (NETNS_ETC / name).mkdir(parents=True, exist_ok=True)
            for filename, text in files.items():
                (NETNS_ETC / name / filename).write_text(text)
            return
        except FileNotFoundError:
            continue
    raise RuntimeError(f"cannot write {NETNS_ETC / name}")


def _remove_netns_etc(name: str) -> None:
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only when empty: it may hold other namespaces' files


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A short set-up command (``ip ...``); its output is returned, failures raise."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


class LineLog:
    """Lines a process writes, with a way to wait for one that matches."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.lines: list[str] = []
        self._changed = trio.Event()
        self.closed = False

    def add(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def text(self) -> str:
        return "\n".join(self.lines)

    def find(self, pattern: str, start: int = 0) -> re.Match[str] | None:
        rx = re.compile(pattern)
        for line in self.lines[start:]:
            m = rx.search(line)
            if m:
                return m
        return None

    async def wait_for(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        seen = start
        with trio.move_on_after(timeout):
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                if self.closed:
                    break
                await self._changed.wait()
        raise AssertionError(
            f"{self.label}: no line matching {pattern!r} within {timeout} s; output so far:\n"
            + self.text()[-4000:]
        )


class NsProcess:
    """A process started in a namespace, with its stderr (and stdout) collected."""

    def __init__(self, proc: trio.Process, log: LineLog) -> None:
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        with trio.fail_after(timeout):
            code = await self.proc.wait()
        # Let the reader collect the last lines.
        with trio.move_on_after(2):
            while not self.log.closed:
                await trio.sleep(0.01)
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.send_signal(sig)
        return await self.wait(timeout)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


class NetNS:
    """One network namespace made by a test."""

    def __init__(self, name: str, nursery: trio.Nursery) -> None:
        self.name = name
        self._nursery = nursery
        self.processes: list[NsProcess] = []

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "-n", self.name, *args, check=check)

    def links(self) -> list[str]:
        out = self.ip("-o", "link", "show").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    async def start(
        self, argv: Sequence[str], label: str | None = None, env: dict[str, str] | None = None
    ) -> NsProcess:
        """Run ``argv`` inside this namespace in the background, collecting its output."""
        proc = await trio.lowlevel.open_process(
            ["ip", "netns", "exec", self.name, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env([str(REPO)], env),
        )
        log = LineLog(label or argv[0])
        nsproc = NsProcess(proc, log)
        self.processes.append(nsproc)
        self._nursery.start_soon(_pump, proc, log)
        return nsproc

    async def start_wsnic(self, *args: str, ready: bool = True) -> NsProcess:
        """Start the server in this namespace; by default wait until it says it is ready."""
        proc = await self.start([sys.executable, "-m", "wsnic_trio", *args], label="wsnic-trio")
        if ready:
            await proc.log.wait_for(r"INFO ready: ", timeout=30)
        return proc

    async def exec(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the namespace to completion."""
        with trio.fail_after(timeout):
            return await trio.run_process(
                ["ip", "netns", "exec", self.name, *argv],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that belongs to this namespace (made by a thread that visits it)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                return socket.socket(family, type)
            finally:
                _setns(own)
        finally:
            os.close(own)
            os.close(target)

    def resolve(self, host: str) -> list[str]:
        """``host``'s addresses as programs in this namespace see them (its hosts file).

        The test process itself must not resolve names through this machine's own
        /etc/hosts, which may differ from the namespace's (Debian's layout).
        """
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        path = NETNS_ETC / self.name / "hosts"
        found = hosts_lookup(path.read_text(), host)
        if not found:
            raise OSError(f"{host!r} is not in {path}")
        return found

    async def connect_tcp(self, host: str, port: int) -> trio.SocketStream:
        """Connect from inside this namespace, trying each address of ``host`` in turn."""

        def make() -> socket.socket:
            errors: list[OSError] = []
            for address in self.resolve(host):
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sock = self.socket(family)
                sock.settimeout(10)
                try:
                    sock.connect((address, port))
                except OSError as exc:
                    sock.close()
                    errors.append(exc)
                    continue
                except BaseException:
                    sock.close()
                    raise
                sock.setblocking(False)
                return sock
            if len(errors) == 1:
                raise errors[0]
            why = "; ".join(str(exc) for exc in errors)
            # OSError(errno, ...) is the errno's subclass (ConnectionRefusedError...).
            raise OSError(errors[0].errno, f"cannot connect to {host} port {port}: {why}")

        sock = await trio.to_thread.run_sync(make)
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def taps(ns: NetNS, *, ready: bool = True) -> list[str]:
    """The server's client TAPs; with ``ready`` only those attached to the bridge and up.

    A TAP exists a moment before the server has configured it (MTU, master, up) in
    one netlink request; waiting for one must not count it then. Checks that no TAP
    exists (one deleted, none made for a refused peer) pass ``ready=False``.
    """
    out = ns.ip("-o", "link", "show").stdout
    names: list[str] = []
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        flags = line.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in line else []
        if name.startswith("wstap") and (not ready or (" master " in line and "UP" in flags)):
            names.append(name)
    return names


async def wait_taps(ns: NetNS, count: int, timeout: float = 10.0) -> list[str]:
    """Wait until exactly ``count`` client TAPs exist and all are ready; their names."""
    with trio.fail_after(timeout):
        while len(taps(ns, ready=False)) != count or len(found := taps(ns)) != count:
            await trio.sleep(0.02)
    return found


async def _pump(proc: trio.Process, log: LineLog) -> None:
    assert proc.stdout is not None
    buf = b""
    try:
        while True:
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                log.add(line.decode(errors="replace"))
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass
    finally:
        if buf:
            log.add(buf.decode(errors="replace"))
        log.close()


# The plain (synchronous) steps below are shared with the benchmark (bench/topology.py),
# which makes its own namespaces the same way but runs without trio.


def add_netns(name: str) -> None:
    """A new namespace with its loopback up."""
    run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")


def add_veth(a: str, a_if: str, b: str, b_if: str) -> None:
    """A veth pair: ``a_if`` in namespace ``a``, its peer ``b_if`` in namespace ``b``."""
    run("ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", b_if, "netns", b)


def child_env(code: Sequence[str], env: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment for a child, with ``code`` first on its PYTHONPATH.

    Unbuffered, so that its lines arrive when written, not when it exits.
    """
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env["PYTHONPATH"] = os.pathsep.join([*code, full_env.get("PYTHONPATH", "")])
    if env:
        full_env.update(env)
    return full_env


def kill_leftovers(name: str) -> None:
    """SIGKILL processes still inside a namespace we made (they are our own)."""
    out = run("ip", "netns", "pids", name, check=False).stdout
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@contextlib.asynccontextmanager
async def netns_world(nursery: trio.Nursery) -> AsyncIterator[NsFactory]:
    factory = NsFactory(nursery)
    try:
        yield factory
    finally:
        with trio.CancelScope(shield=True):
            await factory.destroy()


class NsFactory:
    """Makes namespaces and veth links for one test, and removes them all afterwards."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.namespaces: list[NetNS] = []

    def new(self, tag: str = "ns") -> NetNS:
        """A namespace with loopback up (127.0.0.1 and ::1) and Debian's /etc/hosts."""
        name = f"wt{os.getpid()}{tag}{next(_counter)}"
        ns = NetNS(name, self._nursery)
        self.namespaces.append(ns)  # before anything is made: destroy() removes it all
        _write_netns_etc(name, {"hosts": debian_hosts()})
        add_netns(name)
        if "inet6 ::1/128" not in ns.ip("-6", "addr", "show", "dev", "lo").stdout:
            # IPv6 may be off in new namespaces (the host's sysctl defaults): turn it on
            # in this one, which is the test's own.
            ipv6_on = "for c in all lo; do echo 0 >/proc/sys/net/ipv6/conf/$c/disable_ipv6; done"
            run("ip", "netns", "exec", name, "sh", "-c", ipv6_on, check=False)
            ns.ip("addr", "add", "::1/128", "dev", "lo", check=False)
            if "inet6 ::1/128" not in ns.ip("-6", "addr", "show", "dev", "lo").stdout:
                raise RuntimeError(f"{name}: no IPv6 ::1 on lo (is IPv6 disabled?)")
        return ns

    def link(self, a: NetNS, a_addr: str, b: NetNS, b_addr: str) -> tuple[str, str]:
        """A veth pair between two namespaces with the given CIDR addresses."""
        n = next(_counter)
        a_if, b_if = f"va{n}", f"vb{n}"
        add_veth(a.name, a_if, b.name, b_if)
        a.ip("addr", "add", a_addr, "dev", a_if)
        b.ip("addr", "add", b_addr, "dev", b_if)
        a.ip("link", "set", a_if, "up")
        b.ip("link", "set", b_if, "up")
        return a_if, b_if

    def routed(self) -> tuple[NetNS, NetNS]:
        """A server namespace ("srv") whose default route is a veth to an upstream
        namespace ("up", 198.18.1.2): the uplink that NAT and upstream DNS need."""
        srv, upstream = self.new("srv"), self.new("up")
        self.link(srv, "198.18.1.1/30", upstream, "198.18.1.2/30")
        srv.ip("route", "add", "default", "via", "198.18.1.2")
        return srv, upstream

    async def destroy(self) -> None:
        for ns in self.namespaces:
            for proc in ns.processes:
                if proc.proc.returncode is None:
                    proc.proc.kill()
                    with trio.move_on_after(10):
                        await proc.proc.wait()
            kill_leftovers(ns.name)
            run("ip", "netns", "del", ns.name, check=False)
            _remove_netns_etc(ns.name)
        self.namespaces.clear()
