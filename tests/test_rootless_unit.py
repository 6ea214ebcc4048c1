"""Rootless mode without namespaces: the helper protocol, the Config on the wire, the
uplink command lines and the mode choice (no root needed)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from wsnic_trio import Config, ConfigError
from wsnic_trio._cli import config_from_args
from wsnic_trio._nat import NatPlan, TableNote, build_ruleset
from wsnic_trio._nsproto import (
    MAX_MESSAGE,
    HelperProtocolError,
    Reply,
    Request,
    config_from_wire,
    config_to_wire,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from wsnic_trio._rootless import (
    SLIRP_HOST,
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
