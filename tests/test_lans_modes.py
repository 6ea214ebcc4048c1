"""Several LANs with ``--user`` and in rootless mode: one helper builds every LAN, the
configured ones and those made on demand after the privilege drop (``--user``) or in
its one namespace with one uplink (rootless).

Each test runs the server in its own namespace, as a throw-away user (rootless) or as
root that drops to one (``--user``); clients are namespaces running ``wsnic-trio
connect`` with busybox's DHCP client. What each test proves is in its docstring.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from .lanhost import LanClient, add_client, netns_inode, run_dirs, snapshot
from .netns import NetNS, NsFactory, NsProcess
from .rootlesshost import (
    DEBIAN_PYTHON,
    USERADD,
    ThrowawayUser,
    launch_rootless,
    refused_at_start,
    start_rootless,
    throwaway_user,
    user_netns,
    user_runtime,
)
from .test_privdrop import _server_ns, _start, _until_gone
from .test_rootless import PAGE, _fetch, _gone, _http_server

pytestmark = pytest.mark.integration

LANS = (
    "--ws-address",
    "0.0.0.0",
    "--no-default-lan",
    "--lan",
    "a=10.86.1.0/24,enable-inet=false",
    "--lan",
    "b=10.86.2.0/24",
    "--lan-pool",
    "10.90.0.0/16",
    "--lan-idle-timeout",
    "3",
    "-i",
)
NET = ipaddress.IPv4Network

#: Each test runs once with --user (a root helper) and once rootless.
BOTH_MODES = pytest.mark.parametrize("mode", ["user", "rootless"])


@pytest.fixture
async def runtime(world: NsFactory) -> AsyncIterator[Path]:
    """A temporary directory the test users can read, with the code the server runs."""
    async with user_runtime(USERADD, ("slirp4netns", "slirp4netns")) as path:
        yield path


@dataclasses.dataclass
class Run:
    """One server of the mode under test, and where its LANs live."""

    mode: str
    srv: NetNS
    user: ThrowawayUser
    runtime: Path
    server: NsProcess | None = None
    #: The helper of the server last started, and the inode of the LANs' namespace.
    helper: int = 0
    inode: int = 0

    async def start(self, *lans: str) -> NsProcess:
        """The server with ``lans`` (:data:`LANS` by default; rootless: and
        --allow-host-loopback)."""
        lans = lans or LANS
        if self.mode == "user":
            server = await _start(self.srv, self.runtime, self.user, *lans)
        else:
            args = (*lans, "--allow-host-loopback")
            server = await start_rootless(self.srv, self.user, self.runtime, *args)
        found = server.log.find(r"helper \(?pid (\d+)")
        assert found is not None, server.log.text()
        self.helper = int(found.group(1))
        self.server = server
        self.inode = os.stat(f"/proc/{self.helper}/ns/net").st_ino
        return server

    async def in_lans(self, *argv: str) -> str:
        """``argv``'s output, run where the LANs are: the server's namespace (``--user``)
        or the rootless helper's."""
        if self.mode == "user":
            result = await self.srv.exec(*argv)
        else:
            result = await trio.run_process(
                ["nsenter", "-t", str(self.helper), "-n", *argv], capture_stdout=True
            )
        return result.stdout.decode()

    async def bridges(self) -> set[str]:
        shown = await self.in_lans("ip", "-o", "link", "show", "type", "bridge")
        return {line.split(":")[1].strip() for line in shown.splitlines()}

    async def tables(self) -> set[str]:
        """The bridges whose LAN has host-filter rules (rootless: a table each; --user:
        chains in the helper's run table)."""
        shown = await self.in_lans("nft", "list", "ruleset")
        return set(re.findall(r'"(wsl-[\w.-]+)" : jump in_', shown))

    def dnsmasq_bridges(self) -> set[str]:
        """The bridges that a running dnsmasq in the LANs' namespace serves."""
        return set(self.dnsmasq_pids())

    def dnsmasq_pids(self) -> dict[str, int]:
        """The pid of the dnsmasq that serves each bridge in the LANs' namespace."""
        found = {}
        for entry in os.listdir("/proc"):
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino != self.inode:
                    continue
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if argv and argv[0].endswith(b"dnsmasq"):
                for arg in argv:
                    if arg.startswith(b"--interface="):
                        found[arg[12:].decode()] = int(entry)
        return found

    async def reaches_outside(self, client: LanClient) -> bool:
        """Through the LAN's NAT: the upstream router (``--user``) or this host's
        loopback through slirp4netns (rootless, with --allow-host-loopback)."""
        if self.mode == "user":
            ping = await client.ns.exec("ping", "-c", "1", "-W", "3", "198.18.1.2")
            return ping.returncode == 0
        code, text = await _fetch(client)
        return code == 0 and text == PAGE


async def _stage(
    world: NsFactory, mode: str, runtime: Path, tmp: Path, *paths: str
) -> tuple[NetNS, list[LanClient], dict[str, str]]:
    """The server's namespace, a client for each LAN path (made first: they retry until
    the server is up, and their veths predate the snapshot) and the snapshot."""
    srv = _server_ns(world) if mode == "user" else world.new("srv")
    if mode == "rootless":
        await _http_server(srv, runtime)
    clients = [
        await add_client(world, srv, tmp, i, f"c{i}", wait=False, path=path)
        for i, path in enumerate(paths)
    ]
    return srv, clients, snapshot(srv)


async def _connected(*clients: LanClient, start: int = 0) -> None:
    for client in clients:
        await client.connect.log.wait_for(r"connected to ws://", timeout=40, start=start)


async def _stops_clean(run: Run, server: NsProcess, before: dict[str, str]) -> None:
    """SIGTERM: exit 0, no traceback, nothing of any LAN left."""
    assert await server.stop(signal.SIGTERM) == 0, server.log.text()
    assert "Traceback" not in server.log.text(), server.log.text()
    await _all_gone(run, before)


async def _all_gone(run: Run, before: dict[str, str]) -> None:
    """Nothing of any LAN is left: no bridge, TAP, nft table, dnsmasq, run directory or
    process (``--user``: the namespace is exactly as before; rootless: no process,
    namespace, run directory or port of the user)."""
    if run.mode == "user":
        await _until_gone(run.helper)
        assert snapshot(run.srv) == before
        assert not [d for d in run_dirs() if d.startswith(f"net{netns_inode(run.srv)}-")]
    else:
        await _gone(run.user, run.inode, run.srv, 8086)


@BOTH_MODES
async def test_several_lans(world: NsFactory, runtime: Path, tmp_path: Path, mode: str) -> None:
    """Two configured LANs and LANs on demand, all from one helper: clients on /lan/a and
    /lan/b get leases from their own LAN's range and cannot reach each other (not by IP
    through the gateway, not on the wire, not the other LAN's gateway); NAT is as each
    LAN's config says (b has it, a not). A client on /lan/new gets a LAN made on demand,
    which goes (bridge, nft table, dnsmasq) once it had no client for the idle timeout.
    SIGTERM then leaves nothing of any LAN."""
    srv, (alice, bob, carol), before = await _stage(
        world, mode, runtime, tmp_path, "/lan/a", "/lan/b", "/lan/new"
    )
    with throwaway_user() as user:
        run = Run(mode, srv, user, runtime)
        server = await run.start()
        said = re.findall(r"LAN [a-z]+ built: .* helper \(?pid (\d+)", server.log.text())
        assert said == [str(run.helper)] * 2, "one helper built both LANs"
        if mode == "user":
            assert server.log.find(r"dropped privileges: running as ")
        await _connected(alice, bob)
        lease_a, lease_b = await alice.dhcp("alice"), await bob.dhcp("bob")
        assert ipaddress.IPv4Address(lease_a["ip"]) in NET("10.86.1.0/24"), lease_a
        assert ipaddress.IPv4Address(lease_b["ip"]) in NET("10.86.2.0/24"), lease_b
        assert (lease_a["router"], lease_b["router"]) == ("10.86.1.1", "10.86.2.1")
        assert await run.bridges() >= {"wsl-a", "wsl-b"}
        assert await run.tables() >= {"wsl-a", "wsl-b"}
        assert run.dnsmasq_bridges() >= {"wsl-a", "wsl-b"}

        own = await alice.ns.exec("ping", "-c", "1", "-W", "3", "10.86.1.1")
        assert own.returncode == 0, "a client reaches its own LAN's gateway"
        for src, dst in ((alice, lease_b["ip"]), (bob, lease_a["ip"])):
            routed = await src.ns.exec("ping", "-c", "1", "-W", "2", dst)
            assert routed.returncode != 0, "nothing is routed between LANs, either way"
        gateway = await alice.ns.exec("ping", "-c", "1", "-W", "2", "10.86.2.1")
        assert gateway.returncode != 0, "a LAN's gateway is not reachable from another LAN"
        alice.ns.ip("addr", "add", "10.86.2.250/24", "dev", "lan0")
        wire = await alice.ns.exec("ping", "-c", "1", "-W", "2", "-I", "10.86.2.250", lease_b["ip"])
        assert wire.returncode != 0, "no frame crosses from one LAN's bridge to another's"
        alice.ns.ip("addr", "del", "10.86.2.250/24", "dev", "lan0")
        assert await run.reaches_outside(bob), server.log.text()
        assert not await run.reaches_outside(alice), "LAN a has no NAT"

        await _connected(carol)
        lease_c = await carol.dhcp("carol")
        assert ipaddress.IPv4Address(lease_c["ip"]) in NET("10.90.0.0/24"), lease_c
        assert server.log.find(r"INFO LAN new made on demand: 10\.90\.0\.0/24 on bridge wsl-new")
        assert "wsl-new" in await run.bridges()
        assert "wsl-new" in await run.tables()
        assert run.dnsmasq_bridges() == {"wsl-a", "wsl-b", "wsl-new"}
        await carol.connect.stop()
        await server.log.wait_for(r"INFO LAN new removed \(no client for 3 s\)", timeout=30)
        assert "wsl-new" not in await run.bridges()
        assert await run.tables() == {"wsl-a", "wsl-b"}
        assert run.dnsmasq_bridges() == {"wsl-a", "wsl-b"}

        await _stops_clean(run, server, before)


@BOTH_MODES
async def test_kill_9_with_lans_up_then_restart(
    world: NsFactory, runtime: Path, tmp_path: Path, mode: str
) -> None:
    """One LAN's dnsmasq killed is started again by the helper, the others' untouched.
    Then kill -9 of the server while two configured LANs and one made on demand are up:
    nothing of any of them is left, and a new start builds them all again and stops
    cleanly (a start-up the leftovers of the first run could disturb)."""
    srv, (alice, carol), before = await _stage(
        world, mode, runtime, tmp_path, "/lan/a", "/lan/room"
    )
    with throwaway_user() as user:
        run = Run(mode, srv, user, runtime)
        server = await run.start()
        await _connected(alice, carol)
        await carol.dhcp()
        assert await run.bridges() >= {"wsl-a", "wsl-b", "wsl-room"}
        pids = run.dnsmasq_pids()
        assert set(pids) == {"wsl-a", "wsl-b", "wsl-room"}
        # One LAN's dnsmasq dies: the helper starts it again; the others' are untouched.
        os.kill(pids["wsl-a"], signal.SIGKILL)
        with trio.move_on_after(20):  # only a bound
            while run.dnsmasq_pids().get("wsl-a", pids["wsl-a"]) == pids["wsl-a"]:
                await trio.sleep(0.2)
        again_pids = run.dnsmasq_pids()
        assert again_pids["wsl-a"] != pids["wsl-a"], server.log.text()
        assert {k: v for k, v in again_pids.items() if k != "wsl-a"} == {
            k: v for k, v in pids.items() if k != "wsl-a"
        }
        lease = await alice.dhcp()  # from the new dnsmasq
        assert ipaddress.IPv4Address(lease["ip"]) in NET("10.86.1.0/24"), lease
        server.send_signal(signal.SIGKILL)
        await server.wait()
        await _all_gone(run, before)

        seen = {c: len(c.connect.log.lines) for c in (alice, carol)}
        again = await run.start()
        for client, start in seen.items():  # each reconnects: carol makes her LAN again
            await _connected(client, start=start)
        assert await run.bridges() >= {"wsl-a", "wsl-b", "wsl-room"}
        lease = await alice.dhcp()
        assert ipaddress.IPv4Address(lease["ip"]) in NET("10.86.1.0/24"), lease
        await _stops_clean(run, again, before)


@BOTH_MODES
async def test_lans_on_demand_only(
    world: NsFactory, runtime: Path, tmp_path: Path, mode: str
) -> None:
    """No LAN at start (--no-default-lan, --lan-pool only): the helper is up with none,
    the first client of /lan/x gets a LAN with NAT from it, and SIGTERM leaves nothing."""
    srv, (client,), before = await _stage(world, mode, runtime, tmp_path, "/lan/x")
    with throwaway_user() as user:
        run = Run(mode, srv, user, runtime)
        pool = ("--ws-address", "0.0.0.0", "--no-default-lan", "--lan-pool", "10.91.0.0/16", "-i")
        server = await run.start(*pool)
        assert server.log.find(r"INFO ready: no LAN until a client asks"), server.log.text()
        await _connected(client)
        lease = await client.dhcp()
        assert ipaddress.IPv4Address(lease["ip"]) in NET("10.91.0.0/24"), lease
        assert run.dnsmasq_bridges() == {"wsl-x"}
        assert await run.reaches_outside(client), server.log.text()
        await _stops_clean(run, server, before)


async def test_a_start_up_error_with_user_leaves_nothing(world: NsFactory, runtime: Path) -> None:
    """--user: LAN b cannot be made (a bridge of that name that wsnic-trio did not
    make): the server refuses to start with one error line and exit code 2, and the
    helper removes LAN a, which it had already built, with all of it."""
    srv = _server_ns(world)
    before = snapshot(srv)
    srv.ip("link", "add", "wsl-b", "type", "bridge")
    with throwaway_user() as user:
        server = await srv.start(
            [DEBIAN_PYTHON, "-m", "wsnic_trio", "--user", user.name, *LANS],
            label="wsnic-trio",
            env={"PYTHONPATH": str(runtime / "site")},
        )
        assert await server.wait(40) == 2, server.log.text()
        errors = [line for line in server.log.lines if re.search(r"error|ERROR|Traceback", line)]
        assert errors == [
            "wsnic-trio: error: a device named wsl-b already exists and was not created by "
            "wsnic-trio; choose another name with --bridge or remove it"
        ], server.log.text()
        assert not server.log.find(r"INFO ready: ")
        assert server.log.find(r"bridge wsl-a removed"), server.log.text()
        with trio.move_on_after(20):  # only a bound: the helper cleans up after the server
            while snapshot(srv)["processes"] != before["processes"]:
                await trio.sleep(0.1)
        assert not user.pids()
    srv.ip("link", "del", "wsl-b")
    assert snapshot(srv) == before
    assert not [d for d in run_dirs() if d.startswith(f"net{netns_inode(srv)}-")]


async def test_a_start_up_error_in_rootless_mode_leaves_nothing(
    world: NsFactory, runtime: Path
) -> None:
    """Rootless with several LANs and a /dev/net/tun the user may not open: the first
    LAN's trial TAP fails, the server refuses to start with one line and exit code 2,
    and nothing is left: no process, namespace, run directory or port of the user."""
    srv = world.new("srv")
    with throwaway_user() as user:
        server = await launch_rootless(srv, user, runtime, *LANS, tun_mode="600")
        problems = await refused_at_start(server, timeout=40)
        assert len(problems) == 1, server.log.text()
        assert problems[0].startswith(
            f"wsnic-trio: error: /dev/net/tun is not usable by user {user.name} (mode 0600)"
        ), problems
        await _gone(user, 0, srv, 8086)
        assert not user_netns(user.uid)
