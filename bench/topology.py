"""Network namespaces, veth links and processes made by the benchmark, and removed by it.

Everything the benchmark does happens in namespaces it creates here (``ip netns add``),
linked by veth pairs on 198.18.0.0/15, with the LAN 192.168.86.0/24 inside them. The
host's own interfaces, routes, sysctls and firewall are never touched. A ``World`` is a
context manager: on exit (also after an error or Ctrl-C) it stops every process it
started, by PID, kills whatever is still inside its namespaces (only ours), and deletes
the namespaces, which takes their veths, bridges and TAPs with them.

The plain steps (a namespace, a veth pair, a child's environment, killing what is left
in a namespace) are the tests' own (:mod:`tests.netns`); what is the benchmark's is that
it runs without trio, logs to files and builds the scenarios' worlds (:func:`setup`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.netns import add_netns, add_veth, child_env, kill_leftovers, run

from .scenarios import Scenario, Transport

__all__ = ["Namespace", "Proc", "Setup", "World", "run", "setup"]

_ids = itertools.count()

BENCH = Path(__file__).resolve().parent
PY = sys.executable

#: Directories put first on the PYTHONPATH of every process started (see ``snapshot_code``).
CODE_PATH: list[str] = [str(BENCH.parent)]

HOST_IP = "192.168.86.1"
CLIENT_IPS = ("192.168.86.11", "192.168.86.12")
BRIDGE = "wsbr0"
CLIENT_TAP = "bt0"
IPERF_PORT = "5201"


def _poll(done: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Whether ``done()`` came true within ``timeout`` seconds, asked every ``interval``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(interval)
    return False


class Proc:
    """A background process inside a namespace, its output going to a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path, label: str) -> None:
        self.popen = popen
        self.log = log
        self.label = label

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for(self, pattern: str, timeout: float = 20.0, count: int = 1) -> None:
        """Wait until ``pattern`` occurs ``count`` times in the output (bounded)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(rx.findall(self.text())) >= count:
                return
            if not self.alive():
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.label}: {pattern!r} not seen {count}x within {timeout} s "
            f"(exit {self.popen.poll()}); output:\n{self.text()[-3000:]}"
        )

    def cpu_seconds(self) -> float:
        """user + system CPU time so far (0 when the process is gone)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_kib(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def nofile_limit(self) -> str:
        try:
            for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return f"{soft}/{hard}"
        except OSError:
            pass
        return "?"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; only this process, by its PID."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


class Namespace:
    """One network namespace made by the benchmark."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "-n", self.name, *args, check=check)

    def exec(
        self, *argv: str, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *argv, timeout=timeout, check=check)

    def start(
        self,
        argv: Sequence[str],
        label: str,
        env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> Proc:
        log = self.world.tmp / f"{next(_ids)}-{label}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                env=child_env(CODE_PATH, env),
                start_new_session=True,  # a Ctrl-C on the terminal reaches only us
            )
        proc = Proc(popen, log, label)
        self.world.procs.append(proc)
        return proc

    def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        def listening() -> bool:
            return bool(self.exec("ss", "-Hltn", f"sport = :{port}").stdout.strip())

        if not _poll(listening, timeout):
            raise RuntimeError(f"nothing listens on port {port} in {self.name} after {timeout} s")

    def wait_link(self, name: str, timeout: float = 15.0) -> None:
        if not _poll(lambda: self.ip("link", "show", name, check=False).returncode == 0, timeout):
            raise RuntimeError(f"no link {name} in {self.name} after {timeout} s")

    def wait_ping(self, address: str, timeout: float = 15.0) -> None:
        # No pause between tries: a ping that fails has waited its second already.
        ping = ("ping", "-c", "1", "-W", "1", address)
        if not _poll(lambda: self.exec(*ping).returncode == 0, timeout, 0):
            raise RuntimeError(f"{self.name} cannot reach {address} within {timeout} s")


class World:
    """The namespaces and processes of one scenario; everything goes on exit."""

    def __init__(self, tag: str = "") -> None:
        self.prefix = f"wb{os.getpid() % 100000}{tag}"
        self.namespaces: list[Namespace] = []
        self.procs: list[Proc] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="wsnic-bench-")
        self.tmp = Path(self._tmp.name)
        self._links = itertools.count()

    def namespace(self, tag: str) -> Namespace:
        name = f"{self.prefix}{tag}"
        ns = Namespace(self, name)
        self.namespaces.append(ns)  # before it is made: destroy() removes it all
        add_netns(name)
        return ns

    def veth(self, a: Namespace, b: Namespace) -> tuple[str, str]:
        """A veth pair between two namespaces; returns the interface names (a side, b side)."""
        n = next(self._links)
        a_if, b_if = f"bv{n}a", f"bv{n}b"
        add_veth(a.name, a_if, b.name, b_if)
        return a_if, b_if

    def close(self) -> None:
        """The end of ``with contextlib.closing(World()) as world:`` (see :meth:`destroy`)."""
        self.destroy()

    def destroy(self) -> None:
        """Stop our processes (by PID), then delete our namespaces. Never raises."""
        # Ctrl-C during clean-up must not leave namespaces behind.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in reversed(self.procs):
                with contextlib.suppress(Exception):
                    proc.stop()
            for ns in self.namespaces:
                # Anything still inside one of our namespaces was started by us.
                kill_leftovers(ns.name)
            for ns in self.namespaces:
                run("ip", "netns", "del", ns.name, check=False)
            self.namespaces.clear()
            self.procs.clear()
            self._tmp.cleanup()
        finally:
            signal.signal(signal.SIGINT, old)


# -- building a scenario's world ------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    world: World
    server_ns: Namespace
    client_ns: list[Namespace]
    server: Proc | None
    clients: list[Proc]


def build_c(out_dir: Path) -> Path:
    """Compile the C reference relay from bench/c with gcc (-O2 -Wall -Wextra)."""
    if shutil.which("gcc") is None:
        raise SystemExit("bench: gcc is missing (apt-get install gcc libssl-dev)")
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / "minirelay"
    src = BENCH / "c" / "minirelay.c"
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src), "-lcrypto"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or result.stderr.strip():
        raise SystemExit(f"bench: building {src} failed:\n{result.stderr}")
    return exe


def make_bridge(ns: Namespace, mtu: int) -> None:
    ns.ip("link", "add", BRIDGE, "mtu", str(mtu), "type", "bridge")
    ns.ip("addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    ns.ip("link", "set", BRIDGE, "up")


def uplink(world: World, client: Namespace, server: Namespace, i: int) -> str:
    """Client ``i``'s veth to the server, 198.18.i.2 to 198.18.i.1; the server's address."""
    a, b = world.veth(client, server)
    client.ip("addr", "add", f"198.18.{i}.2/30", "dev", a)
    server.ip("addr", "add", f"198.18.{i}.1/30", "dev", b)
    client.ip("link", "set", a, "up")
    server.ip("link", "set", b, "up")
    return f"198.18.{i}.1"


def wsnic_server(ns: Namespace, t: Transport, mtu: int, *extra: str) -> Proc:
    argv = [PY, "-m", "wsnic_trio", "--disable-dhcp", "--mtu", str(mtu), *t.server_args(t.port)]
    proc = ns.start([*argv, *extra], "wsnic-trio")
    proc.wait_for(r"INFO ready: ", timeout=30)
    return proc


def setup(world: World, sc: Scenario, minirelay: Path) -> Setup:
    srv = world.namespace("s")
    clients_ns = [world.namespace("a"), world.namespace("b")]
    mtu = str(sc.mtu)
    server: Proc | None = None
    client_procs: list[Proc] = []
    if sc.server == "veth":
        make_bridge(srv, sc.mtu)
        for ns, ip in zip(clients_ns, CLIENT_IPS, strict=True):
            a, b = world.veth(ns, srv)
            srv.ip("link", "set", b, "mtu", mtu, "master", BRIDGE, "up")
            ns.ip("link", "set", a, "mtu", mtu)
            ns.ip("addr", "add", f"{ip}/24", "dev", a)
            ns.ip("link", "set", a, "up")
    else:
        t = sc.transport
        assert t is not None
        hosts = [uplink(world, ns, srv, i) for i, ns in enumerate(clients_ns, 1)]
        if sc.server == "c":
            make_bridge(srv, sc.mtu)
            argv = [str(minirelay), "server", t.c_framing, str(t.port), BRIDGE, mtu]
            server = srv.start(argv, "minirelay-server")
            server.wait_for("listening")
        else:
            server = wsnic_server(srv, t, sc.mtu)
        for ns, ip, host in zip(clients_ns, CLIENT_IPS, hosts, strict=True):
            if sc.client == "c":
                argv = [str(minirelay), "client", t.c_framing, host, str(t.port), CLIENT_TAP, mtu]
                proc = ns.start(argv, "minirelay-client")
                proc.wait_for("connected")
            else:
                argv = [PY, "-m", "wsnic_trio", "connect", t.url(host, t.port)]
                argv += ["--tap", CLIENT_TAP, "--mtu", mtu]
                proc = ns.start(argv, "wsnic-trio-connect")
                proc.wait_for("connected to", timeout=30)
            client_procs.append(proc)
            ns.ip("addr", "add", f"{ip}/24", "dev", CLIENT_TAP)
            ns.ip("link", "set", CLIENT_TAP, "up")
    for ns in clients_ns:
        ns.wait_ping(HOST_IP)
    clients_ns[0].wait_ping(CLIENT_IPS[1])
    srv.start(["iperf3", "-s", "-B", HOST_IP, "-p", IPERF_PORT], "iperf3-server")
    clients_ns[1].start(["iperf3", "-s", "-B", CLIENT_IPS[1], "-p", IPERF_PORT], "iperf3-peer")
    srv.wait_listening(int(IPERF_PORT))
    clients_ns[1].wait_listening(int(IPERF_PORT))
    return Setup(world, srv, clients_ns, server, client_procs)


def scale_setup(world: World, t: Transport) -> tuple[Namespace, Namespace, Proc]:
    """The scale test's world: one client namespace, one wsnic-trio server pinging every 1 s.

    Returns the server's namespace, the client's, and the server.
    """
    srv, cli = world.namespace("s"), world.namespace("a")
    uplink(world, cli, srv, 1)
    # All N clients come from one address at once: the per-address handshake cap
    # (a defence against silent connections) would close most of them mid-handshake.
    server = wsnic_server(
        srv,
        t,
        1500,
        "--ping-interval",
        "1",
        "--ping-timeout",
        "10",
        "--max-handshakes",
        "0",
        "--max-handshakes-per-ip",
        "0",
    )
    return srv, cli, server
