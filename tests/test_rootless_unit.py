"""Rootless mode without namespaces: the helper protocol, the Config on the wire, the
uplink command lines and the mode choice (no root needed)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path

import pytest
import trio

from wsnic_trio import Config, ConfigError
from wsnic_trio._cli import config_from_args
from wsnic_trio._exceptions import WsnicError
from wsnic_trio._nat import NatPlan, TableNote, build_ruleset
from wsnic_trio._nshelper import connect
from wsnic_trio._nsproto import (
    MAX_MESSAGE,
    HelperProtocolError,
    Reply,
    Request,
    config_from_wire,
    config_to_wire,
    connect_args,
    connect_request,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from wsnic_trio._rootless import (
    SLIRP_HOST,
    RootlessLan,
    choose_rootless,
    has_net_admin,
    pasta_argv,
    slirp4netns_argv,
)


@pytest.mark.parametrize(
    "request_",
    [
        Request("setup", {"config": {"bridge": "lan7"}}),
        Request("start", {"uplink": None}),
        Request("tap"),
        Request("connect", {"protocol": "tcp", "host": "192.168.86.23", "port": 22}),
    ],
)
def test_request_round_trip(request_: Request) -> None:
    assert decode_request(encode_request(request_)) == request_


@pytest.mark.parametrize(
    "reply", [Reply(True, {"name": "wstap0"}), Reply(True), Reply(False, error="no bridge")]
)
def test_reply_round_trip(reply: Reply) -> None:
    assert decode_reply(encode_reply(reply)) == reply


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"[]",
        b'{"op": "rm -rf"}',
        b'{"op": "tap", "args": []}',
        b"{",
        b" " * (MAX_MESSAGE + 1),
    ],
)
def test_bad_requests_are_refused(data: bytes) -> None:
    with pytest.raises(HelperProtocolError):
        decode_request(data)


@pytest.mark.parametrize(
    "data", [b'{"ok": 1}', b'{"ok": false}', b'{"ok": true, "values": 3}', b'"ok"']
)
def test_bad_replies_are_refused(data: bytes) -> None:
    with pytest.raises(HelperProtocolError):
        decode_reply(data)


def test_connect_request_is_checked() -> None:
    request = connect_request("udp", "fd00::5", 53)
    assert connect_args(decode_request(encode_request(request))) == ("udp", "fd00::5", 53)


@pytest.mark.parametrize(
    "args",
    [
        {"protocol": "sctp", "host": "10.0.0.1", "port": 1},
        {"protocol": "tcp", "host": "alpine", "port": 22},  # names are the server's job
        {"protocol": "tcp", "host": 7, "port": 22},
        {"protocol": "tcp", "host": "10.0.0.1", "port": 0},
        {"protocol": "tcp", "host": "10.0.0.1", "port": 65536},
        {"protocol": "tcp", "host": "10.0.0.1", "port": "22"},
        {"protocol": "tcp", "host": "10.0.0.1", "port": True},
        {"protocol": "tcp", "host": "10.0.0.1"},
    ],
)
def test_bad_connect_args_are_refused(args: dict[str, object]) -> None:
    with pytest.raises(HelperProtocolError):
        connect_args(Request("connect", args))
    with pytest.raises(HelperProtocolError):
        connect(Request("connect", args))  # the helper's handler checks the same


def test_helper_connect_failing_at_once_is_an_error_reply() -> None:
    """A connect the kernel refuses at once (TCP to a multicast address) is an error
    reply with no fd, not an exception that could end the helper."""
    reply, fd = connect(connect_request("tcp", "224.0.0.1", 9))
    assert fd is None
    assert not reply.ok and "224.0.0.1:9" in reply.error, reply
    assert os.strerror(errno.ENETUNREACH) in reply.error


async def _fake_helper(sock: trio.socket.SocketType) -> None:
    """The helper's request loop in miniature: ``connect`` by its real handler."""
    while data := await sock.recv(MAX_MESSAGE + 1):
        reply, fd = connect(decode_request(data))
        if fd is None:
            await sock.send(encode_reply(reply))
        else:
            await sock.sendmsg(
                [encode_reply(reply)],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, "little"))],
            )
            os.close(fd)


async def test_open_remote_through_a_helper() -> None:
    """RootlessLan.open_remote gets the helper's socket over SCM_RIGHTS and finishes the
    TCP connect itself: data flows; a refused port and a failed connect are errors."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lan = RootlessLan(Config())
    lan._sock = trio.socket.from_stdlib_socket(ours)
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    with listener, lan._sock, trio.socket.from_stdlib_socket(theirs) as helper_end:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fake_helper, helper_end)
            remote = await lan.open_remote("tcp", "127.0.0.1", port)
            accepted, _ = await listener.accept()
            listener.close()
            with remote, accepted:
                await remote.send(b"to the guest")
                assert await accepted.recv(100) == b"to the guest"
                await accepted.send(b"from the guest")
                assert await remote.recv(100) == b"from the guest"
            with pytest.raises(ConnectionRefusedError):
                await lan.open_remote("tcp", "127.0.0.1", port)  # nobody listens any more
            with pytest.raises(WsnicError, match=r"224\.0\.0\.1:9"):
                await lan.open_remote("tcp", "224.0.0.1", 9)
            udp = await lan.open_remote("udp", "127.0.0.1", 9)
            with udp:
                assert udp.type == socket.SOCK_DGRAM
                assert udp.getpeername() == ("127.0.0.1", 9)
            nursery.cancel_scope.cancel()


def test_unknown_request_is_not_sent() -> None:
    with pytest.raises(HelperProtocolError):
        encode_request(Request("exec"))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        [
            "--subnet",
            "10.5.0.0/16",
            "--bridge",
            "lan7",
            "--mtu",
            "9000",
            "--dhcp-nameserver",
            "1.1.1.1,9.9.9.9",
            "--allow-private",
            "10.0.0.0/8",
            "--enable-inet",
            "--rootless",
            "--uplink",
            "pasta",
            "--allow-host-loopback",
            "--rate-limit",
            "2.5M",
            "--socket-mode",
            "0600",
            "--qemu",
            "tcp:127.0.0.1:5555",
            "--dhcp-lease-file",
            "/tmp/leases",
            "-vv",
            "--lock-mac",
            "all",
            "--allow-origin",
            "HTTPS://Lab.Example.org:443",
            "--allow-origin",
            "*.example.net:*",
            "--allow-origin",
            "http://[0::1]:8000",
        ],
    ],
)
def test_config_survives_the_wire(argv: list[str]) -> None:
    """The helper rebuilds exactly the server's Config from the JSON it is sent."""
    config = config_from_args(argv)
    assert config_from_wire(config_to_wire(config)) == config


def test_host_loopback_flags() -> None:
    assert not Config().host_loopback
    assert Config(allow_host_loopback=True).host_loopback
    # --disable-host-loopback wins over allow_host_loopback from a config file.
    assert not Config(allow_host_loopback=True, disable_host_loopback=True).host_loopback


def test_uplink_is_checked() -> None:
    with pytest.raises(ConfigError, match="slirp4netns, pasta"):
        config_from_args(["--uplink", "vde"])


def test_slirp4netns_argv() -> None:
    argv = slirp4netns_argv("slirp4netns", 4242, ready_fd=7, exit_fd=8, host_loopback=False)
    assert argv[0] == "slirp4netns"
    assert argv[-2:] == ["4242", "tap0"]
    for flag in (
        "--configure",
        "--ready-fd=7",
        "--exit-fd=8",
        "--enable-sandbox",
        "--enable-seccomp",
        "--disable-dns",
        "--disable-host-loopback",
    ):
        assert flag in argv
    allowed = slirp4netns_argv("slirp4netns", 1, ready_fd=7, exit_fd=8, host_loopback=True)
    assert "--disable-host-loopback" not in allowed


def test_pasta_argv() -> None:
    argv = pasta_argv("pasta", 4242, pid_file=Path("/run/x/pasta.pid"), host_loopback=False)
    assert argv[-1] == "4242"
    assert "--config-net" in argv and "--no-map-gw" in argv
    assert "--dns=none" in argv  # the LAN's DNS is dnsmasq's; "--dns=" breaks older pasta
    assert "--no-map-gw" not in pasta_argv("pasta", 1, pid_file=Path("p"), host_loopback=True)


STATUS = "Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t{}\n"


def test_net_admin_from_proc_status() -> None:
    assert has_net_admin(STATUS.format("000001fffeffffff"))
    assert not has_net_admin(STATUS.format("0000000000000000"))
    assert has_net_admin(STATUS.format("0000000000001000"))
    assert not has_net_admin("")


@pytest.mark.parametrize(
    ("rootless", "euid", "net_admin", "expected"),
    [
        (False, 0, True, False),
        (False, 1000, True, False),  # a capability is as good as root
        (False, 1000, False, True),  # chosen automatically
        (True, 0, True, True),  # asked for, even as root
    ],
)
def test_mode_choice(rootless: bool, euid: int, net_admin: bool, expected: bool) -> None:
    chosen, why = choose_rootless(Config(rootless=rootless), euid=euid, net_admin=net_admin)
    assert chosen is expected
    assert ("rootless" in why) is expected


def test_helper_ruleset_forwards_between_ports_and_allows_host() -> None:
    """In the helper's namespace bridged frames pass the forward hook (br_netfilter);
    they are accepted before any drop, and 10.0.2.2 is reachable only when allowed."""
    plan = NatPlan(
        bridge="wsbr0",
        subnet=ipaddress.IPv4Network("192.168.86.0/24"),
        bridge_address=ipaddress.IPv4Address("192.168.86.1"),
        uplink="tap0",
        allow_private=[ipaddress.IPv4Network(f"{SLIRP_HOST}/32")],
        note=TableNote(1, "wsbr0", "1"),
    )
    text = build_ruleset(plan)
    forward = text[text.index("chain forward") :]
    assert forward.index('iifname "wsbr0" oifname "wsbr0" accept') < forward.index("drop")
    assert "10.0.2.2/32" in text
