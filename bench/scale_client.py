"""Many idle WebSocket clients in one process (trio + wsproto), for the scale test.

Run inside the benchmark's client namespace:

    python -m bench.scale_client HOST PORT N

It opens N connections (at most ``--parallel`` handshakes at a time), prints
``ALL_CONNECTED <seconds>`` once every handshake is done, then stays idle, answering
the server's pings, until a line (or EOF) arrives on stdin or ``--max-seconds`` pass.
Then it closes everything and prints one JSON line with what it saw.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time

import trio
import wsproto
import wsproto.events as ev


class Stats:
    def __init__(self) -> None:
        self.connected = 0
        self.failed: list[str] = []
        self.dropped = 0  # connections the server ended while we held them
        self.pings = 0
        self.closing = False


async def one_client(
    host: str,
    port: int,
    stats: Stats,
    limit: trio.Semaphore,
    all_done: trio.Event,
    n: int,
    target: str = "/",
) -> None:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    async with limit:
        try:
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            await sock.connect((host, port))
            stream = trio.SocketStream(sock)
            await stream.send_all(ws.send(ev.Request(host=f"{host}:{port}", target=target)))
            opened = False
            while not opened:
                data = await stream.receive_some(65536)
                if not data:
                    raise ConnectionError("closed during the handshake")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, ev.AcceptConnection):
                        opened = True
                    elif isinstance(event, ev.RejectConnection):
                        raise ConnectionError(f"rejected: HTTP {event.status_code}")
        except (OSError, ConnectionError) as exc:
            stats.failed.append(str(exc))
            if stats.connected + len(stats.failed) == n:
                all_done.set()
            return
    stats.connected += 1
    if stats.connected + len(stats.failed) == n:
        all_done.set()
    async with stream:
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, ev.Ping):
                        stats.pings += 1
                        await stream.send_all(ws.send(event.response()))
                    elif isinstance(event, ev.CloseConnection):
                        raise ConnectionError("closed by the server")
            if not stats.closing:
                stats.dropped += 1
        except (OSError, ConnectionError, trio.BrokenResourceError):
            if not stats.closing:
                stats.dropped += 1


async def main(args: argparse.Namespace) -> None:
    stats = Stats()
    all_done = trio.Event()
    limit = trio.Semaphore(args.parallel)
    t0 = time.monotonic()
    connect_time = float("nan")
    with trio.move_on_after(args.max_seconds):
        async with trio.open_nursery() as nursery:
            for i in range(args.n):
                # With --lans K, client i joins /lan/PREFIX(i % K): K LANs, n/K clients each.
                target = f"/lan/{args.lan_prefix}{i % args.lans}" if args.lans else "/"
                nursery.start_soon(
                    one_client, args.host, args.port, stats, limit, all_done, args.n, target
                )
            await all_done.wait()
            connect_time = time.monotonic() - t0
            print(f"ALL_CONNECTED {connect_time:.3f} {stats.connected}", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            stats.closing = True
            nursery.cancel_scope.cancel()
    print(
        json.dumps(
            {
                "connected": stats.connected,
                "failed": len(stats.failed),
                "failures": sorted(set(stats.failed))[:5],
                "dropped": stats.dropped,
                "pings_answered": stats.pings,
                "connect_seconds": connect_time,
            }
        ),
        flush=True,
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("n", type=int)
    parser.add_argument("--parallel", type=int, default=100)
    parser.add_argument("--lans", type=int, default=0, help="spread the clients over K LANs")
    parser.add_argument("--lan-prefix", default="l", help="the LANs' names: PREFIX0, PREFIX1...")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.n * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    trio.run(main, args)


if __name__ == "__main__":
    cli()
