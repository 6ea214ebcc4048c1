"""dnsmasq's command line, pool and log handling, and the DHCP/DNS options (no root)."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

from wsnic_trio.cli.main import config_from_args
from wsnic_trio.config import Config
from wsnic_trio.errors import ConfigError, SetupError
from wsnic_trio.host.dnsmasq import (
    DnsmasqPlan,
    _classify,
    describe_dns,
    dhcp_pool,
    dnsmasq_argv,
    dnsmasq_plan,
    resolv_nameservers,
    reverse_zones,
    run_dir,
)
from wsnic_trio.host.procs import parse_proc_net
from wsnic_trio.lan.rootless import pasta_argv, slirp4netns_argv, uplink_dns

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network


def _plan(**kw: object) -> DnsmasqPlan:
    config = Config.from_mapping(kw)
    return dnsmasq_plan(config, Path("/run/wsnic-trio/net1-wsbr0"))


def test_defaults_bind_only_the_bridge_and_read_no_system_config() -> None:
    argv = dnsmasq_argv(_plan(), "/usr/sbin/dnsmasq")
    assert argv[0] == "/usr/sbin/dnsmasq"
    for flag in (
        "--keep-in-foreground",
        "--log-facility=-",
        "--conf-file=/dev/null",
        "--no-hosts",
        "--no-resolv",
        "--bind-interfaces",
        "--interface=wsbr0",
        "--except-interface=lo",
        "--pid-file=/run/wsnic-trio/net1-wsbr0/dnsmasq.pid",
        "--dhcp-leasefile=/run/wsnic-trio/net1-wsbr0/dnsmasq.leases",
        "--dhcp-range=192.168.86.2,192.168.86.254,255.255.255.0,86400",
        "--dhcp-option=option:router,192.168.86.1",
        "--dhcp-option=option:dns-server,192.168.86.1",
        "--domain=lan",
        "--local=/lan/",
    ):
        assert flag in argv
    assert not any(a.startswith("--server=") for a in argv)
    assert not any("option:mtu" in a for a in argv)


def test_options_reach_the_command_line() -> None:
    config = config_from_args(
        [
            "-s",
            "10.20.0.0/16",
            "-t",
            "600",
            "-n",
            "Example.Internal.",
            "-d",
            "1.1.1.1,9.9.9.9",
            "-d",
            "8.8.8.8",
            "--dns-upstream",
            "192.0.2.53",
            "--dhcp-lease-file",
            "/var/tmp/x.leases",
            "--mtu",
            "9000",
        ]
    )
    argv = dnsmasq_argv(dnsmasq_plan(config, Path("/r")))
    assert "--dhcp-range=10.20.0.2,10.20.255.254,255.255.0.0,600" in argv
    assert "--dhcp-option=option:dns-server,1.1.1.1,9.9.9.9,8.8.8.8" in argv
    assert "--dhcp-option=option:router,10.20.0.1" in argv
    assert "--domain=example.internal" in argv
    assert "--server=192.0.2.53" in argv
    assert "--no-resolv" in argv, "upstream servers are given explicitly, never resolv.conf"
    assert "--dhcp-leasefile=/var/tmp/x.leases" in argv
    assert "--dhcp-option=option:mtu,9000" in argv
    assert "--dhcp-lease-max=65533" in argv


@pytest.mark.parametrize(
    ("subnet", "first", "last"),
    [
        ("192.168.86.0/24", "192.168.86.2", "192.168.86.254"),
        ("10.0.0.0/30", "10.0.0.2", "10.0.0.2"),
        ("10.0.0.0/29", "10.0.0.2", "10.0.0.6"),
    ],
)
def test_pool_is_the_subnet_minus_network_bridge_broadcast(
    subnet: str, first: str, last: str
) -> None:
    net = NET(subnet)
    assert dhcp_pool(net, net.network_address + 1) == (IP(first), IP(last))


def test_pool_refuses_a_subnet_without_room() -> None:
    with pytest.raises(SetupError):
        dhcp_pool(NET("10.0.0.0/31"), IP("10.0.0.1"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "1.1.1.1,nope"], "'nope' is not an IPv4 address"),
        (["-t", "119"], "shorter than dnsmasq's minimum"),
        (["-t", "soon"], "invalid literal"),
        (["-n=-bad-"], "is not a DNS domain name"),
        (["-n", "a..b"], "is not a DNS domain name"),
        (["-s", "10.0.0.0/31"], "too small"),
        (["--allow-private", "10.0.0.0/33"], "is not an IPv4 network"),
        (["-f", "this-name-is-too-long"], "is not a valid interface name"),
    ],
)
def test_bad_values_are_config_errors(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_args(args)


def test_file_and_toml_forms_of_the_new_options(tmp_path: Path) -> None:
    conf = tmp_path / "wsnic.conf"
    conf.write_text("dhcp_nameserver = 1.1.1.1, 9.9.9.9\nenable_inet = yes\ndisable_dhcp = no\n")
    config = config_from_args(["-c", str(conf)])
    assert config.lan.dhcp_nameserver == (IP("1.1.1.1"), IP("9.9.9.9"))
    assert config.lan.enable_inet and not config.lan.disable_dhcp
    toml = tmp_path / "wsnic.toml"
    toml.write_text('allow_private = ["10.1.0.0/16", "172.16.5.0/24"]\ninet_iface = "eth1"\n')
    config = config_from_args(["-c", str(toml), "--allow-private", "192.168.7.0/24"])
    assert config.lan.allow_private == (NET("192.168.7.0/24"),), "the command line wins"
    assert config.lan.inet_iface == "eth1"


def test_run_dir_is_per_namespace_and_bridge() -> None:
    assert run_dir("wsbr0", 4026531833) == Path("/run/wsnic-trio/net4026531833-wsbr0")
    assert run_dir("wsbr0", 1) != run_dir("wsbr0", 2)


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("started, version 2.90 cachesize 150", logging.INFO),
        ("warning: no upstream servers configured", logging.DEBUG),
        ("failed to bind DHCP server socket: Address already in use", logging.ERROR),
        ("warning: interface wsbr0 does not currently exist", logging.WARNING),
        ("DHCPACK(wsbr0) 192.168.86.9 02:00:00:00:00:01 alice", logging.INFO),
    ],
)
def test_log_lines_get_a_level(line: str, level: int) -> None:
    assert _classify(line) == level


def test_parse_proc_net_udp() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n"
        "  1: 0156A8C0:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 123456 2 0000000000000000 0\n"
        "  2: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 654321 2 0000000000000000 0\n"
    )
    socks = parse_proc_net(text)
    assert [(str(s.address), s.port, s.inode) for s in socks] == [
        ("192.168.86.1", 53, 123456),
        ("0.0.0.0", 67, 654321),
    ]


# -- where names the LAN does not know go (issue 11) --------------------------------


def _argv(*args: str) -> list[str]:
    return dnsmasq_argv(dnsmasq_plan(config_from_args(list(args)), Path("/r")))


def test_inet_forwards_to_the_hosts_resolvers() -> None:
    """-i without --dns-upstream: the servers of the host's resolv.conf, which dnsmasq
    keeps watching (no --no-poll); LAN names and reverse zones stay local."""
    argv = _argv("-i")
    assert "--resolv-file=/etc/resolv.conf" in argv
    assert "--no-resolv" not in argv
    assert "--no-poll" not in argv
    assert not any(a.startswith("--server=") for a in argv)
    for flag in (
        "--local=/lan/",
        "--local=/86.168.192.in-addr.arpa/",
        "--domain-needed",
        "--bogus-priv",
        "--bind-interfaces",
        "--interface=wsbr0",
        "--except-interface=lo",
    ):
        assert flag in argv


def test_dns_upstream_wins_over_resolv_conf() -> None:
    argv = _argv("-i", "--dns-upstream", "192.0.2.53,192.0.2.54")
    assert "--no-resolv" in argv
    assert not any(a.startswith("--resolv-file") for a in argv)
    assert [a for a in argv if a.startswith("--server=")] == [
        "--server=192.0.2.53",
        "--server=192.0.2.54",
    ]


def test_without_inet_lan_names_only() -> None:
    argv = _argv()
    assert "--no-resolv" in argv
    assert not any(a.startswith(("--resolv-file", "--server=")) for a in argv)


@pytest.mark.parametrize(
    ("subnet", "zones"),
    [
        ("192.168.86.0/24", ["86.168.192.in-addr.arpa"]),
        ("10.20.0.0/16", ["20.10.in-addr.arpa"]),
        ("10.0.0.0/8", ["10.in-addr.arpa"]),
        ("100.64.86.0/28", ["86.64.100.in-addr.arpa"]),
        ("198.18.4.0/22", [f"{n}.18.198.in-addr.arpa" for n in range(4, 8)]),
        ("100.64.0.0/10", [f"{n}.100.in-addr.arpa" for n in range(64, 128)]),
    ],
)
def test_reverse_zones_cover_the_subnet(subnet: str, zones: list[str]) -> None:
    assert reverse_zones(NET(subnet)) == zones


def test_reverse_zones_of_the_lan_are_local() -> None:
    """Also where --bogus-priv does not apply (100.64.0.0/10 is not in RFC 6303)."""
    argv = _argv("-s", "100.64.84.0/22")
    zones = "/".join(f"{n}.64.100.in-addr.arpa" for n in range(84, 88))
    assert f"--local=/{zones}/" in argv


def test_resolv_conf_parsing() -> None:
    text = (
        "# Generated by NetworkManager\n"
        "search example.com\n"
        "nameserver 10.0.0.53 # the router\n"
        "nameserver\tfe80::1%eth0\n"
        "  nameserver 127.0.0.53\n"
        "nameserver not-an-address\n"
        "; nameserver 9.9.9.9\n"
        "options edns0 trust-ad\n"
    )
    assert resolv_nameservers(text) == ["10.0.0.53", "fe80::1%eth0", "127.0.0.53"]
    assert resolv_nameservers("") == []


def _dns(args: list[str], text: str | None, why: str = "") -> tuple[int, str]:
    return describe_dns(config_from_args(args), text, why)


def test_start_log_says_where_names_go() -> None:
    level, line = _dns(["-i"], "nameserver 10.0.0.53\nnameserver 127.0.0.53\n")
    assert level == logging.INFO
    assert line == (
        "DNS: forwarding non-LAN names to 10.0.0.53, 127.0.0.53 "
        "(from /etc/resolv.conf, re-read when it changes)"
    )
    level, line = _dns(["-i", "--dns-upstream", "192.0.2.53"], None)
    assert (level, line) == (
        logging.INFO,
        "DNS: forwarding non-LAN names to 192.0.2.53 (--dns-upstream)",
    )
    level, line = _dns([], "nameserver 10.0.0.53\n")
    assert (level, line) == (
        logging.INFO,
        "DNS: LAN names only (no --enable-inet, no --dns-upstream)",
    )


@pytest.mark.parametrize(
    ("text", "why", "expected"),
    [
        (None, "No such file or directory", "cannot read /etc/resolv.conf (No such file"),
        ("search lan\n", "", "/etc/resolv.conf lists no usable name server, so only LAN"),
        (
            "nameserver 192.168.86.1\n",
            "",
            "lists no usable name server (ignoring 192.168.86.1: that is this LAN's own",
        ),
    ],
)
def test_no_usable_resolver_is_a_warning(text: str | None, why: str, expected: str) -> None:
    level, line = _dns(["-i"], text, why)
    assert level == logging.WARNING
    assert expected in line
    assert "only LAN names resolve for now" in line and "--dns-upstream" in line


def test_a_resolv_conf_naming_the_bridge_cannot_loop() -> None:
    """Our dnsmasq listens only on the bridge address: that one server is dropped (and
    dnsmasq itself ignores it too); 127.0.0.1 is somebody else's, and is kept."""
    level, line = _dns(["-i", "-s", "10.9.0.0/24"], "nameserver 10.9.0.1\nnameserver 127.0.0.1\n")
    assert level == logging.WARNING
    assert line.startswith("DNS: forwarding non-LAN names to 127.0.0.1 (from /etc/resolv.conf")
    assert line.endswith("(ignoring 10.9.0.1: that is this LAN's own dnsmasq)")


def test_rootless_dns_goes_through_the_uplink() -> None:
    """Rootless: the namespace's loopback is not the host's, so dnsmasq asks the uplink's
    DNS forwarder, which asks the host's resolvers."""
    assert uplink_dns(config_from_args(["-i"])) == "10.0.2.3"
    assert uplink_dns(config_from_args(["-i", "--uplink", "pasta"])) == "169.254.1.1"
    assert uplink_dns(config_from_args([])) is None
    assert uplink_dns(config_from_args(["-i", "--dns-upstream", "192.0.2.53"])) is None
    assert uplink_dns(config_from_args(["-i", "--disable-dhcp"])) is None
    slirp = slirp4netns_argv("s", 1, ready_fd=3, exit_fd=4, host_loopback=False, dns=True)
    assert "--disable-dns" not in slirp
    assert "--disable-dns" in slirp4netns_argv("s", 1, ready_fd=3, exit_fd=4, host_loopback=False)
    pasta = pasta_argv("pasta", 1, pid_file=Path("p"), host_loopback=False, dns=True)
    assert "--dns-forward=169.254.1.1" in pasta
    assert "--dns=none" not in pasta, "pasta's --dns=none would turn the forwarder off"
    assert "--dns=none" in pasta_argv("pasta", 1, pid_file=Path("p"), host_loopback=False)
