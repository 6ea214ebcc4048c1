"""``wsnic-trio ctl``: the control API from a shell, as tables (or ``--json`` for scripts).

An HTTP/1.1 client on h11, over the API's unix socket (or TCP with a token). Exit codes:
0 done, 1 the server refused (its JSON error is printed), 2 a usage problem or no server,
130 interrupted, 141 the reader of our output went away (as if killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h11
import trio

from wsnic_trio.config.endpoints import ApiEndpoint, parse_api_endpoint
from wsnic_trio.host.paths import RUN_ROOT
from wsnic_trio.util.text import printable

__all__ = ["ApiClient", "ApiReply", "main"]

DEFAULT_API = f"unix:{RUN_ROOT}/api.sock"
TIMEOUT = 30.0


class CtlError(Exception):
    """Cannot talk to the server at all (exit code 2)."""


class ApiReply:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class ApiClient:
    """One request per connection: the simplest thing that is correct for a CLI."""

    def __init__(self, endpoint: ApiEndpoint, token: str | None = None) -> None:
        self.endpoint = endpoint
        self.token = token

    async def _open(self) -> trio.abc.Stream:
        try:
            if self.endpoint.kind == "unix":
                return await trio.open_unix_socket(self.endpoint.path)
            return await trio.open_tcp_stream(self.endpoint.host, self.endpoint.port)
        except OSError as exc:
            raise CtlError(
                f"cannot reach the control API at {self.endpoint}: {exc.strerror or exc} "
                "(is the server running with --api?)"
            ) from None

    async def request(self, method: str, path: str, body: Any = None) -> ApiReply:
        headers = [("host", "wsnic-trio"), ("accept", "application/json")]
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
            headers += [("content-type", "application/json")]
        headers.append(("content-length", str(len(data))))
        if self.token:
            headers.append(("authorization", f"Bearer {self.token}"))
        conn = h11.Connection(h11.CLIENT)
        with trio.fail_after(TIMEOUT):
            stream = await self._open()
            async with stream:
                out = conn.send(h11.Request(method=method, target=path, headers=headers))
                out += conn.send(h11.Data(data=data)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                status = 0
                reply = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        reply += event.data
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        return ApiReply(status, bytes(reply))

    async def stream_lines(self, path: str) -> None:
        """Print a streaming response (``/events``) line by line until it ends."""
        headers = [("host", "wsnic-trio")]
        if self.token:
            headers.append(("authorization", f"Bearer {self.token}"))
        conn = h11.Connection(h11.CLIENT)
        stream = await self._open()
        async with stream:
            await stream.send_all(
                conn.send(h11.Request(method="GET", target=path, headers=headers))
                + (conn.send(h11.EndOfMessage()) or b"")
            )
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Response) and event.status_code != 200:
                    raise CtlError(f"GET {path} answered {event.status_code}")
                elif isinstance(event, h11.Data):
                    sys.stdout.write(bytes(event.data).decode(errors="replace"))
                    sys.stdout.flush()
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return


# -- presentation -------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns. Control characters in cells are escaped: peers name themselves
    (socket paths, DHCP host names), and one must not reach the terminal. The server
    escapes what it shows already, so a backslash stays as it is."""
    cells = [
        [("-" if v is None else printable(str(v), 1000, backslash=False)) for v in row]
        for row in rows
    ]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _drops(drops: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in drops.items()) or "-"


def show_clients(data: Any) -> str:
    rows = [
        (
            c["id"],
            c["lan"],
            c["transport"],
            c["remote"],
            c["tap"],
            c["mac"],
            c["ip"],
            c["hostname"],
            (c["connected_since"] or "").replace("T", " ").replace("+00:00", "Z"),
            f"{c['frames_in']}/{_size(c['bytes_in'])}",
            f"{c['frames_out']}/{_size(c['bytes_out'])}",
            _drops(c["drops"]),
        )
        for c in data["clients"]
    ]
    if not rows:
        return "no clients connected"
    headers = ["id", "lan", "transport", "remote", "tap", "mac", "ip", "hostname", "since"]
    return table([*headers, "in", "out", "drops"], rows)


def show_stats(data: Any) -> str:
    head = (
        f"up since {data['started_at']} ({data['uptime_seconds']:.0f} s), "
        f"{data['clients_connected']} clients connected, "
        f"{data['forwards']} forwards, dnsmasq restarts {data['dnsmasq_restarts']}"
    )
    rows = []
    items = [*data["transports"].items(), ("total", data["total"])]
    for name, t in items:
        rows.append(
            (
                name,
                t.get("clients_connected", data["clients_connected"]),
                t["connections"],
                f"{t['frames_in']}/{_size(t['bytes_in'])}",
                f"{t['frames_out']}/{_size(t['bytes_out'])}",
                _drops(t["drops"]),
            )
        )
    headers = ["transport", "connected", "joined", "in", "out", "drops"]
    return head + "\n" + table(headers, rows)


def show_forwards(data: Any) -> str:
    rows = [
        (
            f["lan"],
            f["protocol"],
            f["local"],
            f["remote"],
            f.get("bound_mac"),
            f["resolved"],
            f["active"],
            f["total"],
            _size(f["bytes_to_remote"]),
            _size(f["bytes_from_remote"]),
            f["last_error"],
        )
        for f in data["forwards"]
    ]
    if not rows:
        return "no forwards"
    headers = ["lan", "proto", "local", "remote", "bound to", "resolved", "active", "total"]
    headers += ["sent", "received"]
    return table([*headers, "last error"], rows)


def show_lans(data: Any) -> str:
    rows = [
        (
            x["name"],
            x["subnet"],
            x["bridge"],
            "on demand" if x["on_demand"] else "configured",
            "on" if x["nat"] else "off",
            x["clients"],
            "-" if x["leases"] is None else x["leases"],
        )
        for x in data["lans"]
    ]
    if not rows:
        return "no LANs (LANs on demand appear with their first client)"
    return table(["lan", "subnet", "bridge", "made", "nat", "clients", "leases"], rows)


def show_leases(data: Any) -> str:
    rows = [
        (x["lan"], x["ip"], x["mac"], x["hostname"], x["expires"], x["client"])
        for x in data["leases"]
    ]
    if not rows:
        return "no leases"
    return table(["lan", "ip", "mac", "hostname", "expires", "client"], rows)


# -- command line -------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilog examples stay as written; help lines wrap at spaces only, so an option
    named in a help text stays whole ("--api-token-file", not "--api-token-" + "file")."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


CTL_EPILOG = """\
examples:
  # the connected clients, with their traffic
  wsnic-trio ctl clients
  # ssh -p 2222 127.0.0.1 then reaches the client that took DHCP hostname "alpine"
  wsnic-trio ctl forward add 127.0.0.1:2222 alpine:22
  # a server with --api tcp:127.0.0.1:8090 --api-token-file /etc/wsnic/api-tokens
  wsnic-trio ctl --api tcp:127.0.0.1:8090 --token-file /etc/wsnic/api-tokens kick 3
"""


def build_ctl_parser() -> argparse.ArgumentParser:
    # Every subcommand repeats its one-line help as its description, so that
    # "ctl kick --help" says what kick does, not only its usage.
    parser = argparse.ArgumentParser(
        prog="wsnic-trio ctl",
        description="Ask a running wsnic-trio server (its control API, see docs/api.md).",
        epilog=CTL_EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--api",
        default=os.environ.get("WSNIC_TRIO_API", DEFAULT_API),
        metavar="unix:PATH|tcp:HOST:PORT",
        help="where the API listens, as the server's --api (default: $WSNIC_TRIO_API, else "
        f"{DEFAULT_API})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="send the first token in FILE (a TCP API needs one; see --api-token-file)",
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(where: Any, name: str, text: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = where.add_parser(
            name, help=text, description=text, formatter_class=HelpFormatter
        )
        return made

    client_id = "the client's ID, as 'ctl clients' lists it"
    command(sub, "clients", "list the connected clients")
    lans = command(sub, "lans", "list the LANs; add or rm one made on demand (--lan-pool)")
    lsub = lans.add_subparsers(dest="action", required=False, metavar="ACTION")
    command(lsub, "ls", "list the LANs (what 'ctl lans' alone does)")
    add_lan = command(lsub, "add", "make a LAN now, as its first client would")
    add_lan.add_argument("name", metavar="NAME", help="the LAN's name (ws://HOST:PORT/lan/NAME)")
    rm_lan = command(lsub, "rm", "disconnect every client of a LAN made on demand and remove it")
    rm_lan.add_argument("name", metavar="NAME", help="the LAN's name, as 'ctl lans' lists it")
    command(sub, "stats", "totals since start, per transport")
    command(sub, "leases", "the DHCP leases")
    command(sub, "events", "follow events (JSON lines) until interrupted")
    kick = command(sub, "kick", "disconnect a client (its TAP goes)")
    kick.add_argument("id", type=int, metavar="ID", help=client_id)
    pcap = command(sub, "pcap", "start or stop capturing one client (the server needs --pcap)")
    pcap.add_argument(
        "action",
        choices=["start", "stop"],
        metavar="start|stop",
        help="start a capture file, or finish the one being written",
    )
    pcap.add_argument("id", type=int, metavar="ID", help=client_id)
    fwd = command(sub, "forward", "port forwards: add, rm, ls")
    fsub = fwd.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = command(fsub, "add", "forward LOCAL (on the server's host) to REMOTE (LAN)")
    add.add_argument(
        "local", metavar="LOCAL", help="HOST:PORT on the server's host, e.g. 127.0.0.1:2222"
    )
    add.add_argument("remote", metavar="REMOTE", help="ADDRESS:PORT or HOSTNAME:PORT on the LAN")
    add.add_argument("--udp", action="store_true", help="forward UDP instead of TCP")
    add.add_argument(
        "--lan", default="default", metavar="NAME", help="the LAN REMOTE is on (default: default)"
    )
    rm = command(fsub, "rm", "remove the forward(s) on LOCAL: TCP and UDP, unless one is named")
    rm.add_argument("local", metavar="LOCAL", help="HOST:PORT, as 'ctl forward ls' lists it")
    rm.add_argument("--udp", action="store_true", help="only the UDP forward")
    rm.add_argument("--tcp", action="store_true", help="only the TCP forward")
    command(fsub, "ls", "list forwards")
    return parser


def _lan_made(data: Any) -> str:
    return f"LAN {data['name']} made: {data['subnet']} on bridge {data['bridge']}"


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CtlError(f"cannot read token file {path}: {exc.strerror}") from None
    for line in text.splitlines():
        token = line.split("#", 1)[0].strip()
        if token:
            return token
    raise CtlError(f"{path}: no token in the file")


async def run_ctl(args: argparse.Namespace) -> int:
    try:
        endpoint = parse_api_endpoint(args.api)
    except ValueError as exc:
        raise CtlError(f"--api: {exc}") from None
    client = ApiClient(endpoint, _token(args.token_file))
    command = args.command
    if command == "events":
        await client.stream_lines("/events")
        return 0
    show: Any = None
    if command == "clients":
        reply, show = await client.request("GET", "/clients"), show_clients
    elif command == "lans" and args.action == "add":
        reply, show = await client.request("POST", "/lans", {"name": args.name}), _lan_made
    elif command == "lans" and args.action == "rm":
        reply = await client.request("DELETE", f"/lans/{args.name}")
        show = lambda d: (  # noqa: E731
            f"LAN {d['removed']} removed ({d['clients_disconnected']} clients disconnected)"
        )
    elif command == "lans":
        reply, show = await client.request("GET", "/lans"), show_lans
    elif command == "stats":
        reply, show = await client.request("GET", "/stats"), show_stats
    elif command == "leases":
        reply, show = await client.request("GET", "/leases"), show_leases
    elif command == "kick":
        reply = await client.request("DELETE", f"/clients/{args.id}")
        show = lambda d: f"client {d['kicked']} disconnected ({d['tap']} removed)"  # noqa: E731
    elif command == "pcap":
        method = "POST" if args.action == "start" else "DELETE"
        reply = await client.request(method, f"/clients/{args.id}/pcap", {})
        verb = "capturing into" if args.action == "start" else "capture written to"
        show = lambda d: f"client {d['id']}: {verb} {d['capture']['path']}"  # noqa: E731
    elif args.action == "ls":
        reply, show = await client.request("GET", "/forwards"), show_forwards
    elif args.action == "add":
        body = {
            "local": args.local,
            "remote": args.remote,
            "protocol": "udp" if args.udp else "tcp",
            "lan": args.lan,
        }
        reply = await client.request("POST", "/forwards", body)
        show = lambda d: (  # noqa: E731
            f"forwarding {d['protocol']} {d['local']} to {d['remote']} on LAN {d['lan']}"
        )
    else:
        body = {"local": args.local}
        if args.udp != args.tcp:
            body["protocol"] = "udp" if args.udp else "tcp"
        reply = await client.request("DELETE", "/forwards", body)
        show = lambda d: "\n".join(  # noqa: E731
            f"removed {f['protocol']} {f['local']} -> {f['remote']}" for f in d["removed"]
        )
    try:
        data = reply.json()
    except ValueError:
        print(f"wsnic-trio ctl: the server answered {reply.status} without JSON", file=sys.stderr)
        return 1
    if reply.status >= 400:
        if args.json:
            print(json.dumps(data, indent=1))
        print(f"wsnic-trio ctl: {data.get('error', data)} (HTTP {reply.status})", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=1) if args.json else show(data))
    return 0


def main(argv: Sequence[str]) -> int:
    args = build_ctl_parser().parse_args(argv)
    try:
        return trio.run(run_ctl, args)
    except CtlError as exc:
        print(f"wsnic-trio ctl: {exc}", file=sys.stderr)
        return 2
    except trio.TooSlowError:
        print(f"wsnic-trio ctl: no answer from {args.api} in {TIMEOUT:g} s", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Whoever reads our output left (``ctl events | head -3``): end quietly, as a
        # tool killed by SIGPIPE would, and keep Python from failing to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (trio.BrokenResourceError, h11.ProtocolError) as exc:
        print(f"wsnic-trio ctl: the connection to {args.api} broke: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
