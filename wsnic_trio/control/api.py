"""The control API: JSON over HTTP/1.1 on a unix socket (and optionally TCP, with a token).

HTTP is h11's job (a sans-IO state machine driven here by trio streams); this module
only routes and answers. Requests are small and bounded (header and body sizes, an idle
timeout, a cap on connections), answers must be taken in time (a client that stops
reading is closed), and a handler's failure becomes a JSON error for that request alone.
Whatever a client does, or however it vanishes, ends its own connection only: nothing
it sends can hurt the server or its peers. On TCP, a connection counts against the cap
only once it has sent a valid token; until then it is one of a small budget of its own
with a short deadline, so that nobody without a token can take an operator's place.
The endpoints are documented in docs/api.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import functools
import json
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import h11
import trio

from wsnic_trio.config import Config
from wsnic_trio.config.endpoints import ApiEndpoint, make_forward
from wsnic_trio.control.forward import ForwardError, ForwardManager, OpenRemote
from wsnic_trio.control.metrics import CONTENT_TYPE_LATEST, make_registry, render
from wsnic_trio.control.pcap import PcapManager, PeerGone
from wsnic_trio.control.state import Control
from wsnic_trio.core import (
    MAX_SUBSCRIBERS,
    FailureLimiter,
    TokenStore,
    Totals,
    mac_text,
    merged_totals,
)
from wsnic_trio.errors import SetupError
from wsnic_trio.host.leases import Lease
from wsnic_trio.net.addresses import bind_all_addresses, peer_address
from wsnic_trio.net.listen import HandshakeGate, Pending, bind_all
from wsnic_trio.net.unixpath import UnixPath, bind_unix

if TYPE_CHECKING:
    from wsnic_trio.core import PeerInfo, Server

__all__ = ["ApiListener", "ApiServer", "bind_api", "load_api_tokens", "start_control"]

log = logging.getLogger("wsnic_trio.api")

RUN_ROOT = "/run/wsnic-trio"
#: Connections one API listener serves at once: every unix one, and on TCP those that
#: have authenticated.
MAX_CONNECTIONS = 64
#: TCP connections that have sent no valid token yet: their own budget, in all and per
#: source address (at a cap the oldest is closed, see HandshakeGate), ...
MAX_UNAUTHENTICATED = 16
MAX_UNAUTHENTICATED_PER_IP = 4
#: ... and the time they have to send a request with a valid token (its answer may
#: take longer: that is the request's own business).
AUTH_TIMEOUT = 10.0
MAX_BODY = 64 * 1024
MAX_HEADER = 16 * 1024
IDLE_TIMEOUT = 30.0
#: The largest client id a request may name (ids count up from 1; longer numbers are
#: no client, and would cost the parser dearly).
_MAX_ID_DIGITS = 18
#: Longest a client may take none of an answer (or of an event stream) before it is closed.
SEND_TIMEOUT = 30.0
KICK_TIMEOUT = 10.0
_JSON = "application/json"
#: What trio raises when the client went away: reset, broken pipe, closed. Only that
#: connection is affected, so it is worth a debug line, never a traceback.
_CLIENT_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)
#: accept() errors that only mean a would-be client gave up before we took it.
_ACCEPT_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO})


# -- listening --------------------------------------------------------------------------


class ApiListener:
    """One bound API socket; bound before the host is touched (a taken port: exit 2)."""

    def __init__(self, endpoint: ApiEndpoint, sock: socket.socket, unix: UnixPath | None) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.unix = unix
        self.needs_token = endpoint.kind == "tcp"

    def describe(self) -> str:
        if self.unix is not None:
            return f"unix:{self.unix.path} (mode 0600)"
        host, port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"tcp:{shown}:{port} (Bearer token required)"

    def close(self) -> None:
        if self.unix is not None:
            self.unix.close()
            with contextlib.suppress(OSError):
                os.rmdir(RUN_ROOT)  # only when empty: another LAN may still use it
        elif self.sock.fileno() != -1:
            self.sock.close()


def _bind_one(endpoint: ApiEndpoint) -> ApiListener:
    if endpoint.kind == "unix":
        directory = os.path.dirname(os.path.abspath(endpoint.path))
        if directory == RUN_ROOT and not os.path.isdir(directory):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o755)
        unix = bind_unix(endpoint.path, socket.SOCK_STREAM, 0o600, "control API")
        return ApiListener(endpoint, unix.sock, unix)
    # The API's TCP host is an IP address (names are refused when parsed): one socket.
    (sock,) = bind_all_addresses(endpoint.host, endpoint.port, "control API", backlog=64)
    return ApiListener(endpoint, sock, None)


def bind_api(endpoints: tuple[ApiEndpoint, ...]) -> list[ApiListener]:
    """Bind every API endpoint; on failure release those bound so far."""
    return bind_all(_bind_one, endpoints)


# -- requests and answers ----------------------------------------------------------------


class ClientStalled(Exception):
    """The client took none of an answer for ``SEND_TIMEOUT`` seconds."""


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        head_only: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []
        #: The request was a HEAD: the answer may carry no body.
        self.head_only = head_only


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a too long number
            raise HttpError(400, f"malformed JSON in the request body: {exc}") from None
        except RecursionError:
            raise HttpError(400, "malformed JSON in the request body: nested too deep") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise HttpError(400, "the request body must be a JSON object")
        return data


@dataclasses.dataclass
class Response:
    status: int
    body: bytes
    content_type: str = _JSON
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)


Send = Callable[[bytes], Awaitable[None]]


@dataclasses.dataclass
class Stream:
    """A response whose body ``produce`` writes, until it returns or the client goes."""

    produce: Callable[[Send], Awaitable[None]]
    content_type: str = "application/x-ndjson"


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, indent=1).encode() + b"\n")


def error_response(
    status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = {"error": message, "status": status}
    return Response(status, json.dumps(body).encode() + b"\n", headers=headers or [])


def _iso(epoch: float | None) -> str | None:
    if not epoch:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")


Handler = Callable[[Request, re.Match[str]], Awaitable[Response | Stream]]

#: After an answer with this header the server closes the connection (h11 sees to it).
_CLOSE = ("connection", "close")


@dataclasses.dataclass
class _Session:
    """One API connection's standing: whether it holds one of the listener's
    :data:`MAX_CONNECTIONS` slots, and until it has authenticated (TCP) its place in
    the budget of connections without a token."""

    slots: trio.Semaphore
    remote: str | None
    needs_token: bool
    holds_slot: bool = False
    pending: Pending | None = None

    def deadline(self) -> trio.CancelScope:
        """The time the next request may take to arrive (for the first one on TCP: the
        authentication deadline, which the budget may also cut short)."""
        if self.pending is not None:
            return self.pending.scope
        return trio.move_on_after(IDLE_TIMEOUT)

    def end(self) -> None:
        if self.pending is not None:
            self.pending.done()
            self.pending = None
        if self.holds_slot:
            self.holds_slot = False
            self.slots.release()


class ApiServer:
    """Answers API requests about one :class:`Server`."""

    def __init__(self, control: Control, tokens: TokenStore | None = None) -> None:
        self.control = control
        self.server = control.server
        self.tokens = tokens
        self.limiter = FailureLimiter()
        self.registry = make_registry(control)
        self.routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/"), {"GET": self.get_index}),
            (re.compile(r"/clients"), {"GET": self.get_clients}),
            (re.compile(r"/clients/([0-9]+)"), {"GET": self.get_client, "DELETE": self.kick}),
            (
                re.compile(r"/clients/([0-9]+)/pcap"),
                {"POST": self.start_pcap, "DELETE": self.stop_pcap},
            ),
            (re.compile(r"/stats"), {"GET": self.get_stats}),
            (re.compile(r"/leases"), {"GET": self.get_leases}),
            (
                re.compile(r"/forwards"),
                {"GET": self.get_forwards, "POST": self.add_forward, "DELETE": self.rm_forward},
            ),
            (re.compile(r"/metrics"), {"GET": self.get_metrics}),
            (re.compile(r"/events"), {"GET": self.get_events}),
        ]

    # -- serving --------------------------------------------------------------------------

    async def serve(
        self,
        listener: ApiListener,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        sock = trio.socket.from_stdlib_socket(listener.sock)
        slots = trio.Semaphore(MAX_CONNECTIONS)
        unauthenticated: HandshakeGate | None = None
        if listener.needs_token:
            unauthenticated = HandshakeGate(
                MAX_UNAUTHENTICATED,
                MAX_UNAUTHENTICATED_PER_IP,
                what="control API",
                names=(
                    f"its budget for connections without a token ({MAX_UNAUTHENTICATED})",
                    f"its budget per address ({MAX_UNAUTHENTICATED_PER_IP})",
                ),
            )
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                if unauthenticated is None:
                    # A unix socket's mode is its authentication: each connection takes
                    # a slot from the start, and the next one waits in the backlog.
                    await slots.acquire()
                try:
                    conn, addr = await sock.accept()
                except OSError as exc:
                    if unauthenticated is None:
                        slots.release()
                    if exc.errno in _ACCEPT_GONE:
                        continue
                    log.warning("control API: accept failed: %s", exc.strerror or exc)
                    await trio.sleep(0.1)  # EMFILE and the like: wait, don't spin
                    continue
                stream = trio.SocketStream(conn)
                remote = peer_address(addr)[1]
                session = _Session(slots, remote, listener.needs_token)
                if unauthenticated is None:
                    session.holds_slot = True
                else:
                    # TCP: accepted at once, whatever the slots, and counted in the budget
                    # without a token (which may close an older such connection).
                    session.pending = unauthenticated.enter(remote, AUTH_TIMEOUT)
                nursery.start_soon(self._connection, stream, session)

    async def _connection(self, stream: trio.SocketStream, session: _Session) -> None:
        """Serve one client; whatever it does, only this connection ends.

        Errors are caught with ``except*``: an event stream is written from inside a
        nursery, so a client that resets mid-stream arrives as an ExceptionGroup, which a
        plain ``except`` would let through to the accept loop and end the whole server.
        """
        who = session.remote or "unix socket"
        try:
            await self._converse(stream, session)
        except* _CLIENT_GONE as group:
            log.debug("control API: client (%s) went away: %s", who, _cause(group))
        except* ClientStalled:
            log.info(
                "control API: client (%s) took nothing of its answer for %g s: closed",
                who,
                SEND_TIMEOUT,
            )
        except* Exception:
            # A bug of ours, not the client's doing: worth a traceback, but it still
            # costs this connection only.
            log.exception("control API: serving a client (%s) failed; closed it", who)
        finally:
            session.end()
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream: trio.SocketStream, session: _Session) -> None:
        """Requests and answers on one connection, until either side ends it."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER)
        while True:
            # Stays None when the client idles out, or is cut off before it is authenticated.
            request: Request | None = None
            with session.deadline():
                try:
                    received = await self._read(conn, stream)
                    if received is not None and session.needs_token:
                        await self._authenticate(received, session)
                    request = received
                except HttpError as exc:
                    refusal = error_response(exc.status, str(exc), exc.headers)
                    await self._answer(conn, stream, refusal, body=not exc.head_only)
                    return
                except h11.RemoteProtocolError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        response = error_response(exc.error_status_hint, f"bad HTTP: {exc}")
                        await self._answer(conn, stream, response)
                    return
            if request is None:
                return
            reply = await self._dispatch(request)
            if isinstance(reply, Stream):
                if request.method != "HEAD":
                    await self._stream(conn, stream, reply)
                    return
                reply = Response(200, b"", reply.content_type)  # HEAD: no stream to start
            await self._answer(conn, stream, reply, body=request.method != "HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read(self, conn: h11.Connection, stream: trio.SocketStream) -> Request | None:
        """The next request with its (bounded) body; None when the client closed."""
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if head is None:
                    raise
                # Broken after the head: answer it (h11 still lets us), as the head asked.
                raise HttpError(
                    exc.error_status_hint, f"bad HTTP: {exc}", head_only=head.method == b"HEAD"
                ) from None
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and head is None and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                head = event
                length = dict(event.headers).get(b"content-length")
                if length is not None and length.isdigit() and int(length) > MAX_BODY:
                    raise HttpError(
                        413, f"request body over {MAX_BODY} bytes", head_only=head.method == b"HEAD"
                    )
            elif isinstance(event, h11.Data):
                assert head is not None
                body += event.data
                if len(body) > MAX_BODY:
                    raise HttpError(
                        413, f"request body over {MAX_BODY} bytes", head_only=head.method == b"HEAD"
                    )
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                target = head.target.decode("ascii", "replace")
                path, _, query = target.partition("?")
                params: dict[str, str] = {}
                for part in filter(None, query.split("&")):
                    key, _, value = part.partition("=")
                    params[_unquote(key)] = _unquote(value)
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(head.method.decode(), path, params, headers, bytes(body))

    async def _answer(
        self, conn: h11.Connection, stream: trio.SocketStream, reply: Response, body: bool = True
    ) -> None:
        """Send one whole answer; ``body`` False for HEAD (h11 refuses a body there)."""
        headers = [
            ("content-type", reply.content_type),
            ("content-length", str(len(reply.body))),
            *reply.headers,
        ]
        out = conn.send(h11.Response(status_code=reply.status, headers=headers))
        if body:
            out += conn.send(h11.Data(data=reply.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await _send(stream, out)

    async def _stream(self, conn: h11.Connection, stream: trio.SocketStream, reply: Stream) -> None:
        """Write ``reply`` until it ends or the client goes (EOF or reset on its side).

        Errors from the nursery come as an ExceptionGroup; ``_connection`` sorts them.
        """
        head = h11.Response(status_code=200, headers=[("content-type", reply.content_type)])
        await _send(stream, conn.send(head) or b"")
        async with trio.open_nursery() as nursery:

            async def until_client_goes() -> None:
                with contextlib.suppress(*_CLIENT_GONE):
                    while await stream.receive_some(4096):
                        pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_client_goes)

            async def send(data: bytes) -> None:
                await _send(stream, conn.send(h11.Data(data=data)) or b"")

            await reply.produce(send)
            await _send(stream, conn.send(h11.EndOfMessage()) or b"")
            nursery.cancel_scope.cancel()

    async def _dispatch(self, request: Request) -> Response | Stream:
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

    async def _authenticate(self, request: Request, session: _Session) -> None:
        """Every request on TCP carries a valid token, or its connection is closed.

        The first one (the login) moves the connection out of the budget without a
        token into one of the listener's slots (503 when none is free). A valid token
        is never refused because others failed from the same address: the login brake
        only delays the answer, to valid and invalid tokens alike (see FailureLimiter).
        """
        assert self.tokens is not None
        remote, head_only = session.remote, request.method == "HEAD"
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            if remote is not None:
                self.limiter.failed(remote)
            raise HttpError(
                401,
                "this API needs 'Authorization: Bearer TOKEN'",
                [("www-authenticate", "Bearer"), _CLOSE],
                head_only=head_only,
            )
        # The brake's wait is for logins; a connection that has shown a valid token
        # already has nothing left to learn from the timing.
        delay = self.limiter.delay(remote) if session.pending is not None else 0.0
        if delay > 0:
            await trio.sleep(delay)
        braked = remote is not None and self.limiter.blocked(remote)
        if not self.tokens.valid(token):
            if remote is not None:
                self.limiter.failed(remote)
            if braked:
                raise HttpError(
                    429,
                    "invalid token, and too many failed logins from this address: each "
                    f"login from it waits {self.limiter.braked_delay:g} s until they stop",
                    [_CLOSE],
                    head_only=head_only,
                )
            raise HttpError(403, "invalid token", [_CLOSE], head_only=head_only)
        if session.pending is None:
            return  # authenticated before
        session.pending.done()
        session.pending = None
        try:
            session.slots.acquire_nowait()
        except trio.WouldBlock:
            raise HttpError(
                503,
                f"the control API serves {MAX_CONNECTIONS} connections already; try again later",
                [_CLOSE],
                head_only=head_only,
            ) from None
        session.holds_slot = True

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
        if self.server.leases is not None:
            await self.server.leases.update()

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
        if self.server.leases is not None and stats.mac is not None:
            lease = self.server.leases.leases.get(stats.mac)
        drops = stats.drops + info.link_drops
        capture = self.control.pcap.captures.get(info.id) if self.control.pcap else None
        return {
            "id": info.id,
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

    async def get_clients(self, request: Request, match: re.Match[str]) -> Response:
        await self._fresh_leases()
        peers = sorted(self.server.peers.values(), key=lambda i: i.id)
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
        totals = merged_totals(
            server.totals,
            ((i.transport, i.stats, i.link_drops) for i in server.peers.values()),
            (t.name for t in server.transports),
        )
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

    async def get_leases(self, request: Request, match: re.Match[str]) -> Response:
        leases = self.server.leases
        if leases is None:
            raise HttpError(409, "this server runs no DHCP (--disable-dhcp): there are no leases")
        await leases.update()
        by_mac = {i.stats.mac: i.id for i in self.server.peers.values() if i.stats.mac}
        rows = [
            {
                "mac": mac_text(lease.mac),
                "ip": str(lease.ip),
                "hostname": lease.hostname,
                "expires": _iso(lease.expires) if lease.expires else "never",
                "client": by_mac.get(lease.mac),
            }
            for lease in sorted(leases.leases.values(), key=lambda lease: lease.ip)
        ]
        return json_response({"leases": rows})

    def _forwards(self) -> ForwardManager:
        return self.control.forwards

    async def get_forwards(self, request: Request, match: re.Match[str]) -> Response:
        manager = self._forwards()
        rows = [f.describe() for _, f in sorted(manager.forwards.items())]
        return json_response({"forwards": rows})

    async def add_forward(self, request: Request, match: re.Match[str]) -> Response:
        manager = self._forwards()
        data = request.json_object()
        unknown = set(data) - {"local", "remote", "protocol"}
        if unknown:
            raise HttpError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
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
        fwd = await manager.add(spec)
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


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    """Write to a client that must take it within ``SEND_TIMEOUT`` (or be closed)."""
    with trio.move_on_after(SEND_TIMEOUT) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        raise ClientStalled(f"no progress writing to the client for {SEND_TIMEOUT:g} s")


def _cause(group: BaseExceptionGroup[BaseException]) -> str:
    """The OS error behind the first exception in ``group`` (trio wraps it), as text."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    cause = exc.__cause__ or exc
    return (cause.strerror if isinstance(cause, OSError) else None) or str(cause) or repr(cause)


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode() + b"\n"


def _unquote(text: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(text)


# -- start-up -----------------------------------------------------------------------------


def load_api_tokens(config: Config) -> TokenStore | None:
    """The TCP API's tokens, read once at start (ConfigError: exit 2)."""
    if config.server.api_token_file is None:
        return None
    tokens = TokenStore(config.server.api_token_file)
    count = tokens.load()
    log.info("control API: %d tokens from %s", count, config.server.api_token_file)
    return tokens


async def start_control(
    nursery: trio.Nursery,
    server: Server,
    listeners: list[ApiListener],
    tokens: TokenStore | None,
    open_remote: OpenRemote,
) -> Control:
    """Start capture, forwards and the API in the server's nursery, before any listener
    accepts peers (so the first client is already captured and counted)."""
    config = server.config
    pcap: PcapManager | None = None
    if config.server.pcap is not None:
        if not await trio.to_thread.run_sync(config.server.pcap.is_dir):
            raise SetupError(f"--pcap {config.server.pcap}: no such directory; create it first")
        pcap = PcapManager(
            config.server.pcap,
            config.server.pcap_max_bytes,
            not config.server.pcap_on_demand,
            config.server.pcap_budget,
        )
        await nursery.start(pcap.run)
        server.capture = pcap
        which = "on demand (API)" if config.server.pcap_on_demand else "every client"
        log.info(
            "packet capture: %s into %s, at most %d bytes per file, %d bytes in all",
            which,
            config.server.pcap,
            config.server.pcap_max_bytes,
            config.server.pcap_budget,
        )
    forwards = ForwardManager(
        config.lan.subnet, server.leases, config.lan.dhcp_domain_name, open_remote
    )
    await nursery.start(forwards.run)
    for spec in config.lan.forward:
        try:
            await forwards.add(spec)
        except ForwardError as exc:
            raise SetupError(f"--forward {spec}: {exc}") from None
    control = Control(server, forwards, pcap)
    api = ApiServer(control, tokens)
    for listener in listeners:
        await nursery.start(api.serve, listener)
        log.info("control API on %s", listener.describe())
    if server.leases is not None:
        server.leases.on_change.append(functools.partial(_lease_events, server))
    return control


def _lease_events(server: Server, old: dict[bytes, Lease], new: dict[bytes, Lease]) -> None:
    by_mac = {i.stats.mac: i.id for i in server.peers.values() if i.stats.mac}
    for mac, lease in new.items():
        before = old.get(mac)
        if before is None or (before.ip, before.hostname, before.expires) != (
            lease.ip,
            lease.hostname,
            lease.expires,
        ):
            server.events.publish(
                "lease-granted",
                mac=mac_text(mac),
                ip=str(lease.ip),
                hostname=lease.hostname,
                expires=lease.expires,
                client=by_mac.get(mac),
            )
    for mac, lease in old.items():
        if mac not in new:
            server.events.publish(
                "lease-released", mac=mac_text(mac), ip=str(lease.ip), hostname=lease.hostname
            )
