"""DHCP and DNS through the supervised dnsmasq, with a real DHCP client on the LAN."""

from __future__ import annotations

import ipaddress
import os
import signal
from pathlib import Path

import trio

from .lanhost import (
    BUSYBOX,
    add_client,
    netns_inode,
    pid_alive,
    require_tools,
    run_dirs,
    watchdog_of,
)
from .netns import NsFactory


async def test_lease_router_dns_and_hostnames(world: NsFactory, tmp_path: Path) -> None:
    require_tools()
    srv = world.new("srv")
    server = await srv.start_wsnic("-a", "0.0.0.0", "-n", "test.internal", "-t", "3600")
    await server.log.wait_for(r"dnsmasq ready \(pid \d+\): DHCP 192\.168\.86\.2-192\.168\.86\.254")
    alice = await add_client(world, srv, tmp_path, 0, "alice")
    bob = await add_client(world, srv, tmp_path, 1, "bob")

    lease_a = await alice.dhcp("alice")
    lease_b = await bob.dhcp("bob")
    for lease in (lease_a, lease_b):
        assert ipaddress.IPv4Address(lease["ip"]) in ipaddress.IPv4Network("192.168.86.0/24")
        assert lease["ip"] not in {"192.168.86.0", "192.168.86.1", "192.168.86.255"}
        assert lease["mask"] == "24"
        assert lease["router"] == "192.168.86.1"
        assert lease["dns"] == "192.168.86.1"
        assert lease["domain"] == "test.internal"
        assert lease["lease"] == "3600"
    assert lease_a["ip"] != lease_b["ip"]
    assert f"inet {lease_a['ip']}/24" in alice.ns.ip("-o", "-4", "addr", "show", "lan0").stdout

    # Bob finds Alice by the hostname her DHCP client sent, short and qualified.
    for name in ("alice", "alice.test.internal"):
        result = await bob.ns.exec(BUSYBOX, "nslookup", name, "192.168.86.1")
        text = result.stdout.decode()
        assert result.returncode == 0, text + result.stderr.decode()
        assert f"Address: {lease_a['ip']}" in text or f"Address 1: {lease_a['ip']}" in text, text
    result = await alice.ns.exec("ping", "-c", "1", "-W", "2", lease_b["ip"])
    assert result.returncode == 0, "leased addresses are usable between clients"

    # The temporary lease file lives in this LAN's run directory and holds both leases.
    rundir = Path("/run/wsnic-trio") / f"net{netns_inode(srv)}-wsbr0"
    leases = (rundir / "dnsmasq.leases").read_text()
    assert f"{lease_a['ip']} alice" in leases and f"{lease_b['ip']} bob" in leases
    assert (rundir / "dnsmasq.leases").stat().st_mode & 0o777 == 0o600, "leases are private"
    assert await server.stop() == 0
    assert not rundir.exists(), "the temporary lease file and pid file go on exit"
    assert rundir.name not in run_dirs()


async def test_dnsmasq_restarted_after_it_dies_keeping_leases(
    world: NsFactory, tmp_path: Path
) -> None:
    require_tools()
    srv = world.new("srv")
    lease_file = tmp_path / "leases"
    server = await srv.start_wsnic("-a", "0.0.0.0", "--dhcp-lease-file", str(lease_file))
    first = int((await server.log.wait_for(r"dnsmasq ready \(pid (\d+)\)")).group(1))
    carol = await add_client(world, srv, tmp_path, 0, "carol")
    lease = await carol.dhcp("carol")
    assert f"{lease['ip']} carol" in lease_file.read_text()

    mark = len(server.log.lines)
    os.kill(first, signal.SIGKILL)
    await server.log.wait_for(r"dnsmasq .* ended unexpectedly \(killed by SIGKILL\)", start=mark)
    again = await server.log.wait_for(r"dnsmasq ready again \(pid (\d+)\)", start=mark)
    assert int(again.group(1)) != first
    # The new dnsmasq read the lease file: Carol's name still resolves, her address is kept.
    result = await carol.ns.exec(BUSYBOX, "nslookup", "carol", "192.168.86.1")
    assert lease["ip"] in result.stdout.decode(), result.stdout.decode()
    assert (await carol.dhcp("carol"))["ip"] == lease["ip"]
    assert await server.stop() == 0
    assert lease_file.exists(), "a lease file the user chose is kept"


async def test_dnsmasq_stops_when_the_server_is_killed(world: NsFactory) -> None:
    require_tools()
    srv = world.new("srv")
    server = await srv.start_wsnic()
    pid = int((await server.log.wait_for(r"dnsmasq ready \(pid (\d+)\)")).group(1))
    await server.stop(signal.SIGKILL)
    # No new start needed: the watchdog sees the server's end of its pipe close.
    with trio.fail_after(10):
        while pid_alive(pid):
            await trio.sleep(0.05)
    # The run directory is all that is left; the next start clears it.
    second = await srv.start_wsnic()
    assert second.log.find(r"removed /run/wsnic-trio/net\d+-wsbr0 left behind by an earlier run")
    assert await second.stop() == 0


async def test_start_stops_a_dnsmasq_left_by_a_killed_run(world: NsFactory) -> None:
    require_tools()
    srv = world.new("srv")
    first = await srv.start_wsnic()
    pid = int((await first.log.wait_for(r"dnsmasq ready \(pid (\d+)\)")).group(1))
    # Lose the watchdog too (the worst case), then kill the server.
    watchdog = watchdog_of(pid)
    assert watchdog is not None
    os.kill(watchdog, signal.SIGKILL)
    await first.stop(signal.SIGKILL)
    assert pid_alive(pid), "without its watchdog the old dnsmasq lives on"

    second = await srv.start_wsnic()
    assert second.log.find(rf"stopping dnsmasq \(pid {pid}\) left behind by an earlier run")
    assert not pid_alive(pid)
    await second.log.wait_for(r"dnsmasq ready \(pid \d+\)")
    assert await second.stop() == 0


async def test_port_conflict_names_the_process(world: NsFactory) -> None:
    require_tools()
    srv = world.new("srv")
    blocker = await srv.start(
        [
            "python3",
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 53))\n"
            "print('bound', flush=True)\n"
            "time.sleep(600)\n",
        ],
        label="blocker",
    )
    await blocker.log.wait_for("bound")
    server = await srv.start_wsnic(ready=False)
    assert await server.wait() == 2
    line = server.log.find(r"wsnic-trio: error: .*")
    assert line is not None, server.log.text()
    assert "53/udp on 0.0.0.0 is held by python3" in line.group(0)
    assert f"pid {blocker.pid}" in line.group(0)
    assert "Traceback" not in server.log.text()
    assert "wsbr0" not in srv.links()
