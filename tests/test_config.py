"""Options: defaults, every flag, config files, precedence and errors (no root needed)."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from wsnic_trio import Config, ConfigError
from wsnic_trio._cli import build_parser, config_from_args, main
from wsnic_trio._config import OPTIONS, load_config_file


def test_defaults_match_wsnic_habits() -> None:
    cfg = Config()
    assert cfg.ws_address == "127.0.0.1"
    assert cfg.ws_port == 8086
    assert cfg.subnet == ipaddress.IPv4Network("192.168.86.0/24")
    assert str(cfg.bridge_address) == "192.168.86.1"
    assert cfg.bridge == "wsbr0"
    assert cfg.max_frame == 1518
    assert (cfg.ping_interval, cfg.ping_timeout) == (30.0, 100.0)


# One case per option that takes a value: the flag reaches its field (a parallel list
# of flags and fields is where such code drifts, so each entry is checked).
VALUE_CASES = {
    "ws_address": ("0.0.0.0", "0.0.0.0"),
    "ws_port": ("9000", 9000),
    "subnet": ("10.1.2.0/24", ipaddress.IPv4Network("10.1.2.0/24")),
    "bridge": ("lan7", "lan7"),
    "tap_prefix": ("vm", "vm"),
    "mtu": ("9000", 9000),
    "ping_interval": ("5", 5.0),
    "ping_timeout": ("500", 500.0),
    "handshake_timeout": ("2.5", 2.5),
    "max_handshakes": ("512", 512),
    "max_handshakes_per_ip": ("0", 0),
    "wss_port": ("8443", 8443),
    "wss_certificate": ("/etc/x/fullchain.pem", Path("/etc/x/fullchain.pem")),
    "wss_private_key": ("/etc/x/privkey.pem", Path("/etc/x/privkey.pem")),
    "auth_token_file": ("/etc/wsnic/tokens", Path("/etc/wsnic/tokens")),
    "max_clients": ("64", 64),
    "max_clients_per_ip": ("4", 4),
    "rate_limit": ("2.5M", 2.5e6),
    "broadcast_limit": ("50", 50),
    "max_queued_bytes": ("262144", 262144),
    "lock_mac": ("all", "all"),
    "socket_mode": ("0600", 0o600),
    "partial_frame_timeout": ("3", 3.0),
    "dgram_idle_timeout": ("7.5", 7.5),
    "dgram_max_peers": ("5", 5),
    "dhcp_lease_file": ("/var/lib/wsnic/leases", Path("/var/lib/wsnic/leases")),
    "dhcp_lease_time": ("3600", 3600),
    "dhcp_domain_name": ("Lab.Example", "lab.example"),
    "inet_iface": ("eth1", "eth1"),
    "api_token_file": ("/etc/wsnic/api-tokens", Path("/etc/wsnic/api-tokens")),
    "pcap": ("/var/tmp/captures", Path("/var/tmp/captures")),
    "pcap_max_bytes": ("10M", 10_000_000),
    "uplink": ("pasta", "pasta"),
    "user": ("wsnic", "wsnic"),
    "group": ("wsnic", "wsnic"),
}


@pytest.mark.parametrize("name", sorted(n for n, s in OPTIONS.items() if s.kind == "value"))
def test_each_value_flag_sets_its_field(name: str) -> None:
    if name not in VALUE_CASES:
        pytest.fail(f"option {name} has no case in VALUE_CASES: add one")
    text, expected = VALUE_CASES[name]
    for flag in OPTIONS[name].flags:
        cfg = config_from_args([flag, text])
        assert getattr(cfg, name) == expected, flag


def test_count_flags() -> None:
    cfg = config_from_args(["-vv", "-q"])
    assert (cfg.verbose, cfg.quiet) == (2, 1)


def test_wsnic_style_file_and_cli_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "wsnic.conf"
    conf.write_text(
        "# a wsnic config\nws_address = 0.0.0.0\nws-port = 9001  ; inline comment\n"
        "subnet = 10.9.0.0/16\n"
    )
    cfg = config_from_args(["-c", str(conf), "--ws-port", "9002"])
    assert cfg.ws_address == "0.0.0.0"
    assert cfg.ws_port == 9002, "command line overrides the file"
    assert cfg.subnet == ipaddress.IPv4Network("10.9.0.0/16")


def test_toml_file(tmp_path: Path) -> None:
    conf = tmp_path / "lan.toml"
    conf.write_text('ws_port = 9100\nsubnet = "10.3.0.0/24"\nping_interval = 3\n')
    cfg = config_from_args(["-c", str(conf)])
    assert (cfg.ws_port, str(cfg.subnet), cfg.ping_interval) == (9100, "10.3.0.0/24", 3.0)


def test_allow_origin_from_flags_and_files(tmp_path: Path) -> None:
    cfg = config_from_args(["--allow-origin", "https://Lab.Example.org", "--allow-origin", "null"])
    assert [str(p) for p in cfg.allow_origin] == ["https://lab.example.org", "null"]
    conf = tmp_path / "relay.toml"
    conf.write_text('allow_origin = ["https://v86.example.org", "*.example.net:*"]\n')
    cfg = config_from_args(["-c", str(conf)])
    assert [str(p) for p in cfg.allow_origin] == ["https://v86.example.org", "*.example.net:*"]
    assert Config().allow_origin == ()


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("bogus = 1\n", ".conf", "unknown option 'bogus'"),
        ("[section]\nws_port = 1\n", ".conf", "sections are not allowed"),
        ("ws_port = eighty\n", ".conf", "ws_port: invalid literal"),
        ("ws_port = [1\n", ".toml", "not valid TOML"),
        ("[t]\nws_port = 1\n", ".toml", "unexpected table [t]"),
        ("subnet = 10.0.0.0/31\n", ".conf", "too small"),
    ],
)
def test_bad_files_name_file_and_key(tmp_path: Path, text: str, suffix: str, message: str) -> None:
    conf = tmp_path / f"bad{suffix}"
    conf.write_text(text)
    with pytest.raises(ConfigError) as info:
        config_from_args(["-c", str(conf)])
    assert message in str(info.value)
    assert str(conf) in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file /nonexistent"):
        load_config_file("/nonexistent/wsnic.conf")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-s", "10.0.0.0/31"], "--subnet: subnet 10.0.0.0/31 is too small"),
        (["-s", "banana"], "is not an IPv4 subnet"),
        (["--ws-port", "70000"], "not a TCP port"),
        (["--mtu", "67"], "outside 68-65520"),
        (["--mtu", "65521"], "outside 68-65520"),
        (["-b", "this-name-is-too-long"], "not a valid interface name"),
        (["--ping-interval", "0"], "must be greater than 0"),
        (["--ping-interval", "50", "--ping-timeout", "40"], "must be longer than ping_interval"),
        (
            ["--allow-origin", "https://lab.example.org/v86/"],
            "--allow-origin: 'https://lab.example.org/v86/' is not an origin: an origin has no "
            "path (write https://lab.example.org)",
        ),
        (["--allow-origin", "*"], "to accept every origin, give no --allow-origin"),
        (["--allow-origin", "lab.*.org"], "a wildcard may only stand for the leading labels"),
        (["--allow-origin", "https://lab.example.org:0"], "0 is not a TCP port"),
        (["--allow-origin", "https://l\u00e4b.example.org"], "is not a host name"),
        (["--allow-origin", "https://[::g]"], "is not a host name or"),
    ],
)
def test_bad_values(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_args(argv)


def test_main_reports_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-s", "10.0.0.0/31"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsnic-trio: error: --subnet")
    assert len(err.splitlines()) == 1


def test_unknown_flag_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--no-such-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_help_explains_every_option_with_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = Config()
    for field in dataclasses.fields(Config):
        spec = OPTIONS[field.name]
        assert spec.flags[-1] in text
        if spec.kind == "value":
            assert f"(default: {getattr(defaults, field.name)})" in text, field.name


def test_connect_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect", "ws://127.0.0.1:1/", "--mac", "01:00:00:00:00:01"]) == 2
    assert "multicast" in capsys.readouterr().err
    assert main(["connect", "http://x/"]) == 2
    assert "unsupported URL" in capsys.readouterr().err


def test_every_option_is_in_the_user_guide() -> None:
    """The options table in docs/user-guide.md names every flag the server accepts."""
    guide = (Path(__file__).parent.parent / "docs" / "user-guide.md").read_text()
    undocumented = [
        flag
        for spec in OPTIONS.values()
        for flag in spec.flags
        if flag.startswith("--") and f"`{flag}" not in guide and f" {flag}" not in guide
    ]
    assert not undocumented, f"add these to docs/user-guide.md: {undocumented}"
