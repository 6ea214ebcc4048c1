"""Real guests (QEMU, User Mode Linux) on a server's LAN, for the end-to-end tests.

The images come from :mod:`tests.guests` (built and cached by ``build_guests()``).
Guests run *inside* the server's namespace with ``NetNS.start``, so their unix
and loopback sockets reach the listener the test started there. Everything a
guest prints (its console) is collected in its :class:`~tests.netns.LineLog`;
:meth:`GuestLan.report` puts the tails of all consoles and of the server log
into a failure message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import trio

from .guests.boot import (
    GuestImages,
    GuestResults,
    guest_mac,
    parse_results,
    qemu_argv,
    uml_argv,
)
from .netns import LineLog, NetNS, NsProcess

GATEWAY = "192.168.86.1"

#: How long a guest may take from start to power-off (TCG on a slow CI runner).
GUEST_TIMEOUT = 180.0


# ---------------------------------------------------------------------------
# accelerator


def kvm_works(images: GuestImages, timeout: float = 10.0) -> bool:
    """Boot the QEMU guest once with ``-accel kvm`` and see whether its init runs.

    KVM can be present and still useless: under nested virtualisation QEMU 7.2
    prints a warning ("failed to set MSR", "host doesn't support requested
    feature") and the guest dies silently while QEMU exits with 0. So success is
    the guest's own ``WSNIC-GUEST boot`` line, not QEMU's exit code.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    argv = with_accel(
        qemu_argv(
            images,
            "hubport,id=n0,hubid=0",  # a hub with no other port: no network at all
            mac=guest_mac(0xFFFF),
            cmdline_extra="wsnic.dhcptries=1",
        ),
        "kvm",
    )
    deadline = time.monotonic() + timeout
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        seen = b""
        try:
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([fd], [], [], left)
                if not readable:
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                seen = (seen + chunk)[-4096:]
                if b"WSNIC-GUEST boot" in seen:
                    return True
            return False
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def choose_accel(images: GuestImages) -> str:
    """``$WSNIC_GUEST_ACCEL`` (``tcg``/``kvm``) if set, else KVM when it really works."""
    wanted = os.environ.get("WSNIC_GUEST_ACCEL", "auto")
    if wanted in ("tcg", "kvm"):
        return wanted
    return "kvm" if kvm_works(images) else "tcg"


def with_accel(argv: Sequence[str], accel: str) -> list[str]:
    """``argv`` of :func:`qemu_argv` with its ``-accel`` value replaced."""
    out = list(argv)
    i = out.index("-accel")
    out[i + 1] = accel
    return out


# ---------------------------------------------------------------------------
# guests


def tail(log: LineLog, lines: int = 40) -> str:
    return "\n".join(log.lines[-lines:]) or "(nothing)"


@dataclasses.dataclass
class Guest:
    """One running guest: its console is its process log."""

    name: str
    kind: str  # "qemu" or "uml"
    mac: str
    proc: NsProcess
    lan: GuestLan

    @property
    def console(self) -> str:
        return self.proc.log.text()

    def results(self) -> GuestResults:
        return parse_results(self.console)

    async def wait_line(self, pattern: str, timeout: float = GUEST_TIMEOUT) -> re.Match[str]:
        """Wait for a console line; on failure the message has every tail."""
        try:
            return await self.proc.log.wait_for(pattern, timeout=timeout)
        except AssertionError:
            raise AssertionError(
                self.lan.report(f"guest {self.name}: no console line matching {pattern!r}")
            ) from None

    async def finish(self, timeout: float = GUEST_TIMEOUT) -> tuple[int, GuestResults]:
        """Wait until the guest powers off; its exit code and what it reported."""
        try:
            code = await self.proc.wait(timeout)
        except trio.TooSlowError:
            raise AssertionError(
                self.lan.report(f"guest {self.name} still runs after {timeout} s")
            ) from None
        return code, self.results()

    async def stop(self) -> None:
        if self.proc.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await self.proc.proc.wait()
            if self.proc.proc.returncode is None:
                self.proc.proc.kill()
                await self.proc.proc.wait()


class GuestLan:
    """The guests of one test, all in the server's namespace ``ns``."""

    def __init__(self, ns: NetNS, images: GuestImages, accel: str) -> None:
        self.ns = ns
        self.images = images
        self.accel = accel
        self.server: NsProcess | None = None  # the latest one
        self.servers: list[NsProcess] = []
        self.guests: list[Guest] = []
        self.others: list[NsProcess] = []
        self._dirs: list[str] = []

    # -- diagnostics

    def watch(self, proc: NsProcess) -> NsProcess:
        """Include this process's output in failure reports."""
        self.others.append(proc)
        return proc

    def report(self, message: str) -> str:
        """``message`` followed by the tail of every console and log of this test."""
        parts = [message, f"(QEMU accelerator: {self.accel})"]
        for guest in self.guests:
            code = guest.proc.proc.returncode
            state = "running" if code is None else f"exit code {code}"
            parts.append(
                f"--- console of {guest.kind} guest {guest.name} ({state}), last lines ---\n"
                + tail(guest.proc.log)
            )
        for i, server in enumerate(self.servers):
            run = f" (run {i + 1} of {len(self.servers)})" if len(self.servers) > 1 else ""
            parts.append(f"--- server log{run}, last lines ---\n" + tail(server.log, 60))
        for proc in self.others:
            parts.append(f"--- {proc.log.label}, last lines ---\n" + tail(proc.log, 20))
        return "\n".join(parts)

    def check(self, condition: object, message: str) -> None:
        if not condition:
            raise AssertionError(self.report(message))

    async def wait_until(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """Poll ``predicate`` until it is true; fail with every tail after ``timeout``."""
        with trio.move_on_after(timeout):
            while not predicate():
                await trio.sleep(0.05)
            return
        raise AssertionError(self.report(f"{what}: not within {timeout} s"))

    async def server_line(self, pattern: str, timeout: float = 60, start: int = 0) -> re.Match[str]:
        assert self.server is not None
        try:
            return await self.server.log.wait_for(pattern, timeout=timeout, start=start)
        except AssertionError:
            raise AssertionError(
                self.report(f"server log: no line matching {pattern!r} within {timeout} s")
            ) from None

    # -- starting things

    async def start_server(self, *args: str) -> NsProcess:
        self.server = await self.ns.start_wsnic(*args)
        self.servers.append(self.server)
        return self.server

    async def start_http(self, directory: Path, port: int = 8000) -> NsProcess:
        """``python3 -m http.server`` on the bridge address, serving ``directory``."""
        proc = await self.ns.start(
            [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                GATEWAY,
                str(port),
                "--directory",
                str(directory),
            ],
            label="http.server",
        )
        self.watch(proc)
        await proc.log.wait_for(rf"Serving HTTP on {re.escape(GATEWAY)} port {port}", timeout=30)
        return proc

    async def start_qemu(self, name: str, index: int, netdev: str, cmdline: str) -> Guest:
        mac = guest_mac(index)
        argv = with_accel(
            qemu_argv(self.images, netdev, mac=mac, cmdline_extra=cmdline), self.accel
        )
        proc = await self.ns.start(argv, label=f"qemu {name}")
        guest = Guest(name, "qemu", mac, proc, self)
        self.guests.append(guest)
        return guest

    async def start_uml(self, name: str, index: int, vec: str, cmdline: str) -> Guest:
        """A UML guest; ``vec`` is the part after ``vec0:`` without ``mac=``.

        UML gets a fresh directory on tmpfs for TMPDIR (its memory file) and
        ``uml_dir`` (its ``umid`` files).
        """
        shm = tempfile.mkdtemp(prefix="wt-uml-", dir="/dev/shm")
        self._dirs.append(shm)
        mac = guest_mac(index)
        argv = uml_argv(self.images, vec, mac=mac, cmdline_extra=cmdline, umid=name, uml_dir=shm)
        proc = await self.ns.start(argv, label=f"uml {name}", env={"TMPDIR": shm})
        guest = Guest(name, "uml", mac, proc, self)
        self.guests.append(guest)
        return guest

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for guest in self.guests:
                await guest.stop()
            for proc in self.others:
                if proc.proc.returncode is None:
                    proc.proc.kill()
                    with trio.move_on_after(5):
                        await proc.proc.wait()
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------
# small helpers


def make_payload(directory: Path, name: str = "payload.bin", size: int = 256 * 1024) -> str:
    """A random file for the guests to fetch; returns its sha256."""
    data = os.urandom(size)
    (directory / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def lease_domain(results: GuestResults) -> str | None:
    for line in results.lines:
        m = re.search(r" lease .*\bdomain=(\S+)", line)
        if m:
            return m.group(1)
    return None


@contextlib.contextmanager
def removed_after(*paths: str) -> Iterator[None]:
    """Unlink files (e.g. UML's ``src=`` socket, which UML leaves behind) before and after."""

    def unlink() -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    unlink()
    try:
        yield
    finally:
        unlink()
