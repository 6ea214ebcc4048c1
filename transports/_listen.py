"""What every connection-oriented listener does the same way: bind all, accept forever.

Binding happens in the transport's constructor (so a taken port or socket path fails
before the host is touched); :func:`bind_all` makes sure that when the third of three
listeners fails, the first two are released again. :func:`accept_forever` is the accept
loop (over all of a listener's sockets): it never lets one failed ``accept`` (out of
fds, say) end the listener.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import trio

from wsnic_trio._exceptions import PeerError

from .base import PeerHandler, PeerLink

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
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            conn, addr = sock.accept()
        except BlockingIOError:
            continue
        except OSError as exc:
            # Out of fds or memory: say so, back off, keep serving the others.
            log.error("accept failed: %s", exc.strerror)
            await trio.sleep(0.1)
            continue
        nursery.start_soon(on_connection, conn, addr)


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
    finally:
        await link.aclose()
