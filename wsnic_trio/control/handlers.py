"""The control API's endpoints: clients, stats, leases, forwards, capture, metrics, events.

Each handler takes a parsed request and returns an answer (or raises HttpError); the
HTTP side (reading, limits, tokens) is :mod:`wsnic_trio.control.http`. The endpoints are
documented in docs/api.md.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import trio

from wsnic_trio.config.endpoints import make_forward
from wsnic_trio.config.lans import DEFAULT_LAN, check_lan_name
from wsnic_trio.control.forward import ForwardError, ForwardManager
from wsnic_trio.control.http import (
    ApiListener,
    HttpError,
    HttpServer,
    Request,
    Response,
    Send,
    Stream,
    error_response,
    json_response,
)
from wsnic_trio.control.metrics import CONTENT_TYPE_LATEST, make_registry, render
from wsnic_trio.control.pcap import PeerGone
from wsnic_trio.control.state import Control
from wsnic_trio.core import (
    MAX_SUBSCRIBERS,
    TokenStore,
    Totals,
    mac_text,
    merged_totals,
    per_transport,
)
from wsnic_trio.errors import first_error
from wsnic_trio.util.text import printable

if TYPE_CHECKING:
    from wsnic_trio.core import PeerInfo

__all__ = ["ApiServer"]

log = logging.getLogger("wsnic_trio.api")

#: The largest client id a request may name (ids count up from 1; longer numbers are
#: no client, and would cost the parser dearly).
_MAX_ID_DIGITS = 18
KICK_TIMEOUT = 10.0
#: How long DELETE /forwards waits for the local sockets to be closed.
_CLOSE_TIMEOUT = 5.0


def _iso(epoch: float | None) -> str | None:
    if not epoch:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")


Handler = Callable[[Request, re.Match[str]], Awaitable[Response | Stream]]


class ApiServer:
    """Answers API requests about one :class:`Server`."""

    def __init__(self, control: Control, tokens: TokenStore | None = None) -> None:
        self.control = control
        self.server = control.server
        self.http = HttpServer(self.dispatch, tokens)
        self.registry = make_registry(control)
        self.routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/"), {"GET": self.get_index}),
            (re.compile(r"/clients"), {"GET": self.get_clients}),
            (re.compile(r"/clients/([0-9]+)"), {"GET": self.get_client, "DELETE": self.kick}),
            (
                re.compile(r"/clients/([0-9]+)/pcap"),
                {"POST": self.start_pcap, "DELETE": self.stop_pcap},
            ),
            (re.compile(r"/lans"), {"GET": self.get_lans, "POST": self.add_lan}),
            (re.compile(r"/lans/([^/]+)"), {"GET": self.get_lan, "DELETE": self.rm_lan}),
            (re.compile(r"/stats"), {"GET": self.get_stats}),
            (re.compile(r"/leases"), {"GET": self.get_leases}),
            (
                re.compile(r"/forwards"),
                {"GET": self.get_forwards, "POST": self.add_forward, "DELETE": self.rm_forward},
            ),
            (re.compile(r"/metrics"), {"GET": self.get_metrics}),
            (re.compile(r"/events"), {"GET": self.get_events}),
        ]

    async def serve(
        self,
        listener: ApiListener,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer the API on ``listener`` until cancelled."""
        await self.http.serve(listener, task_status=task_status)

    async def dispatch(self, request: Request) -> Response | Stream:
        """The route's answer; any failure is an error answer for this request alone."""
        try:
            for pattern, methods in self.routes:
                match = pattern.fullmatch(request.path.rstrip("/") or "/")
                if match is None:
                    continue
                handler = methods.get(request.method)
                if handler is None and request.method == "HEAD":
                    handler = methods.get("GET")  # answered without its body
                if handler is None:
                    allow = ", ".join(sorted(methods))
                    raise HttpError(
                        405,
                        f"{request.method} is not allowed on {request.path} (allowed: {allow})",
                        [("allow", allow)],
                    )
                return await handler(request, match)
            raise HttpError(404, f"no such endpoint: {request.path} (GET / lists them)")
        except HttpError as exc:
            return error_response(exc.status, str(exc), exc.headers)
        except ForwardError as exc:
            return error_response(exc.status, str(exc))
        except Exception as exc:
            log.exception("control API: %s %s failed", request.method, request.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    # -- endpoints ------------------------------------------------------------------------

    async def get_index(self, request: Request, match: re.Match[str]) -> Response:
        return json_response(
            {
                "endpoints": [
                    "GET /clients",
                    "GET /clients/{id}",
                    "DELETE /clients/{id}",
                    "POST /clients/{id}/pcap",
                    "DELETE /clients/{id}/pcap",
                    "GET /lans",
                    "GET /lans/{name}",
                    "POST /lans",
                    "DELETE /lans/{name}",
                    "GET /stats",
                    "GET /leases",
                    "GET /forwards",
                    "POST /forwards",
                    "DELETE /forwards",
                    "GET /metrics",
                    "GET /events",
                ]
            }
        )

    async def _fresh_leases(self) -> None:
        for state in list(self.server.lans.values()):  # LANs come and go while we wait
            if state.leases is not None:
                await state.leases.update()

    def _peer(self, match: re.Match[str]) -> PeerInfo:
        digits = match.group(1).lstrip("0") or "0"
        if len(digits) > _MAX_ID_DIGITS:
            raise HttpError(404, f"no client with id {digits[:20]}... is connected")
        peer_id = int(digits)
        info = self.server.peers.get(peer_id)
        if info is None:
            raise HttpError(404, f"no client with id {peer_id} is connected")
        return info

    def client_view(self, info: PeerInfo) -> dict[str, Any]:
        stats = info.stats
        lease = None
        state = self.server.lans.get(info.lan)
        leases = state.leases if state is not None else None
        if leases is not None and stats.mac is not None:
            lease = leases.leases.get(stats.mac)
        drops = stats.drops + info.link_drops
        capture = self.control.pcap.captures.get(info.id) if self.control.pcap else None
        return {
            "id": info.id,
            "lan": info.lan,
            "transport": info.transport,
            "remote": info.remote,
            "origin": info.origin,
            "tap": info.tap,
            "mac": mac_text(stats.mac),
            "ip": str(lease.ip) if lease is not None else None,
            "hostname": lease.hostname if lease is not None else None,
            "connected_since": _iso(stats.connected_at),
            "connected_seconds": round(time.time() - stats.connected_at, 3),
            "frames_in": stats.frames_in,
            "bytes_in": stats.bytes_in,
            "frames_out": stats.frames_out,
            "bytes_out": stats.bytes_out,
            "drops": dict(sorted(drops.items())),
            "capture": capture.describe() if capture is not None else None,
        }

    def lan_view(self, name: str) -> dict[str, Any]:
        state = self.server.lans[name]
        lan = state.config.lan
        return {
            "name": name,
            "subnet": str(lan.subnet),
            "gateway": str(lan.bridge_address),
            "bridge": lan.bridge,
            "mtu": lan.mtu,
            "dhcp": not lan.disable_dhcp,
            "nat": lan.enable_inet,
            "on_demand": state.on_demand,
            "clients": state.admission.clients,
            "leases": len(state.leases.leases) if state.leases is not None else None,
        }

    def _lan_name(self, match: re.Match[str]) -> str:
        name = unquote(match.group(1))
        if name not in self.server.lans:
            raise HttpError(404, f"no such LAN: {printable(name, 40)}")
        return name

    async def get_lans(self, request: Request, match: re.Match[str]) -> Response:
        await self._fresh_leases()
        return json_response({"lans": [self.lan_view(name) for name in self.server.lans]})

    async def get_lan(self, request: Request, match: re.Match[str]) -> Response:
        await self._fresh_leases()
        return json_response(self.lan_view(self._lan_name(match)))

    async def add_lan(self, request: Request, match: re.Match[str]) -> Response:
        data = request.json_object()
        unknown = set(data) - {"name"}
        if unknown:
            raise HttpError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        name = data.get("name")
        if not isinstance(name, str):
            raise HttpError(400, "field 'name' is required: the new LAN's name")
        try:
            check_lan_name(name)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        maker = self.server.maker
        if maker is None:
            raise HttpError(409, "this server makes no LANs on demand (start it with --lan-pool)")
        if name in self.server.lans:
            raise HttpError(409, f"LAN {name} exists")
        refused = maker.refusal(name)
        if refused is not None:
            raise HttpError(refused.http_status, refused.reason)
        try:
            await maker.make(name)
        except Exception as exc:  # one line for the caller; the server log has the rest
            raise HttpError(503, f"LAN {name}: {first_error(exc)}") from None
        return json_response(self.lan_view(name), 201)

    async def rm_lan(self, request: Request, match: re.Match[str]) -> Response:
        name = self._lan_name(match)
        maker = self.server.maker
        if maker is None or not self.server.lans[name].on_demand:
            raise HttpError(
                409,
                f"LAN {name} is configured: it stays until the server stops (DELETE "
                "/clients/{id} disconnects its clients)",
            )
        kicked = sum(1 for info in self.server.peers.values() if info.lan == name)
        await maker.remove(name)
        return json_response({"removed": name, "clients_disconnected": kicked})

    async def get_clients(self, request: Request, match: re.Match[str]) -> Response:
        names = set(self._lan_filter(request))
        await self._fresh_leases()
        peers = sorted(
            (i for i in self.server.peers.values() if i.lan in names), key=lambda i: i.id
        )
        return json_response({"clients": [self.client_view(i) for i in peers]})

    async def get_client(self, request: Request, match: re.Match[str]) -> Response:
        await self._fresh_leases()
        return json_response(self.client_view(self._peer(match)))

    async def kick(self, request: Request, match: re.Match[str]) -> Response:
        info = self._peer(match)
        self.server.kick(info.id)
        # Answer once it is really gone (its TAP removed), so the caller can rely on it.
        with trio.move_on_after(KICK_TIMEOUT):
            await info.gone.wait()
        gone = info.id not in self.server.peers
        return json_response({"kicked": info.id, "tap": info.tap, "gone": gone})

    async def start_pcap(self, request: Request, match: re.Match[str]) -> Response:
        info = self._peer(match)
        request.json_object()  # no options yet, but a malformed body is still an error
        if self.control.pcap is None:
            raise HttpError(409, "packet capture is off: start the server with --pcap DIR")
        await self.control.pcap.check_disk()  # fresh, not the last poll's view
        try:
            capture = self.control.pcap.start(info)
        except PeerGone:  # it left during the disk check
            raise HttpError(404, f"no client with id {info.id} is connected") from None
        if capture is None:  # the disk is nearly full, or the budget is all live captures
            raise HttpError(507, f"capture refused: {self.control.pcap.last_refusal}")
        return json_response({"id": info.id, "capture": capture.describe()}, 201)

    async def stop_pcap(self, request: Request, match: re.Match[str]) -> Response:
        info = self._peer(match)
        if self.control.pcap is None:  # as for POST: nothing to stop until --pcap is given
            raise HttpError(409, "packet capture is off: start the server with --pcap DIR")
        capture = self.control.pcap.stop(info.id, info)
        if capture is None:
            raise HttpError(404, f"client {info.id} is not being captured")
        with trio.move_on_after(KICK_TIMEOUT):
            await capture.done.wait()  # the file is complete when we answer
        return json_response({"id": info.id, "capture": capture.describe()})

    async def get_stats(self, request: Request, match: re.Match[str]) -> Response:
        server = self.server
        totals = per_transport(
            merged_totals(
                server.totals,
                (((i.transport, i.lan), i.stats, i.link_drops) for i in server.peers.values()),
            )
        )
        for transport in server.transports:
            totals.setdefault(transport.name, Totals())
        everything = Totals()
        transports: dict[str, Any] = {}
        for name, t in sorted(totals.items()):
            everything.merge(t)
            live = sum(1 for i in server.peers.values() if i.transport == name)
            transports[name] = {"clients_connected": live, **t.as_dict()}
        return json_response(
            {
                "started_at": _iso(server.started_at),
                "uptime_seconds": round(time.time() - server.started_at, 3),
                "clients_connected": len(server.peers),
                "total": everything.as_dict(),
                "transports": transports,
                "dnsmasq_restarts": server.dnsmasq_restarts,
                "forwards": len(self.control.forwards.forwards),
                "pcap": self.control.pcap.describe() if self.control.pcap else None,
            }
        )

    def _lan_filter(self, request: Request) -> list[str]:
        """The LANs a listing covers: ``?lan=NAME``, else every LAN."""
        wanted = request.query.get("lan")
        if wanted is None:
            return list(self.server.lans)
        if wanted not in self.server.lans:
            raise HttpError(404, f"no such LAN: {printable(wanted, 40)}")
        return [wanted]

    async def get_leases(self, request: Request, match: re.Match[str]) -> Response:
        names = self._lan_filter(request)
        states = [self.server.lans[n] for n in names if self.server.lans[n].leases is not None]
        if not states:
            raise HttpError(409, "this server runs no DHCP (--disable-dhcp): there are no leases")
        rows: list[dict[str, Any]] = []
        for state in states:
            assert state.leases is not None
            await state.leases.update()
            by_mac = {
                i.stats.mac: i.id
                for i in self.server.peers.values()
                if i.stats.mac and i.lan == state.name
            }
            rows.extend(
                {
                    "lan": state.name,
                    "mac": mac_text(lease.mac),
                    "ip": str(lease.ip),
                    "hostname": lease.hostname,
                    "expires": _iso(lease.expires) if lease.expires else "never",
                    "client": by_mac.get(lease.mac),
                }
                for lease in sorted(state.leases.leases.values(), key=lambda lease: lease.ip)
            )
        return json_response({"leases": rows})

    def _forwards(self) -> ForwardManager:
        return self.control.forwards

    async def get_forwards(self, request: Request, match: re.Match[str]) -> Response:
        manager = self._forwards()
        lans = self._lan_filter(request)
        rows = [f.describe() for _, f in sorted(manager.forwards.items()) if f.lan in lans]
        return json_response({"forwards": rows})

    async def add_forward(self, request: Request, match: re.Match[str]) -> Response:
        manager = self._forwards()
        data = request.json_object()
        unknown = set(data) - {"local", "remote", "protocol", "lan"}
        if unknown:
            raise HttpError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        lan = data.get("lan", request.query.get("lan", DEFAULT_LAN))
        if not isinstance(lan, str):
            raise HttpError(400, "field 'lan' must be a LAN's name")
        if lan not in self.server.lans:
            why = "" if lan != DEFAULT_LAN else " (this server runs no default LAN: say which)"
            raise HttpError(404, f"no such LAN: {printable(lan, 40)}{why}")
        for key in ("local", "remote"):
            if not isinstance(data.get(key), str):
                raise HttpError(400, f"field {key!r} is required: a string such as 127.0.0.1:2222")
        protocol = data.get("protocol", "tcp")
        if not isinstance(protocol, str):
            raise HttpError(400, 'field \'protocol\' must be "tcp" or "udp"')
        try:
            spec = make_forward(data["local"], data["remote"], protocol)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        fwd = await manager.add(spec, lan)
        return json_response(fwd.describe(), 201)

    async def rm_forward(self, request: Request, match: re.Match[str]) -> Response:
        manager = self._forwards()
        data = request.json_object()
        local = data.get("local", request.query.get("local"))
        protocol = data.get("protocol", request.query.get("protocol"))
        if not isinstance(local, str) or not local:
            raise HttpError(400, 'say which forward: {"local": "127.0.0.1:2222"} or ?local=')
        if protocol is not None and protocol not in ("tcp", "udp"):
            raise HttpError(400, 'field \'protocol\' must be "tcp" or "udp"')
        gone = manager.remove(local, protocol)
        # Answer once nothing listens there any more, so the caller can rely on it.
        with trio.move_on_after(_CLOSE_TIMEOUT):
            for fwd in gone:
                await fwd.closed.wait()
        return json_response({"removed": [f.describe() for f in gone]})

    async def get_metrics(self, request: Request, match: re.Match[str]) -> Response:
        await self._fresh_leases()
        return Response(200, render(self.registry), CONTENT_TYPE_LATEST)

    async def get_events(self, request: Request, match: re.Match[str]) -> Stream:
        bus = self.server.events
        if bus.subscribers >= MAX_SUBSCRIBERS:
            raise HttpError(503, f"too many event subscribers (at most {MAX_SUBSCRIBERS})")

        async def produce(send: Send) -> None:
            try:
                with bus.subscribe() as sub:
                    await send(_line({"event": "subscribed", "time": round(time.time(), 3)}))
                    async for event in sub.receive:
                        await send(_line(event))
                    if sub.overflowed:
                        await send(_line({"event": "overflow", "detail": "events were lost"}))
            except OverflowError as exc:
                await send(_line({"event": "error", "detail": str(exc)}))

        return Stream(produce)


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode() + b"\n"
