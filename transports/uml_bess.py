"""UML vector ``transport=bess`` front end: a unix SOCK_SEQPACKET listener.

UML (``vecN:transport=bess,dst=PATH[,src=PATH]``) connects to ``dst``, optionally after
binding its own ``src`` path; each seqpacket message is one Ethernet frame, both ways.
Every accepted connection is its own peer. Liveness is the connection itself: UML's
exit (or crash) closes the socket and the peer ends at EOF.

An empty message cannot be told from EOF by ``recv`` alone on a seqpacket socket; the
link asks ``poll`` whether the peer hung up, so an empty message is only dropped and
counted as a runt.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import trio

from wsnic_trio.errors import SetupError
from wsnic_trio.net.listen import accept_forever
from wsnic_trio.net.unixpath import bind_unix
from wsnic_trio.transports._listen import bind_per_lan, serve_link
from wsnic_trio.transports._packetio import PacketLink
from wsnic_trio.transports.base import (
    DEFAULT_LAN,
    AdmissionRequest,
    FrameCheck,
    Liveness,
    PeerHandler,
    lan_suffix,
    printable,
)

if TYPE_CHECKING:
    from wsnic_trio.config import Config

__all__ = ["BessTransport", "dial_bess"]

log = logging.getLogger("wsnic_trio.bess")


def _remote(conn: socket.socket, path: str) -> str:
    """UML's own ``src`` path when it bound one, else the listener's path.

    The peer chose its path, so it is escaped (:func:`~transports.base.printable`).
    """
    try:
        peer = conn.getpeername()
    except OSError:
        peer = ""
    if isinstance(peer, bytes):
        return "unix:@" + printable(peer[1:].decode(errors="surrogateescape"))
    return "unix:" + printable(peer or path)


class BessTransport:
    """One seqpacket listener; any number of UML instances, each its own peer."""

    name = "bess"

    def __init__(self, config: Config, path: str, lan: str = DEFAULT_LAN) -> None:
        self.config = config
        self.path = path
        #: The LAN this listener's peers join.
        self.lan = lan
        self.unix = bind_unix(
            path, socket.SOCK_SEQPACKET, config.server.socket_mode, "bess listener"
        )
        self.sock = self.unix.sock

    @classmethod
    def from_config(cls, config: Config) -> list[BessTransport]:
        return bind_per_lan(config, lambda lan: lan.bess, cls)

    def describe(self) -> str:
        return f"bess (UML vector) unix:{self.path}{lan_suffix(self.lan)}"

    def close(self) -> None:
        self.unix.close()

    async def serve(
        self, handler: PeerHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async def on_connection(conn: socket.socket, addr: Any) -> None:
            await self._peer(conn, handler)

        await accept_forever(self.sock, on_connection, self.close, task_status=task_status)

    async def _peer(self, conn: socket.socket, handler: PeerHandler) -> None:
        remote = _remote(conn, self.path)
        rejection = handler.admit(AdmissionRequest("bess", None, lan=self.lan))
        if rejection is not None:
            log.warning("%s: refused: %s", remote, rejection.reason)
            conn.close()
            return
        link = PacketLink(
            conn,
            transport="bess",
            remote=remote,
            liveness=Liveness(),
            max_frame=self.config.lan.max_frame,
            send_stall_timeout=self.config.server.ping_timeout,
        )
        link.lan = self.lan
        await serve_link(handler, link)


async def dial_bess(
    url: str, *, check: FrameCheck, liveness: Liveness, connect_timeout: float = 10.0
) -> PacketLink:
    """Client side (``wsnic-trio connect bess:PATH``): speak to the server as UML would."""
    path = url.removeprefix("bess:")
    if not path or path == url:
        raise SetupError(f"{url!r}: expected bess:PATH")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    try:
        # A unix connect does not wait for accept(): it succeeds, or fails at once
        # (EAGAIN when the server's backlog is full).
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot connect to bess:{path}: {exc.strerror}") from None
    await trio.lowlevel.checkpoint()
    return PacketLink(
        sock,
        transport="bess",
        remote=f"unix:{path}",
        liveness=Liveness(),
        max_frame=check.max_frame,
        send_stall_timeout=liveness.timeout or 60.0,
    )
