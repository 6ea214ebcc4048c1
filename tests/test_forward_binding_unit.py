"""Forwards to a host name are bound to a MAC (no namespaces: a real lease table on a
file written the way dnsmasq writes it, a manager whose listeners are on loopback)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from wsnic_trio.config.endpoints import make_forward
from wsnic_trio.control.forward import Forward, ForwardError, ForwardLan, ForwardManager
from wsnic_trio.host.leases import LeaseTable

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


class LeaseFile:
    """dnsmasq's lease file, rewritten whole on every change (as dnsmasq does)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = 1_700_000_000 * 10**9

    def write(self, *leases: tuple[str, str, str]) -> None:
        lines = [f"0 {mac} {ip} {name} *\n" for mac, ip, name in leases]
        self.path.write_text("".join(lines))
        # The table notices a change by mtime and size: make each rewrite visibly new.
        self._stamp += 10**9
        os.utime(self.path, ns=(self._stamp, self._stamp))


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[ForwardManager, LeaseFile]]:
    leases = LeaseFile(tmp_path / "leases")
    leases.write()
    table = LeaseTable(leases.path)
    manager = ForwardManager()
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        lan = ForwardLan(ipaddress.IPv4Network("192.168.86.0/24"), table, "lan")
        manager.add_lan("default", lan)
        yield manager, leases
        nursery.cancel_scope.cancel()


async def add(manager: ForwardManager, remote: str) -> Forward:
    return await manager.add(make_forward("127.0.0.1:0", remote, "tcp"))


async def test_a_later_claimer_of_the_name_does_not_get_the_forward(
    setup: tuple[ForwardManager, LeaseFile],
) -> None:
    manager, leases = setup
    leases.write((MAC_A, "192.168.86.10", "web"))
    fwd = await add(manager, "web.lan:22")
    assert await manager.resolve(fwd) == "192.168.86.10"

    # dnsmasq gives the name to the last claimer and takes it off the first lease.
    leases.write((MAC_A, "192.168.86.10", "*"), (MAC_B, "192.168.86.11", "web"))
    assert await manager.resolve(fwd) == "192.168.86.10"
    assert fwd.describe()["bound_mac"] == MAC_A

    # The bound guest gone (no lease): connections fail, naming both MACs.
    leases.write((MAC_B, "192.168.86.11", "web"))
    with pytest.raises(ForwardError) as err:
        await manager.resolve(fwd)
    assert err.value.status == 502
    assert MAC_A in str(err.value) and f"now held by MAC {MAC_B}" in str(err.value)

    # It comes back (same MAC) with another address: the forward follows it.
    leases.write((MAC_B, "192.168.86.11", "web"), (MAC_A, "192.168.86.20", "web2"))
    assert await manager.resolve(fwd) == "192.168.86.20"

    # A forward made now binds to the name's holder now.
    later = await add(manager, "web:23")
    assert later.describe()["bound_mac"] == MAC_B
    assert await manager.resolve(later) == "192.168.86.11"


async def test_a_name_without_a_lease_binds_to_its_first_claimer(
    setup: tuple[ForwardManager, LeaseFile],
) -> None:
    manager, leases = setup
    fwd = await add(manager, "ghost:22")
    with pytest.raises(ForwardError, match="no DHCP lease for host name 'ghost'"):
        await manager.resolve(fwd)

    # The first claimer is bound as soon as the table changes (the lease watcher's
    # update, here called directly), before any connection is made: a later claimer
    # does not get the forward, although nobody connected in between.
    leases.write((MAC_A, "192.168.86.10", "ghost"))
    table = manager.lans["default"].leases
    assert table is not None
    assert await table.update()
    leases.write((MAC_A, "192.168.86.10", "*"), (MAC_B, "192.168.86.11", "ghost"))
    assert await manager.resolve(fwd) == "192.168.86.10"
    assert fwd.describe()["bound_mac"] == MAC_A


async def test_forwards_to_addresses_are_not_bound(
    setup: tuple[ForwardManager, LeaseFile],
) -> None:
    manager, leases = setup
    leases.write((MAC_A, "192.168.86.10", "web"))
    fwd = await add(manager, "192.168.86.10:22")
    assert fwd.describe()["bound_mac"] is None
    assert await manager.resolve(fwd) == "192.168.86.10"
