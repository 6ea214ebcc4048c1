"""The nftables text of the host filter and NAT, built without any I/O, and the run
table's batches (with nft stood in for); one test applies the text with the real nft in
a namespace of its own."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
import trio

from wsnic_trio.errors import SetupError
from wsnic_trio.host import nat as _nat
from wsnic_trio.host.nftrules import (
    NatPlan,
    TableNote,
    build_ruleset,
    lan_removal,
    lan_script,
    run_table,
    table_name,
)

from .netns import NsFactory

NET = ipaddress.IPv4Network
BLOCKED = "{ 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 169.254.0.0/16 }"


def _plan(
    allow: tuple[str, ...] = (), bridge: str = "wsbr0", uplink: str | None = "eth0"
) -> NatPlan:
    return NatPlan(
        bridge=bridge,
        subnet=NET("192.168.86.0/24"),
        bridge_address=ipaddress.IPv4Address("192.168.86.1"),
        uplink=uplink,
        allow_private=[NET(a) for a in allow],
        note=TableNote(4242, bridge, None),
    )


def _base_chain(text: str, name: str) -> list[str]:
    """The rules of one base chain of a table's text, without its type line."""
    body = text[text.index(f"chain {name} {{") :]
    body = body[: body.index("\n    }")]
    return [line.strip() for line in body.splitlines()[2:] if line.strip()]


def test_the_run_table_is_replaced_atomically_with_its_note() -> None:
    text = run_table("wsnic_trio_pid4242", TableNote(4242, "-", None))
    lines = text.splitlines()
    # create-then-delete-then-define: replaces a leftover table in one transaction.
    assert lines[:3] == [
        "table inet wsnic_trio_pid4242",
        "delete table inet wsnic_trio_pid4242",
        "table inet wsnic_trio_pid4242 {",
    ]
    assert 'comment "wsnic-trio pid=4242 bridge=- ip_forward=-"' in text
    assert text.count("table inet ") == 3, "nothing outside our own table"
    assert text.count("policy accept") == 4, "traffic that is not a LAN's is left alone"


def test_base_chains_hand_each_packet_to_its_lans_chains() -> None:
    """Per-packet work does not grow with the LANs: each base chain is a few map lookups."""
    text = run_table("t", TableNote(1, "-", None))
    assert _base_chain(text, "input") == [
        "meta l4proto { tcp, udp } th dport { 53, 67 } ip daddr vmap @dns_guard",
        "iifname vmap @in_lan",
    ]
    assert _base_chain(text, "forward") == [
        "ct mark 0x57534e01 accept",  # what a LAN's route_to opened
        "iifname . oifname @intra accept",  # client to client, also via br_netfilter
        "oifname vmap @to_lan",  # the output LAN's say first, then the input LAN's
        "iifname vmap @from_lan",
    ]
    assert "priority filter - 10" in text[text.index("chain route {") :], "marks come first"
    assert _base_chain(text, "postrouting") == [
        "ct mark 0x57534e01 accept",  # between LANs: the client's own address
        "iifname vmap @post_lan",
    ]


def test_a_lans_chains_pass_or_drop_never_accept() -> None:
    """An accept in the chains of a packet's input LAN would skip its output LAN's."""
    for plan in (_plan(), _plan(uplink=None), _plan(allow=("10.0.0.0/8",))):
        rules = [r for chain in plan.chains().values() for r in chain]
        assert not [r for r in rules if r.endswith(" accept")], rules


def test_masquerade_out_only_replies_in() -> None:
    chains = _plan().chains()
    assert chains["to_wsbr0"] == ["ct state established,related return", "drop"]
    assert chains["from_wsbr0"] == [
        f"ip daddr {BLOCKED} drop",
        'oifname "eth0" meta nfproto ipv4 return',
        "drop",
    ]
    assert chains["post_wsbr0"] == [
        'ip saddr 192.168.86.0/24 ip daddr != 192.168.86.0/24 oifname != "wsbr0" masquerade'
    ]


def test_without_inet_nothing_is_forwarded_into_or_out_of_the_lan() -> None:
    plan = _plan(uplink=None)
    chains = plan.chains()
    assert chains["to_wsbr0"] == ["drop"] and chains["from_wsbr0"] == ["drop"]
    assert "post_wsbr0" not in chains and "post_lan" not in plan.elements()
    assert plan.elements()["intra"] == '"wsbr0" . "wsbr0"', "client to client stays allowed"


def test_private_networks_blocked_and_allowed_ones_first() -> None:
    chains = _plan(allow=("10.1.0.0/16", "10.0.0.0/8", "172.16.5.0/24")).chains()
    for chain in ("in_wsbr0", "from_wsbr0"):
        rules = chains[chain]
        allowed = rules.index("ip daddr { 10.0.0.0/8, 172.16.5.0/24 } return")  # collapsed
        assert allowed < rules.index(f"ip daddr {BLOCKED} drop")
    assert chains["in_wsbr0"][0] == "ip daddr 192.168.86.0/24 return", "the bridge stays open"


def test_no_allow_rule_without_allowed_networks() -> None:
    rules = [r for chain in _plan().chains().values() for r in chain]
    assert not [r for r in rules if r.startswith("ip daddr {") and r.endswith("} return")]


def test_host_input_is_filtered_in_both_families_in_both_modes() -> None:
    for uplink in ("eth0", None):
        plan = _plan(uplink=uplink)
        chains = plan.chains()
        # DNS/DHCP on the bridge address answer only the LAN and the host itself.
        assert plan.elements()["dns_guard"] == "192.168.86.1 : jump guard_wsbr0"
        assert chains["guard_wsbr0"] == ['iifname != { "wsbr0", "lo" } drop']
        # IPv6 from the LAN: neighbour discovery, ping of the link-local, replies; no more.
        rules = chains["in_wsbr0"]
        assert rules[rules.index("meta nfproto ipv6 ct state established,related return") :] == [
            "meta nfproto ipv6 ct state established,related return",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } return",
            "ip6 daddr fe80::/10 icmpv6 type echo-request return",
            "meta nfproto ipv6 drop",
        ]


def test_routes_to_other_lans_are_marked_on_the_first_packet_only() -> None:
    plan = dataclasses.replace(
        _plan(), route_to=[NET("10.86.2.0/24"), NET("10.86.0.0/16"), NET("10.90.0.0/16")]
    )
    assert plan.chains()["route_wsbr0"] == [
        "ip daddr { 10.86.0.0/16, 10.90.0.0/16 } ct state new ct mark set 0x57534e01"
    ]
    assert plan.elements()["route_lan"] == '"wsbr0" : jump route_wsbr0'
    assert "route_lan" not in _plan().elements(), "no route_to: nothing to mark"


def test_chain_names_keep_distinct_bridges_apart() -> None:
    names = {b: set(_plan(bridge=b).chains()) for b in ("wsl-a.b", "wsl-a_b", "wsl_a-b")}
    assert not names["wsl-a.b"] & names["wsl-a_b"] and not names["wsl-a_b"] & names["wsl_a-b"]
    assert table_name("br-lan.5") == "wsnic_trio_br_lan_5"


def test_a_lan_comes_and_goes_as_chains_and_elements() -> None:
    plan = _plan()
    added = lan_script("t", plan)
    removed = lan_removal("t", plan)
    for chain in plan.chains():
        assert f"add chain inet t {chain}\nflush chain inet t {chain}\n" in added
        assert f"flush chain inet t {chain}\ndelete chain inet t {chain}\n" in removed
    for name, element in plan.elements().items():
        assert f"add element inet t {name} {{ {element} }}" in added
    assert removed.index("delete element") < removed.index("delete chain"), "unhooked first"
    assert "table inet" not in added + removed, "a LAN never touches the table itself"


def test_note_round_trip_and_foreign_comments() -> None:
    note = TableNote(77, "wsbr0", "1")
    assert TableNote.parse(note.render()) == note
    untouched = TableNote(78, "-", None)  # a run without -i changes no sysctl
    assert untouched.render() == "wsnic-trio pid=78 bridge=- ip_forward=-"
    assert TableNote.parse(untouched.render()) == untouched
    assert TableNote.parse(None) is None
    assert TableNote.parse("set up by hand") is None
    assert TableNote.parse("wsnic-trio pid=x bridge=wsbr0 ip_forward=0") is None
    assert TableNote.parse("wsnic-trio pid=5 bridge=wsbr0") is None


def test_no_nft_is_an_error_for_every_lan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nft the LAN could not be isolated, -i or not: the server must not run."""
    monkeypatch.setattr("wsnic_trio.host.nat.shutil.which", lambda name: None)
    with pytest.raises(SetupError, match=r"needs nftables' nft command for the LAN's host filter"):
        _nat.check_nft()


async def test_the_text_is_what_nft_takes(world: NsFactory) -> None:
    """Applied with the real nft in a namespace of the test's own: the run table, two
    LANs (one with NAT and a route), one LAN again after a removal, then the other."""
    ns = world.new("nft")

    async def nft(script: str) -> None:
        result = await trio.run_process(
            ["ip", "netns", "exec", ns.name, "nft", "-f", "-"],
            stdin=script.encode(),
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()

    a = dataclasses.replace(_plan(bridge="wsl-a"), route_to=[NET("10.86.2.0/24")])
    b = NatPlan("wsl-b", NET("10.86.2.0/24"), ipaddress.IPv4Address("10.86.2.1"), None, [], a.note)
    await nft(run_table("t", TableNote(1, "-", None)) + lan_script("t", a) + lan_script("t", b))
    await nft(lan_removal("t", b))
    await nft(lan_script("t", b))
    await nft(lan_script("t", b))  # again: each chain flushed first, so each rule stays once
    await nft(lan_removal("t", a))
    listing = (await ns.exec("nft", "list", "table", "inet", "t")).stdout.decode()
    assert "wsl-a" not in listing and listing.count('"wsl-b" : jump') == 3, listing
    assert listing.count('iifname != { "lo", "wsl-b" } drop') == 1, listing
    await nft(build_ruleset(a))  # the rootless helper's table of one LAN


def _batches(monkeypatch: pytest.MonkeyPatch, fail_first: bool = False) -> list[str]:
    scripts: list[str] = []

    async def fake_nft(args: object, script: str | None = None) -> str:
        assert script is not None
        scripts.append(script)
        await trio.sleep(0.01)  # nft takes a while: later callers queue up meanwhile
        if fail_first and len(scripts) == 1:
            raise SetupError("nft -f - failed: out of memory")
        return ""

    monkeypatch.setattr(_nat, "_nft", fake_nft)
    return scripts


async def test_lans_that_leave_at_once_share_nft_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the server stops every LAN leaves at the same moment: a handful of runs, each
    LAN in exactly one, and the last takes the table with it."""
    scripts = _batches(monkeypatch)
    table = _nat._RunTable()
    plans = [_plan(bridge=f"wsl-l{i}") for i in range(50)]
    for plan in plans:
        await table.add(plan)
    assert scripts[0].startswith("table inet ") and len(scripts) == 50
    scripts.clear()
    async with trio.open_nursery() as nursery:
        for plan in plans:
            nursery.start_soon(table.remove, plan)
    assert len(scripts) <= 3, scripts
    assert scripts[-1].startswith("table inet ") and "delete table inet" in scripts[-1]
    gone = [line for s in scripts for line in s.splitlines() if "delete element" in line]
    assert len(gone) == 5 * (len(plans) - 1) or len(scripts) == 1
    assert not table.lans and not table.leaving


async def test_a_failed_removal_is_taken_again_by_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripts = _batches(monkeypatch)
    table = _nat._RunTable()
    a, b, c = (_plan(bridge=f"wsl-{n}") for n in "abc")
    for plan in (a, b, c):
        await table.add(plan)
    scripts = _batches(monkeypatch, fail_first=True)
    with pytest.raises(SetupError):
        await table.remove(a)
    assert set(table.leaving) == {"wsl-a"}  # not lost: the next run takes it
    await table.remove(b)
    assert "wsl-a" in scripts[-1] and "wsl-b" in scripts[-1]
    assert set(table.lans) == {"wsl-c"} and not table.leaving
