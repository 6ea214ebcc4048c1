"""Chaos: hundreds of clients that give up at random moments, on every listener at once.

One server runs with every listener on (ws, wss, QEMU stream on unix and TCP, bess,
dgram, the API on unix and TCP, a TCP and a UDP port forward, on-demand capture). Two
well-behaved namespaces joined through ``wsnic-trio connect`` ping each other all the
while, one of them captured, one of them the guest behind both forwards, and a curl
follows /events. Meanwhile clients reset or half-close during the TCP handshake, in the
middle of an HTTP request, the WebSocket upgrade, a frame or the TLS handshake, while the
server is writing to them, and datagram peers vanish (tests/chaos.py has them all).

Afterwards the server is alive, the pings got through (a handful lost at most), and the
server's clients, tasks and open fds are back to what they were before.

The plan comes from one seed: ``WSNIC_CHAOS_SEED=N`` replays a run (every failure
message names the seed); ``WSNIC_CHAOS_ONLY`` narrows it (see tests/chaos.py).
"""

from __future__ import annotations

import os
import random
import re
import signal
from pathlib import Path

import trio
import trustme

from . import chaos
from .apihelp import api, events, follow_events, require_curl, start_echo
from .lanhost import LanClient, add_client, require_tools
from .netns import NetNS, NsFactory, NsProcess, wait_taps
from .test_forward import tcp_roundtrip, udp_roundtrip
from .test_pcap import require_tshark, tshark
from .test_security import client_context, write_cert
from .test_websocket_bad_input import status, status_settles

SEED_ENV = "WSNIC_CHAOS_SEED"
STEPS = 800
WORKERS = 16
#: The chaos stops after this long even if steps are left (it usually ends sooner).
CHAOS_SECONDS = 50.0
#: Pings (5 a second each way) the good clients may lose while the chaos runs.
HANDFUL = 5
GOOD_IPS = ("192.168.86.10", "192.168.86.11")
API_TOKEN = "chaos-operator-token"
FWD_TCP, FWD_UDP = 2222, 2223


def chaos_seed() -> int:
    text = os.environ.get(SEED_ENV)
    return int(text) if text else random.SystemRandom().randrange(1 << 32)


class Report:
    """Failure messages that carry the seed and what the server and the chaos did."""

    def __init__(self, seed: int, server: NsProcess) -> None:
        self.seed = seed
        self.server = server
        self.outcomes: list[chaos.Outcome] = []

    def __call__(self, message: str, *, detail: bool = False) -> str:
        text = f"[{SEED_ENV}={self.seed}] {message}"
        if detail:
            text += f"\nsteps run ({len(self.outcomes)}):\n{chaos.summary(self.outcomes)}"
            text += f"\nserver tracebacks:\n{self.tracebacks() or '(none)'}"
        return text

    def tracebacks(self, limit: int = 80) -> str:
        lines = self.server.log.lines
        starts = [i for i, line in enumerate(lines) if "Traceback" in line]
        if not starts:
            return ""
        # From the line before the first traceback (the error the server logged).
        return "\n".join(lines[max(0, starts[0] - 1) :][:limit])


async def good_client(world: NsFactory, srv: NetNS, tmp: Path, index: int, ip: str) -> LanClient:
    client = await add_client(world, srv, tmp, index, f"good{index}")
    client.ns.ip("addr", "add", f"{ip}/24", "dev", "lan0")
    return client


async def ping_works(client: LanClient, address: str) -> None:
    with trio.fail_after(20):
        while (await client.ns.exec("ping", "-c", "1", "-W", "1", address)).returncode != 0:
            await trio.sleep(0.2)


def ping_counts(proc: NsProcess, say: Report) -> tuple[int, int]:
    """(sent, received) from the summary ping prints when interrupted."""
    m = proc.log.find(r"(\d+) packets transmitted, (\d+) received")
    assert m, say(f"{proc.log.label} printed no summary: {proc.log.text()[-2000:]}")
    return int(m[1]), int(m[2])


def test_a_seed_replays_the_same_plan() -> None:
    """What a replay relies on: one seed, one plan; WSNIC_CHAOS_ONLY narrows it."""
    plan = chaos.make_plan(7, 300)
    assert plan == chaos.make_plan(7, 300)
    assert plan != chaos.make_plan(8, 300)
    assert {s.listener for s in plan} == set(chaos.PHASES), "every listener gets its turn"
    only = chaos.make_plan(7, 50, "ws,bess:stalled-reader")
    assert {(s.listener, s.phase) for s in only} <= {
        *(("ws", phase) for phase in chaos.PHASES["ws"]),
        ("bess", "stalled-reader"),
    }
    without = chaos.make_plan(7, 300, "-api-unix:events,-dgram")
    assert ("api-unix", "events") not in {(s.listener, s.phase) for s in without}
    assert "dgram" not in {s.listener for s in without}


async def test_chaos_on_every_listener_harms_nobody_else(
    world: NsFactory, tmp_path: Path, sockdir: str
) -> None:
    require_tools()
    require_curl()
    require_tshark()
    seed = chaos_seed()
    print(f"chaos seed: {seed} (replay with {SEED_ENV}={seed})")
    try:
        await chaos_run(world, tmp_path, sockdir, seed)
    except BaseException as exc:  # whatever failed, the seed to replay it goes with it
        exc.add_note(f"chaos seed: {SEED_ENV}={seed}")
        raise


async def chaos_run(world: NsFactory, tmp_path: Path, sockdir: str, seed: int) -> None:
    test_started = trio.current_time()
    ca = trustme.CA()
    chain, key = write_cert(ca, tmp_path, "server")
    tokens = tmp_path / "api-tokens"
    tokens.write_text(API_TOKEN + "\n")
    captures = tmp_path / "pcap"
    captures.mkdir()
    api_sock = f"{sockdir}/api.sock"
    srv = world.new("srv")
    server = await srv.start_wsnic(
        *("-a", "0.0.0.0", "--wss-port", "8087", "-r", str(chain), "-k", str(key)),
        *("--qemu", f"unix:{sockdir}/q.sock", "--qemu", "tcp:127.0.0.1:9000"),
        *("--bess", f"{sockdir}/b.sock", "--dgram", f"{sockdir}/d.sock"),
        *("--api", f"unix:{api_sock}", "--api", "tcp:127.0.0.1:8088"),
        *("--api-token-file", str(tokens)),
        *("--forward", f"127.0.0.1:{FWD_TCP}={GOOD_IPS[0]}:7000"),
        *("--forward", f"127.0.0.1:{FWD_UDP}={GOOD_IPS[0]}:7001/udp"),
        *("--pcap", str(captures), "--pcap-on-demand"),
        # Short timeouts, so that what the chaos leaves half-done is cleaned up quickly.
        *("--handshake-timeout", "2", "--partial-frame-timeout", "1"),
        *("--dgram-idle-timeout", "2", "--ping-interval", "1", "--ping-timeout", "10"),
    )
    say = Report(seed, server)

    # -- the well-behaved world ----------------------------------------------------------
    alice = await good_client(world, srv, tmp_path, 0, GOOD_IPS[0])
    bob = await good_client(world, srv, tmp_path, 1, GOOD_IPS[1])
    await ping_works(alice, GOOD_IPS[1])
    await ping_works(bob, GOOD_IPS[0])
    await start_echo(alice.ns, "guest-a")
    payload = bytes(range(256)) * 64
    assert await tcp_roundtrip(srv, FWD_TCP, payload) == b"guest-a tcp " + payload, say("forward")
    follower = await follow_events(srv, api_sock)
    clients = (await api(api_sock, "GET", "/clients")).json()["clients"]
    good_ids = frozenset(c["id"] for c in clients)
    assert len(good_ids) == 2, say(f"two good clients: {clients}")
    [bob_id] = [c["id"] for c in clients if c["remote"].startswith("198.18.0.6:")]
    started = await api(api_sock, "POST", f"/clients/{bob_id}/pcap")
    assert started.status == 201, say(f"capture of bob: {started}")
    await wait_taps(srv, 2)
    baseline = await status(server)

    pings = [
        await alice.ns.start(["ping", "-i", "0.2", GOOD_IPS[1]], label="ping-a"),
        await bob.ns.start(["ping", "-i", "0.2", GOOD_IPS[0]], label="ping-b"),
    ]

    # -- chaos -------------------------------------------------------------------------------
    target = chaos.Target(
        ns=srv,
        ws_port=8086,
        wss_port=8087,
        qemu_unix=f"{sockdir}/q.sock",
        qemu_port=9000,
        bess=f"{sockdir}/b.sock",
        dgram=f"{sockdir}/d.sock",
        api_unix=api_sock,
        api_port=8088,
        api_token=API_TOKEN,
        fwd_tcp_port=FWD_TCP,
        fwd_udp_port=FWD_UDP,
        tls=client_context(ca),
        sockdir=sockdir,
        good_ids=good_ids,
    )
    steps = chaos.make_plan(seed, STEPS, os.environ.get("WSNIC_CHAOS_ONLY"))
    start = chaos_started = trio.current_time()
    died_at: list[float] = []

    async def watch_server() -> None:
        await server.proc.wait()
        died_at.append(trio.current_time() - start)

    async with trio.open_nursery() as watching:
        watching.start_soon(watch_server)
        say.outcomes = await chaos.run_plan(
            target,
            steps,
            seed,
            workers=WORKERS,
            seconds=CHAOS_SECONDS,
            start=start,
            keep_going=lambda: not died_at,
        )
        watching.cancel_scope.cancel()
    chaos_took = trio.current_time() - start
    print(f"chaos: {len(say.outcomes)} steps in {chaos_took:.1f} s")
    print(chaos.summary(say.outcomes))
    print(f"what the server logged:\n{chaos.log_digest(server.log.lines)}")

    if died_at:
        seen_gone = chaos.server_gone(say.outcomes) or died_at[0]
        raise AssertionError(
            say(
                f"the server exited (code {server.proc.returncode}) {died_at[0]:.2f} s into "
                f"the chaos; a step first found it gone at {seen_gone:.2f} s\n"
                + chaos.around(say.outcomes, seen_gone),
                detail=True,
            )
        )

    # -- afterwards: the good clients never noticed ------------------------------------------
    for proc in pings:
        proc.send_signal(signal.SIGINT)
        await proc.wait()
    for proc in pings:
        sent, received = ping_counts(proc, say)
        print(f"{proc.log.label}: {received} of {sent} pings answered")
        assert sent - received <= HANDFUL, say(
            f"{proc.log.label}: {sent - received} of {sent} pings lost", detail=True
        )

    # UDP sessions stay for their idle timeout (60 s) by design; a forward removed and
    # added again starts without any, as it was at the baseline.
    gone = await api(api_sock, "DELETE", f"/forwards?local=127.0.0.1:{FWD_UDP}&protocol=udp")
    assert gone.status == 200, say(f"remove the UDP forward: {gone}")
    spec = {"local": f"127.0.0.1:{FWD_UDP}", "remote": f"{GOOD_IPS[0]}:7001", "protocol": "udp"}
    again = await api(api_sock, "POST", "/forwards", spec)
    assert again.status == 201, say(f"add the UDP forward again: {again}")

    # -- nothing leaked ------------------------------------------------------------------------
    await wait_taps(srv, 2, timeout=20)
    now = await status_settles(server, baseline, timeout=30)
    assert now == baseline, say(
        f"(clients, tasks, fds) {now} after the chaos, {baseline} before", detail=True
    )

    # -- and everything still works ------------------------------------------------------------
    assert await tcp_roundtrip(srv, FWD_TCP, payload) == b"guest-a tcp " + payload, say("tcp")
    assert await udp_roundtrip(srv, FWD_UDP, b"after") == b"guest-a udp after", say("udp")
    seen = events(follower)
    chaos_ids = {e["id"] for e in seen if e["event"] == "client-connected"} - good_ids
    assert chaos_ids, say("the /events follower saw the chaos clients come")
    assert follower.proc.returncode is None or seen[-1]["event"] == "overflow", say(
        f"the /events follower was dropped: {follower.log.text()[-500:]}"
    )
    stopped = await api(api_sock, "DELETE", f"/clients/{bob_id}/pcap")
    assert stopped.status == 200, say(f"stop bob's capture: {stopped}")
    capture = stopped.json()["capture"]
    assert capture["error"] is None, say(f"bob's capture: {capture}")
    replies = await tshark(
        capture["path"],
        "icmp.seq",
        filter=f"icmp.type == 0 && ip.src == {GOOD_IPS[0]} && ip.dst == {GOOD_IPS[1]}",
    )
    received_by_bob = ping_counts(pings[1], say)[1]
    assert len(replies) >= received_by_bob - capture["dropped"], say(
        f"bob's capture holds {len(replies)} of the {received_by_bob} replies bob got: {capture}"
    )

    assert await server.stop() == 0, say("exit code", detail=True)
    assert not say.tracebacks(), say("the server logged a traceback", detail=True)
    kinds = re.findall(r"client \d+ connected: (\w+)", server.log.text())
    print("clients that joined, by transport:", {k: kinds.count(k) for k in sorted(set(kinds))})
    print(
        f"timings: setup {chaos_started - test_started:.1f} s, chaos {chaos_took:.1f} s, "
        f"afterwards {trio.current_time() - start - chaos_took:.1f} s"
    )
