"""Options: defaults, every flag, config files, precedence and errors (no root needed)."""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
from pathlib import Path

import pytest

from wsnic_trio import Config, ConfigError
from wsnic_trio.cli.main import (
    _connect_options,
    build_connect_parser,
    build_parser,
    config_from_args,
    main,
)
from wsnic_trio.config import OPTIONS, load_config_file
from wsnic_trio.config.endpoints import parse_api_endpoint
from wsnic_trio.control.ctl import build_ctl_parser


def test_defaults_match_wsnic_habits() -> None:
    cfg = Config()
    assert cfg.server.ws_address == "127.0.0.1"
    assert cfg.server.ws_port == 8086
    assert cfg.lan.subnet == ipaddress.IPv4Network("192.168.86.0/24")
    assert str(cfg.lan.bridge_address) == "192.168.86.1"
    assert cfg.lan.bridge == "wsbr0"
    assert cfg.lan.max_frame == 1518
    assert (cfg.server.ping_interval, cfg.server.ping_timeout) == (30.0, 100.0)


# One case per option that takes a value: the flag reaches its field (a parallel list
# of flags and fields is where such code drifts, so each entry is checked).
VALUE_CASES = {
    "lan_pool": ("10.86.0.0/16", ipaddress.IPv4Network("10.86.0.0/16")),
    "lan_prefix": ("26", 26),
    "lan_idle_timeout": ("60", 60.0),
    "max_lans": ("10", 10),
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
    "pcap_budget": ("1M", 1_000_000),
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
        assert cfg.values()[name] == expected, flag


def test_count_flags() -> None:
    cfg = config_from_args(["-vv", "-q"])
    assert (cfg.server.verbose, cfg.server.quiet) == (2, 1)


def test_wsnic_style_file_and_cli_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "wsnic.conf"
    conf.write_text(
        "# a wsnic config\nws_address = 0.0.0.0\nws-port = 9001  ; inline comment\n"
        "subnet = 10.9.0.0/16\n"
    )
    cfg = config_from_args(["-c", str(conf), "--ws-port", "9002"])
    assert cfg.server.ws_address == "0.0.0.0"
    assert cfg.server.ws_port == 9002, "command line overrides the file"
    assert cfg.lan.subnet == ipaddress.IPv4Network("10.9.0.0/16")


def test_toml_file(tmp_path: Path) -> None:
    conf = tmp_path / "lan.toml"
    conf.write_text('ws_port = 9100\nsubnet = "10.3.0.0/24"\nping_interval = 3\n')
    cfg = config_from_args(["-c", str(conf)])
    assert (cfg.server.ws_port, str(cfg.lan.subnet), cfg.server.ping_interval) == (
        9100,
        "10.3.0.0/24",
        3.0,
    )


def test_allow_origin_from_flags_and_files(tmp_path: Path) -> None:
    cfg = config_from_args(["--allow-origin", "https://Lab.Example.org", "--allow-origin", "null"])
    assert [str(p) for p in cfg.server.allow_origin] == ["https://lab.example.org", "null"]
    conf = tmp_path / "relay.toml"
    conf.write_text('allow_origin = ["https://v86.example.org", "*.example.net:*"]\n')
    cfg = config_from_args(["-c", str(conf)])
    assert [str(p) for p in cfg.server.allow_origin] == [
        "https://v86.example.org",
        "*.example.net:*",
    ]
    assert Config().server.allow_origin == ()


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


def _help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An option's help as --help prints it (argparse's %-expansion done), on one line."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings]


_DEFAULT = re.compile(r" \(default: (.*)\)$")


def test_help_states_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    """No option says its default twice ("default: X (default: None)"), and no flag says
    "(default: False)": a default is stated once, in words where a value would mislead."""
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for noise in ("(default: None)", "(default: False)", "(default: ())", "(default: 0.0)"):
        assert noise not in text
    defaults = Config()
    for action in _options(parser):
        help_ = _help_of(parser, action)
        assert help_ in text, help_
        twice = len(re.findall(r"\bdefault\b(?! route| LAN)", help_)) > 1
        assert not twice, f"{action.option_strings[-1]} states a default twice: {help_}"
        if action.dest in OPTIONS and OPTIONS[action.dest].kind == "value":
            value = defaults.values()[action.dest]
            if value is not None:
                shown = _DEFAULT.search(help_)
                assert shown, f"{action.dest}: --help does not state its default {value}"
        if action.nargs == 0:
            assert "(default:" not in help_ or action.dest == "rootless", help_


def test_option_help_leaves_the_default_to_the_generator() -> None:
    """An option's help states no default itself: --help adds it (from the field, or
    from default_text= in words), so writing it in help= too would show it twice."""
    wrong = {
        name: spec.help
        for name, spec in OPTIONS.items()
        if re.search(r"\bdefault\b(?! route| LAN)", spec.help, re.IGNORECASE)
    }
    assert not wrong, (
        "these options mention their default in help=; move the words to default_text= "
        f"(wsnic_trio/config/): {wrong}"
    )


def _parsers() -> dict[str, argparse.ArgumentParser]:
    ctl = build_ctl_parser()
    parsers = {"wsnic-trio": build_parser(), "connect": build_connect_parser(), "ctl": ctl}
    stack = [ctl]
    while stack:  # every ctl subcommand, forward's too
        for action in stack.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    parsers[sub.prog] = sub
                    stack.append(sub)
    return parsers


@pytest.mark.parametrize("name", sorted(_parsers()))
def test_every_placeholder_says_what_to_give(name: str) -> None:
    """argparse's fallback placeholder is the destination in capitals (PING_INTERVAL,
    TOKEN_FILE): it names the option again instead of a unit or a form. Every option
    that takes a value has its own; every argument and option has a help text."""
    parser = _parsers()[name]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        what = "/".join(action.option_strings) or action.dest
        assert action.help, f"{parser.prog}: {what} has no help text"
        if action.nargs != 0 and action.option_strings:
            assert action.metavar, f"{parser.prog}: {what} has no placeholder (metavar=)"
    assert parser.description, f"{parser.prog} --help says nothing about what it does"


def _examples(parser: argparse.ArgumentParser, command: list[str]) -> list[list[str]]:
    prefix = ["wsnic-trio", *command]
    lines = [shlex.split(line, comments=True) for line in (parser.epilog or "").splitlines()]
    found = [argv[len(prefix) :] for argv in lines if argv[: len(prefix)] == prefix]
    assert len(found) >= 2, f"{parser.prog} --help shows fewer than two examples"
    return found


def test_server_help_examples_parse() -> None:
    for argv in _examples(build_parser(), []):
        config_from_args(argv)  # a bad example raises ConfigError or exits 2


def test_connect_help_examples_parse() -> None:
    for argv in _examples(build_connect_parser(), ["connect"]):
        _connect_options(argv)


def test_ctl_help_examples_parse() -> None:
    for argv in _examples(build_ctl_parser(), ["ctl"]):
        args = build_ctl_parser().parse_args(argv)
        parse_api_endpoint(args.api)
        if args.token_file is not None:
            assert args.api.startswith("tcp:"), "a token file is for the TCP API"


def test_connect_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect", "ws://127.0.0.1:1/", "--mac", "01:00:00:00:00:01"]) == 2
    assert "multicast" in capsys.readouterr().err
    assert main(["connect", "http://x/"]) == 2
    assert "unsupported URL" in capsys.readouterr().err


def _guide_options_table() -> list[list[str]]:
    """The rows of the options table in docs/user-guide.md, cells split on unescaped |."""
    guide = (Path(__file__).parent.parent / "docs" / "user-guide.md").read_text()
    section = guide.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            rows.append([c.strip().replace("\\|", "|") for c in cells])
    return rows


def _row_for(parser: argparse.ArgumentParser, action: argparse.Action) -> dict[str, str]:
    """What the guide's row of one option must say, from what --help prints."""
    option = ", ".join(action.option_strings)
    if action.nargs != 0:
        option += f" {action.metavar}"
    shown = _DEFAULT.search(_help_of(parser, action))
    return {
        "option": option,
        "config key": action.dest if action.dest in OPTIONS else "",
        "default": shown.group(1) if shown else "",
    }


def test_every_option_is_in_the_user_guide() -> None:
    """The guide's options table and --help agree row by row: flags, placeholder, config
    key and default in the same words; every option has a row, every row is an option,
    and the repeatable ones say so. The failure lists each row to fix, and how."""
    parser = build_parser()
    expected = {a.option_strings[-1]: (a, _row_for(parser, a)) for a in _options(parser)}
    problems = []
    seen = set()
    for cells in _guide_options_table():
        option, key, default, meaning = (c.replace("`", "") for c in cells)
        names = [w.rstrip(",") for w in option.split() if w.startswith("-")]
        match = [expected[n] for n in names if n in expected]
        if not match:
            problems.append(f"guide row `{option}`: no such option in wsnic-trio --help")
            continue
        action, want = match[0]
        seen.add(action.option_strings[-1])
        got = {"option": option, "config key": key, "default": default}
        for column, value in want.items():
            if got[column] != value:
                problems.append(
                    f"guide row `{option}`: {column} is {got[column]!r}, --help says {value!r}"
                )
        if isinstance(action, argparse._AppendAction) and "repeatable" not in meaning:
            problems.append(f"guide row `{option}`: the meaning does not say (repeatable)")
    for name, (action, want) in expected.items():
        if name not in seen:
            spec = OPTIONS.get(action.dest)
            key = f"`{action.dest}`" if spec else ""
            default = want["default"]
            if default and spec and spec.default_text is None:
                default = f"`{default}`"  # a value, not words
            meaning = spec.help + (" (repeatable)" if spec.kind == "list" else "") if spec else ""
            option = want["option"].replace("|", "\\|")
            problems.append(
                f"{name} has no row in docs/user-guide.md; add one like: "
                f"| `{option}` | {key} | {default} | {meaning or action.help} |"
            )
    assert not problems, "docs/user-guide.md options table:\n" + "\n".join(problems)
