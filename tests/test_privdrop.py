"""Least privilege: a root server with ``--user`` drops every privilege after set-up
(issue 5, item 5).

The server runs as root inside a test namespace and becomes a throw-away user (created
with ``useradd``, removed afterwards); a root helper keeps the bridge, NAT and dnsmasq.
The code is run from a copy any user can read, with Debian's python3 (the test's own
interpreter lives under /root). Clients are namespaces running ``wsnic-trio connect``
over a veth. What each test proves is in its docstring.
"""

from __future__ import annotations

import pwd
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from wsnic_trio.lan.privsep import caps_of

from .lanhost import (
    add_client,
    forget_stale_run_dir,
    netns_inode,
    pid_alive,
    snapshot,
    wsnic,
)
from .netns import NetNS, NsFactory, NsProcess
from .rootlesshost import (
    DEBIAN_PYTHON,
    USERADD,
    ThrowawayUser,
    refused_at_start,
    run_as_user,
    throwaway_user,
    user_runtime,
    with_unusable_tun,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def runtime(world: NsFactory) -> AsyncIterator[Path]:
    """A temporary directory the test user can read, with the code the server runs."""
    async with user_runtime(USERADD) as path:
        yield path


def _server_ns(world: NsFactory) -> NetNS:
    """The server's namespace, with an upstream namespace as its default route (NAT)."""
    srv, _ = world.routed()
    forget_stale_run_dir(srv)
    return srv


async def _start(srv: NetNS, runtime: Path, user: ThrowawayUser, *args: str) -> NsProcess:
    proc = await srv.start(
        [DEBIAN_PYTHON, "-m", "wsnic_trio", "--user", user.name, *args],
        label="wsnic-trio",
        env={"PYTHONPATH": str(runtime / "site")},
    )
    await proc.log.wait_for(r"INFO ready: ", timeout=40)
    return proc


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _helper_pid(server: NsProcess) -> int:
    m = server.log.find(r"kept by the helper \(pid (\d+), root\)")
    assert m is not None, server.log.text()
    return int(m.group(1))


def _assert_unprivileged(pid: int, uid: int, gid: int) -> None:
    """Every thread of ``pid`` runs as uid/gid with empty effective and permitted sets."""
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    assert tasks
    for task in tasks:
        status = (task / "status").read_text()
        fields = {k: v.strip() for k, _, v in (line.partition(":") for line in status.splitlines())}
        assert fields["Uid"].split() == [str(uid)] * 4, (task, fields["Uid"])
        assert fields["Gid"].split() == [str(gid)] * 4, (task, fields["Gid"])
        caps = caps_of(status)
        assert caps["CapEff"] == 0 and caps["CapPrm"] == 0 and caps["CapAmb"] == 0, caps


def _lease_file_owner(srv: NetNS) -> tuple[int, int]:
    st = (Path("/run/wsnic-trio") / f"net{netns_inode(srv)}-wsbr0" / "dnsmasq.leases").stat()
    return st.st_uid, st.st_mode & 0o777


async def _until_gone(pid: int) -> None:
    """Wait until ``pid`` exits (the bound only keeps a broken run from hanging)."""
    with trio.move_on_after(30):
        while pid_alive(pid):
            await trio.sleep(0.05)
    assert not pid_alive(pid), f"helper {pid} did not exit"


async def test_server_runs_as_user_and_restores_the_host(
    world: NsFactory, runtime: Path, tmp_path: Path
) -> None:
    """With --user the server process runs as that user with no capabilities in any
    thread and cannot become root again, while its helper is root. Two WebSocket
    clients get DHCP leases and ping each other through the server, with --lock-ip (so
    the dropped server reads dnsmasq's lease file, handed to the user). SIGTERM then
    restores the namespace exactly (no bridge, no nft table, ip_forward back to 0, no
    run directory or process) and removes the root-owned API socket file."""
    srv = _server_ns(world)
    api_sock = runtime / "api.sock"
    # Clients first (they retry until the server is up): their veths predate `before`.
    a = await add_client(world, srv, tmp_path, 0, "a", wait=False)
    b = await add_client(world, srv, tmp_path, 1, "b", wait=False)
    before = snapshot(srv)
    with throwaway_user() as user:
        gid = pwd.getpwnam(user.name).pw_gid
        server = await _start(
            srv, runtime, user, "-a", "0.0.0.0", "-i", "--lock-ip", "--api", f"unix:{api_sock}"
        )
        assert server.log.find(r"dropped privileges: running as " + re.escape(user.name))
        _assert_unprivileged(server.pid, user.uid, gid)
        helper = _helper_pid(server)
        helper_status = _status(helper)
        assert helper_status["Uid"].split() == ["0"] * 4
        assert int(helper_status["CapEff"], 16) != 0
        assert api_sock.is_socket()
        for client in (a, b):
            await client.connect.log.wait_for(r"connected to ws://", timeout=30)
        lease_a, lease_b = await a.dhcp("alpha"), await b.dhcp("beta")
        assert lease_a["serverid"] == lease_b["serverid"] == "192.168.86.1"
        assert lease_a["ip"] != lease_b["ip"]
        ping = await a.ns.exec("ping", "-c", "2", "-W", "5", lease_b["ip"])
        assert ping.returncode == 0, ping.stdout.decode() + server.log.text()
        during = snapshot(srv)
        assert "wsbr0" in during["links"] and '"wsbr0" : jump in_wsbr0' in during["nft"]
        assert during["ip_forward"].strip() == "1"
        assert "dnsmasq" in during["processes"]
        # The lease file: the user's own, readable by nobody else.
        assert _lease_file_owner(srv) == (user.uid, 0o600)
        assert await server.stop(signal.SIGTERM) == 0, server.log.text()
        await _until_gone(helper)
        assert "Traceback" not in server.log.text(), server.log.text()
        assert not api_sock.exists()
    assert snapshot(srv) == before


async def test_kill_9_of_the_server(world: NsFactory, runtime: Path, tmp_path: Path) -> None:
    """kill -9 of the dropped server: the root helper reads EOF on its socket and tears
    everything down (bridge, dnsmasq, NAT table, ip_forward) and exits."""
    srv = _server_ns(world)
    before = snapshot(srv)
    with throwaway_user() as user:
        server = await _start(srv, runtime, user, "-i")
        helper = _helper_pid(server)
        assert "dnsmasq" in snapshot(srv)["processes"]
        server.send_signal(signal.SIGKILL)
        await server.wait()
        await _until_gone(helper)
    assert snapshot(srv) == before


async def test_refusals_exit_2(world: NsFactory, runtime: Path) -> None:
    """--user is refused with exit code 2 and one line, before the host is touched: for
    a server that is not root, for an unknown user, and together with --rootless."""
    srv = _server_ns(world)
    before = snapshot(srv)
    with throwaway_user() as user:
        as_user = await run_as_user(srv, user, runtime, "--user", user.name)
        assert as_user.returncode == 2, as_user.stderr.decode()
        assert b"needs a server started as root" in as_user.stderr
        unknown = await srv.exec(*wsnic(), "--user", "wsnic-no-such-user-7")
        assert unknown.returncode == 2, unknown.stderr.decode()
        assert b"--user wsnic-no-such-user-7: no such user" in unknown.stderr
        both = await srv.exec(*wsnic(), "--user", user.name, "--rootless")
        assert both.returncode == 2, both.stderr.decode()
        assert b"contradict" in both.stderr
        no_user = await srv.exec(*wsnic(), "--group", user.name)
        assert no_user.returncode == 2, no_user.stderr.decode()
        assert b"--group needs --user" in no_user.stderr
        for result in (as_user, unknown, both, no_user):
            assert b"Traceback" not in result.stderr
    assert snapshot(srv) == before


@pytest.mark.parametrize(
    ("tun", "expected"),
    [
        (
            "missing",
            "/dev/net/tun is missing: load the tun module (modprobe tun), or pass the device "
            "into the container (e.g. docker run --device /dev/net/tun); see docs/security.md",
        ),
        (
            "nodev",
            "/dev/net/tun is not usable by user root (mode 0666): Permission denied; something "
            "other than its mode denies it (a container's device rules, or a filesystem "
            "mounted nodev): allow the device (e.g. docker run --device /dev/net/tun); see "
            "docs/security.md",
        ),
    ],
)
async def test_unusable_tun_is_refused_at_start(
    world: NsFactory, runtime: Path, tun: str, expected: str
) -> None:
    """With --user the root helper makes every TAP, so the mode of /dev/net/tun does not
    matter, but a device even root cannot use does. The helper tries one TAP while it
    builds the LAN, so the server does not say "ready" and then fail every client: it
    exits with code 2 and one line naming the problem, the namespace is exactly as
    before (no bridge, nft table, ip_forward change, dnsmasq or run directory), the
    root-owned API socket file is gone and no process of the user is left."""
    srv = _server_ns(world)
    api_sock = runtime / "api.sock"
    before = snapshot(srv)
    with throwaway_user() as user:
        server = await srv.start(
            [
                *with_unusable_tun(tun),
                DEBIAN_PYTHON,
                "-m",
                "wsnic_trio",
                "--user",
                user.name,
                "-a",
                "0.0.0.0",
                "-i",
                "--api",
                f"unix:{api_sock}",
            ],
            label="wsnic-trio",
            env={"PYTHONPATH": str(runtime / "site")},
        )
        problems = await refused_at_start(server, timeout=40)
        assert problems == [f"wsnic-trio: error: {expected}"], server.log.text()
        assert not api_sock.exists()
        assert not user.pids()
    assert snapshot(srv) == before
