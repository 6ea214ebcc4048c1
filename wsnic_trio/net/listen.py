"""What every connection-oriented listener does the same way: bind all, accept forever.

Binding happens in the transport's constructor (so a taken port or socket path fails
before the host is touched); :func:`bind_all` makes sure that when the third of three
listeners fails, the first two are released again. :func:`accept_forever` is the accept
loop (over all of a listener's sockets): it never lets one failed ``accept`` (out of
fds, say) end the listener, and it runs each connection so that nothing escaping it,
not even a bug, ends more than that connection. :class:`HandshakeGate` caps the
connections that have not yet shown they are clients (a WebSocket handshake, a login
to the control API), in total and per source address.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import trio

from wsnic_trio.net.addresses import peer_address

__all__ = ["Closable", "HandshakeGate", "Pending", "accept_forever", "address_key", "bind_all"]

log = logging.getLogger("wsnic_trio.listen")


class Closable(Protocol):
    def close(self) -> None: ...


L = TypeVar("L", bound=Closable)
T = TypeVar("T")


def bind_all(make: Callable[[T], L], items: Iterable[T]) -> list[L]:
    """``[make(item) for item in items]``, closing the ones made if a later one fails."""
    made: list[L] = []
    try:
        for item in items:
            made.append(make(item))
    except BaseException:
        for listener in made:
            listener.close()
        raise
    return made


async def accept_forever(
    socks: socket.socket | Sequence[socket.socket],
    on_connection: Callable[[socket.socket, Any], Awaitable[None]],
    close: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on nonblocking listening sockets; each connection runs in its own task.

    A listener may own several sockets (one per address of a host name); they all feed
    the same nursery. ``close`` releases the listener (sockets, socket file) when the
    loops end.
    """
    listening = [socks] if isinstance(socks, socket.socket) else list(socks)
    try:
        async with trio.open_nursery() as nursery:
            for sock in listening:
                nursery.start_soon(_accept_loop, sock, on_connection, nursery)
            task_status.started()
    finally:
        for sock in listening:
            trio.lowlevel.notify_closing(sock)
        close()


async def _accept_loop(
    sock: socket.socket,
    on_connection: Callable[[socket.socket, Any], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    # One fd held in reserve: when the process runs out, it is given up for a moment so
    # the waiting client can be accepted and hung up on at once, instead of waiting in
    # the backlog until it times out (and the loop waking up for it again and again).
    reserve: int | None = _open_reserve()
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                conn, addr = sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and reserve is not None:
                    os.close(reserve)
                    reserve = None
                    _shed_one(sock, exc)
                    reserve = _open_reserve()
                else:
                    # Out of memory, or no fd even for the reserve: say so, back off.
                    log.error("accept failed: %s", exc.strerror)
                    await trio.sleep(0.1)
                continue
            nursery.start_soon(_contained, on_connection, conn, addr)
    finally:
        if reserve is not None:
            os.close(reserve)


def _open_reserve() -> int | None:
    try:
        return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _shed_one(sock: socket.socket, exc: OSError) -> None:
    try:
        conn, addr = sock.accept()
    except OSError:
        return
    conn.close()
    log.warning(
        "refused a connection from %s: out of file descriptors (%s); raise the server's "
        "limit (ulimit -n, or LimitNOFILE= in a systemd unit)",
        _who(addr),
        exc.strerror,
    )


def _who(addr: Any) -> str:
    return peer_address(addr)[0] or "a unix socket"


async def _contained(
    on_connection: Callable[[socket.socket, Any], Awaitable[None]],
    conn: socket.socket,
    addr: Any,
) -> None:
    """Run one connection's handler; whatever escapes it ends this connection only.

    The handlers catch every error a peer can cause; anything else is a bug, and a bug
    met by one client must not end the listener (and with it the server).
    """
    try:
        await on_connection(conn, addr)
    except* Exception as group:
        log.error(
            "connection from %s ended by an unexpected error (the server goes on)",
            _who(addr),
            exc_info=group,
        )
    finally:
        conn.close()


# -- connections still in their handshake -------------------------------------------------

#: ``wsnic_refused_total`` reasons of a connection closed by :class:`HandshakeGate`.
TOO_MANY_HANDSHAKES = "handshake-limit"
TOO_MANY_HANDSHAKES_FROM_ADDRESS = "handshake-limit-per-ip"


def address_key(ip: str | None) -> str:
    """Whose connection this is, for per-address limits: an IPv4 address, or an IPv6
    address's /64 (one site's network: any host there has 2**64 addresses to choose
    from, so counting single IPv6 addresses would limit nobody)."""
    if ip is None:
        return "a unix socket"
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        return f"{ipaddress.IPv6Address(int(addr) >> 64 << 64)}/64"
    return str(addr)


class Pending:
    """One connection in its handshake: run the handshake inside :attr:`scope`.

    The scope's deadline is the handshake timeout; :class:`HandshakeGate` cancels it
    early to make room (:attr:`evicted` then says which limit). :meth:`done` takes the
    connection out of the count: once its handshake is over, whichever way.
    """

    def __init__(
        self,
        gate: HandshakeGate,
        key: str,
        scope: trio.CancelScope,
        on_evict: Callable[[str], None] | None,
    ) -> None:
        self.key = key
        self.scope = scope
        #: Why the gate closed it (a ``wsnic_refused_total`` reason); None: it was not.
        self.evicted: str | None = None
        self._gate = gate
        self._on_evict = on_evict
        self._counted = True

    def done(self) -> None:
        """The handshake is over (complete, failed, timed out or evicted); idempotent."""
        if self._counted:
            self._counted = False
            self._gate._forget(self)

    def _evict(self, reason: str) -> None:
        self.done()
        self.evicted = reason
        self.scope.cancel()
        if self._on_evict is not None:
            self._on_evict(reason)


class HandshakeGate:
    """A cap on connections that are accepted but have not completed their handshake.

    Such a connection costs the server a file descriptor and a task, and costs a client
    nothing but an open socket: without a cap, a few thousand silent connections use up
    the server's open files, and then nothing works (new clients, TAPs, reading the
    lease file). The cap is global (``total``) and per source address
    (``per_address``; :func:`address_key`); 0 turns either off.

    At a cap the *oldest* pending connection is closed, not the newcomer: that one of
    the newcomer's own address at the per-address cap, else the oldest of the address
    with the most pending connections. Refusing the newcomer instead would let a
    slow-loris attacker keep the server closed with little effort: fill the cap once,
    then hold it by sending nothing, reopening each connection after the handshake
    timeout. Closing the oldest makes it pay for each place again and again: to keep a
    newcomer out it must open a cap's worth of connections in the time that newcomer
    needs for its handshake (a round trip or three), and even then it mostly closes
    its own connections: an address with one pending connection is the last whose
    connection goes. The cost falls on a client whose handshake is slow while the
    server is under such an attack; it is closed and may try again.

    Closes are logged once per address per ``log_interval`` seconds, with the number
    of those not logged since; ``on_evict`` of each :meth:`enter` counts them all.
    """

    def __init__(
        self,
        total: int,
        per_address: int,
        *,
        what: str,
        names: tuple[str, str] = ("the limit", "the limit per address"),
        log_interval: float = 60.0,
        max_logged: int = 1024,
    ) -> None:
        self.total = total
        self.per_address = per_address
        self.what = what
        #: How the log names the two limits (the options that set them).
        self.names = names
        self.log_interval = log_interval
        self.max_logged = max_logged
        self._by_key: dict[str, dict[Pending, None]] = {}
        #: For each count, the keys holding that many, in the order they got there: the
        #: address with the most is found without looking at every address.
        self._with_count: dict[int, dict[str, None]] = {}
        self._most = 0
        self._count = 0
        #: Per address: when a close was last logged, and how many since were not.
        self._said: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()

    def __len__(self) -> int:
        return self._count

    def pending_from(self, ip: str | None) -> int:
        return len(self._by_key.get(address_key(ip), ()))

    def enter(
        self, ip: str | None, timeout: float, on_evict: Callable[[str], None] | None = None
    ) -> Pending:
        """Count a new connection, first closing another if a cap is reached."""
        key = address_key(ip)
        if self.per_address and len(self._by_key.get(key, ())) >= self.per_address:
            self._evict(key, TOO_MANY_HANDSHAKES_FROM_ADDRESS)
        elif self.total and self._count >= self.total:
            self._evict(next(iter(self._with_count[self._most])), TOO_MANY_HANDSHAKES)
        pending = Pending(
            self, key, trio.CancelScope(deadline=trio.current_time() + timeout), on_evict
        )
        entries = self._by_key.setdefault(key, {})
        self._move(key, len(entries), len(entries) + 1)
        entries[pending] = None
        self._count += 1
        return pending

    def _forget(self, pending: Pending) -> None:
        entries = self._by_key[pending.key]
        del entries[pending]
        self._move(pending.key, len(entries) + 1, len(entries))
        if not entries:
            del self._by_key[pending.key]
        self._count -= 1

    def _move(self, key: str, old: int, new: int) -> None:
        if old:
            keys = self._with_count[old]
            del keys[key]
            if not keys:
                del self._with_count[old]
                if old == self._most:
                    self._most = new
        if new:
            self._with_count.setdefault(new, {})[key] = None
            self._most = max(self._most, new)

    def _evict(self, key: str, reason: str) -> None:
        entries = self._by_key[key]
        held = len(entries)
        victim = next(iter(entries))
        victim._evict(reason)
        self._say(key, reason, held)

    def _say(self, key: str, reason: str, held: int) -> None:
        now = trio.current_time()
        last = self._said.get(key)
        if last is not None and now - last[0] < self.log_interval:
            self._said[key] = (last[0], last[1] + 1)
            return
        more = ""
        if last is not None and last[1]:
            more = f" (and {last[1]} more since the last such line for {key})"
        if reason == TOO_MANY_HANDSHAKES_FROM_ADDRESS:
            log.warning(
                "%s: %d connections from %s are in their handshake, the most %s allows: "
                "closed the oldest of them%s",
                self.what,
                held,
                key,
                self.names[1],
                more,
            )
        else:
            log.warning(
                "%s: %d connections are in their handshake, the most %s allows: closed the "
                "oldest of the %d from %s, the address with the most%s",
                self.what,
                self.total,
                self.names[0],
                held,
                key,
                more,
            )
        self._said[key] = (now, 0)
        self._said.move_to_end(key)
        while len(self._said) > self.max_logged:
            self._said.popitem(last=False)
