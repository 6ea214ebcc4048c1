"""How a transport hands a peer to the core: :func:`serve_link`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from wsnic_trio.errors import PeerError
from wsnic_trio.net.listen import Closable, bind_all
from wsnic_trio.transports.base import PeerHandler, PeerLink

if TYPE_CHECKING:
    from wsnic_trio.config import Config, LanConfig

__all__ = ["bind_per_lan", "serve_link"]

L = TypeVar("L", bound=Closable)
T = TypeVar("T")


def bind_per_lan(
    config: Config,
    items: Callable[[LanConfig], Iterable[T]],
    make: Callable[[Config, T, str], L],
) -> list[L]:
    """A listener for each item of each LAN (``make(lan_view, item, lan_name)``), every
    one closed again if a later one fails. A LAN's VM listeners are that LAN's options,
    so each listener is made from the configuration as its LAN sees it."""
    wanted = [
        (view, item, name)
        for name in config.all_lans()
        for view in [config.for_lan(name)]
        for item in items(view.lan)
    ]
    return bind_all(lambda want: make(*want), wanted)


log = logging.getLogger("wsnic_trio.listen")


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
