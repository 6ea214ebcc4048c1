"""The nftables ruleset and the table's note, built without any I/O (no root)."""

from __future__ import annotations

import ipaddress

import pytest
import trio

from wsnic_trio.errors import SetupError
from wsnic_trio.host import nat as _nat
from wsnic_trio.host.nat import NatPlan, TableNote, build_ruleset, delete_script, table_name

NET = ipaddress.IPv4Network


def _plan(
    allow: tuple[str, ...] = (), bridge: str = "wsbr0", uplink: str | None = "eth0"
) -> NatPlan:
    return NatPlan(
        bridge=bridge,
        subnet=NET("192.168.86.0/24"),
        bridge_address=ipaddress.IPv4Address("192.168.86.1"),
        uplink=uplink,
        allow_private=[NET(a) for a in allow],
        note=TableNote(4242, bridge, "0" if uplink else None),
    )


def _chain(text: str, name: str) -> list[str]:
    """The rules of one chain, without its type line."""
    body = text[text.index(f"chain {name} {{") :]
    body = body[: body.index("\n    }")]
    return [line.strip() for line in body.splitlines()[2:] if line.strip()]


def test_one_table_replaced_atomically_with_its_note() -> None:
    text = build_ruleset(_plan())
    lines = text.splitlines()
    # create-then-delete-then-define: replaces a leftover table in one transaction.
    assert lines[:3] == [
        "table inet wsnic_trio_wsbr0",
        "delete table inet wsnic_trio_wsbr0",
        "table inet wsnic_trio_wsbr0 {",
    ]
    assert 'comment "wsnic-trio pid=4242 bridge=wsbr0 ip_forward=0"' in text
    assert text.count("table inet ") == 3, "nothing outside our own table"


def test_masquerade_out_only_replies_in() -> None:
    text = build_ruleset(_plan())
    assert (
        'ip saddr 192.168.86.0/24 ip daddr != 192.168.86.0/24 oifname != "wsbr0" masquerade' in text
    )
    forward = text[text.index("chain forward") : text.index("chain postrouting")]
    rules = [line.strip() for line in forward.splitlines()[2:] if line.strip() not in ("", "}")]
    assert rules[:3] == [
        'iifname "wsbr0" oifname "wsbr0" accept',  # client to client, also via br_netfilter
        'oifname "wsbr0" ct state established,related accept',
        'oifname "wsbr0" drop',
    ]
    assert 'iifname "wsbr0" oifname "eth0" meta nfproto ipv4 accept' in rules
    assert rules[-1] == 'iifname "wsbr0" drop'
    assert "policy accept" in forward, "traffic that is not the LAN's is left alone"


def test_private_networks_blocked_and_allowed_ones_first() -> None:
    text = build_ruleset(_plan(allow=("10.1.0.0/16", "10.0.0.0/8", "172.16.5.0/24")))
    blocked = "{ 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 169.254.0.0/16 } drop"
    for chain in ("input", "forward"):
        body = text[text.index(f"chain {chain}") :]
        body = body[: body.index("}\n")]
        allow_at = body.index("{ 10.0.0.0/8, 172.16.5.0/24 } accept")  # overlaps collapsed
        assert allow_at < body.index(blocked)
    assert 'iifname "wsbr0" ip daddr 192.168.86.0/24 accept' in text, "the bridge stays open"


def test_no_allow_rule_without_allowed_networks() -> None:
    lines = build_ruleset(_plan()).splitlines()
    assert not [line for line in lines if "ip daddr {" in line and line.endswith("} accept")]


def test_table_name_is_a_valid_nft_identifier() -> None:
    assert table_name("br-lan.5") == "wsnic_trio_br_lan_5"
    assert table_name("wsbr0") == "wsnic_trio_wsbr0"
    assert delete_script("wsbr0") == (
        "table inet wsnic_trio_wsbr0\ndelete table inet wsnic_trio_wsbr0\n"
    )


def test_note_round_trip_and_foreign_comments() -> None:
    note = TableNote(77, "wsbr0", "1")
    assert TableNote.parse(note.render()) == note
    untouched = TableNote(78, "wsbr0", None)  # a run without -i changes no sysctl
    assert untouched.render() == "wsnic-trio pid=78 bridge=wsbr0 ip_forward=-"
    assert TableNote.parse(untouched.render()) == untouched
    assert TableNote.parse(None) is None
    assert TableNote.parse("set up by hand") is None
    assert TableNote.parse("wsnic-trio pid=x bridge=wsbr0 ip_forward=0") is None
    assert TableNote.parse("wsnic-trio pid=5 bridge=wsbr0") is None


def test_without_inet_nothing_is_forwarded_into_or_out_of_the_lan() -> None:
    text = build_ruleset(_plan(uplink=None))
    assert _chain(text, "forward") == [
        'iifname "wsbr0" oifname "wsbr0" accept',  # client to client stays the LAN's own
        'oifname "wsbr0" drop',
        'iifname "wsbr0" drop',
    ]
    assert "postrouting" not in text and "masquerade" not in text
    assert 'comment "wsnic-trio pid=4242 bridge=wsbr0 ip_forward=-"' in text


def test_host_input_is_filtered_in_both_families_in_both_modes() -> None:
    for uplink in ("eth0", None):
        rules = _chain(build_ruleset(_plan(uplink=uplink)), "input")
        # DNS/DHCP on the bridge address answer only the LAN and the host itself.
        assert rules[0] == (
            'iifname != { "wsbr0", "lo" } ip daddr 192.168.86.1 '
            "meta l4proto { tcp, udp } th dport { 53, 67 } drop"
        )
        assert 'iifname "wsbr0" ip daddr 192.168.86.0/24 accept' in rules
        # IPv6 from the LAN: neighbour discovery, ping of the link-local, replies; no more.
        ipv6 = rules[
            rules.index('iifname "wsbr0" meta nfproto ipv6 ct state established,related accept') :
        ]
        assert ipv6 == [
            'iifname "wsbr0" meta nfproto ipv6 ct state established,related accept',
            'iifname "wsbr0" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept',
            'iifname "wsbr0" ip6 daddr fe80::/10 icmpv6 type echo-request accept',
            'iifname "wsbr0" meta nfproto ipv6 drop',
        ]


def test_no_nft_is_an_error_for_every_lan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nft the LAN could not be isolated, -i or not: the server must not run."""
    monkeypatch.setattr("wsnic_trio.host.nat.shutil.which", lambda name: None)
    with pytest.raises(SetupError, match=r"needs nftables' nft command for the LAN's host filter"):
        _nat.check_nft()


async def test_table_deletes_asked_at_once_run_as_few_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every LAN lets go of its table at the same moment when the server stops: the
    deletes share nft runs, and each table is in exactly one of them."""
    scripts: list[str] = []

    async def fake_nft(args: object, script: str | None = None) -> str:
        assert script is not None
        scripts.append(script)
        await trio.sleep(0.01)  # nft takes a while: later callers queue up meanwhile
        return ""

    monkeypatch.setattr(_nat, "_run_nft", fake_nft)
    deleter = _nat._TableDeleter()
    tables = [f"wsnic_trio_wsl_l{i}" for i in range(50)]
    async with trio.open_nursery() as nursery:
        for table in tables:
            nursery.start_soon(deleter.delete, table)
    assert len(scripts) <= 2, scripts
    deleted = [line.split()[-1] for s in scripts for line in s.splitlines() if "delete" in line]
    assert sorted(deleted) == sorted(tables)
    assert not deleter.pending


async def test_a_failed_batch_is_retried_by_the_next_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[str] = []

    async def failing_once(args: object, script: str | None = None) -> str:
        assert script is not None
        runs.append(script)
        if len(runs) == 1:
            raise SetupError("nft -f - failed: out of memory")
        return ""

    monkeypatch.setattr(_nat, "_run_nft", failing_once)
    deleter = _nat._TableDeleter()
    with pytest.raises(SetupError):
        await deleter.delete("wsnic_trio_a")
    assert deleter.pending == {"wsnic_trio_a"}  # not lost: the next batch takes it
    await deleter.delete("wsnic_trio_b")
    assert "delete table inet wsnic_trio_a" in runs[1] and "wsnic_trio_b" in runs[1]
    assert not deleter.pending
