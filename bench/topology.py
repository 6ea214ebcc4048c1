"""Network namespaces, veth links and processes made by the benchmark, and removed by it.

Everything the benchmark does happens in namespaces it creates here (``ip netns add``),
linked by veth pairs on 198.18.0.0/15, with the LAN 192.168.86.0/24 inside them. The
host's own interfaces, routes, sysctls and firewall are never touched. A ``World`` is a
context manager: on exit (also after an error or Ctrl-C) it stops every process it
started, by PID, kills whatever is still inside its namespaces (only ours), and deletes
the namespaces, which takes their veths, bridges and TAPs with them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["Namespace", "Proc", "World", "run"]

_ids = itertools.count()

#: Directories put first on the PYTHONPATH of every process started (see ``snapshot_code``).
CODE_PATH: list[str] = [str(Path(__file__).resolve().parent.parent)]


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A short command to completion; failures raise with its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


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
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = os.pathsep.join([*CODE_PATH, full_env.get("PYTHONPATH", "")])
        if env:
            full_env.update(env)
        log = self.world.tmp / f"{next(_ids)}-{label}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                env=full_env,
                start_new_session=True,  # a Ctrl-C on the terminal reaches only us
            )
        proc = Proc(popen, log, label)
        self.world.procs.append(proc)
        return proc

    def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.exec("ss", "-Hltn", f"sport = :{port}").stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on port {port} in {self.name} after {timeout} s")

    def wait_link(self, name: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ip("link", "show", name, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"no link {name} in {self.name} after {timeout} s")

    def wait_ping(self, address: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exec("ping", "-c", "1", "-W", "1", address).returncode == 0:
                return
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

    def __enter__(self) -> World:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def namespace(self, tag: str) -> Namespace:
        name = f"{self.prefix}{tag}"
        run("ip", "netns", "add", name)
        ns = Namespace(self, name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, a: Namespace, b: Namespace) -> tuple[str, str]:
        """A veth pair between two namespaces; returns the interface names (a side, b side)."""
        n = next(self._links)
        a_if, b_if = f"bv{n}a", f"bv{n}b"
        run(
            "ip",
            "link",
            "add",
            a_if,
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            b_if,
            "netns",
            b.name,
        )
        return a_if, b_if

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
                out = run("ip", "netns", "pids", ns.name, check=False).stdout
                for pid in out.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            for ns in self.namespaces:
                run("ip", "netns", "del", ns.name, check=False)
            self.namespaces.clear()
            self.procs.clear()
            self._tmp.cleanup()
        finally:
            signal.signal(signal.SIGINT, old)
