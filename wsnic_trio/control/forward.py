"""Port forwards from the server's host into the LAN, proxied by the server itself.

Doing it in-process (not with nftables DNAT) means a forward works wherever the server
runs, rootless included, and a forward to a *name* follows the guest when its lease
moves: its address is looked up in dnsmasq's leases each time a TCP connection or a UDP
session starts.

A name is only a way to say which guest: the forward is bound to the MAC that held the
name when the forward was made (or, for a name nobody held then, to the first MAC that
takes it afterwards), and from then on follows that MAC's lease. Any client may send
any DHCP hostname, and dnsmasq gives a name to whoever claims it last, so following the
name would hand the forward (an operator's SSH, say) to the latest client that claims it.

The remote side is opened by an ``OpenRemote`` function: by default a plain socket of
the server's own network namespace (root mode, ``--user``); in rootless mode the LAN is
in the helper's namespace, and ``RootlessLan.open_remote`` has the helper make the
connected socket there and pass it over (the proxying itself stays in the server).

Every forward is a task in the manager's nursery, with its own cancel scope, so
removing one is cancelling that scope. Everything is bounded: connections per TCP
forward, sessions per UDP forward (each with an idle timeout), and the datagrams queued
toward one session.

A connection or session never raises: a peer that resets or vanishes ends its own
connection (``_pipe``), and even a bug of ours is logged and ends that connection only,
because anything escaping would end the forward's nursery, the manager's, and with them
the whole server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from wsnic_trio.config.endpoints import ForwardSpec, check_remote
from wsnic_trio.config.lans import DEFAULT_LAN
from wsnic_trio.core import mac_text
from wsnic_trio.errors import WsnicError
from wsnic_trio.host.leases import Lease, LeaseTable
from wsnic_trio.net.addresses import listen_socket

__all__ = ["ForwardError", "ForwardLan", "ForwardManager", "OpenRemote", "open_remote_here"]

#: ``(protocol, host, port) -> connected socket``: how a forward opens its remote side.
#: ``host`` is an IP address (names are resolved before); failures raise ``OSError``
#: (or a ``WsnicError`` when the backend cannot do it at all); the caller bounds it.
OpenRemote = Callable[[str, str, int], Awaitable[trio.socket.SocketType]]

log = logging.getLogger("wsnic_trio.forward")

MAX_FORWARDS = 256
MAX_TCP_CONNECTIONS = 256
MAX_UDP_SESSIONS = 256
UDP_IDLE_TIMEOUT = 60.0
UDP_QUEUE = 64
CONNECT_TIMEOUT = 10.0
_CHUNK = 65536


class ForwardError(Exception):
    """A forward cannot be made or found; ``status`` is the HTTP status the API answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Forward:
    spec: ForwardSpec  # with the port really bound (``:0`` asks for any free one)
    requested: str
    #: The LAN the remote is on (names are looked up in its leases only).
    lan: str = DEFAULT_LAN
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    #: Set once its local socket is closed (after :meth:`ForwardManager.remove`).
    closed: trio.Event = dataclasses.field(default_factory=trio.Event)
    active: int = 0
    total: int = 0
    refused: int = 0
    failed: int = 0
    bytes_to_remote: int = 0
    bytes_from_remote: int = 0
    last_error: str | None = None
    resolved: str | None = None
    #: For a remote given by name: the guest (its MAC) this forward goes to; None until
    #: some lease carries the name.
    bound_mac: bytes | None = None
    #: The other MAC last seen holding the name (warned about once per claimer).
    claimed_by: bytes | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "lan": self.lan,
            "local": self.spec.local,
            "remote": self.spec.remote,
            "protocol": self.spec.protocol,
            "requested": self.requested,
            "resolved": self.resolved,
            "bound_mac": mac_text(self.bound_mac),
            "active": self.active,
            "total": self.total,
            "refused": self.refused,
            "failed": self.failed,
            "bytes_to_remote": self.bytes_to_remote,
            "bytes_from_remote": self.bytes_from_remote,
            "last_error": self.last_error,
        }


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def open_remote_here(protocol: str, host: str, port: int) -> trio.socket.SocketType:
    """The default :data:`OpenRemote`: a socket of the server's own network namespace."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = trio.socket.socket(_family(host), kind)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclasses.dataclass(frozen=True)
class ForwardLan:
    """What forwards need of one LAN: where its guests are and how they are named."""

    subnet: ipaddress.IPv4Network
    leases: LeaseTable | None
    domain: str


class ForwardManager:
    """Every port forward of the server, whichever LAN each one reaches.

    The local side is the host's, so ``(protocol, local)`` is unique across all LANs;
    the remote side is on one LAN, and a name is looked up in that LAN's leases only
    (the same host name may be taken on two LANs). A LAN that goes takes its forwards
    with it.
    """

    def __init__(self, open_remote: OpenRemote = open_remote_here) -> None:
        self.open_remote = open_remote
        self.lans: dict[str, ForwardLan] = {}
        self.forwards: dict[tuple[str, str], Forward] = {}
        self._nursery: trio.Nursery | None = None
        self._hooks: dict[str, Callable[[dict[bytes, Lease], dict[bytes, Lease]], None]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            for name in list(self._hooks):
                self._unhook(name)

    def add_lan(self, name: str, lan: ForwardLan) -> None:
        """Let forwards reach LAN ``name``.

        Every change of its lease table (the watcher's or a connection's read) binds
        the forwards whose name just appeared, so "the first MAC that takes the name"
        means the first one the server saw, not the one holding it at the first
        connection.
        """
        self.lans[name] = lan
        if lan.leases is not None:

            def changed(old: dict[bytes, Lease], new: dict[bytes, Lease]) -> None:
                for fwd in self.forwards.values():
                    if fwd.lan == name:
                        self._bind_name(fwd)

            lan.leases.on_change.append(changed)
            self._hooks[name] = changed

    def remove_lan(self, name: str) -> list[Forward]:
        """LAN ``name`` is gone: so are its forwards (their sockets close as their tasks end)."""
        self._unhook(name)
        self.lans.pop(name, None)
        gone = [key for key, fwd in self.forwards.items() if fwd.lan == name]
        return self._stop(gone)

    def _unhook(self, name: str) -> None:
        hook = self._hooks.pop(name, None)
        lan = self.lans.get(name)
        if hook is not None and lan is not None and lan.leases is not None:
            with contextlib.suppress(ValueError):
                lan.leases.on_change.remove(hook)

    def _lan(self, name: str) -> ForwardLan:
        lan = self.lans.get(name)
        if lan is None:
            raise ForwardError(f"no such LAN: {name}", 404)
        return lan

    # -- the API's operations -----------------------------------------------------------

    def validate(self, spec: ForwardSpec, lan: str = DEFAULT_LAN) -> None:
        side = self._lan(lan)
        problem = check_remote(spec.remote_host, side.subnet)
        if problem is not None:
            raise ForwardError(problem)
        if _is_name(spec.remote_host) and side.leases is None:
            raise ForwardError(
                f"remote {spec.remote_host!r} is a name, and names are looked up in the DHCP "
                "leases, but this server runs without DHCP (--disable-dhcp): give an address"
            )

    async def add(self, spec: ForwardSpec, lan: str = DEFAULT_LAN) -> Forward:
        """Bind the local side and start forwarding to ``spec``'s remote on LAN ``lan``;
        raises ForwardError, changing nothing."""
        assert self._nursery is not None, "ForwardManager.run is not running"
        self.validate(spec, lan)
        side = self._lan(lan)
        if (spec.protocol, spec.local) in self.forwards:
            raise ForwardError(f"{spec.protocol} {spec.local} is already forwarded", 409)
        if len(self.forwards) >= MAX_FORWARDS:
            raise ForwardError(f"too many forwards (at most {MAX_FORWARDS})", 409)
        if _is_name(spec.remote_host):
            assert side.leases is not None
            await side.leases.update()  # bind to the holder of the name *now*
            if self.lans.get(lan) is not side:
                raise ForwardError(f"LAN {lan} was removed meanwhile", 404)
        sock = self._bind(spec)
        try:
            host, port = sock.getsockname()[:2]
            bound = dataclasses.replace(spec, local_host=host, local_port=port)
            fwd = Forward(bound, str(spec), lan)
            key = (bound.protocol, bound.local)
            if key in self.forwards:
                raise ForwardError(f"{bound.protocol} {bound.local} is already forwarded", 409)
        except BaseException:
            sock.close()
            raise
        self._bind_name(fwd)
        serve = self._serve_tcp if spec.protocol == "tcp" else self._serve_udp
        await self._nursery.start(serve, fwd, sock)
        self.forwards[key] = fwd
        on = "" if lan == DEFAULT_LAN else f" on LAN {lan}"
        log.info("forwarding %s %s to %s%s", bound.protocol, bound.local, bound.remote, on)
        return fwd

    def remove(self, local: str, protocol: str | None = None) -> list[Forward]:
        """Stop the forwards on ``local`` (of one protocol, or all); raises when none.

        Their sockets close as their tasks end; wait for ``closed`` to be sure nothing
        listens there any more."""
        keys = [
            key
            for key in self.forwards
            if key[1] == local and (protocol is None or key[0] == protocol)
        ]
        if not keys:
            what = f"{protocol} " if protocol else ""
            raise ForwardError(f"no {what}forward on {local}", 404)
        return self._stop(keys)

    def _stop(self, keys: list[tuple[str, str]]) -> list[Forward]:
        gone = [self.forwards.pop(key) for key in keys]
        for fwd in gone:
            fwd.scope.cancel()
            log.info("forward %s %s removed", fwd.spec.protocol, fwd.spec.local)
        return gone

    def _bind(self, spec: ForwardSpec) -> trio.socket.SocketType:
        """The forward's local side: its one IP address (a name is refused when parsed),
        so :func:`listen_socket` itself, not bind_all_addresses, whose errors would not
        be the API's status codes."""
        kind = socket.SOCK_STREAM if spec.protocol == "tcp" else socket.SOCK_DGRAM
        try:
            sock = trio.socket.from_stdlib_socket(
                listen_socket(
                    _family(spec.local_host), (spec.local_host, spec.local_port), kind=kind
                )
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ForwardError(
                    f"local address {spec.local} ({spec.protocol}) is already in use", 409
                ) from None
            if exc.errno == errno.EACCES:
                raise ForwardError(
                    f"local address {spec.local}: permission denied (a port below 1024 needs "
                    "privileges)",
                    403,
                ) from None
            raise ForwardError(
                f"cannot bind local address {spec.local}: {exc.strerror or exc}"
            ) from None
        return sock

    async def resolve(self, fwd: Forward) -> str:
        """The remote's address now: itself, or the address leased to the bound MAC.

        The bound guest's lease is used whatever name it carries now: dnsmasq takes the
        name off the first lease when another client claims it, and the guest keeps its
        MAC (and so its forwards) when it reconnects, also with a new address."""
        host = fwd.spec.remote_host
        if not _is_name(host):
            fwd.resolved = host
            return host
        side = self._lan(fwd.lan)
        assert side.leases is not None
        await side.leases.update()
        self._bind_name(fwd)  # cheap, and independent of the hook's being installed
        name = self._name_of(fwd)
        if fwd.bound_mac is None:
            raise ForwardError(f"no DHCP lease for host name {name!r}", 502)
        lease = side.leases.leases.get(fwd.bound_mac)
        if lease is None or lease.ip not in side.subnet:
            holder = self._holder(fwd)
            hint = ""
            if holder is not None and holder.mac != fwd.bound_mac:
                hint = (
                    f"; {name!r} is now held by MAC {mac_text(holder.mac)}: remove the forward "
                    "and add it again to follow it"
                )
            raise ForwardError(
                f"the guest this forward is bound to (MAC {mac_text(fwd.bound_mac)}, which "
                f"held host name {name!r}) has no DHCP lease{hint}",
                502,
            )
        fwd.resolved = str(lease.ip)
        return fwd.resolved

    def _name_of(self, fwd: Forward) -> str:
        side = self.lans.get(fwd.lan)
        host = fwd.spec.remote_host
        return host.removesuffix("." + side.domain) if side is not None else host

    def _holder(self, fwd: Forward) -> Lease | None:
        side = self.lans.get(fwd.lan)
        if side is None or side.leases is None:
            return None
        lease = side.leases.by_hostname(self._name_of(fwd))
        return lease if lease is not None and lease.ip in side.subnet else None

    def _bind_name(self, fwd: Forward) -> None:
        """Bind a forward to a name's holder, once; afterwards only note other claimers."""
        if not _is_name(fwd.spec.remote_host):
            return
        holder = self._holder(fwd)
        if holder is None:
            return
        if fwd.bound_mac is None:
            fwd.bound_mac = holder.mac
            log.info(
                "forward %s %s: host name %r is MAC %s (%s): the forward is bound to it",
                fwd.spec.protocol,
                fwd.spec.local,
                self._name_of(fwd),
                mac_text(holder.mac),
                holder.ip,
            )
        elif holder.mac != fwd.bound_mac and holder.mac != fwd.claimed_by:
            fwd.claimed_by = holder.mac
            log.warning(
                "forward %s %s: host name %r is now claimed by MAC %s (%s); the forward "
                "stays with MAC %s (remove it and add it again to follow the new holder)",
                fwd.spec.protocol,
                fwd.spec.local,
                self._name_of(fwd),
                mac_text(holder.mac),
                holder.ip,
                mac_text(fwd.bound_mac),
            )

    # -- TCP ------------------------------------------------------------------------------

    async def _serve_tcp(
        self,
        fwd: Forward,
        sock: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listener = trio.SocketListener(sock)
        try:
            with fwd.scope:
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    while True:
                        try:
                            stream = await listener.accept()
                        except OSError as exc:  # EMFILE and the like: wait, don't spin
                            fwd.last_error = exc.strerror or str(exc)
                            await trio.sleep(0.1)
                            continue
                        if fwd.active >= MAX_TCP_CONNECTIONS:
                            fwd.refused += 1
                            await trio.aclose_forcefully(stream)
                            continue
                        fwd.active += 1
                        fwd.total += 1
                        nursery.start_soon(self._tcp_connection, fwd, stream)
        finally:
            await trio.aclose_forcefully(listener)
            fwd.closed.set()

    async def _tcp_connection(self, fwd: Forward, client: trio.SocketStream) -> None:
        """Proxy one connection; raises nothing but Cancelled (see the module's doc)."""
        try:
            async with client:
                try:
                    host = await self.resolve(fwd)
                    with trio.fail_after(CONNECT_TIMEOUT):
                        sock = await self.open_remote("tcp", host, fwd.spec.remote_port)
                    remote = trio.SocketStream(sock)
                except (ForwardError, WsnicError, OSError, trio.TooSlowError) as exc:
                    fwd.failed += 1
                    fwd.last_error = _text(exc)
                    log.info(
                        "forward %s: cannot reach %s: %s",
                        fwd.spec.local,
                        fwd.spec.remote,
                        fwd.last_error,
                    )
                    return
                async with remote, trio.open_nursery() as nursery:
                    nursery.start_soon(_pipe, client, remote, fwd, True, nursery.cancel_scope)
                    nursery.start_soon(_pipe, remote, client, fwd, False, nursery.cancel_scope)
        except* Exception as group:  # from the nursery too, hence except*
            _failed(fwd, group, "connection")
        finally:
            fwd.active -= 1

    # -- UDP ------------------------------------------------------------------------------

    async def _serve_udp(
        self,
        fwd: Forward,
        sock: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        sessions: dict[Any, trio.MemorySendChannel[bytes]] = {}
        with _closing_signals(fwd), sock, fwd.scope:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    try:
                        data, source = await sock.recvfrom(_CHUNK)
                    except OSError as exc:
                        fwd.last_error = exc.strerror or str(exc)
                        await trio.sleep(0.01)
                        continue
                    queue = sessions.get(source)
                    if queue is None:
                        if len(sessions) >= MAX_UDP_SESSIONS:
                            fwd.refused += 1
                            continue
                        queue, receive = trio.open_memory_channel[bytes](UDP_QUEUE)
                        sessions[source] = queue
                        fwd.active += 1
                        fwd.total += 1
                        nursery.start_soon(self._udp_session, fwd, sock, source, receive, sessions)
                    try:
                        queue.send_nowait(data)
                    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                        fwd.refused += 1

    async def _udp_session(
        self,
        fwd: Forward,
        local: trio.socket.SocketType,
        source: Any,
        queue: trio.MemoryReceiveChannel[bytes],
        sessions: dict[Any, trio.MemorySendChannel[bytes]],
    ) -> None:
        """One client address: its datagrams go out of one socket of our own, replies
        to that socket come back to it; ends after UDP_IDLE_TIMEOUT without traffic.
        Raises nothing but Cancelled (see the module's doc)."""
        try:
            with queue:
                try:
                    # The lease file may be unreadable (OSError), as for TCP.
                    host = await self.resolve(fwd)
                    with trio.fail_after(CONNECT_TIMEOUT):
                        remote = await self.open_remote("udp", host, fwd.spec.remote_port)
                except (ForwardError, WsnicError, OSError, trio.TooSlowError) as exc:
                    fwd.failed += 1
                    fwd.last_error = _text(exc)
                    return
                with remote:
                    # The session's scope ends it after UDP_IDLE_TIMEOUT; traffic pushes
                    # the deadline on.
                    idle = trio.CancelScope(deadline=trio.current_time() + UDP_IDLE_TIMEOUT)

                    def touch() -> None:
                        idle.deadline = trio.current_time() + UDP_IDLE_TIMEOUT

                    async def outbound() -> None:
                        async for data in queue:
                            touch()
                            try:
                                fwd.bytes_to_remote += await remote.send(data)
                            except OSError as exc:  # e.g. an ICMP error from the last send
                                fwd.last_error = exc.strerror or str(exc)

                    async def inbound() -> None:
                        while True:
                            try:
                                data = await remote.recv(_CHUNK)
                            except OSError as exc:  # ECONNREFUSED: nobody on that port
                                fwd.last_error = exc.strerror or str(exc)
                                continue
                            touch()
                            fwd.bytes_from_remote += len(data)
                            try:
                                await local.sendto(data, source)
                            except OSError as exc:
                                fwd.last_error = exc.strerror or str(exc)

                    with idle:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(outbound)
                            nursery.start_soon(inbound)
        except* Exception as group:  # from the nursery too, hence except*
            _failed(fwd, group, "session")
        finally:
            sessions.pop(source, None)
            fwd.active -= 1


@contextlib.contextmanager
def _closing_signals(fwd: Forward) -> Iterator[None]:
    try:
        yield
    finally:
        fwd.closed.set()


async def _pipe(
    src: trio.SocketStream,
    dst: trio.SocketStream,
    fwd: Forward,
    to_remote: bool,
    both: trio.CancelScope,
) -> None:
    """Copy one direction; EOF is passed on as a half-close, an error ends both."""
    try:
        while chunk := await src.receive_some(_CHUNK):
            await dst.send_all(chunk)
            if to_remote:
                fwd.bytes_to_remote += len(chunk)
            else:
                fwd.bytes_from_remote += len(chunk)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        both.cancel()


def _failed(fwd: Forward, group: BaseExceptionGroup[Exception], what: str) -> None:
    """Log a failure no peer caused (a bug) for one connection, with its traceback."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    fwd.failed += 1
    fwd.last_error = f"internal error: {type(exc).__name__}: {exc}"
    log.error(
        "forward %s %s: a %s failed (the forward goes on)",
        fwd.spec.protocol,
        fwd.spec.local,
        what,
        exc_info=group,
    )


def _is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _text(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
