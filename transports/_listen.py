"""What every connection-oriented listener does the same way: bind all, accept forever.

Binding happens in the transport's constructor (so a taken port or socket path fails
before the host is touched); :func:`bind_all` makes sure that when the third of three
listeners fails, the first two are released again. :func:`accept_forever` is the accept
loop (over all of a listener's sockets): it never lets one failed ``accept`` (out of
fds, say) end the listener, and it runs each connection so that nothing escaping it,
not even a bug, ends more than that connection.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import trio

from wsnic_trio._exceptions import PeerError

from .base import PeerHandler, PeerLink, peer_address

__all__ = ["accept_forever", "bind_all", "serve_link"]

log = logging.getLogger("wsnic_trio.listen")


class _Closable(Protocol):
    def close(self) -> None: ...


L = TypeVar("L", bound=_Closable)
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


async def serve_link(handler: PeerHandler, link: PeerLink) -> None:
    """Hand one peer to the core and always close its link afterwards.

    The core handles the peer's own errors; what can still arrive here (a reset while
    the link closes, say) ends this peer alone and is only worth a debug line.
    """
    try:
        await handler(link)
    except* (OSError, PeerError) as group:
        for exc in group.exceptions:
            log.debug("%s: connection ended: %r", link.remote, exc)
    except* Exception as group:
        log.error(
            "%s: peer ended by an unexpected error (the server goes on)",
            link.remote,
            exc_info=group,
        )
    finally:
        await link.aclose()
