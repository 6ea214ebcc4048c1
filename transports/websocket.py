"""WebSocket front end (v86 and wsnic clients): ws:// listener, peer link and dialer.

Wire format (wsnic-compatible): any path; each binary message is one Ethernet frame in
either direction; nothing else is ever sent as data. The handshake and framing rules
live in :mod:`wsnic_trio.transports.websocket_protocol`; this module only moves bytes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import socket
import ssl
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from wsnic_trio.config.lans import lan_from_path
from wsnic_trio.errors import (
    PeerClosed,
    PeerError,
    PeerProtocolError,
    PeerRefused,
    PeerTimeout,
    SetupError,
)
from wsnic_trio.net.addresses import bind_all_addresses, connect_any
from wsnic_trio.net.listen import HandshakeGate, accept_forever
from wsnic_trio.transports._sockio import SocketIO, is_disconnect
from wsnic_trio.transports._tlsio import TlsContext, TlsSocketIO
from wsnic_trio.transports.base import (
    AdmissionRequest,
    FrameCheck,
    Liveness,
    PeerHandler,
    Rejection,
    peer_address,
    printable,
)
from wsnic_trio.transports.websocket_protocol import (
    PLAIN_PAGE,
    TLS_PAGE,
    HandshakeRequest,
    Phase,
    WebSocketProtocol,
)

if TYPE_CHECKING:
    from wsnic_trio.config import Config

__all__ = [
    "WebSocketLink",
    "WebSocketTransport",
    "dial_websocket",
    "handshake_gate",
    "tcp_listener",
]

log = logging.getLogger("wsnic_trio.ws")

_CLOSE_TIMEOUT = 1.0
_HANDSHAKE_READ = 16 * 1024


class WebSocketLink:
    """A peer whose frames travel as binary WebSocket messages."""

    def __init__(
        self,
        io: SocketIO,
        proto: WebSocketProtocol,
        remote: str,
        liveness: Liveness,
        *,
        transport: str = "ws",
        remote_ip: str | None = None,
        subprotocol: str | None = None,
        origin: str | None = None,
        lan: str | None = None,
    ) -> None:
        self.transport = transport
        #: The LAN the URL's path asked for (None: the default LAN).
        self.lan = lan
        self.io = io
        self.proto = proto
        self.remote = remote
        self.remote_ip = remote_ip
        #: The browser page's origin, escaped for logs and the API (None: not a browser).
        self.origin = printable(origin) if origin is not None else None
        self.liveness = liveness
        self.last_received = trio.current_time()
        self.drops: collections.Counter[str] = proto.drops
        self._pending = True  # bytes that came with the handshake still to be parsed
        self._subprotocol = subprotocol
        self._refused = False

    async def accept(self) -> None:
        """Server side: answer the upgrade (``101``) now that the peer is on the LAN."""
        if self.proto.phase is Phase.HANDSHAKE and self.proto.request is not None:
            await self.io.send_all(self.proto.accept(self._subprotocol))
            self.last_received = trio.current_time()

    async def refuse(self, rejection: Rejection) -> None:
        """Before the upgrade: an HTTP error with the reason; after it: a close frame."""
        if self.proto.phase is not Phase.HANDSHAKE:
            await self.aclose(PeerProtocolError(rejection.reason, rejection.close_code))
            return
        self._refused = True
        body = f"wsnic-trio: {rejection.reason}\n".encode()
        data = self.proto.reject(rejection.http_status, body)
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            with contextlib.suppress(OSError, PeerError):
                await self.io.send_all(data)
                await self.io.goodbye()
        self.io.close()

    async def receive_frames(self) -> list[bytes]:
        proto = self.proto
        if self._pending:
            self._pending = False
            frames = proto.receive(None)
            if frames:
                return frames
        while True:
            closed = proto.closed
            if closed is not None:
                await self.io.send_all(proto.data_to_send())
                if closed.protocol_error:
                    raise PeerProtocolError(closed.reason, closed.code)
                detail = f", {closed.reason}" if closed.reason else ""
                raise PeerClosed(f"closed by peer (code {closed.code}{detail})")
            data = await self.io.recv_some()
            self.last_received = trio.current_time()
            frames = proto.receive(data)
            out = proto.data_to_send()
            if out:
                await self.io.send_all(out)
            if frames:
                return frames

    async def send_frames(self, frames: list[bytes]) -> None:
        await self.io.send_all(self.proto.encode_frames(frames))

    async def ping(self) -> None:
        await self.io.send_all(self.proto.ping())

    async def aclose(self, reason: BaseException | None = None) -> None:
        """Send a close frame that says why, wait briefly for the peer's reply, then close.

        ``reason`` None means the server is stopping (1001, going away).
        """
        if self._refused:
            self.io.close()
            return
        if self.proto.phase is Phase.HANDSHAKE:
            # Never upgraded (the server stops while the TAP was being made): no
            # WebSocket to close, a plain HTTP answer says why.
            await self.refuse(Rejection(503, "server is stopping", 1001))
            return
        if isinstance(reason, PeerProtocolError):
            code, text = reason.close_code, str(reason)
        elif isinstance(reason, PeerTimeout):
            code, text = 1001, str(reason)
        elif isinstance(reason, PeerClosed):
            code, text = 1000, str(reason)
        elif reason is None:
            code, text = 1001, "server is stopping"
        else:
            code, text = 1011, "server error"
        closed_by_peer = self.proto.closed is not None and self.proto.closed.by_peer
        peer_ended_it = closed_by_peer and not self.proto.closed.protocol_error  # type: ignore[union-attr]
        data = self.proto.close(code, text) + self.proto.data_to_send()
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            with contextlib.suppress(OSError, PeerError):
                if not self.io.torn:
                    await self.io.send_all(data)
                    if not peer_ended_it:
                        # The peer answers our close frame, then expects us to hang up.
                        await self.io.recv_some()
                await self.io.goodbye()
        self.io.close()


def tcp_listener(address: str, port: int, what: str) -> list[socket.socket]:
    """Listening TCP sockets on every address ``address`` resolves to, bound now, so a
    taken port fails before the host is touched."""
    return bind_all_addresses(address, port, what, backlog=512)


def _peer_name(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


def token_candidates(request: HandshakeRequest) -> tuple[str, ...]:
    """Credentials a client may have presented, in the three places browsers and tools can.

    Browsers cannot set headers on a WebSocket, so the URL query (``?token=``) and the
    subprotocol list are the ways a page can authenticate; other clients may send
    ``Authorization: Bearer``. Every candidate is checked; none is ever logged.
    """
    found: list[str] = []
    query = urllib.parse.urlsplit(request.path).query
    found += urllib.parse.parse_qs(query).get("token", [])
    for name, value in request.headers:
        if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
            found.append(value[7:].strip().decode("latin-1"))
    for proto in request.subprotocols:
        found.append(proto.removeprefix("token."))
    return tuple(found[:8])


def origin_header(request: HandshakeRequest) -> str | None:
    """The ``Origin`` header as sent (several are joined, and then match no pattern)."""
    values = [v.decode("latin-1") for k, v in request.headers if k.lower() == b"origin"]
    return ", ".join(values) if values else None


def choose_subprotocol(offered: tuple[str, ...], *, tokens: bool) -> str | None:
    """The offered subprotocol to echo in the ``101``, never one that may be a credential.

    Browsers fail a connection whose server selects none of the subprotocols they
    offered, but echoing ``token.X`` would copy the secret into the response (proxy
    logs, the page's ``ws.protocol``). So: ``binary`` when offered; else the first that
    is not ``token.*``, and with ``tokens`` (an auth token file, where any subprotocol
    is tried as a token) none. No echo is valid RFC 6455; a page that sends its token
    as a subprotocol must offer ``binary`` too (docs/security.md).
    """
    if "binary" in offered:
        return "binary"
    if tokens:
        return None
    return next((name for name in offered if not name.startswith("token.")), None)


def handshake_gate(config: Config) -> HandshakeGate:
    """The cap on WebSocket connections still in their handshake (TLS and the HTTP
    upgrade request): ``--max-handshakes`` in all, ``--max-handshakes-per-ip`` each."""
    return HandshakeGate(
        config.server.max_handshakes,
        config.server.max_handshakes_per_ip,
        what="WebSocket",
        names=("--max-handshakes", "--max-handshakes-per-ip"),
    )


class WebSocketTransport:
    """A ws:// or wss:// listener; every accepted connection becomes one peer."""

    def __init__(
        self,
        config: Config,
        *,
        tls: TlsContext | None = None,
        gate: HandshakeGate | None = None,
    ) -> None:
        self.config = config
        self.tls = tls
        self.name = "wss" if tls else "ws"
        #: Shared by the ws:// and wss:// listeners: the caps are the server's.
        self.gate = gate if gate is not None else handshake_gate(config)
        # Any LAN's largest frame; each LAN's own limit is the core's to enforce.
        lans = [config.lan, *config.all_lans().values()]  # config.lan: on-demand LANs' too
        self.check = FrameCheck(max(lan.max_frame for lan in lans))
        #: Whether a path picks a LAN (once any LAN has a name), or every path is the one LAN.
        self.named = (
            bool(config.lans) or config.server.lan_pool is not None or not config.default_lan
        )
        self.liveness = Liveness(
            ping_interval=config.server.ping_interval, timeout=config.server.ping_timeout
        )
        port = config.server.wss_port if tls else config.server.ws_port
        what = "WebSocket Secure listener" if tls else "WebSocket listener"
        self.socks = tcp_listener(config.server.ws_address, port, what)

    @classmethod
    def from_config(cls, config: Config) -> list[WebSocketTransport]:
        made: list[WebSocketTransport] = []
        gate = handshake_gate(config)
        try:
            if config.server.ws_port:
                made.append(cls(config, gate=gate))
            tls = tls_from_config(config)
            if tls is not None:
                made.append(cls(config, tls=tls, gate=gate))
        except BaseException:
            for transport in made:
                transport.close()
            raise
        return made

    def describe(self) -> str:
        return " and ".join(f"{self.name}://{_peer_name(s.getsockname())}/" for s in self.socks)

    def reload(self) -> None:
        """SIGHUP: re-read the certificate; connected clients keep their sessions."""
        if self.tls is not None:
            self.tls.reload()

    def close(self) -> None:
        for sock in self.socks:
            sock.close()  # a no-op for one already closed

    async def serve(
        self, handler: PeerHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async def on_connection(conn: socket.socket, addr: Any) -> None:
            await self._connection(conn, addr, handler)

        await accept_forever(self.socks, on_connection, self.close, task_status=task_status)

    def _socket_io(self, conn: socket.socket) -> SocketIO:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.config.lan.max_queued_bytes:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.lan.max_queued_bytes)
        stall = self.config.server.ping_timeout
        if self.tls is not None:
            return TlsSocketIO(conn, self.tls.context, send_stall_timeout=stall)
        return SocketIO(conn, send_stall_timeout=stall)

    async def _connection(self, conn: socket.socket, addr: object, handler: PeerHandler) -> None:
        remote, ip = peer_address(addr)
        io = self._socket_io(conn)
        proto = WebSocketProtocol(
            client=False, check=self.check, plain_page=TLS_PAGE if self.tls else PLAIN_PAGE
        )
        # Counted from the first moment: a connection that never sends a byte is the
        # cheapest way to hold the server's file descriptors.
        pending = self.gate.enter(
            ip,
            self.config.server.handshake_timeout,
            on_evict=functools.partial(handler.count_refusal, self.name),
        )
        link: WebSocketLink | None = None
        try:
            try:
                with pending.scope:  # the handshake timeout, and the gate's way to close it
                    if isinstance(io, TlsSocketIO):
                        try:
                            await io.handshake()
                        except PeerClosed:
                            log.info("%s: TLS handshake failed: the client hung up", remote)
                            return
                    admitted = await self._handshake(io, proto, remote, ip, handler)
            finally:
                pending.done()
            if pending.evicted is not None:
                log.debug("%s: closed in its handshake (%s)", remote, pending.evicted)
                return
            if pending.scope.cancelled_caught:
                log.info(
                    "%s: no complete WebSocket handshake within %g s; closed",
                    remote,
                    self.config.server.handshake_timeout,
                )
                return
            if admitted is None:
                closed = proto.closed
                log.info("%s: %s", remote, closed.reason if closed else "closed during handshake")
                return
            # Admitted, not yet upgraded: the core makes the TAP, then calls accept().
            subprotocol, request = admitted
            link = WebSocketLink(
                io,
                proto,
                remote,
                self.liveness,
                transport=self.name,
                remote_ip=ip,
                subprotocol=subprotocol or None,
                origin=request.origin,
                lan=request.lan,
            )
            await handler(link)
        except* ssl.SSLError as group:
            log.info("%s: TLS handshake failed: %s", remote, _ssl_reason(group.exceptions[0]))
        except* (OSError, PeerError) as group:
            for exc in group.exceptions:
                log.debug("%s: connection ended: %r", remote, exc)
        finally:
            if link is not None:
                await link.aclose()
            elif pending.evicted is not None:
                io.close()  # at once: making room is the point, and the peer may not read
            else:
                with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    with contextlib.suppress(OSError, PeerError):
                        await io.send_all(proto.data_to_send())
                        await io.goodbye()
                io.close()

    async def _handshake(
        self,
        io: SocketIO,
        proto: WebSocketProtocol,
        remote: str,
        ip: str | None,
        handler: PeerHandler,
    ) -> tuple[str, AdmissionRequest] | None:
        """Read the upgrade request and run the admission checks that need no TAP.

        Returns the subprotocol to answer with ("" for none) and what was admitted (its
        origin, its LAN) once the request is admitted, or None when the connection ended
        or was refused (the answer is sent).
        The ``101`` itself is sent later, by :meth:`WebSocketLink.accept`.
        """
        while proto.phase is Phase.HANDSHAKE:
            data = await io.recv_some(_HANDSHAKE_READ)
            proto.receive(data)
            request = proto.request
            if request is not None and proto.phase is Phase.HANDSHAKE:
                wanted = lan_from_path(request.path, named=self.named)
                if wanted.problem is not None:
                    log.info("%s: refused (HTTP 404): %s", remote, wanted.problem)
                    handler.count_refusal(self.name, "no-lan")
                    body = f"wsnic-trio: {wanted.problem}\n".encode()
                    await io.send_all(proto.reject(404, body))
                    await io.send_all(proto.data_to_send())
                    return None
                admission = AdmissionRequest(
                    self.name,
                    ip,
                    token_candidates(request),
                    origin_header(request),
                    lan=wanted.lan,
                )
                delay = handler.admission_delay(admission)
                if delay > 0:
                    # The login brake: a token from an address with many failed logins
                    # is checked only after this wait, valid or not (docs/security.md).
                    await trio.sleep(delay)
                rejection = handler.admit(admission)
                if rejection is None:
                    offered = request.subprotocols
                    tokens = self.config.server.auth_token_file is not None
                    chosen = choose_subprotocol(offered, tokens=tokens)
                    if offered and chosen is None:
                        log.info(
                            "%s: none of the %d offered subprotocols can be echoed (a token "
                            "never is): a browser fails this connection; offer 'binary' too",
                            remote,
                            len(offered),
                        )
                    return chosen or "", admission
                log.info(
                    "%s: refused (HTTP %d): %s", remote, rejection.http_status, rejection.reason
                )
                body = f"wsnic-trio: {rejection.reason}\n".encode()
                await io.send_all(proto.reject(rejection.http_status, body))
            await io.send_all(proto.data_to_send())
        return None


def tls_from_config(config: Config) -> TlsContext | None:
    """The wss:// certificate: as configured, or wsnic's cert/cert.crt default if present."""
    if not config.server.wss_port:
        return None
    cert, key = config.server.wss_certificate, config.server.wss_private_key
    if cert is None:
        default = Path("cert/cert.crt")
        if not default.exists():
            if key is not None:
                raise SetupError("TLS: --wss-private-key needs --wss-certificate")
            log.info("wss:// is off: no certificate (give -r/--wss-certificate)")
            return None
        cert = default
    if key is None and Path("cert/cert.key").exists() and cert == Path("cert/cert.crt"):
        key = Path("cert/cert.key")
    return TlsContext(cert, key)


def _ssl_reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc)


async def dial_websocket(
    url: str, *, check: FrameCheck, liveness: Liveness, connect_timeout: float = 10.0
) -> WebSocketLink:
    """Open a client link to a ws:// URL (used by ``wsnic-trio connect`` and the tests)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise SetupError(f"unsupported URL scheme {parts.scheme!r} in {url} (expected ws://)")
    secure = parts.scheme == "wss"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = trio.current_time() + connect_timeout
    sock = await connect_any(host, port, deadline=deadline)
    with trio.fail_at(deadline):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stall = liveness.timeout or 60.0
            if secure:
                # The system's CAs; SSL_CERT_FILE points OpenSSL at another bundle.
                context = ssl.create_default_context()
                tls = TlsSocketIO(
                    sock,
                    context,
                    send_stall_timeout=stall,
                    server_side=False,
                    server_hostname=host,
                )
                await tls.handshake()
                io: SocketIO = tls
            else:
                io = SocketIO(sock, send_stall_timeout=stall)
            proto = WebSocketProtocol(client=True, check=check)
            netloc = parts.netloc.rsplit("@", 1)[-1]
            await io.send_all(proto.start_client(netloc, target))
            while proto.phase is Phase.HANDSHAKE:
                data = await io.recv_some(_HANDSHAKE_READ)
                proto.receive(data)
            if proto.phase is not Phase.OPEN:
                closed = proto.closed
                reason = closed.reason if closed else "handshake failed"
                if proto.rejected_status is not None:
                    raise PeerRefused(reason, proto.rejected_status)
                raise PeerClosed(reason)
        except BaseException:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            raise
    return WebSocketLink(io, proto, f"{host}:{port}", liveness, transport=parts.scheme)


def is_expected_disconnect(exc: BaseException) -> bool:
    """Errors that mean only "this peer is gone" and deserve no traceback."""
    return isinstance(exc, PeerError) or is_disconnect(exc)
