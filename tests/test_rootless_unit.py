"""Rootless mode without namespaces: the helper protocol, the Config on the wire, the
uplink command lines and the mode choice (no root needed)."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import trio

from wsnic_trio import Config, ConfigError
from wsnic_trio.cli.main import config_from_args
from wsnic_trio.errors import SetupError, WsnicError
from wsnic_trio.host.nat import NatPlan, TableNote, build_ruleset
from wsnic_trio.lan import nshelper as _nshelper
from wsnic_trio.lan import rootless as _rootless
from wsnic_trio.lan.nshelper import Helper, connect
from wsnic_trio.lan.nsproto import (
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
from wsnic_trio.lan.rootless import (
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
    assert not Config().server.host_loopback
    assert Config(allow_host_loopback=True).server.host_loopback
    # --disable-host-loopback wins over allow_host_loopback from a config file.
    assert not Config(allow_host_loopback=True, disable_host_loopback=True).server.host_loopback


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
    forward = text[text.index("chain forward {") :]
    forward = forward[: forward.index("\n    }")]
    assert "iifname . oifname @intra accept" in forward and "drop" not in forward
    assert 'add element inet wsnic_trio_wsbr0 intra { "wsbr0" . "wsbr0" }' in text
    assert "10.0.2.2/32" in text


_NEVER_READY = """
import os, sys
exit_fd = int(next(a for a in sys.argv if a.startswith("--exit-fd=")).partition("=")[2])
print("fake slirp4netns: started, never ready", file=sys.stderr, flush=True)
os.read(exit_fd, 1)  # blocks until the server closes the other end (EOF), then exits 0
"""


async def test_slirp4netns_that_never_reports_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slirp4netns that runs but never writes to its ready fd: start-up fails with a
    SetupError that names slirp4netns (not an UnboundLocalError), and stopping the LAN
    ends that slirp4netns through its exit fd."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "slirp4netns"
    fake.write_text(f"#!{sys.executable}\n{_NEVER_READY}")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(_rootless, "_UPLINK_TIMEOUT", 0.2)
    lan = RootlessLan(Config(enable_inet=True))
    lan.helper_pid = os.getpid()
    lan.rundir = tmp_path
    try:
        with pytest.raises(SetupError, match=r"^slirp4netns did not report ready within 0\.2 s"):
            await lan._start_uplink()
        assert lan._uplink is not None and lan._uplink.proc is not None
        proc = lan._uplink.proc
    finally:
        await lan._stop()
    assert proc.returncode == 0  # it read EOF on --exit-fd: stopped, not killed


# -- malformed requests cost only that request ------------------------------------------


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (Request("setup", {"config": [1]}), "bad config"),
        (Request("setup", {"config": {"bridge": {"x": 1}}}), "bad config"),
        (Request("setup", {"config": {}, "owner": [0]}), "bad owner"),
        (Request("setup", {"config": {}, "owner": [True, 0]}), "bad owner"),
        (Request("setup", {"config": {}, "sockets": 5}), "bad sockets"),
        (Request("setup", {"config": {}, "sockets": [["/x", 1]]}), "bad sockets"),
        (Request("start", {"uplink": 7}), "bad uplink"),
        (Request("start", {"uplink": "tap0; rm -rf /"}), "bad uplink"),
        (Request("start", {"uplink": "tap0", "host_address": "10.0.2"}), "bad host_address"),
        (Request("start", {"uplink": "tap0", "host_address": 167772674}), "bad host_address"),
        (Request("tap", {"name": "eth0"}), "unknown argument"),
        (Request("connect", {"protocol": "tcp", "host": "10.0.0.1", "port": 1, "x": 1}), "unknown"),
    ],
)
def test_malformed_arguments_are_refused(request_: Request, why: str) -> None:
    """Every argument of every request is checked by name and type when decoded, so no
    handler (one of them root's, with --user) ever sees a malformed one."""
    data = json.dumps({"op": request_.op, "args": dict(request_.args)}).encode()
    with pytest.raises(HelperProtocolError, match=why):
        decode_request(data)
    with pytest.raises(HelperProtocolError, match=why):
        encode_request(request_)


def test_requests_the_server_sends_are_valid() -> None:
    config = config_from_args(["--enable-inet", "--forward", "127.0.0.1:2222=web:22"])
    for request_ in (
        Request("setup", {"config": config_to_wire(config)}),
        Request("setup", {"config": {}, "owner": [1000, 1000], "sockets": [["/run/a", 5, 9]]}),
        Request("start", {"uplink": "tap0", "host_address": "10.0.2.2"}),
        Request("start", {"uplink": None, "host_address": None}),
    ):
        assert decode_request(encode_request(request_)) == request_


def _helper_pair() -> tuple[socket.socket, Helper]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(10)
    return ours, Helper(theirs, None, "tester")


def _ask(ours: socket.socket, helper: Helper, data: bytes) -> Reply:
    ours.send(data)
    assert helper._one_request()
    return decode_reply(ours.recv(MAX_MESSAGE + 1))


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> list[Request]:
    """The helper's handlers replaced by stubs that only record what reached them: these
    tests run in the host's namespace, where a real handler must never build anything."""
    seen: list[Request] = []

    def record(request: Request) -> Reply:
        seen.append(request)
        return Reply(True, {"handled": request.op})

    monkeypatch.setattr(Helper, "setup", lambda self, request: record(request))
    monkeypatch.setattr(Helper, "start", lambda self, config, request: record(request))
    monkeypatch.setattr(Helper, "tap", lambda self, config: (record(Request("tap")), None))
    monkeypatch.setattr(_nshelper, "connect", lambda request: (record(request), None))
    return seen


@pytest.mark.parametrize(
    "data",
    [
        b'{"op": "setup", "args": {"config": [1]}}',
        b'{"op": "setup", "args": {"config": "wsbr0"}}',
        b'{"op": "setup", "args": {"config": {}, "sockets": 5}}',
        b'{"op": "start", "args": {"uplink": "tap0", "host_address": "bogus"}}',
        b'{"op": "tap", "args": {"fd": 0}}',
        b'{"op": "connect", "args": {"protocol": "tcp", "host": "10.0.0.1", "port": 99999}}',
        b'{"op": "connect", "args": {"protocol": "tcp", "ho',  # truncated
        b'{"op": "tap", "args": {}}' + b" " * (2 * MAX_MESSAGE),  # oversized
        b"\x00\xff",
    ],
)
def test_rootless_helper_survives_a_malformed_request(data: bytes, handled: list[Request]) -> None:
    """The rootless helper answers a malformed, truncated or oversized request with an
    error reply before any handler sees it, and keeps serving: the next request on the
    same socket is handled."""
    ours, helper = _helper_pair()
    helper.config = Config()  # as after setup
    with ours, helper.sock:
        reply = _ask(ours, helper, data)
        assert not reply.ok and reply.error, reply
        assert handled == []
        assert _ask(ours, helper, encode_request(Request("tap"))) == Reply(True, {"handled": "tap"})


def test_rootless_helper_refuses_a_second_start() -> None:
    ours, helper = _helper_pair()
    helper.config = Config(disable_dhcp=True)
    with ours, helper.sock:
        start = encode_request(Request("start", {"uplink": None, "host_address": None}))
        assert _ask(ours, helper, start) == Reply(True)
        assert _ask(ours, helper, start) == Reply(False, error="start twice")


def test_fds_sent_to_the_helper_are_not_kept() -> None:
    """File descriptors attached to a request (a foreign or broken server) are dropped
    by the kernel when the helper reads the request: the helper ends up holding none."""
    ours, helper = _helper_pair()
    r, w = os.pipe()
    with ours, helper.sock:
        socket.send_fds(ours, [encode_request(Request("tap", {}))], [w])
        os.close(w)
        assert helper._one_request()
        reply = decode_reply(ours.recv(MAX_MESSAGE + 1))
        assert not reply.ok and reply.error == "tap before setup"
        # The only other copy of the write end was in flight: the pipe reads EOF now.
        assert os.read(r, 1) == b""
    os.close(r)


def test_server_gone_mid_request() -> None:
    """The server closes its end before the reply: the helper stops serving (its
    clean-up then ends the LAN) and does not raise."""
    ours, helper = _helper_pair()
    with helper.sock:
        ours.send(encode_request(Request("tap", {})))
        ours.close()
        assert not helper._one_request()


async def test_server_helper_reply_that_breaks_the_protocol() -> None:
    """A reply the server cannot decode costs that request only (HelperProtocolError,
    any fds it carried closed); the next request on the same LAN is answered."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lan = RootlessLan(Config())
    lan._sock = trio.socket.from_stdlib_socket(ours)
    r, w = os.pipe()
    with lan._sock, trio.socket.from_stdlib_socket(theirs) as helper_end:
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                await helper_end.recv(MAX_MESSAGE + 1)
                await helper_end.sendmsg(
                    [b"{not json"],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, w.to_bytes(4, "little"))],
                )
                await helper_end.recv(MAX_MESSAGE + 1)
                await helper_end.send(encode_reply(Reply(True, {"rundir": "/x"})))

            nursery.start_soon(answer)
            with pytest.raises(HelperProtocolError, match="not a JSON message"):
                await lan._call(Request("tap"))
            os.close(w)
            assert os.read(r, 1) == b""  # the fd that came with the bad reply was closed
            assert await lan._call(Request("setup", {"config": {}})) == Reply(
                True, {"rundir": "/x"}
            )
    os.close(r)


def test_rootless_helper_answers_a_setup_whose_error_would_not_fit() -> None:
    """A set-up request of nearly MAX_MESSAGE bytes whose bad value the error quotes:
    the helper still replies (the error is cut short) instead of failing to encode its
    reply and exiting. The config is refused before the helper would build anything."""
    ours, helper = _helper_pair()
    bad = {"config": {"dhcp_nameserver": "x" * (MAX_MESSAGE - 100)}}
    with ours, helper.sock:
        reply = _ask(ours, helper, encode_request(Request("setup", bad)))
        assert not reply.ok, reply
        assert reply.error.startswith("rootless helper request: dhcp_nameserver: 'xxx")
        assert reply.error.endswith("...") and len(reply.error) < MAX_MESSAGE // 4
        assert helper.config is None and helper.rundir is None
