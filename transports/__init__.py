"""Front ends of wsnic-trio: each turns one kind of client connection into a peer link.

Every transport, built-in or third-party, registers a factory (a callable taking the
server Config and returning bound transports) under the entry-point group
``wsnic_trio.transports``; :func:`load_transports` collects them.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Awaitable, Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from wsnic_trio.errors import ConfigError, SetupError
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
#: The built-in transports in the order they are bound (and logged) at start-up.
BUILTIN_NAMES = ("ws", "qemu", "bess", "dgram")
_DISTRIBUTION = "wsnic-trio"


def _builtin() -> dict[str, Callable[[Config], list[Any]]]:
    """The built-in factories without metadata; pyproject.toml registers the same ones."""
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
    """Factories of every transport: the built-in ones (ws, qemu, bess, dgram), then
    third-party ones by entry-point name.

    Built-ins register through the same entry-point group as plug-ins, so an installed
    wsnic-trio has one way in. A bare checkout (on ``PYTHONPATH``, not installed) has no
    metadata, nor has an install made before the group existed: then the built-in table
    stands in for the distribution's own entry points.

    A plug-in that cannot be imported, or whose factory fails, is a :class:`SetupError`
    naming its entry point (one line, exit code 2), not a traceback from inside it.
    """
    ours: list[EntryPoint] = []
    theirs: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None and canonical(ep.dist.name) == _DISTRIBUTION:
            ours.append(ep)
        elif ep.name in BUILTIN_NAMES or ep.name in theirs:
            taken = "a built-in transport" if ep.name in BUILTIN_NAMES else _where(theirs[ep.name])
            raise ConfigError(f"transport plug-in {_where(ep)}: the name is taken by {taken}")
        else:
            theirs[ep.name] = ep
    if ours:
        by_name = {ep.name: ep for ep in ours}
        factories = [_load(by_name[name]) for name in BUILTIN_NAMES if name in by_name]
    else:
        factories = list(_builtin().values())
    factories.extend(_plug_in(theirs[name]) for name in sorted(theirs))
    return factories


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``wsnic_trio`` is ``wsnic-trio``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _where(ep: EntryPoint) -> str:
    dist = f" from {ep.dist.name}" if ep.dist is not None else ""
    return f"{ep.name!r} ({ep.value}{dist})"


def _load(ep: EntryPoint) -> Callable[[Config], list[Transport]]:
    try:
        factory: Callable[[Config], list[Transport]] = ep.load()
    except Exception as exc:
        raise SetupError(
            f"transport plug-in {_where(ep)} cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(factory):
        raise SetupError(f"transport plug-in {_where(ep)} is not callable")
    return factory


def _plug_in(ep: EntryPoint) -> Callable[[Config], list[Transport]]:
    """A third-party factory whose failures name its entry point."""
    factory = _load(ep)

    @functools.wraps(factory)
    def build(config: Config) -> list[Transport]:
        try:
            return list(factory(config))
        except ConfigError as exc:
            raise ConfigError(f"transport plug-in {_where(ep)}: {exc}") from exc
        except SetupError as exc:
            raise SetupError(f"transport plug-in {_where(ep)}: {exc}") from exc
        except Exception as exc:
            raise SetupError(
                f"transport plug-in {_where(ep)} failed: {type(exc).__name__}: {exc}"
            ) from exc

    return build
