"""What every front end hands the core: a *peer link* that moves whole Ethernet frames.

The core never learns how frames are framed on the wire. A transport accepts (or dials)
a connection, completes whatever handshake its protocol has, and gives the core a
:class:`PeerLink`. The core then opens a TAP and relays; the link's liveness settings
tell the core's watchdog how to notice a dead peer.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import trio

from wsnic_trio.config.lans import DEFAULT_LAN as DEFAULT_LAN
from wsnic_trio.net.addresses import normalize_ip as normalize_ip
from wsnic_trio.net.addresses import peer_address as peer_address
from wsnic_trio.util.text import printable as printable

if TYPE_CHECKING:
    from wsnic_trio.config import Config

__all__ = [
    "ETH_HEADER",
    "AdmissionRequest",
    "FrameCheck",
    "Liveness",
    "PeerHandler",
    "PeerLink",
    "Rejection",
    "Transport",
    "normalize_ip",
    "peer_address",
    "printable",
]

ETH_HEADER = 14


@dataclasses.dataclass(frozen=True)
class FrameCheck:
    """Size rules for one Ethernet frame (no FCS): header at least, MTU + 18 at most."""

    max_frame: int

    def problem(self, frame: bytes | bytearray | memoryview) -> str | None:
        """The drop reason for a frame that breaks the rules, or None if it is fine."""
        size = len(frame)
        if size < ETH_HEADER:
            return "runt"
        if size > self.max_frame:
            return "oversize"
        return None


@dataclasses.dataclass(frozen=True)
class Liveness:
    """How the core's watchdog judges that a peer is still there.

    ``ping_interval``: after this much silence the watchdog calls ``link.ping()``.
    ``timeout``: after this much silence the peer is dropped. None turns either off
    (a stream peer, for instance, ends with EOF and needs no timer).
    """

    ping_interval: float | None = None
    timeout: float | None = None


def lan_suffix(lan: str) -> str:
    """For a listener's log line: which LAN it serves (nothing for the default LAN)."""
    return "" if lan == DEFAULT_LAN else f" (LAN {lan})"


@runtime_checkable
class PeerLink(Protocol):
    """One connected peer, as the core sees it.

    A link reaches the core *before* the peer is told it has joined: the core first
    makes the peer's TAP and attaches it to the bridge, and only then calls
    :meth:`accept` (a WebSocket peer gets its ``101`` at that moment), or
    :meth:`refuse` when the peer cannot join. So "connected" always means "on the LAN".
    """

    transport: str
    #: For logs and the API: ``ip:port``, ``[v6]:port`` or a unix socket path.
    remote: str
    #: The peer's normalized IP address (:func:`normalize_ip`); None for unix sockets.
    remote_ip: str | None
    liveness: Liveness
    #: ``trio.current_time()`` of the last bytes received from the peer.
    last_received: float
    #: Frames or messages the link itself dropped, by reason (runt, oversize, ...).
    drops: collections.Counter[str]

    async def accept(self) -> None:
        """The peer's TAP forwards: complete the admission (WebSocket: send the ``101``).

        Transports whose connection is complete before the core sees it (stream and
        packet sockets, datagram peers) have nothing to send; frames such a peer sent
        meanwhile wait in its socket and are relayed from now on.
        """
        ...

    async def refuse(self, rejection: Rejection) -> None:
        """Turn the peer away before it joined, in its protocol's words (WebSocket: an
        HTTP status with the reason as the body; others: a close). Never raises."""
        ...

    async def receive_frames(self) -> list[bytes]:
        """Wait for and return every complete frame available (never an empty list).

        Raises :class:`~wsnic_trio.PeerClosed` at an orderly end and
        :class:`~wsnic_trio.PeerProtocolError` when the peer breaks the wire format.
        """
        ...

    async def send_frames(self, frames: list[bytes]) -> None:
        """Send frames to the peer, in order, as one write where the format allows."""
        ...

    async def ping(self) -> None:
        """Ask the peer for a sign of life (only called when ``liveness.ping_interval``)."""
        ...

    async def aclose(self, reason: BaseException | None = None) -> None:
        """Close the link, telling the peer why where the protocol can; never raises."""
        ...


@dataclasses.dataclass(frozen=True)
class AdmissionRequest:
    """What a transport knows about a would-be peer before it gets a TAP."""

    transport: str
    #: Source IP address for network transports; None for unix sockets.
    remote_ip: str | None
    #: Credentials the client may have presented (URL query, Bearer header, subprotocols).
    tokens: tuple[str, ...] = ()
    #: The WebSocket ``Origin`` header as sent (browsers always send one); None when the
    #: client sent none (scripts, v86 in Node) or the transport has no such thing.
    origin: str | None = None
    #: The LAN the client asks for (a WebSocket path ``/lan/NAME``, a VM listener's LAN);
    #: None: the default LAN.
    lan: str | None = None


@dataclasses.dataclass(frozen=True)
class Rejection:
    """Why a would-be peer is turned away, in the words of each protocol."""

    http_status: int
    reason: str
    #: WebSocket close code for a peer that is already connected.
    close_code: int = 1008
    #: The ``reason`` label of ``wsnic_refused_total`` when the status alone does not
    #: say it (403 is a wrong token or a refused Origin).
    kind: str | None = None


class PeerHandler(Protocol):
    """The core, as transports see it: admission first, then serving a peer."""

    def admit(self, request: AdmissionRequest) -> Rejection | None:
        """Decide before any TAP exists; None means welcome. Never blocks."""
        ...

    def admission_delay(self, request: AdmissionRequest) -> float:
        """Seconds to wait before calling :meth:`admit` (0 normally): the login brake
        of an address with many failed logins. It holds for a valid token as for any
        other, so that how soon the answer comes says nothing about the token."""
        ...

    def count_refusal(self, transport: str, reason: str) -> None:
        """A transport turned a would-be peer away itself, before admission (e.g. the
        cap on connections in their handshake): count it (``wsnic_refused_total``)."""
        ...

    async def __call__(self, link: PeerLink) -> None:
        """Serve one peer until it ends; raises nothing but Cancelled."""
        ...


class Transport(Protocol):
    """A configured front end: binds on creation, serves peers when started."""

    name: str

    def describe(self) -> str:
        """Where it listens, for the start-up log (e.g. ``ws://127.0.0.1:8086/``)."""
        ...

    async def serve(
        self, handler: PeerHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept peers for ever, calling ``handler(link)`` for each in its own task."""
        ...

    def close(self) -> None:
        """Release what binding took (sockets, socket files); safe to call twice."""
        ...


class TransportFactory(Protocol):
    """The entry-point object: builds (and binds) this transport's listeners from config."""

    def __call__(self, config: Config) -> list[Transport]: ...
