"""LAN names, their bridges, the subnet pool and the LAN a WebSocket path asks for."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsnic_trio import ConfigError
from wsnic_trio.config.lans import (
    SubnetPool,
    bridge_name,
    check_disjoint,
    check_lan_name,
    lan_from_path,
)

NAMES = st.from_regex(r"[a-z0-9-]{1,32}", fullmatch=True)
IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


@pytest.mark.parametrize("name", ["a", "class3", "lab-07", "x" * 32, "0", "-"])
def test_valid_names(name: str) -> None:
    assert check_lan_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "class 3", "x" * 33, "lab_1", "lab.1", "é", "a/b"])
def test_invalid_names_say_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match="1 to 32 lowercase letters, digits and '-'"):
        check_lan_name(name)


def test_short_names_keep_their_name_in_the_bridge() -> None:
    assert bridge_name("class3") == "wsl-class3"
    assert bridge_name("abcdefghijk") == "wsl-abcdefghijk"  # exactly 15
    long = bridge_name("abcdefghijkl")
    assert long.startswith("wsl-abcde.") and len(long) == 15


@given(NAMES)
def test_every_bridge_name_is_a_linux_interface_name(name: str) -> None:
    assert IFNAME.fullmatch(bridge_name(name))


@given(st.sets(NAMES, min_size=2, max_size=40))
def test_distinct_names_get_distinct_bridges(names: set[str]) -> None:
    assert len({bridge_name(n) for n in names}) == len(names)


def test_a_short_name_cannot_take_a_long_names_bridge() -> None:
    long = "abcdefghijklmnop"
    lookalike = bridge_name(long)[len("wsl-") :].replace(".", "-")
    assert bridge_name(lookalike) != bridge_name(long)


def test_overlapping_subnets_are_refused_naming_both() -> None:
    net = ipaddress.IPv4Network
    check_disjoint({"a": net("10.0.0.0/24"), "b": net("10.0.1.0/24")})
    with pytest.raises(ConfigError, match=r"LAN 'b' \(10.0.0.128/25\) overlaps LAN 'a'"):
        check_disjoint({"a": net("10.0.0.0/24"), "b": net("10.0.0.128/25")})


def test_the_pool_hands_out_distinct_blocks_and_skips_those_in_use() -> None:
    pool = SubnetPool(ipaddress.IPv4Network("10.86.0.0/16"), 24)
    assert pool.size == 256
    configured = ipaddress.IPv4Network("10.86.0.0/23")
    first = pool.take([configured])
    second = pool.take([configured])
    assert (str(first), str(second)) == ("10.86.2.0/24", "10.86.3.0/24")
    pool.give_back(ipaddress.IPv4Network("10.86.2.0/24"))
    assert str(pool.take([configured])) == "10.86.2.0/24"
    assert pool.in_use == 2


def test_an_exhausted_pool_says_none() -> None:
    pool = SubnetPool(ipaddress.IPv4Network("10.86.0.0/23"), 24)
    assert pool.take() is not None and pool.take() is not None
    assert pool.take() is None


@pytest.mark.parametrize("prefix", [15, 31])
def test_the_prefix_must_fit_the_pool(prefix: int) -> None:
    with pytest.raises(ConfigError, match="--lan-prefix"):
        SubnetPool(ipaddress.IPv4Network("10.86.0.0/16"), prefix)


@pytest.mark.parametrize("path", ["/", "", "/anything", "/lan/x", "/?token=a"])
def test_without_named_lans_every_path_is_the_default_lan(path: str) -> None:
    assert lan_from_path(path, named=False).lan is None
    assert lan_from_path(path, named=False).problem is None


@pytest.mark.parametrize(
    ("path", "lan"),
    [("/", None), ("/?token=x", None), ("/lan/class3", "class3"), ("/lan/a-1/?t=1", "a-1")],
)
def test_named_lans_by_path(path: str, lan: str | None) -> None:
    assert lan_from_path(path, named=True).lan == lan
    assert lan_from_path(path, named=True).problem is None


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/lan/", "is not a LAN name"),
        ("/lan/Class3", "is not a LAN name"),
        ("/lan/a/b", "is not a LAN name"),
        ("/other", "is no LAN path"),
        ("/lan/\x1b[2J", r"\\x1b"),
    ],
)
def test_other_paths_are_a_mistake_named_in_words(path: str, why: str) -> None:
    result = lan_from_path(path, named=True)
    assert result.lan is None
    assert result.problem is not None and re.search(why, result.problem)
