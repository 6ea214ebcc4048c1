"""Front ends of wsnic-trio: each turns one kind of client connection into a peer link.

Built-in transports are listed here; third-party ones register a factory (a callable
taking the server Config and returning bound transports) under the entry-point group
``wsnic_trio.transports``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from wsnic_trio.transports.base import FrameCheck as FrameCheck
from wsnic_trio.transports.base import Liveness as Liveness
from wsnic_trio.transports.base import PeerHandler as PeerHandler
from wsnic_trio.transports.base import PeerLink as PeerLink
from wsnic_trio.transports.base import Transport as Transport

if TYPE_CHECKING:
    from wsnic_trio.config import Config

__all__ = [
    "FrameCheck",
    "Liveness",
    "PeerHandler",
    "PeerLink",
    "Transport",
    "dialer_for",
    "load_transports",
]

if __name__ != "wsnic_trio.transports":  # a bare checkout also has ./transports on sys.path
    raise ImportError(f"import the transports as wsnic_trio.transports, not as {__name__}")

ENTRY_POINT_GROUP = "wsnic_trio.transports"


def _builtin() -> dict[str, Callable[[Config], list[Any]]]:
    from wsnic_trio.transports.dgram import DgramTransport
    from wsnic_trio.transports.qemu_stream import QemuStreamTransport
    from wsnic_trio.transports.uml_bess import BessTransport
    from wsnic_trio.transports.websocket import WebSocketTransport

    return {
        "ws": WebSocketTransport.from_config,
        "qemu": QemuStreamTransport.from_config,
        "bess": BessTransport.from_config,
        "dgram": DgramTransport.from_config,
    }


#: URL scheme (what comes before the first ":") -> "module:dialer" for ``wsnic-trio connect``.
DIALERS = {
    "ws": "websocket:dial_websocket",
    "wss": "websocket:dial_websocket",
    "qemu+unix": "qemu_stream:dial_qemu_stream",
    "qemu+tcp": "qemu_stream:dial_qemu_stream",
    "bess": "uml_bess:dial_bess",
    "dgram": "dgram:dial_dgram",
    "vfkit": "dgram:dial_dgram",
}


def dialer_for(url: str) -> Callable[..., Awaitable[PeerLink]]:
    """The client-side dialer for a URL, chosen by its scheme; ValueError if unknown.

    Every dialer is called as ``dialer(url, check=FrameCheck, liveness=Liveness)``.
    """
    scheme = url.partition(":")[0]
    target = DIALERS.get(scheme)
    if target is None or ":" not in url:
        known = ", ".join(f"{s}:" for s in DIALERS)
        raise ValueError(f"unsupported URL {url!r}: the scheme must be one of {known}")
    module, _, name = target.partition(":")
    dialer: Callable[..., Awaitable[PeerLink]] = getattr(
        importlib.import_module(f".{module}", __name__), name
    )
    return dialer


def load_transports() -> list[Callable[[Config], list[Transport]]]:
    """Factories of every transport: the built-in ones, then plug-ins by entry point."""
    factories = _builtin()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in factories:
            factories[ep.name] = ep.load()
    return list(factories.values())
