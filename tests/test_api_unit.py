"""Control API pieces without a server: address syntax, option checks, the event bus."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from wsnic_trio import ConfigError
from wsnic_trio.cli.main import config_from_args, main
from wsnic_trio.config.endpoints import (
    ApiEndpoint,
    ForwardSpec,
    check_remote,
    parse_api_endpoint,
    parse_forward,
)
from wsnic_trio.core.events import QUEUE_SIZE, EventBus

LAN = ipaddress.IPv4Network("192.168.86.0/24")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/wsnic-trio/api.sock", ApiEndpoint("unix", path="/run/wsnic-trio/api.sock")),
        ("tcp:127.0.0.1:8088", ApiEndpoint("tcp", host="127.0.0.1", port=8088)),
        ("tcp:[::1]:8088", ApiEndpoint("tcp", host="::1", port=8088)),
    ],
)
def test_api_endpoints(text: str, expected: ApiEndpoint) -> None:
    assert parse_api_endpoint(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text", ["http://x", "unix:", "tcp:localhost:80", "tcp:1.2.3.4", "tcp:1.2.3.4:99999"]
)
def test_bad_api_endpoints(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_api_endpoint(text)


def test_forward_syntax() -> None:
    assert parse_forward("127.0.0.1:2222=192.168.86.23:22") == ForwardSpec(
        "127.0.0.1", 2222, "192.168.86.23", 22, "tcp"
    )
    spec = parse_forward("[::1]:5353=Guest.lan:53/udp")
    assert spec == ForwardSpec("::1", 5353, "guest.lan", 53, "udp")
    assert str(spec) == "[::1]:5353=guest.lan:53/udp"
    for bad in [
        "127.0.0.1:22",
        "127.0.0.1:1=x:0",
        "a:1=192.168.86.2:1",
        "127.0.0.1:1=b_c:1",
        "1.1.1.1:1=x:1/sctp",
    ]:
        with pytest.raises(ValueError, match=r"."):
            parse_forward(bad)


def test_forward_remotes_stay_on_the_lan() -> None:
    assert check_remote("192.168.86.23", LAN) is None
    assert check_remote("guest", LAN) is None
    assert "outside the LAN" in (check_remote("10.0.0.1", LAN) or "")
    assert "bridge" in (check_remote("192.168.86.1", LAN) or "")
    assert "broadcast" in (check_remote("192.168.86.255", LAN) or "")


def test_options() -> None:
    cfg = config_from_args(
        [
            "--api",
            "unix:/tmp/a.sock",
            "--forward",
            "127.0.0.1:1=192.168.86.9:2/udp",
            "--forward",
            "127.0.0.1:3=g:4",
        ]
    )
    assert cfg.server.api == (ApiEndpoint("unix", path="/tmp/a.sock"),)
    assert [f.protocol for f in cfg.lan.forward] == ["udp", "tcp"]
    with pytest.raises(ConfigError, match="needs --api-token-file"):
        config_from_args(["--api", "tcp:127.0.0.1:8088"])
    with pytest.raises(ConfigError, match="outside the LAN"):
        config_from_args(["--forward", "127.0.0.1:1=10.0.0.1:2"])
    with pytest.raises(ConfigError, match="needs --pcap DIR"):
        config_from_args(["--pcap-on-demand"])
    with pytest.raises(ConfigError, match="too small"):
        config_from_args(["--pcap", "/tmp", "--pcap-max-bytes", "100"])


def test_tcp_api_without_token_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--api", "tcp:127.0.0.1:8088"]) == 2
    assert "--api-token-file" in capsys.readouterr().err


async def test_event_bus_drops_a_subscriber_that_falls_behind() -> None:
    bus = EventBus()
    bus.publish("nobody-listens")  # no subscriber: nothing happens, nothing is kept
    with bus.subscribe() as slow, bus.subscribe() as quick:
        for i in range(QUEUE_SIZE):
            bus.publish("tick", n=i)
        for _ in range(QUEUE_SIZE):
            await quick.receive.receive()
        bus.publish("tick", n=QUEUE_SIZE)  # one too many for the slow one
        assert bus.subscribers == 1 and slow.overflowed and not quick.overflowed
        got = [event["n"] async for event in _drain(slow.receive)]
        assert got == list(range(QUEUE_SIZE)), "it keeps what it had, then its stream ends"
        assert (await quick.receive.receive())["n"] == QUEUE_SIZE
    assert bus.subscribers == 0


async def _drain(
    channel: trio.MemoryReceiveChannel[dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    async for item in channel:
        yield item
