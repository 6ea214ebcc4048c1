"""The control API's HTTP side: JSON over HTTP/1.1 on a unix socket (and optionally
TCP, with a token).

HTTP is h11's job (a sans-IO state machine driven here by trio streams); this module
reads requests and writes answers, and leaves what they mean to a ``Dispatch`` function
(the API's routes are in :mod:`wsnic_trio.control.handlers`). Requests are small and
bounded (header and body sizes, an idle timeout, a cap on connections), answers must be
taken in time (a client that stops reading is closed), and a handler's failure becomes a
JSON error for that request alone. Whatever a client does, or however it vanishes, ends
its own connection only: nothing it sends can hurt the server or its peers. On TCP, a
connection counts against the cap only once it has sent a valid token; until then it is
one of a small budget of its own with a short deadline, so that nobody without a token
can take an operator's place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import trio

from wsnic_trio.config.endpoints import ApiEndpoint
from wsnic_trio.core import FailureLimiter, TokenStore
from wsnic_trio.host.paths import RUN_ROOT, make_run_root, release_run_root
from wsnic_trio.net.addresses import bind_all_addresses, peer_address
from wsnic_trio.net.listen import HandshakeGate, Pending, bind_all
from wsnic_trio.net.unixpath import UnixPath, bind_unix

__all__ = [
    "ApiListener",
    "Dispatch",
    "HttpError",
    "HttpServer",
    "Request",
    "Response",
    "Send",
    "Stream",
    "bind_api",
    "error_response",
    "json_response",
]

log = logging.getLogger("wsnic_trio.api")

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
#: Longest a client may take none of an answer (or of an event stream) before it is closed.
SEND_TIMEOUT = 30.0
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
            release_run_root()  # only when empty: another LAN may still use it
        elif self.sock.fileno() != -1:
            self.sock.close()


def _bind_one(endpoint: ApiEndpoint) -> ApiListener:
    if endpoint.kind == "unix":
        if Path(os.path.abspath(endpoint.path)).parent == RUN_ROOT:
            make_run_root()
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


#: What answers a request: the API's routes. An HttpError it raises is the answer.
Dispatch = Callable[[Request], Awaitable[Response | Stream]]


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


class HttpServer:
    """Serves API connections, each request answered by ``dispatch``; on TCP only with
    one of ``tokens``."""

    def __init__(self, dispatch: Dispatch, tokens: TokenStore | None = None) -> None:
        self.dispatch = dispatch
        self.tokens = tokens
        self.limiter = FailureLimiter()

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
            reply = await self.dispatch(request)
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


def _unquote(text: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(text)
