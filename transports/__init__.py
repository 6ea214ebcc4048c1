"""Front ends of wsnic-trio: each turns one kind of client connection into a peer link.

Built-in transports are listed here; third-party ones register a factory (a callable
taking the server Config and returning bound transports) under the entry-point group
``wsnic_trio.transports``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from .base import FrameCheck as FrameCheck
from .base import Liveness as Liveness
from .base import PeerHandler as PeerHandler
from .base import PeerLink as PeerLink
from .base import Transport as Transport

if TYPE_CHECKING:
    from wsnic_trio._config import Config

__all__ = [
    "FrameCheck",
    "Liveness",
    "PeerHandler",
    "PeerLink",
    "Transport",
    "load_transports",
]

ENTRY_POINT_GROUP = "wsnic_trio.transports"


def _builtin() -> dict[str, Callable[[Config], list[Any]]]:
    from .websocket import WebSocketTransport

    return {"ws": WebSocketTransport.from_config}


def load_transports() -> list[Callable[[Config], list[Transport]]]:
    """Factories of every transport: the built-in ones, then plug-ins by entry point."""
    factories = _builtin()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in factories:
            factories[ep.name] = ep.load()
    return list(factories.values())
