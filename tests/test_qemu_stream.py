"""QEMU ``-netdev stream`` peers (unix and TCP) against the real server in a namespace."""

from __future__ import annotations

import math
import os
import socket
import stat
from pathlib import Path

import pytest
import trio

from wsnic_trio import ConfigError
from wsnic_trio.cli.main import config_from_args, main
from wsnic_trio.transports import dialer_for

from . import packets as pk
from .netns import NetNS, NsFactory, NsProcess
from .vmclients import (
    StreamClient,
    arp_bridge,
    burst,
    exists,
    frame_to,
    length_prefix,
    ping3,
    read_text,
    start_connects,
    stop_all,
    survivor_unharmed,
    taps,
    wait_taps,
    write_text,
)


def test_vm_listener_options_repeat_and_parse(tmp_path: Path) -> None:
    listeners = ["--qemu", "unix:/run/a.sock", "--qemu", "tcp:[::1]:9000", "--bess", "/run/b.sock"]
    datagram = ["--vfkit", "/run/v.sock", "--dgram", "/run/d.sock"]
    cfg = config_from_args([*listeners, *datagram, "--qemu-connect", "tcp:h:1"])
    assert cfg.lan.qemu == ("unix:/run/a.sock", "tcp:[::1]:9000")
    assert cfg.lan.dgram == ("/run/v.sock", "/run/d.sock"), "--vfkit and --dgram are one option"
    assert (cfg.lan.bess, cfg.lan.qemu_connect) == (("/run/b.sock",), ("tcp:h:1",))
    conf = tmp_path / "w.toml"
    conf.write_text('qemu = ["unix:/x.sock"]\ndgram = ["/y.sock"]\nsocket_mode = "0666"\n')
    cfg = config_from_args(["-c", str(conf)])
    assert (cfg.lan.qemu, cfg.lan.dgram, cfg.server.socket_mode) == (
        ("unix:/x.sock",),
        ("/y.sock",),
        0o666,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--qemu", "/run/a.sock"], "is not unix:PATH or tcp:HOST:PORT"),
        (["--qemu", "tcp:host"], "is not HOST:PORT"),
        (["--qemu-connect", "tcp:host:99999"], "is not a port"),
        (["--qemu", "tcp:127.0.0.1:0"], "needs a fixed port"),
        (["--socket-mode", "rw"], "not an octal file mode"),
        (["--dgram-max-peers", "0"], "must be at least 1"),
    ],
)
def test_bad_vm_listener_options(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_args(argv)


@pytest.mark.parametrize(
    "url", ["ws://h:1/", "qemu+unix:/p", "qemu+tcp://h:1", "bess:/p", "dgram:/p", "vfkit:/p"]
)
def test_connect_urls_pick_a_dialer_by_scheme(url: str) -> None:
    assert callable(dialer_for(url))


def test_connect_refuses_an_unknown_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect", "unix:/p"]) == 2
    err = capsys.readouterr().err
    assert "unsupported URL 'unix:/p': the scheme must be one of ws:" in err
    assert all(f" {scheme}:" in err for scheme in ("qemu+unix", "qemu+tcp", "bess", "dgram"))


async def _server(
    world: NsFactory, sockdir: str, *args: str, name: str = "q.sock"
) -> tuple[NetNS, str, NsProcess]:
    """A server in namespace "srv" taking QEMU stream peers on unix:``sockdir``/``name``."""
    ns = world.new("srv")
    path = f"{sockdir}/{name}"
    return ns, path, await ns.start_wsnic("--qemu", f"unix:{path}", *args)


async def test_unix_and_tcp_clients_reach_the_bridge_and_each_other(
    world: NsFactory, sockdir: str
) -> None:
    ns, path, server = await _server(
        world, sockdir, "--qemu", "tcp:127.0.0.1:9000", name="qemu.sock"
    )
    await server.log.wait_for(rf"listening on qemu stream unix:{path}")
    await server.log.wait_for(r"listening on qemu stream tcp:127\.0\.0\.1:9000")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    a_mac, b_mac = pk.mac("02:00:00:00:0a:01"), pk.mac("02:00:00:00:0b:01")
    alice = await StreamClient.unix(path)
    bob = await _tcp_client(ns, 9000)
    await wait_taps(ns, 2)
    await arp_bridge(alice, a_mac, "192.168.86.10")
    await arp_bridge(bob, b_mac, "192.168.86.11")
    # Twenty frames in one write: the server must parse every frame of one read.
    await burst(alice, bob, a_mac, b_mac, b"a", 20)
    await bob.send(frame_to(a_mac, b_mac, b"back"))
    await alice.receive_until(lambda f: f[6:12] == b_mac and b"back" in f)
    await server.log.wait_for(rf"connected: qemu unix:{path} on wstap")
    await server.log.wait_for(r"connected: qemu 127\.0\.0\.1:\d+ on wstap")
    alice.close()
    bob.close()
    await wait_taps(ns, 0)
    assert await server.stop() == 0
    assert not exists(path), "the socket file is removed on exit"


async def _tcp_client(ns: NetNS, port: int) -> StreamClient:
    stream = await ns.connect_tcp("127.0.0.1", port)
    return StreamClient(stream.socket)


BAD_INPUT = {
    "zero-length": (length_prefix(0) + b"x" * 20, False, r"frame length zero"),
    "over-limit": (length_prefix(1519), False, r"frame length 1519, over the limit of 1518"),
    "length-then-eof": (length_prefix(60), True, r"connection ended inside a frame"),
    "garbage": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, r"over the limit"),
    "half-frame-stall": (length_prefix(60) + b"\0" * 30, False, r"stayed incomplete for 1 s"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_closes_that_peer_only(world: NsFactory, sockdir: str, case: str) -> None:
    data, then_eof, reason = BAD_INPUT[case]
    ns, path, server = await _server(world, sockdir, "--partial-frame-timeout", "1")
    good_mac = pk.mac("02:00:00:00:0a:01")
    good = await StreamClient.unix(path)
    await wait_taps(ns, 1)
    await arp_bridge(good, good_mac, "192.168.86.10")
    baseline = server.fd_count()

    bad = await StreamClient.unix(path)
    await wait_taps(ns, 2)
    await bad.send_raw(data)
    if then_eof:
        bad.sock.shutdown(socket.SHUT_WR)
    await bad.read_to_eof()  # the server closes the bad peer
    await server.log.wait_for(rf"client 2 disconnected \(.*{reason}")
    bad.close()
    await survivor_unharmed(ns, server, good, good_mac, baseline)  # it never noticed
    assert not server.log.find(r"Traceback")
    good.close()
    await wait_taps(ns, 0)
    assert await server.stop() == 0


async def test_a_65000_byte_frame_crosses_real_taps_at_mtu_65520(
    world: NsFactory, sockdir: str
) -> None:
    ns, path, server = await _server(world, sockdir, "--mtu", "65520")
    a_mac, b_mac = pk.mac("02:00:00:00:0a:01"), pk.mac("02:00:00:00:0b:01")
    alice = await StreamClient.unix(path, max_frame=65538)
    bob = await StreamClient.unix(path, max_frame=65538)
    for tap in await wait_taps(ns, 2):
        assert "mtu 65520" in ns.ip("link", "show", tap).stdout
    # Both ports forward and the bridge has learnt bob's MAC once alice hears him.
    with trio.fail_after(10):
        while True:
            await bob.send(frame_to(pk.BROADCAST, b_mac, b"bob is here"))
            with trio.move_on_after(0.5):
                await alice.receive_until(lambda f: f[6:12] == b_mac, timeout=math.inf)
                break
    big = frame_to(b_mac, a_mac, os.urandom(64986), size=65000)
    await alice.send(big)
    assert await bob.receive_until(lambda f: f[6:12] == a_mac, timeout=10) == big
    alice.close()
    bob.close()
    await wait_taps(ns, 0)
    assert await server.stop() == 0
    assert not server.log.find(r"dropped")


async def test_socket_file_rules(world: NsFactory, sockdir: str) -> None:
    ns = world.new("srv")
    path = f"{sockdir}/q.sock"
    # A stale socket file of a dead run: nobody listens on it. It is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    server = await ns.start_wsnic("--qemu", f"unix:{path}", "--socket-mode", "0600")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    client = await StreamClient.unix(path)
    await wait_taps(ns, 1)
    client.close()

    # The same path while that server runs: refused before the host is touched.
    other = world.new("other")
    second = await other.start_wsnic("--qemu", f"unix:{path}", ready=False)
    assert await second.wait() == 2
    assert second.log.find(rf"{path} is in use by a running program")
    assert "wsbr0" not in other.links()

    # A missing directory, and something that is not a socket, are clear errors too.
    third = await other.start_wsnic("--qemu", f"unix:{sockdir}/nodir/q.sock", ready=False)
    assert await third.wait() == 2
    assert third.log.find(rf"directory {sockdir}/nodir does not exist")
    write_text(f"{sockdir}/file", "keep me")
    fourth = await other.start_wsnic("--bess", f"{sockdir}/file", ready=False)
    assert await fourth.wait() == 2
    assert fourth.log.find(r"exists and is not a socket")
    assert read_text(f"{sockdir}/file") == "keep me"
    assert "wsbr0" not in other.links()

    assert await server.stop() == 0
    assert not exists(path)


async def test_outbound_mode_dials_and_redials_a_listening_qemu(
    world: NsFactory, sockdir: str
) -> None:
    """--qemu-connect: the server keeps dialling a QEMU started with server=on."""
    ns = world.new("srv")
    path = f"{sockdir}/qemu-listen.sock"
    # The server starts first: QEMU is not there yet, and that is fine.
    server = await ns.start_wsnic("--qemu-connect", f"unix:{path}")
    await server.log.wait_for(rf"cannot connect to unix:{path}: No such file.*retrying")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    me = pk.mac("02:00:00:00:0c:01")
    for round_ in range(2):
        with trio.fail_after(20):
            conn, _ = await listener.accept()
        qemu = StreamClient(conn)
        await wait_taps(ns, 1)
        await arp_bridge(qemu, me, "192.168.86.12")
        qemu.close()  # "QEMU" drops the connection (a restart, say)
        await server.log.wait_for(rf"client {round_ + 1} disconnected")
    listener.close()
    assert not taps(ns, ready=False)
    assert await server.stop() == 0


async def test_connect_tool_over_qemu_unix_and_tcp(world: NsFactory, sockdir: str) -> None:
    """`wsnic-trio connect qemu+unix:` and `qemu+tcp://` give a client namespace a LAN."""
    srv = world.new("srv")
    ns_a, ns_b = world.new("a"), world.new("b")
    world.link(srv, "198.18.0.1/30", ns_b, "198.18.0.2/30")
    path = f"{sockdir}/q.sock"
    await srv.start_wsnic("--qemu", f"unix:{path}", "--qemu", "tcp:198.18.0.1:9000")
    urls = [
        (ns_a, f"qemu+unix:{path}", "192.168.86.20"),
        (ns_b, "qemu+tcp://198.18.0.1:9000", "192.168.86.21"),
    ]
    procs = await start_connects(urls, label="connect")
    await wait_taps(srv, 2)
    await ping3(ns_a, "192.168.86.21")
    await stop_all(procs)
    await wait_taps(srv, 0)
