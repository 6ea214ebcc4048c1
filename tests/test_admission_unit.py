"""Admission and frame policy as pure logic: tokens, brakes, limits, spoofing, rate."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from wsnic_trio import ConfigError, PeerProtocolError
from wsnic_trio.config.origins import parse_origin_pattern
from wsnic_trio.core.admission import Admission, FailureLimiter, TokenStore
from wsnic_trio.core.guard import ByteBucket, FramePolicy, SourceGuard
from wsnic_trio.transports.base import AdmissionRequest, FrameCheck

from . import packets as pk

BRIDGE = pk.mac("02:77:73:00:00:01")
ME = pk.mac("02:00:00:00:00:05")


def store(tmp_path: Path, text: str) -> TokenStore:
    path = tmp_path / "tokens"
    path.write_text(text)
    tokens = TokenStore(path)
    tokens.load()
    return tokens


def test_token_file_comments_and_blank_lines(tmp_path: Path) -> None:
    tokens = store(tmp_path, "# classroom A\nalpha-123\n\n  beta  # spare\n")
    assert tokens.valid("alpha-123") and tokens.valid("beta")
    assert not tokens.valid("alpha") and not tokens.valid("") and not tokens.valid("# classroom A")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# none\n\n", "no tokens"),
        ("a b c\n", "spaces"),
        ("a Lab3\n", r"tokens:1: 'Lab3': a LAN name is 1 to 32 lowercase"),
        ("a x,,y\n", "a LAN name"),
        ("a\x07b\n", "control characters"),
    ],
)
def test_bad_token_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        store(tmp_path, text)


def test_a_token_opens_the_lans_its_line_names(tmp_path: Path) -> None:
    tokens = store(tmp_path, "teacher\nalice class3\nbob class4,default  # two labs\n")
    adm = Admission(tokens)

    def status(token: str, lan: str | None) -> int | None:
        refused = adm.check(AdmissionRequest("ws", "10.0.0.1", (token,), lan=lan))
        return None if refused is None else refused.http_status

    assert status("teacher", "class3") is None and status("teacher", None) is None
    assert status("alice", "class3") is None
    assert status("bob", "class4") is None and status("bob", None) is None
    wrong = adm.check(AdmissionRequest("ws", "10.0.0.1", ("alice",), lan="class4"))
    assert wrong is not None and wrong.http_status == 403 and wrong.kind == "lan"
    assert "does not open LAN class4" in wrong.reason
    assert status("alice", None) == 403  # the default LAN is "default"
    # A valid token on the wrong LAN is not a guess: it costs no login try.
    for _ in range(20):
        status("alice", "class4")
    assert not adm.limiter.blocked("10.0.0.1")
    # Two candidates: one for this LAN is enough.
    assert adm.check(AdmissionRequest("ws", "10.0.0.1", ("alice", "bob"), lan="class4")) is None


def test_reload_failure_keeps_old_tokens(tmp_path: Path) -> None:
    tokens = store(tmp_path, "old\n")
    (tmp_path / "tokens").write_text("")
    with pytest.raises(ConfigError):
        tokens.load()
    assert tokens.valid("old")


def test_admission_statuses(tmp_path: Path) -> None:
    adm = Admission(store(tmp_path, "good\n"), max_clients=2, max_clients_per_ip=1)
    assert adm.check(AdmissionRequest("ws", "10.0.0.1")).http_status == 401  # type: ignore[union-attr]
    assert adm.check(AdmissionRequest("ws", "10.0.0.1", ("bad",))).http_status == 403  # type: ignore[union-attr]
    assert adm.check(AdmissionRequest("ws", "10.0.0.2", ("x", "good"))) is None
    adm.join("10.0.0.2")
    per_ip = adm.check(AdmissionRequest("ws", "10.0.0.2", ("good",)))
    assert per_ip is not None and per_ip.http_status == 503 and "10.0.0.2" in per_ip.reason
    adm.join("10.0.0.3")
    full = adm.check(AdmissionRequest("ws", "10.0.0.4", ("good",)))
    assert full is not None and full.http_status == 503 and full.close_code == 1013
    adm.leave("10.0.0.3")
    assert adm.check(AdmissionRequest("ws", "10.0.0.4", ("good",))) is None


def test_failed_logins_brake_guessing_but_never_keep_a_valid_token_out(tmp_path: Path) -> None:
    """(issue 12) Failures from a shared address (a classroom's NAT) once kept even a
    valid token at 429. Now a braked address waits before every verdict, a valid
    token's as long as an invalid one's (the wait says nothing about the token), and a
    valid token then gets in."""
    now = [0.0]
    limiter = FailureLimiter(burst=3, refill=10, clock=lambda: now[0], delay=2.0)
    adm = Admission(store(tmp_path, "good\n"), limiter=limiter)
    bad = AdmissionRequest("ws", "10.0.0.9", ("bad",))
    good = AdmissionRequest("ws", "10.0.0.9", ("x", "good"))
    for _ in range(3):
        assert adm.login_delay(bad) == 0
        assert adm.check(bad).http_status == 403  # type: ignore[union-attr]
    assert adm.login_delay(bad) == adm.login_delay(good) == 2.0
    braked = adm.check(bad)
    assert braked is not None and braked.http_status == 429 and "waits 2 s" in braked.reason
    assert adm.check(good) is None, "a valid token gets in, whatever others did"
    assert adm.login_delay(AdmissionRequest("ws", "10.0.0.10", ("bad",))) == 0, "others are not"
    assert adm.login_delay(AdmissionRequest("ws", "10.0.0.9")) == 0, "no token: nothing to hide"
    now[0] = 10.0
    assert adm.login_delay(bad) == 0
    assert adm.check(bad).http_status == 403  # type: ignore[union-attr]


def test_limiter_memory_is_bounded() -> None:
    limiter = FailureLimiter(max_entries=100)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == 100


def test_guard_locks_the_first_mac() -> None:
    claims: list[bytes] = []
    guard = SourceGuard(BRIDGE, claim=claims.append)
    other = pk.mac("02:00:00:00:00:06")
    assert guard.problem(pk.probe_frame(pk.BROADCAST, ME, b"")) is None
    assert guard.problem(pk.probe_frame(pk.BROADCAST, other, b"")) == "spoofed-mac"
    assert guard.problem(pk.probe_frame(pk.BROADCAST, BRIDGE, b"")) == "spoofed-mac"
    assert guard.problem(pk.probe_frame(pk.BROADCAST, pk.mac("03:00:00:00:00:01"), b"")) == (
        "multicast-source"
    )
    assert claims == [ME]


def test_guard_refusal_propagates() -> None:
    def claim(mac: bytes) -> None:
        raise PeerProtocolError("in use", 1008)

    with pytest.raises(PeerProtocolError):
        SourceGuard(BRIDGE, claim=claim).problem(pk.probe_frame(pk.BROADCAST, ME, b""))


def test_guard_lock_ip() -> None:
    leases = {ME: pk.ip4("192.168.86.50")}
    guard = SourceGuard(BRIDGE, leased_ip=leases.get)
    assert guard.problem(pk.dhcp(ME, pk.DHCPDISCOVER)) is None
    assert guard.problem(pk.arp_request(ME, "192.168.86.50", "192.168.86.1")) is None
    assert guard.problem(pk.arp_request(ME, "192.168.86.51", "192.168.86.1")) == "spoofed-ip"
    good = pk.icmp_echo(ME, BRIDGE, "192.168.86.50", "192.168.86.1", 1, 1)
    bad = pk.icmp_echo(ME, BRIDGE, "192.168.86.7", "192.168.86.1", 1, 1)
    assert guard.problem(good) is None
    assert guard.problem(bad) == "spoofed-ip"
    assert guard.problem(pk.probe_frame(BRIDGE, ME, b"")) == "ethertype-not-allowed"
    lying_arp = bytearray(pk.arp_request(ME, "192.168.86.50", "192.168.86.1"))
    lying_arp[22:28] = pk.mac("02:00:00:00:00:77")
    assert guard.problem(bytes(lying_arp)) == "spoofed-arp"


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (pk.dhcp(ME, pk.DHCPDISCOVER), None),
        (pk.arp_request(ME, "0.0.0.0", "192.168.86.50"), None),  # RFC 5227 probe
        # Issue 11, defect 7: before a lease nothing but DHCP and ARP probes may leave
        # 0.0.0.0 (an ICMP flood or a UDP scan from "nowhere" is spoofing too).
        (pk.icmp_echo(ME, pk.BROADCAST, "0.0.0.0", "255.255.255.255", 1, 1), "spoofed-ip"),
        (pk.icmp_echo(ME, BRIDGE, "0.0.0.0", "192.168.86.1", 1, 1), "spoofed-ip"),
        (pk.udp(ME, BRIDGE, "0.0.0.0", "192.168.86.1", 68, 53), "spoofed-ip"),
        (pk.udp(ME, BRIDGE, "0.0.0.0", "192.168.86.1", 67, 68), "spoofed-ip"),
        (pk.udp(ME, BRIDGE, "0.0.0.0", "192.168.86.1", 5000, 67), "spoofed-ip"),
        # A later fragment carries no ports: it must not pass as "DHCP".
        (
            pk.udp(ME, pk.BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, flags_fragment=0x0010),
            "spoofed-ip",
        ),
        # ARP replies from 0.0.0.0 announce nothing real.
        (
            pk.arp_request(ME, "0.0.0.0", "192.168.86.50")[:20]
            + b"\0\x02"
            + pk.arp_request(ME, "0.0.0.0", "192.168.86.50")[22:],
            "spoofed-ip",
        ),
    ],
    ids=[
        "dhcp",
        "arp-probe",
        "icmp-broadcast",
        "icmp-gateway",
        "udp-to-dns",
        "udp-server-port",
        "udp-other-port",
        "fragment",
        "arp-reply",
    ],
)
@pytest.mark.parametrize("leased", [None, "192.168.86.50"])
def test_only_dhcp_and_arp_probes_leave_0_0_0_0(
    frame: bytes, problem: str | None, leased: str | None
) -> None:
    """(issue 11)"""
    lease = pk.ip4(leased) if leased else None
    guard = SourceGuard(BRIDGE, leased_ip=lambda mac: lease)
    assert guard.problem(frame) == problem


def test_unleased_mac_may_only_do_dhcp() -> None:
    guard = SourceGuard(BRIDGE, leased_ip=lambda mac: None)
    assert guard.problem(pk.icmp_echo(ME, BRIDGE, "192.168.86.50", "192.168.86.1", 1, 1)) == (
        "spoofed-ip"
    )


def test_byte_bucket() -> None:
    bucket = ByteBucket(rate=1000, burst=1500)
    assert bucket.take(1500, 0.0)
    assert not bucket.take(100, 0.0)
    assert bucket.take(500, 0.5)
    assert not bucket.take(1, 0.5)


def test_policy_counts_every_drop() -> None:
    drops: collections.Counter[str] = collections.Counter()
    policy = FramePolicy(FrameCheck(1518), drops)
    frames = [b"x" * 10, b"y" * 60, b"z" * 2000]
    assert policy.inbound(frames, 0.0) == [b"y" * 60]
    assert drops == {"runt": 1, "oversize": 1}
    limited = FramePolicy(FrameCheck(1518), drops, rate_limit=1000)
    burst = [pk.probe_frame(pk.BROADCAST, ME, b"", size=1514)] * 100
    passed = limited.inbound(burst, 0.0)
    assert 0 < len(passed) < 100 and drops["rate-limit"] == 100 - len(passed)
    out = limited.outbound(burst, 0.0)
    assert drops["rate-limit-out"] == 100 - len(out)


# -- browser origins (--allow-origin) ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("https://Lab.Example.org", "https://lab.example.org"),
        ("lab.example.org:8443", "lab.example.org:8443"),
        ("*.example.org", "*.example.org"),
        ("https://*.example.org:*", "https://*.example.org:*"),
        ("http://[0:0::1]:8000", "http://[::1]:8000"),
        ("NULL", "null"),
    ],
)
def test_origin_patterns_have_one_spelling(text: str, canonical: str) -> None:
    assert str(parse_origin_pattern(text)) == canonical


ORIGIN_CASES = [
    # exact origin: the default port may or may not be written
    ("https://lab.example.org", "https://lab.example.org", True),
    ("https://lab.example.org", "https://LAB.example.org:443", True),
    ("https://lab.example.org", "http://lab.example.org", False),
    ("https://lab.example.org", "https://lab.example.org:8443", False),
    ("https://lab.example.org", "https://lab.example.org.evil.net", False),
    ("https://lab.example.org", "https://evil-lab.example.org", False),
    ("http://localhost:8000", "http://localhost:8000", True),
    ("http://localhost:8000", "http://localhost", False),
    # no scheme: http or https, each on its default port unless one is given
    ("lab.example.org", "http://lab.example.org", True),
    ("lab.example.org", "https://lab.example.org", True),
    ("lab.example.org", "http://lab.example.org:443", False),
    ("lab.example.org", "wss://lab.example.org", False),
    ("lab.example.org:8443", "https://lab.example.org:8443", True),
    ("lab.example.org:8443", "http://lab.example.org:8443", True),
    # wildcard: subdomains at any depth, never the domain itself or a look-alike
    ("*.example.org", "https://a.example.org", True),
    ("*.example.org", "https://b.a.example.org", True),
    ("*.example.org", "https://example.org", False),
    ("*.example.org", "https://evilexample.org", False),
    ("*.example.org", "https://a.example.org:8443", False),
    ("*.example.org:*", "https://a.example.org:8443", True),
    # IPv6 as browsers write it
    ("http://[::1]:8000", "http://[::1]:8000", True),
    ("http://[::1]:8000", "http://[0::1]:8000", True),
    # opaque origins only with the explicit pattern
    ("null", "null", True),
    ("https://lab.example.org", "null", False),
    ("*.example.org", "null", False),
    # garbage and several origins match nothing
    ("https://lab.example.org", "https://lab.example.org/", False),
    ("https://lab.example.org", "https://lab.example.org, https://lab.example.org", False),
    ("lab.example.org", "lab.example.org", False),
]


@pytest.mark.parametrize(("pattern", "origin", "expected"), ORIGIN_CASES)
def test_origin_matching(pattern: str, origin: str, expected: bool) -> None:
    assert parse_origin_pattern(pattern).matches(origin) is expected


def test_other_origins_are_refused_before_the_token_and_cost_no_login_try(
    tmp_path: Path,
) -> None:
    adm = Admission(
        store(tmp_path, "good\n"),
        limiter=FailureLimiter(burst=2),
        origins=[parse_origin_pattern("https://lab.example.org")],
    )
    for _ in range(5):  # more than the login brake allows
        refused = adm.check(AdmissionRequest("ws", "10.0.0.1", ("good",), "https://evil.example"))
        assert refused is not None and refused.http_status == 403
        assert refused.kind == "origin" and "https://evil.example" in refused.reason
    page = AdmissionRequest("ws", "10.0.0.1", ("good",), "https://lab.example.org")
    assert adm.check(page) is None
    # Not a browser (no Origin header): the origin check does not apply, the token does.
    assert adm.check(AdmissionRequest("ws", "10.0.0.1", ("good",))) is None
    wrong = adm.check(AdmissionRequest("ws", "10.0.0.1", ("bad",)))
    assert wrong is not None and wrong.http_status == 403 and wrong.kind is None


def test_without_patterns_every_origin_is_accepted(tmp_path: Path) -> None:
    adm = Admission(TokenStore(None))
    assert adm.check(AdmissionRequest("ws", "10.0.0.1", (), "https://evil.example")) is None
    assert adm.check(AdmissionRequest("ws", "10.0.0.1", (), "null")) is None


def test_a_refused_origin_is_escaped_and_cut_in_the_reason() -> None:
    adm = Admission(TokenStore(None), origins=[parse_origin_pattern("lab.example.org")])
    refused = adm.check(AdmissionRequest("ws", None, (), "https://x\x1b[2J" + "a" * 500))
    assert refused is not None
    assert "\x1b" not in refused.reason and "\\x1b[2J" in refused.reason
    assert len(refused.reason) < 200
