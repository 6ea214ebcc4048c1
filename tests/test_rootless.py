"""Rootless mode end to end, as throw-away unprivileged users (issue 8).

Each server runs with a test user's uid and no capabilities, inside a test namespace
whose loopback stands in for "the host's loopback" (nothing reaches real addresses).
Clients are namespaces running ``wsnic-trio connect`` over a veth, with busybox's
DHCP client. What each test proves is in its docstring.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from wsnic_trio.host.procs import describe_process

from .apihelp import api, require_curl, start_echo
from .conftest import require
from .lanhost import LanClient, wsnic
from .netns import NetNS, NsFactory, NsProcess
from .rootlesshost import (
    DEBIAN_PYTHON,
    ThrowawayUser,
    helper_pid,
    launch_rootless,
    refused_at_start,
    run_as_user,
    run_dirs,
    start_rootless,
    throwaway_user,
    user_netns,
    user_runtime,
)
from .test_forward import tcp_and_udp_to_the_guest
from .vmclients import exists

pytestmark = pytest.mark.integration

HTTP_PORT = 8080
_FETCH = (
    "import sys, urllib.request; "
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)
PAGE = "rootless says hello\n"


@pytest.fixture
async def runtime(world: NsFactory) -> AsyncIterator[Path]:
    """A temporary directory the test users can read, with the code they run."""
    async with user_runtime(("slirp4netns", "slirp4netns")) as path:
        yield path


async def _client(
    world: NsFactory, server_ns: NetNS, tmp: Path, index: int, port: int
) -> LanClient:
    ns = world.new("c")
    base = 4 * index
    world.link(server_ns, f"198.18.0.{base + 1}/30", ns, f"198.18.0.{base + 2}/30")
    proc = await ns.start(
        [*wsnic(), "connect", f"ws://198.18.0.{base + 1}:{port}/", "--tap", "lan0"],
        label=f"connect-{index}",
    )
    await proc.log.wait_for(r"connected to ws://")
    return LanClient(ns, proc, tmp)


@contextlib.contextmanager
def _user_and_api_socket(runtime: Path) -> Iterator[tuple[ThrowawayUser, str]]:
    """A throw-away user, and the path of an API socket in a directory of its own
    (the user may create it there)."""
    api_dir = runtime / "api"
    api_dir.mkdir()
    with throwaway_user() as user:
        os.chown(api_dir, user.uid, user.uid)
        yield user, str(api_dir / "api.sock")


async def _serve(
    ns: NetNS, user: ThrowawayUser, runtime: Path, *args: str, label: str = "wsnic-trio"
) -> NsProcess:
    """:func:`start_rootless`, its WebSocket listener on every address: the clients
    come over veths."""
    return await start_rootless(ns, user, runtime, "--ws-address", "0.0.0.0", *args, label=label)


async def _http_server(ns: NetNS, root: Path, bind: str = "127.0.0.1") -> NsProcess:
    (root / "hello.txt").write_text(PAGE)
    proc = await ns.start(
        [
            DEBIAN_PYTHON,
            "-m",
            "http.server",
            "--bind",
            bind,
            "--directory",
            str(root),
            str(HTTP_PORT),
        ],
        label="http",
    )
    await proc.log.wait_for(r"Serving HTTP", timeout=15)
    return proc


async def _fetch(
    client: LanClient, url: str = f"http://10.0.2.2:{HTTP_PORT}/hello.txt"
) -> tuple[int, str]:
    # Python's client, not busybox wget: its exit code tells "refused" from a crash.
    result = await client.ns.exec(sys.executable, "-c", _FETCH, url)
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


def _netns_alive(inode: int) -> bool:
    """Whether any process still has the network namespace with this inode."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    return True
            except OSError:
                continue
    return False


def _port_free(ns: NetNS, port: int) -> bool:
    sock = ns.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no listener
    try:
        sock.bind(("0.0.0.0", port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _leftovers(user: ThrowawayUser, inode: int, ns: NetNS, port: int) -> list[str]:
    left = [f"process {pid}: {describe_process(pid)}" for pid in user.pids()]
    if _netns_alive(inode):
        left.append(f"network namespace net:[{inode}]")
    if not _port_free(ns, port):
        left.append(f"listening port {port}")
    left += [f"run directory {path}" for path in run_dirs(user.uid)]
    return left


async def _gone(user: ThrowawayUser, inode: int, ns: NetNS, port: int) -> None:
    """Wait until nothing of a run is left; fail naming what is (no timing claim: the
    bound only keeps a broken run from hanging the suite)."""
    with trio.move_on_after(20):
        while _leftovers(user, inode, ns, port):
            await trio.sleep(0.1)
    assert not _leftovers(user, inode, ns, port)


async def test_lan_as_unprivileged_user(world: NsFactory, runtime: Path) -> None:
    """Two clients of a rootless server get DHCP leases, ping each other and reach the
    host's loopback through slirp4netns (10.0.2.2, allowed by --allow-host-loopback);
    kill -9 of the server leaves no process, namespace or listening socket behind."""
    server_ns = world.new("srv")
    await _http_server(server_ns, runtime)
    with throwaway_user() as user:
        server = await _serve(server_ns, user, runtime, "--enable-inet", "--allow-host-loopback")
        assert server.log.find(r"mode: rootless mode \(not root"), server.log.text()
        helper = helper_pid(server)
        assert os.stat(f"/proc/{helper}/status").st_uid == user.uid
        inode = os.stat(f"/proc/{helper}/ns/net").st_ino
        a = await _client(world, server_ns, runtime, 0, 8086)
        b = await _client(world, server_ns, runtime, 1, 8086)
        lease_a, lease_b = await a.dhcp(), await b.dhcp()
        assert lease_a["serverid"] == lease_b["serverid"] == "192.168.86.1"
        assert lease_a["ip"] != lease_b["ip"]
        ping = await a.ns.exec("ping", "-c", "2", "-W", "5", lease_b["ip"])
        assert ping.returncode == 0, ping.stdout.decode()
        code, text = await _fetch(a)
        assert code == 0, text
        assert text == PAGE
        # Every process of the run is the user's; none of them is root.
        pids = user.pids()
        assert server.pid in pids and helper in pids
        server.send_signal(signal.SIGKILL)
        await server.wait()
        await _gone(user, inode, server_ns, 8086)


async def test_two_users_side_by_side(world: NsFactory, runtime: Path) -> None:
    """Two users' rootless servers run at once without interfering: each client gets
    its lease from its own LAN and cannot reach the other LAN; host loopback is refused
    by default and reachable where allowed. SIGTERM stops each one cleanly."""
    server_ns = world.new("srv")
    await _http_server(server_ns, runtime)
    with throwaway_user() as alice, throwaway_user() as bob:
        server_a = await _serve(
            server_ns, alice, runtime, "--rootless", "--enable-inet", label="alice"
        )
        assert server_a.log.find(r"mode: rootless mode \(--rootless\)"), server_a.log.text()
        server_b = await _serve(
            server_ns,
            bob,
            runtime,
            "--ws-port",
            "8096",
            "--subnet",
            "192.168.87.0/24",
            "--enable-inet",
            "--allow-host-loopback",
            label="bob",
        )
        a = await _client(world, server_ns, runtime, 0, 8086)
        b = await _client(world, server_ns, runtime, 1, 8096)
        lease_a, lease_b = await a.dhcp(), await b.dhcp()
        assert lease_a["serverid"] == "192.168.86.1"
        assert lease_b["serverid"] == "192.168.87.1"
        ping = await a.ns.exec("ping", "-c", "1", "-W", "2", lease_b["ip"])
        assert ping.returncode != 0
        code, text = await _fetch(a)
        assert code != 0, f"host loopback reached without --allow-host-loopback: {text}"
        code, text = await _fetch(b)
        assert (code, text) == (0, PAGE)
        inodes = [os.stat(f"/proc/{helper_pid(s)}/ns/net").st_ino for s in (server_a, server_b)]
        assert inodes[0] != inodes[1]
        for server, user, inode, port in (
            (server_a, alice, inodes[0], 8086),
            (server_b, bob, inodes[1], 8096),
        ):
            assert await server.stop(signal.SIGTERM) == 0, server.log.text()
            await _gone(user, inode, server_ns, port)
            assert "Traceback" not in server.log.text()


async def test_forwards_into_the_rootless_lan(world: NsFactory, runtime: Path) -> None:
    """Port forwards of a rootless server reach a guest in the helper's namespace: the
    helper makes each remote socket there and passes it over. A start-up TCP forward to
    the guest by name (its lease) and a UDP forward added through the API (a unix
    socket the user may create) carry data both ways from the server namespace's
    loopback; a port where nothing listens is counted as a failed connection."""
    require_curl()
    server_ns = world.new("srv")
    with _user_and_api_socket(runtime) as (user, sock):
        server = await _serve(
            server_ns,
            user,
            runtime,
            "--api",
            f"unix:{sock}",
            "--forward",
            "127.0.0.1:2222=web:7000",
            "--forward",
            "127.0.0.1:2223=web:7009",
        )
        assert server.log.find(r"mode: rootless mode \(not root"), server.log.text()
        guest = await _client(world, server_ns, runtime, 0, 8086)
        lease = await guest.dhcp("web")
        await start_echo(guest.ns, "guest-web")

        # TCP by name, UDP added through the API by address.
        payload, _ = await tcp_and_udp_to_the_guest(server_ns, sock, lease["ip"])

        # Nothing listens on the guest's port 7009: the client's connection just ends.
        stream = await server_ns.connect_tcp("127.0.0.1", 2223)
        async with stream:
            with trio.fail_after(15):
                assert await stream.receive_some(100) == b""
        rows = {
            row["local"]: row for row in (await api(sock, "GET", "/forwards")).json()["forwards"]
        }
        assert rows["127.0.0.1:2222"]["bytes_from_remote"] == len(payload) + 14
        assert rows["127.0.0.1:2222"]["resolved"] == lease["ip"]
        assert rows["127.0.0.1:2223"]["failed"] == 1, rows
        assert rows["127.0.0.1:2223"]["last_error"] == "Connection refused", rows
        assert await server.stop(signal.SIGTERM) == 0, server.log.text()
        assert "Traceback" not in server.log.text()


async def test_pasta_uplink(world: NsFactory, runtime: Path) -> None:
    """--uplink pasta: pasta copies the server namespace's uplink (a veth with a default
    route to a second namespace, standing in for the host's router) into the helper's
    namespace; a guest fetches a page from a web server behind that router, through
    pasta and the helper's NAT."""
    require(shutil.which("pasta") is not None, "pasta (package passt) is not installed")
    server_ns, router = world.new("srv"), world.new("rtr")
    world.link(server_ns, "198.19.0.1/30", router, "198.19.0.2/30")
    server_ns.ip("route", "add", "default", "via", "198.19.0.2")
    await _http_server(router, runtime, bind="198.19.0.2")
    with throwaway_user() as user:
        server = await _serve(server_ns, user, runtime, "--enable-inet", "--uplink", "pasta")
        assert server.log.find(r"uplink: pasta \(pid \d+\)"), server.log.text()
        inode = os.stat(f"/proc/{helper_pid(server)}/ns/net").st_ino
        client = await _client(world, server_ns, runtime, 0, 8086)
        await client.dhcp()
        code, text = await _fetch(client, f"http://198.19.0.2:{HTTP_PORT}/hello.txt")
        assert (code, text) == (0, PAGE)
        assert await server.stop(signal.SIGTERM) == 0, server.log.text()
        await _gone(user, inode, server_ns, 8086)
        assert "Traceback" not in server.log.text()


async def test_config_unusable_in_rootless_mode(world: NsFactory, runtime: Path) -> None:
    """--inet-iface means nothing without root: the user is told so (exit code 2)."""
    server_ns = world.new("srv")
    with throwaway_user() as user:
        result = await run_as_user(
            server_ns, user, runtime, "--enable-inet", "--inet-iface", "eth0"
        )
        assert result.returncode == 2, result.stderr.decode()
        assert b"--inet-iface has no meaning in rootless mode" in result.stderr
        assert not user.pids()


@pytest.mark.parametrize("uplink", [[], ["--enable-inet"]], ids=["no-uplink", "slirp4netns"])
async def test_unusable_tun_is_refused_at_start(
    world: NsFactory, runtime: Path, uplink: list[str]
) -> None:
    """A /dev/net/tun the user may not open (root's, mode 0600, as in containers without
    udev): the server does not say "ready" and then fail every client (nor leave it to
    slirp4netns to fail obscurely); it refuses to start with exit code 2 and one error
    line that says what failed, for whom and what to do, and leaves nothing behind: no
    process, namespace, run directory, API socket file or listening port."""
    server_ns = world.new("srv")
    with _user_and_api_socket(runtime) as (user, api_sock):
        server = await launch_rootless(
            server_ns,
            user,
            runtime,
            "--ws-address",
            "0.0.0.0",
            *uplink,
            "--api",
            f"unix:{api_sock}",
            tun_mode="600",
        )
        problems = await refused_at_start(server, timeout=40)
        assert problems == [
            f"wsnic-trio: error: /dev/net/tun is not usable by user {user.name} (mode 0600): "
            "Permission denied; make it usable by every user as udev does: chmod 0666 "
            "/dev/net/tun (the driver checks the rest itself), or pass it into the container "
            "with that mode; see docs/rootless.md"
        ], server.log.text()
        with trio.move_on_after(20):  # only a bound: the server waits for its helper
            while user.pids():
                await trio.sleep(0.1)
        left = [f"process {pid}: {describe_process(pid)}" for pid in user.pids()]
        left += [f"network namespace net:[{inode}]" for inode in user_netns(user.uid)]
        left += [f"run directory {path}" for path in run_dirs(user.uid)]
        if exists(api_sock):
            left.append(f"API socket file {api_sock}")
        if not _port_free(server_ns, 8086):
            left.append("listening port 8086")
        assert not left, server.log.text()
