"""Named LANs in the settings: --lan on the command line, [lan.NAME] tables in TOML."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from wsnic_trio import Config, ConfigError
from wsnic_trio.cli.main import config_from_args
from wsnic_trio.config import load_config_file
from wsnic_trio.config.lans import DEFAULT_LAN


def test_no_named_lans_by_default() -> None:
    config = Config()
    assert config.lans == {}
    assert list(config.all_lans()) == [DEFAULT_LAN]


def test_lan_on_the_command_line_with_its_own_options() -> None:
    config = config_from_args(
        [
            "-i",
            "--mtu",
            "1400",
            "--lan",
            "class3=10.86.3.0/24,qemu=unix:/run/wsnic/c3.sock,enable-inet=false",
            "--lan",
            "class4=10.86.4.0/24",
        ]
    )
    c3, c4 = config.lans["class3"], config.lans["class4"]
    assert c3.subnet == ipaddress.IPv4Network("10.86.3.0/24")
    assert (c3.bridge, c4.bridge) == ("wsl-class3", "wsl-class4")
    assert c3.qemu == ("unix:/run/wsnic/c3.sock",) and c4.qemu == ()
    # Options a LAN does not set are the default LAN's, except what makes a LAN itself.
    assert (c3.mtu, c4.mtu) == (1400, 1400)
    assert (c3.enable_inet, c4.enable_inet) == (False, True)
    assert list(config.all_lans()) == [DEFAULT_LAN, "class3", "class4"]
    assert config.for_lan("class3").lan is c3
    assert config.for_lan(DEFAULT_LAN).lan is config.lan


def test_lan_tables_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "wsnic.toml"
    path.write_text(
        'subnet = "192.168.90.0/24"\n'
        "[lan.lab-a]\n"
        'subnet = "10.1.0.0/24"\n'
        'dhcp-domain-name = "a.lab"\n'
        'bess = ["/run/wsnic/a.bess"]\n'
        "[lan.lab-b]\n"
        'subnet = "10.2.0.0/24"\n'
        'bridge = "labb"\n'
        "max_clients = 5\n"
    )
    config = Config.from_layers([(str(path), load_config_file(path))])
    a, b = config.lans["lab-a"], config.lans["lab-b"]
    assert (a.dhcp_domain_name, a.bess, a.bridge) == ("a.lab", ("/run/wsnic/a.bess",), "wsl-lab-a")
    assert (b.bridge, b.max_clients, b.dhcp_domain_name) == ("labb", 5, config.lan.dhcp_domain_name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lan", "a=10.0.0.0/24", "--lan", "a=10.0.1.0/24"], "LAN 'a' is configured twice"),
        (["--lan", "default=10.0.0.0/24"], "give this LAN another name"),
        (["--lan", "Lab=10.0.0.0/24"], "1 to 32 lowercase"),
        (["--lan", "a"], "write NAME=CIDR"),
        (["--lan", "a=10.0.0.0/24,mtu"], "'mtu' is not KEY=VALUE"),
        (["--lan", "a=192.168.86.128/25"], r"LAN 'a' \(192.168.86.128/25\) overlaps LAN 'default'"),
        (
            ["--lan", "a=10.0.0.0/24,bridge=wsbr0"],
            "LANs 'default' and 'a' both have the bridge wsbr0",
        ),
        (
            [
                "--qemu",
                "unix:/run/wsnic/q.sock",
                "--lan",
                "a=10.0.0.0/24,qemu=unix:/run/wsnic/q.sock",
            ],
            "both have the listener unix:/run/wsnic/q.sock",
        ),
        (
            ["--lan", "a=10.0.0.0/24,ws-port=9"],
            r"'ws-port' is not a LAN option \(it is the server's",
        ),
        (["--lan", "a=10.0.0.0/24,colour=red"], "'colour' is not a LAN option"),
        (["--lan", "a=10.0.0.0/24,mtu=9"], "LAN a: mtu:"),
        (["--lan", "a=10.0.0.0/24,lock-ip=true,disable-dhcp=true"], "LAN a: --lock-ip needs"),
        (["--no-default-lan"], "--no-default-lan leaves no LAN"),
        (["--lan", "a=10.0.0.0/24,route-to=10.0.0.0/25"], "LAN a: route-to 10.0.0.0/25 overlaps"),
        (
            ["--lan", "a=10.0.0.0/24,route-to=10.9.0.0/24"],
            r"LAN a: route-to 10\.9\.0\.0/24 is not \(in\) the subnet of another LAN",
        ),
        (["--route-to", "10.0.0.0/24"], "LAN default: route-to 10.0.0.0/24 is not"),
        (
            [
                "--no-default-lan",
                "--lan",
                "a=10.0.0.0/24",
                "--forward",
                "127.0.0.1:8=192.168.86.9:8",
            ],
            "--forward is for the default LAN",
        ),
    ],
)
def test_named_lan_mistakes_are_one_clear_line(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_args(args)


def test_without_the_default_lan_its_subnet_may_be_reused() -> None:
    config = config_from_args(["--no-default-lan", "--lan", "a=192.168.86.0/24"])
    assert list(config.all_lans()) == ["a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[lan.a]\nsubnet = "10.0.0.0/24"\n[lan.a.extra]\nx = 1\n', r"\[lan.a\] may not hold"),
        ('[lan.A]\nsubnet = "10.0.0.0/24"\n', r"\[lan.A\]: 'A': a LAN name"),
        ("[lan.a]\nmtu = 1400\n", "LAN a: no subnet"),
        ("[other]\nx = 1\n", r"unexpected table \[other\]"),
    ],
)
def test_bad_lan_tables(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "wsnic.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Config.from_layers([(str(path), load_config_file(path))])


def test_replace_keeps_the_named_lans() -> None:
    config = config_from_args(["--lan", "a=10.0.0.0/24"])
    changed = config.replace(mtu=1400)
    assert changed.lans["a"].mtu == 1400 and changed.lans["a"].subnet == config.lans["a"].subnet


def test_routes_name_other_lans_or_the_pool() -> None:
    config = config_from_args(
        [
            "--route-to",
            "10.0.1.0/24",
            "--lan",
            "a=10.0.1.0/24,route-to=10.0.2.0/24",
            "--lan",
            "b=10.0.2.0/24",
            "--lan-pool",
            "10.90.0.0/16",
            "--lan",
            "c=10.0.3.0/24,route-to=10.90.0.0/16",
        ]
    )
    lans = config.all_lans()
    net = ipaddress.IPv4Network
    assert lans["default"].route_to == (net("10.0.1.0/24"),)
    assert lans["a"].route_to == (net("10.0.2.0/24"),)
    assert lans["b"].route_to == (), "a LAN's routes are its own, never inherited"
    assert lans["c"].route_to == (net("10.90.0.0/16"),)
