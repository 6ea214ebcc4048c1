"""The host is restored exactly, however the server stops: a before/after snapshot of the
server's namespace (links, IPv4 addresses and routes, the nft ruleset, IPv4 and IPv6
forwarding, the run directory with the temporary lease file, and processes) must be
identical. The nftables table exists with and without -i (the LAN's host filter)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from . import lanhost
from .lanhost import add_client, forget_stale_run_dir, require_tools, watchdog_of
from .netns import NetNS, NsFactory, NsProcess, run

_IPV6_FORWARDING = ("net.ipv6.conf.all.forwarding", "net.ipv6.conf.default.forwarding")


def snapshot(ns: NetNS) -> dict[str, str]:
    """lanhost's snapshot, and the IPv6 forwarding switches (the server never sets
    them: its table drops IPv6 from the LAN instead)."""
    found = lanhost.snapshot(ns)
    found["ipv6_forwarding"] = run(
        "ip", "netns", "exec", ns.name, "sysctl", *_IPV6_FORWARDING
    ).stdout
    return found


def _setup(world: NsFactory) -> NetNS:
    """Skips without the LAN tools; the server's namespace, routed to an upstream one."""
    require_tools()
    srv, _ = world.routed()
    forget_stale_run_dir(srv)
    return srv


async def _settles_to(srv: NetNS, expected: dict[str, str]) -> None:
    """Wait until the snapshot is ``expected``: a killed run's dnsmasq goes by its watchdog."""
    with trio.fail_after(10):
        while snapshot(srv) != expected:
            await trio.sleep(0.05)


async def _start_busy(srv: NetNS) -> NsProcess:
    blocker = await srv.start(
        [
            "python3",
            "-c",
            "import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 67))\n"
            "print('bound', flush=True)\n"
            "time.sleep(600)\n",
        ],
        label="dhcp-blocker",
    )
    await blocker.log.wait_for("bound")
    return blocker


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
async def test_restored_after_a_normal_stop(world: NsFactory, tmp_path: Path, how: str) -> None:
    srv = _setup(world)
    client = await add_client(world, srv, tmp_path, 0, "guest", wait=False)
    before = snapshot(srv)  # the client's veth predates `before`; its TAP comes later
    server = await srv.start_wsnic("-a", "0.0.0.0", "-i")
    await client.connect.log.wait_for(r"connected to ws://", timeout=30)
    await client.dhcp("guest")
    during = snapshot(srv)
    assert "wsbr0" in during["links"] and "wstap0" in during["links"]
    assert f"table inet wsnic_trio_pid{server.pid} " in during["nft"]
    assert during["ip_forward"].strip() == "1" and during["run_dir"] == "present"
    assert "dnsmasq" in during["processes"]
    assert await server.stop(getattr(signal, how)) == 0
    assert snapshot(srv) == before


async def test_restored_after_an_error_during_start_up(world: NsFactory) -> None:
    srv = _setup(world)
    blocker = await _start_busy(srv)
    before = snapshot(srv)
    # Bridge and NAT are up when dnsmasq finds port 67 taken; all of it must be undone.
    server = await srv.start_wsnic("-i", ready=False)
    assert await server.wait() == 2
    assert server.log.find(r"NAT on:"), "the failure came after NAT was set up"
    error = server.log.find(r"wsnic-trio: error: (.*)")
    assert error is not None, server.log.text()
    assert f"67/udp on 0.0.0.0 is held by python3 (pid {blocker.pid}" in error.group(1)
    assert "Traceback" not in server.log.text()
    assert snapshot(srv) == before


async def test_restored_by_the_next_start_after_kill_9(world: NsFactory) -> None:
    srv = _setup(world)
    before = snapshot(srv)
    first = await srv.start_wsnic("-i")
    dnsmasq = int((await first.log.wait_for(r"dnsmasq ready \(pid (\d+)\)")).group(1))
    watchdog = watchdog_of(dnsmasq)
    assert watchdog is not None
    os.kill(watchdog, signal.SIGKILL)  # the worst case: nothing stops the old dnsmasq
    await first.stop(signal.SIGKILL)
    left = snapshot(srv)
    assert "wsbr0" in left["links"] and f"wsnic_trio_pid{first.pid}" in left["nft"]
    assert left["ip_forward"].strip() == "1" and "dnsmasq" in left["processes"]

    second = await srv.start_wsnic()  # even without -i it undoes the old run's NAT
    assert "ip_forward=-" in snapshot(srv)["nft"], "its own table records no sysctl"
    assert f"wsnic_trio_pid{first.pid}" not in snapshot(srv)["nft"]
    log = second.log
    assert log.find(rf"removed bridge wsbr0 left behind by an earlier run \(pid {first.pid}\)")
    assert log.find(rf"stopping dnsmasq \(pid {dnsmasq}\) left behind by an earlier run")
    assert log.find(r"net\.ipv4\.ip_forward restored to 0, as it was before an earlier run")
    assert log.find(rf"removed nftables table inet wsnic_trio_pid{first.pid} .*\(pid {first.pid}\)")
    assert await second.stop() == 0
    assert snapshot(srv) == before


async def test_kill_9_then_start_with_nat_keeps_the_original_sysctl(world: NsFactory) -> None:
    """The second run must record the *original* ip_forward (0), not the 1 it found."""
    srv = _setup(world)
    before = snapshot(srv)
    first = await srv.start_wsnic("-i")
    await first.stop(signal.SIGKILL)
    second = await srv.start_wsnic("-i")
    assert second.log.find(r"net\.ipv4\.ip_forward was 0: set to 1 for this run")
    assert await second.stop() == 0
    await _settles_to(srv, before)


async def test_host_filter_without_inet_is_removed_on_stop(world: NsFactory) -> None:
    """Without -i the LAN's table (no forwarding in or out) exists for the run only;
    forwarding, that the host turned on itself (as Docker does), stays on."""
    srv = _setup(world)
    assert (await srv.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")).returncode == 0
    before = snapshot(srv)
    server = await srv.start_wsnic()
    assert server.log.find(r"LAN isolated: nothing forwarded into or out of wsbr0")
    during = snapshot(srv)
    assert f"table inet wsnic_trio_pid{server.pid} " in during["nft"]
    assert '"wsbr0" : jump to_wsbr0' in during["nft"] and "masquerade" not in during["nft"]
    assert during["ip_forward"] == before["ip_forward"]
    assert await server.stop() == 0
    assert server.log.find(
        rf"host filter off: wsbr0's rules removed from table inet wsnic_trio_pid{server.pid}"
    )
    assert snapshot(srv) == before


async def test_kill_9_without_inet_leaves_a_sysctl_changed_since_alone(world: NsFactory) -> None:
    """A run without -i changes no sysctl, so the next start, which removes its table,
    must not "restore" ip_forward: here something else turned it on in between."""
    srv = _setup(world)
    before = snapshot(srv)
    assert before["ip_forward"].strip() == "0"
    first = await srv.start_wsnic()
    await first.stop(signal.SIGKILL)
    assert f"wsnic_trio_pid{first.pid}" in snapshot(srv)["nft"], "the table outlives a kill -9"
    assert (await srv.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")).returncode == 0
    second = await srv.start_wsnic()
    table = f"wsnic_trio_pid{first.pid}"
    assert second.log.find(rf"removed nftables table inet {table} .*\(pid {first.pid}\)")
    assert not second.log.find(r"ip_forward restored")
    assert await second.stop() == 0
    expected = {**before, "ip_forward": before["ip_forward"].replace("0", "1")}
    await _settles_to(srv, expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--dhcp-lease-file", "/nonexistent-wsnic-dir/leases"],
            r"--dhcp-lease-file /nonexistent-wsnic-dir/leases: directory "
            r"/nonexistent-wsnic-dir does not exist",
        ),
        (["-d", "192.168.86.1,not-an-ip"], r"-d.*'not-an-ip' is not an IPv4 address"),
        (["-s", "192.168.86.0/31"], r"subnet 192\.168\.86\.0/31 is too small"),
        (["-t", "30"], r"lease time 30 s is shorter than dnsmasq's minimum"),
        (["-n", "bad_domain!"], r"'bad_domain!' is not a DNS domain name"),
        (["-i"], r"--enable-inet: this host has no IPv4 default route"),
        (["-i", "-f", "nosuch0"], r"--inet-iface nosuch0: no such interface"),
    ],
)
async def test_bad_input_is_a_clear_error_and_leaves_nothing(
    world: NsFactory, args: list[str], message: str
) -> None:
    require_tools()
    srv = world.new("srv")  # no default route here
    forget_stale_run_dir(srv)
    before = snapshot(srv)
    server = await srv.start_wsnic(*args, ready=False)
    assert await server.wait() == 2
    assert server.log.find(r"wsnic-trio: error: .*" + message), server.log.text()
    assert "Traceback" not in server.log.text()
    assert snapshot(srv) == before
