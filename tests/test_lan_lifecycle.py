"""The server's bridge: created at start, removed at every kind of stop, leftovers cleared."""

from __future__ import annotations

import signal

from .netns import NsFactory


def _bridge_state(ns_links: list[str]) -> bool:
    return "wsbr0" in ns_links


async def test_bridge_created_with_address_and_removed_on_sigterm(world: NsFactory) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic()
    addr = ns.ip("-o", "-4", "addr", "show", "dev", "wsbr0").stdout
    assert "inet 192.168.86.1/24" in addr
    link = ns.ip("-d", "link", "show", "wsbr0").stdout
    assert "link/ether 02:77:73:00:00:01" in link
    assert "UP" in link.split(">")[0]
    assert await server.stop(signal.SIGTERM) == 0
    assert "wsbr0" not in ns.links()
    assert server.log.find(r"bridge wsbr0 removed")


async def test_bridge_removed_on_sigint(world: NsFactory) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic()
    assert "wsbr0" in ns.links()
    assert await server.stop(signal.SIGINT) == 0
    assert "wsbr0" not in ns.links()


async def test_start_after_kill_9_clears_leftovers(world: NsFactory) -> None:
    ns = world.new("srv")
    first = await ns.start_wsnic()
    await first.stop(signal.SIGKILL)
    assert "wsbr0" in ns.links(), "kill -9 leaves the bridge; the next start must clear it"
    second = await ns.start_wsnic()
    assert second.log.find(
        rf"removed bridge wsbr0 left behind by an earlier run \(pid {first.pid}\)"
    )
    assert await second.stop() == 0
    assert "wsbr0" not in ns.links()


async def test_foreign_device_with_our_name_is_refused_and_kept(world: NsFactory) -> None:
    ns = world.new("srv")
    ns.ip("link", "add", "wsbr0", "type", "bridge")
    server = await ns.start_wsnic(ready=False)
    assert await server.wait() == 2
    assert server.log.find(
        r"error: a device named wsbr0 already exists and was not created by wsnic-trio"
    )
    assert "wsbr0" in ns.links()
    assert "wsnic-trio" not in ns.ip("-d", "link", "show", "wsbr0").stdout


async def test_second_server_on_same_bridge_is_refused(world: NsFactory) -> None:
    ns = world.new("srv")
    first = await ns.start_wsnic()
    second = await ns.start_wsnic("--ws-port", "8087", ready=False)
    assert await second.wait() == 2
    assert second.log.find(rf"belongs to a running wsnic-trio \(pid {first.pid}\)")
    assert "wsbr0" in ns.links(), "the refused server must not touch the running one's bridge"
    assert await first.stop() == 0


async def test_port_in_use_fails_before_touching_the_host(world: NsFactory) -> None:
    ns = world.new("srv")
    blocker = ns.socket()
    try:
        blocker.bind(("127.0.0.1", 8086))
        blocker.listen()
        server = await ns.start_wsnic(ready=False)
        assert await server.wait() == 2
        assert server.log.find(r"error: WebSocket listener: cannot listen on 127.0.0.1 port 8086")
        assert "wsbr0" not in ns.links()
    finally:
        blocker.close()


async def test_custom_bridge_name_subnet_and_mtu(world: NsFactory) -> None:
    ns = world.new("srv")
    server = await ns.start_wsnic("-b", "lanx", "-s", "10.77.0.0/16", "--mtu", "9000")
    assert "inet 10.77.0.1/16" in ns.ip("-o", "-4", "addr", "show", "dev", "lanx").stdout
    assert "mtu 9000" in ns.ip("link", "show", "lanx").stdout
    assert await server.stop() == 0
    assert "lanx" not in ns.links()
