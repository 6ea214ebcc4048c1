"""Several LANs through one helper (``--user`` and rootless): the ``add``, ``remove``
and ``tap {lan}`` requests, checked when decoded, and both helpers' answers to them
(valid, malformed, a LAN they do not have) without building anything."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio

from wsnic_trio.cli.main import config_from_args
from wsnic_trio.config import Config
from wsnic_trio.errors import SetupError
from wsnic_trio.host import netlink
from wsnic_trio.lan import nshelper as _nshelper
from wsnic_trio.lan import nsproto as proto
from wsnic_trio.lan import privsep as _privsep
from wsnic_trio.lan.nshelper import Helper
from wsnic_trio.lan.nsproto import MAX_MESSAGE, HelperProtocolError, Reply, Request
from wsnic_trio.lan.rootless import _fds_of

LANS = ["--lan", "a=10.86.1.0/24,enable-inet=false", "--lan", "b=10.86.2.0/24"]


def _wire(name: str) -> dict[str, Any]:
    config = config_from_args(["-i", "--no-default-lan", *LANS, "--lan-pool", "10.90.0.0/16"])
    if name not in config.all_lans():  # as one made on demand
        view = config.view(config.on_demand_lan(name, ipaddress.IPv4Network("10.90.0.0/24")))
        return proto.config_to_wire(view, one_lan=True)
    return proto.config_to_wire(config.for_lan(name), one_lan=True)


@pytest.mark.parametrize(
    "request_",
    [
        Request("setup", {"config": {}, "several": True}),
        Request("add", {"lan": "a", "config": {"bridge": "wsl-a"}}),
        Request("remove", {"lan": "room-7"}),
        Request("tap", {"lan": "b"}),
        Request("tap"),
    ],
)
def test_several_lan_requests_round_trip(request_: Request) -> None:
    assert proto.decode_request(proto.encode_request(request_)) == request_


def test_lan_of_a_request() -> None:
    assert proto.lan_of(Request("tap")) == "default"  # the LAN that setup built
    assert proto.lan_of(Request("tap", {"lan": "b"})) == "b"


def test_a_lans_config_survives_the_wire_alone() -> None:
    """One LAN's view goes without the server's list of LANs (which a Config built from
    the wire could not read back), and comes back as that LAN."""
    a, b = proto.config_from_wire(_wire("a")), proto.config_from_wire(_wire("b"))
    assert (a.lan.bridge, str(a.lan.subnet), a.lan.enable_inet) == ("wsl-a", "10.86.1.0/24", False)
    assert (b.lan.bridge, str(b.lan.subnet), b.lan.enable_inet) == ("wsl-b", "10.86.2.0/24", True)
    assert "lan" not in _wire("a") and "lan_pool" not in _wire("a")


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (Request("add", {"config": {}}), "lan is missing"),
        (Request("add", {"lan": "a"}), "config is missing"),
        (Request("add", {"lan": "Bad_Name", "config": {}}), "bad lan"),
        (Request("add", {"lan": "a" * 33, "config": {}}), "bad lan"),
        (Request("add", {"lan": "a", "config": {"mtu": [1]}}), "bad config"),
        (Request("add", {"lan": "a", "config": {}, "owner": [0, 0]}), "unknown argument"),
        (Request("remove", {}), "lan is missing"),
        (Request("remove", {"lan": 7}), "bad lan"),
        (Request("remove", {"lan": "../x"}), "bad lan"),
        (Request("tap", {"lan": None}), "bad lan"),
        (Request("tap", {"lan": "a", "name": "eth0"}), "unknown argument"),
        (Request("setup", {"config": {}, "several": "yes"}), "bad several"),
        (Request("setup", {"config": {}, "several": 1}), "bad several"),
    ],
)
def test_malformed_several_lan_requests_are_refused(request_: Request, why: str) -> None:
    data = json.dumps({"op": request_.op, "args": dict(request_.args)}).encode()
    with pytest.raises(HelperProtocolError, match=why):
        proto.decode_request(data)
    with pytest.raises(HelperProtocolError, match=why):
        proto.encode_request(request_)


# -- the rootless helper ----------------------------------------------------------------


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The rootless helper's building blocks replaced by stubs that record what they were
    asked (these tests run in the host's namespace, where nothing may be built)."""
    seen: list[str] = []

    def build(self: Helper, lan: Any) -> None:
        seen.append(f"bridge {lan.config.lan.bridge}")
        lan.bridge_made = True

    def table(self: Helper, config: Config, uplink: str | None, host: str | None) -> None:
        seen.append(f"table {config.lan.bridge} uplink={uplink}")

    def tap(self: Helper, config: Config) -> tuple[Reply, None]:
        seen.append(f"tap {config.lan.bridge}")
        return Reply(True, {"name": "wstap0"}), None

    monkeypatch.setattr(Helper, "_build_bridge", build)
    monkeypatch.setattr(Helper, "_apply_table", table)
    monkeypatch.setattr(Helper, "_start_dnsmasq", lambda self, lan: seen.append("dnsmasq"))
    monkeypatch.setattr(Helper, "tap", tap)
    monkeypatch.setattr(_nshelper, "_nft", lambda script: seen.append(script.splitlines()[-1]))
    monkeypatch.setattr(netlink, "delete_link", lambda name: seen.append(f"del {name}"))
    return seen


@contextlib.contextmanager
def _several_helper(tmp: Any, *, started: bool = True) -> Iterator[tuple[socket.socket, Helper]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(10)
    helper = Helper(theirs, None, "tester")
    helper.config, helper.rundir, helper.several, helper.started = Config(), tmp, True, started
    helper.uplink = "tap0"
    with ours, theirs:
        yield ours, helper


def _ask(ours: socket.socket, helper: Helper, request: Request | bytes) -> Reply:
    ours.send(request if isinstance(request, bytes) else proto.encode_request(request))
    assert helper._one_request()
    return proto.decode_reply(ours.recv(MAX_MESSAGE + 1))


def test_rootless_helper_adds_taps_and_removes_lans(built: list[str], tmp_path: Any) -> None:
    """Each LAN gets its own bridge, its table (NAT out of the one uplink only if its
    config says so, else isolated) and its run directory; a TAP goes to the LAN the
    request names; remove undoes that LAN only."""
    with _several_helper(tmp_path) as (ours, helper):
        for name in ("a", "b"):
            reply = _ask(ours, helper, Request("add", {"lan": name, "config": _wire(name)}))
            assert reply == Reply(True, {"rundir": str(tmp_path / name)})
        assert built == [
            "bridge wsl-a",
            "table wsl-a uplink=None",
            "dnsmasq",
            "bridge wsl-b",
            "table wsl-b uplink=tap0",
            "dnsmasq",
        ]
        built.clear()
        assert _ask(ours, helper, Request("tap", {"lan": "b"})).ok
        assert built == ["tap wsl-b"]
        assert _ask(ours, helper, Request("remove", {"lan": "a"})) == Reply(True)
        assert built[1:] == ["delete table inet wsnic_trio_wsl_a", "del wsl-a"]
        assert not (tmp_path / "a").exists() and (tmp_path / "b").is_dir()
        assert sorted(helper.lans) == ["b"]


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (Request("tap", {"lan": "zzz"}), "no such LAN: zzz"),
        (Request("tap"), "no such LAN: default"),
        (Request("remove", {"lan": "zzz"}), "no such LAN: zzz"),
        (Request("add", {"lan": "a", "config": _wire("a")}), "LAN a exists already"),
        (Request("add", {"lan": "c", "config": _wire("a")}), "bridge wsl-a is another LAN's"),
        (b'{"op": "add", "args": {"lan": "c"}}', "add: config is missing"),
        (b'{"op": "remove", "args": {"lan": "A"}}', "remove: bad lan"),
        (b'{"op": "add", "args": {"lan": "c", "config": {"mtu": "x"}}}', "mtu"),
    ],
)
def test_rootless_helper_refuses_and_goes_on(
    built: list[str], tmp_path: Any, request_: Request | bytes, error: str
) -> None:
    """A request for a LAN the helper does not have (or cannot have) is one error
    reply; the LAN it has keeps working."""
    with _several_helper(tmp_path) as (ours, helper):
        assert _ask(ours, helper, Request("add", {"lan": "a", "config": _wire("a")})).ok
        built.clear()
        reply = _ask(ours, helper, request_)
        assert not reply.ok and error in reply.error, reply
        assert built == [] and sorted(helper.lans) == ["a"]
        assert _ask(ours, helper, Request("tap", {"lan": "a"})).ok


def test_rootless_helper_add_needs_several_and_start(built: list[str], tmp_path: Any) -> None:
    add = Request("add", {"lan": "a", "config": _wire("a")})
    with _several_helper(tmp_path, started=False) as (ours, helper):
        assert _ask(ours, helper, add) == Reply(False, error="add before start")
        helper.several = False
        helper.started = True
        assert _ask(ours, helper, add) == Reply(
            False, error="add: this helper was set up for one LAN"
        )
        assert _ask(ours, helper, Request("tap", {"lan": "a"})) == Reply(
            False, error="no such LAN: a"
        )
    assert built == []


def test_rootless_helper_undoes_a_failed_add(
    built: list[str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LAN whose dnsmasq does not start is not kept: its bridge and table go again."""

    def fail(self: Helper, lan: Any) -> None:
        raise SetupError("dnsmasq could not start: no")

    monkeypatch.setattr(Helper, "_start_dnsmasq", fail)
    with _several_helper(tmp_path) as (ours, helper):
        reply = _ask(ours, helper, Request("add", {"lan": "b", "config": _wire("b")}))
        assert reply == Reply(False, error="dnsmasq could not start: no")
        assert built[-2:] == ["delete table inet wsnic_trio_wsl_b", "del wsl-b"]
        assert helper.lans == {} and not (tmp_path / "b").exists()


# -- the root helper of --user ----------------------------------------------------------


class _FakeLan:
    def __init__(self, config: Config) -> None:
        self.bridge = config.lan.bridge
        self.read_ends: list[int] = []

    async def create_tap(self) -> tuple[int, str]:
        r, w = os.pipe()
        self.read_ends.append(r)
        return w, f"wstap-{self.bridge}"


async def test_root_helper_serves_several_lans(monkeypatch: pytest.MonkeyPatch) -> None:
    """The root helper of --user with several LANs: add builds a LAN (a stand-in here)
    that lives until remove; taps go to the LAN named; a request for a LAN it does not
    have, or a malformed one, is one error reply and the helper goes on."""
    made: list[str] = []
    gone: list[str] = []
    fakes: list[_FakeLan] = []

    @contextlib.asynccontextmanager
    async def built(config: Config, owner: tuple[int, int]) -> AsyncIterator[_FakeLan]:
        assert owner == (1000, 1000)
        if config.lan.bridge == "wsl-new":
            raise SetupError("a device named wsl-new already exists")  # as in a nursery
        made.append(config.lan.bridge)
        fakes.append(lan := _FakeLan(config))
        try:
            yield lan
        finally:
            gone.append(config.lan.bridge)

    monkeypatch.setattr(_privsep, "_built_lan", built)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with trio.socket.from_stdlib_socket(ours) as server, theirs:

        async def ask(request: Request | bytes) -> tuple[Reply, list[int]]:
            data = request if isinstance(request, bytes) else proto.encode_request(request)
            await server.send(data)
            msg, ancdata, _, _ = await server.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(16))
            return proto.decode_reply(msg), _fds_of(ancdata)

        async with trio.open_nursery() as nursery:
            lans = _privsep._Lans(nursery, (1000, 1000))

            async def answer() -> None:  # as the helper's session: EOF ends every LAN
                await _privsep._answer(trio.socket.from_stdlib_socket(theirs), lans.handle)
                nursery.cancel_scope.cancel()

            nursery.start_soon(answer)
            for name in ("a", "b"):
                reply, _ = await ask(Request("add", {"lan": name, "config": _wire(name)}))
                assert reply == Reply(True, {"bridge": f"wsl-{name}"})
            reply, fds = await ask(Request("tap", {"lan": "b"}))
            assert reply == Reply(True, {"name": "wstap-wsl-b"}) and len(fds) == 1
            os.close(fds[0])
            for request_, error in (
                (Request("tap", {"lan": "zzz"}), "no such LAN: zzz"),
                (Request("tap"), "no such LAN: default"),
                (Request("remove", {"lan": "zzz"}), "no such LAN: zzz"),
                (Request("add", {"lan": "a", "config": _wire("a")}), "LAN a exists already"),
                (Request("add", {"lan": "c", "config": _wire("b")}), "bridge wsl-b is another"),
                (Request("start", {"uplink": None}), "start is not valid after setup"),
                (Request("add", {"lan": "new", "config": _wire("new")}), "wsl-new already exists"),
                (b'{"op": "add", "args": {"lan": "c"}}', "config is missing"),
                (b'{"op": "tap", "args": {"lan": "B"}}', "bad lan"),
            ):
                reply, fds = await ask(request_)
                assert not reply.ok and error in reply.error and fds == [], (request_, reply)
            reply, _ = await ask(Request("remove", {"lan": "a"}))
            assert reply == Reply(True) and gone == ["wsl-a"]
            reply, _ = await ask(Request("tap", {"lan": "a"}))
            assert reply == Reply(False, error="no such LAN: a")
            server.close()  # EOF: every LAN left goes with the helper's loop
        assert made == ["wsl-a", "wsl-b"] and sorted(gone) == ["wsl-a", "wsl-b"]
    for fake in fakes:
        for fd in fake.read_ends:
            assert os.read(fd, 1) == b""  # the helper kept no TAP
            os.close(fd)
