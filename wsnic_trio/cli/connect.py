"""``wsnic-trio connect``: plug a local TAP into a remote wsnic-trio LAN.

The TAP lives for the whole run, across reconnects, so the local network stack (its
address, routes, a DHCP client) survives a server restart; only the relay behind it is
re-dialled, with exponential backoff.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import urllib.parse
from collections.abc import Callable

import trio

from wsnic_trio.core.guard import FramePolicy
from wsnic_trio.core.relay import RelayStats, relay
from wsnic_trio.errors import PeerError, PeerRefused, SetupError
from wsnic_trio.host import netlink
from wsnic_trio.host.tap import TapDevice
from wsnic_trio.transports import dialer_for
from wsnic_trio.transports.base import FrameCheck, Liveness

__all__ = ["FINAL_REFUSALS", "ConnectOptions", "NoConnection", "Refused", "run_connect"]

log = logging.getLogger("wsnic_trio.connect")

#: Refusals that the same request gets again until the server's configuration changes
#: (a bad URL, a missing or wrong token, a LAN that does not exist): dialling them again
#: would only hammer the server and hide the reason in a log of retries. The others
#: (503 server or LAN full, 429, a 502 from a proxy) pass, so they are retried.
FINAL_REFUSALS = frozenset({400, 401, 403, 404, 426})


class Refused(SetupError):
    """The server refused the link for a reason that will not change by itself."""


class NoConnection(SetupError):
    """``--once`` and not even one connection was made: the exit status must say so.

    A :class:`SetupError`, so the command line reports it as one line and exits 2, like
    any other problem the user can fix (wrong URL, server not running, token refused).
    """


@dataclasses.dataclass(frozen=True)
class ConnectOptions:
    url: str
    tap: str = "wsnic%d"
    mac: str | None = None
    mtu: int = 1500
    ping_interval: float = 30.0
    ping_timeout: float = 100.0
    retry_min: float = 0.5
    retry_max: float = 10.0
    once: bool = False
    # A session that stayed up this long was a working link: the next wait starts again
    # at retry_min. A server that accepts and drops at once still backs off to retry_max.
    stable_after: float = 5.0


def shown_url(url: str) -> str:
    """The URL as logs show it: a ``?token=`` value is a credential (``?token=***``).

    The name is compared as the server reads it (percent-decoded), so ``?%74oken=`` is
    hidden too.
    """
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    fields = [
        f"{name}=***" if urllib.parse.unquote_plus(name) == "token" else field
        for field in parts.query.split("&")
        for name in [field.partition("=")[0]]
    ]
    return urllib.parse.urlunsplit(parts._replace(query="&".join(fields)))


async def _session(opts: ConnectOptions, tap: TapDevice, connected: Callable[[], None]) -> None:
    check = FrameCheck(opts.mtu + 18)
    # One dialer per transport module, chosen by the URL's scheme (ws:, qemu+unix:, bess:...).
    link = await dialer_for(opts.url)(
        opts.url,
        check=check,
        liveness=Liveness(ping_interval=opts.ping_interval, timeout=opts.ping_timeout),
    )
    connected()
    stats = RelayStats()
    log.info("connected to %s; relaying %s", shown_url(opts.url), tap.name)
    reason: BaseException | None = None
    try:
        await relay(link, tap, FramePolicy(check, stats.drops), stats)
    except* (PeerError, OSError) as group:
        reason = group.exceptions[0]
        raise
    finally:
        log.info(
            "disconnected from %s (%s): %s",
            shown_url(opts.url),
            reason or "stopping",
            stats.summary(),
        )
        await link.aclose(reason)


async def run_connect(
    opts: ConnectOptions, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    fd, name = await trio.to_thread.run_sync(netlink.create_tap, opts.tap, opts.mtu, opts.mac)
    tap = TapDevice(fd, name, opts.mtu + 18)
    log.info("TAP %s is up (MTU %d)", name, opts.mtu)
    task_status.started(name)
    delay = opts.retry_min
    try:
        while True:
            up_since: float | None = None

            def connected() -> None:
                nonlocal up_since
                up_since = trio.current_time()

            failure: BaseException | None = None
            try:
                await _session(opts, tap, connected)
            except* SetupError:
                raise
            except* PeerRefused as group:
                failure = group.exceptions[0]
                assert isinstance(failure, PeerRefused)
                if failure.status in FINAL_REFUSALS:
                    raise Refused(
                        f"{shown_url(opts.url)} refused: {failure} (not retried: the server "
                        "gives this answer until its configuration changes)"
                    ) from None
                log.warning("connection to %s refused: %s", shown_url(opts.url), failure)
            except* (PeerError, OSError, trio.TooSlowError) as group:
                failure = group.exceptions[0]
                log.warning("connection to %s ended: %s", shown_url(opts.url), failure)
            if opts.once:
                if up_since is None:
                    raise NoConnection(f"no connection to {shown_url(opts.url)}: {failure}")
                return
            if up_since is not None and trio.current_time() - up_since >= opts.stable_after:
                delay = opts.retry_min
            log.info("reconnecting in %.1f s", delay)
            await trio.sleep(delay)
            delay = min(opts.retry_max, delay * 2) if math.isfinite(delay) else opts.retry_max
    finally:
        tap.close()


async def connect_until_signal(opts: ConnectOptions) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def main() -> None:
                await run_connect(opts)
                nursery.cancel_scope.cancel()

            nursery.start_soon(main)
            async for signum in signals:
                log.info("received %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
