"""Server events (client connected / disconnected, lease granted...) for API subscribers.

Publishing must never block the server or cost anything when nobody listens: each
subscriber has a bounded channel, filled with ``send_nowait``. A subscriber that falls
a whole queue behind is dropped (its stream ends with an ``overflow`` line) rather than
silently missing events in the middle: a consumer then knows to re-read the state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import trio

__all__ = ["EventBus", "Subscription"]

QUEUE_SIZE = 1024
MAX_SUBSCRIBERS = 32


class Subscription:
    """One subscriber's end: iterate over ``receive`` until it ends."""

    def __init__(self, receive: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        self.receive = receive
        self.overflowed = False


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[trio.MemorySendChannel[dict[str, Any]], Subscription] = {}

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, **fields: Any) -> None:
        if not self._subscribers:
            return
        event = {"event": kind, "time": round(time.time(), 3), **fields}
        for send, sub in list(self._subscribers.items()):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                sub.overflowed = True
                self._drop(send)
            except trio.BrokenResourceError:  # the subscriber went away
                self._drop(send)

    def _drop(self, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        self._subscribers.pop(send, None)
        send.close()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """Raises :class:`OverflowError` when there are already ``MAX_SUBSCRIBERS``."""
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise OverflowError(f"too many event subscribers (at most {MAX_SUBSCRIBERS})")
        send, receive = trio.open_memory_channel[dict[str, Any]](QUEUE_SIZE)
        sub = Subscription(receive)
        self._subscribers[send] = sub
        try:
            yield sub
        finally:
            self._drop(send)
            receive.close()
