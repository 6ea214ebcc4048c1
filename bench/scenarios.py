"""What the benchmark measures: its transports, scenarios, tests and their metrics.

Kept apart from how a scenario is built (:mod:`bench.topology`), measured
(:mod:`bench.measure`) and reported (:mod:`bench.report`), which all read these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

JUMBO = 65520


# -- transports: adding one is one line ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Transport:
    """How the benchmark starts a server and a client of one framing."""

    name: str
    port: int
    #: framing name understood by bench/c/minirelay ("ws" or "stream")
    c_framing: str
    #: wsnic-trio server options that open this listener on ``port`` (and nothing else)
    server_args: Callable[[int], list[str]]
    #: ``wsnic-trio connect`` URL for a server at host:port
    url: Callable[[str, int], str]
    #: also measure at MTU 65520
    jumbo: bool = False


def _ws_args(port: int) -> list[str]:
    return ["-a", "0.0.0.0", "--ws-port", str(port)]


def _qemu_args(port: int) -> list[str]:
    return ["--ws-port", "0", "--qemu", f"tcp:0.0.0.0:{port}"]


# One line per transport.
TRANSPORTS = [
    Transport("ws", 8086, "ws", _ws_args, lambda h, p: f"ws://{h}:{p}/"),
    Transport("qemu", 8087, "stream", _qemu_args, lambda h, p: f"qemu+tcp://{h}:{p}", jumbo=True),
]


# -- scenarios ----------------------------------------------------------------------------

TESTS = ("tcp_c2h", "tcp_h2c", "tcp_c2c", "udp64", "ping")
TCP_TESTS = ("tcp_c2h", "tcp_h2c", "tcp_c2c")
METRICS = {
    # metric: (unit, higher is better)
    "tcp_c2h": ("Gbit/s", True),
    "tcp_h2c": ("Gbit/s", True),
    "tcp_c2c": ("Gbit/s", True),
    "udp64": ("kpps", True),
    "ping_p50": ("ms", False),
    "ping_p99": ("ms", False),
}
TEST_METRICS = {
    "tcp_c2h": ("tcp_c2h",),
    "tcp_h2c": ("tcp_h2c",),
    "tcp_c2c": ("tcp_c2c",),
    "udp64": ("udp64",),
    "ping": ("ping_p50", "ping_p99"),
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    server: str  # "veth" | "c" | "wsnic"
    client: str  # "veth" | "c" | "wsnic"
    transport: Transport | None
    mtu: int = 1500
    tests: tuple[str, ...] = TESTS

    @property
    def key(self) -> str:
        t = self.transport.name if self.transport else "-"
        return f"{self.server}/{self.client}/{t}/{self.mtu}"

    @property
    def label(self) -> str:
        if self.server == "veth":
            return "kernel veth (no relay)"
        server = {"c": "C relay", "wsnic": "wsnic-trio"}[self.server]
        client = {"c": "C client", "wsnic": "wsnic-trio connect"}[self.client]
        assert self.transport is not None
        mtu = "" if self.mtu == 1500 else f", MTU {self.mtu}"
        return f"{server} {self.transport.name} + {client}{mtu}"

    def baseline_key(self) -> str:
        """The C relay + C client scenario this one is compared with."""
        t = self.transport.name if self.transport else "-"
        return f"c/c/{t}/{self.mtu}"


def default_scenarios(transports: Sequence[Transport], quick: bool) -> list[Scenario]:
    out = [Scenario("veth", "veth", None)]
    for t in transports:
        out.append(Scenario("c", "c", t))
        out.append(Scenario("wsnic", "c", t))
        out.append(Scenario("wsnic", "wsnic", t))
    for t in transports:
        if t.jumbo:
            out.append(Scenario("c", "c", t, JUMBO, TCP_TESTS))
            out.append(Scenario("wsnic", "c", t, JUMBO, TCP_TESTS))
            if not quick:
                out.append(Scenario("wsnic", "wsnic", t, JUMBO, TCP_TESTS))
    return out
