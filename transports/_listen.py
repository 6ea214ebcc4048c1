"""How a transport hands a peer to the core: :func:`serve_link`."""

from __future__ import annotations

import logging

from wsnic_trio.errors import PeerError
from wsnic_trio.transports.base import PeerHandler, PeerLink

__all__ = ["serve_link"]

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
