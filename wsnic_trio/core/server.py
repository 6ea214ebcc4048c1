"""The server: every peer from its admission to its TAP's removal.

A transport hands over a pending link; :meth:`Server.handle_peer` decides whether it
may join, makes its TAP, tells it it joined, and relays until it leaves. Each peer runs
in its own nursery inside its listener's task; whatever ends a peer ends that peer
alone. How the server is started (and in which order) is :mod:`wsnic_trio.cli.serve`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import trio
from pyroute2.netlink.exceptions import NetlinkError

from wsnic_trio.config import Config
from wsnic_trio.config.lans import DEFAULT_LAN
from wsnic_trio.core.admission import Admission, FailureLimiter, TokenStore
from wsnic_trio.core.events import EventBus
from wsnic_trio.core.guard import FramePolicy, SourceGuard, refuse_mac
from wsnic_trio.core.lanstate import BRIDGE_MAC_BYTES, LanMaker, LanState
from wsnic_trio.core.relay import RelayStats, relay
from wsnic_trio.core.stats import Totals, mac_text
from wsnic_trio.errors import ConfigError, PeerClosed, PeerError, SetupError, first_error
from wsnic_trio.host.tap import TapDevice
from wsnic_trio.lan.bridge import LanBackend
from wsnic_trio.transports.base import AdmissionRequest, PeerLink, Rejection, Transport

__all__ = ["CaptureHook", "PeerInfo", "Server"]

log = logging.getLogger("wsnic_trio.server")

#: The most open files the server asks for (clients, their TAPs, listeners, helpers).

#: The ``reason`` label of ``wsnic_refused_total`` for each admission answer.
_REFUSAL_KINDS = {401: "auth", 403: "auth", 404: "no-lan", 429: "login-brake", 503: "limit"}


class CaptureHook(Protocol):
    """What the server needs of packet capture (:class:`~wsnic_trio.control.pcap.PcapManager`):
    start one for a peer that joins when every peer is captured, stop it when it leaves."""

    @property
    def capture_all(self) -> bool: ...

    def start(self, info: PeerInfo) -> object: ...

    def stop(self, peer_id: int) -> object: ...


@dataclasses.dataclass
class PeerInfo:
    """A connected peer as the outside world sees it (log lines, later the control API)."""

    id: int
    transport: str
    remote: str
    remote_ip: str | None
    tap: str
    stats: RelayStats
    cancel_scope: trio.CancelScope
    #: Set when a newer connection with the same MAC ended this one.
    replaced_by: int | None = None
    #: The browser page's origin (WebSocket ``Origin`` header, escaped); None without one.
    origin: str | None = None
    #: Why the control API disconnected this peer (``kick``).
    kicked: str | None = None
    #: What the transport itself dropped (counted there, shown by the API).
    link_drops: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    #: Set once the peer is gone (its TAP removed).
    gone: trio.Event = dataclasses.field(default_factory=trio.Event)
    #: The LAN it is on.
    lan: str = DEFAULT_LAN

    @property
    def mac(self) -> bytes | None:
        return self.stats.mac


class Server:
    """Runs peers on one or more LANs; ``peers`` is the live registry."""

    def __init__(
        self,
        config: Config,
        lan: LanBackend | Mapping[str, LanBackend],
        transports: Sequence[Transport],
        tokens: TokenStore | None = None,
    ) -> None:
        self.config = config
        self.transports = list(transports)
        self.peers: dict[int, PeerInfo] = {}
        self._ids = itertools.count(1)
        self.tokens = tokens or TokenStore(None)
        #: The login brake, shared by every LAN (a guess is a guess on any of them).
        self.limiter = limiter = FailureLimiter()
        #: Every LAN by name (``default`` for the one the LAN options configure). Each
        #: backend's config is its LAN's view (``Config.for_lan``) as the backend made it
        #: (rootless: its lease file is in the helper's run directory).
        self.lans: dict[str, LanState] = (
            {
                name: LanState.make(name, backend.config, backend, self.tokens, limiter)
                for name, backend in lan.items()
            }
            if isinstance(lan, Mapping)
            else {DEFAULT_LAN: LanState.make(DEFAULT_LAN, config, lan, self.tokens, limiter)}
        )
        #: Whether LANs have names (a WebSocket path picks one): log lines then say which.
        self.named = len(self.lans) > 1 or DEFAULT_LAN not in self.lans
        #: Called with each LAN made after start (on demand), and with each one that
        #: goes before the server stops.
        self.on_lan_added: list[Callable[[LanState], None]] = []
        self.on_lan_removed: list[Callable[[LanState], object]] = []
        self.bridge_mac = BRIDGE_MAC_BYTES
        # -- what the control API shows (docs/api.md) --
        self.started_at = time.time()
        #: Per (transport, LAN): connections since start, and the traffic of peers that left.
        self.totals: dict[tuple[str, str], Totals] = {}
        self.events = EventBus()
        #: Would-be peers turned away (in or after their handshake), by (transport, why).
        self.refused: collections.Counter[tuple[str, str]] = collections.Counter()
        self.dnsmasq_restarts = 0
        #: Packet capture, when the control layer runs it (``--pcap``).
        self.capture: CaptureHook | None = None
        #: Makes a LAN for a name no LAN has yet (``--lan-pool``); None: unknown names 404.
        self.maker: LanMaker | None = None
        #: Who may join a LAN that does not exist yet (tokens, origin; no client limits).
        self._newcomers = Admission(
            self.tokens, limiter=limiter, origins=config.server.allow_origin
        )

    @property
    def mac_owners(self) -> dict[bytes, int]:
        """The first LAN's MAC owners (each LAN has its own: ``lans[name].mac_owners``)."""
        main = next(iter(self.lans.values()), None)
        return main.mac_owners if main is not None else {}

    def kick(self, peer_id: int, reason: str = "kicked by the API") -> bool:
        """Disconnect a peer (its TAP goes with it); False when there is no such peer."""
        info = self.peers.get(peer_id)
        if info is None:
            return False
        info.kicked = reason
        info.cancel_scope.cancel()
        return True

    def _mac_seen(self, info: PeerInfo, mac: bytes) -> None:
        log.info("client %d uses MAC %s (%s on %s)", info.id, mac.hex(":"), info.remote, info.tap)
        self.events.publish("client-mac", id=info.id, tap=info.tap, mac=mac.hex(":"), lan=info.lan)

    def _client_event(self, kind: str, info: PeerInfo, **more: object) -> None:
        self.events.publish(
            kind,
            id=info.id,
            transport=info.transport,
            remote=info.remote,
            tap=info.tap,
            lan=info.lan,
            **more,
        )

    def add_lan(self, state: LanState) -> None:
        """Register a LAN made after start (on demand)."""
        self.lans[state.name] = state
        for hook in self.on_lan_added:
            hook(state)

    def remove_lan(self, name: str) -> LanState | None:
        """Unregister a LAN that goes before the server stops (on demand): no peer can
        join it any more, and what hangs on it (port forwards) goes too."""
        state = self.lans.pop(name, None)
        if state is not None:
            for hook in self.on_lan_removed:
                hook(state)
        return state

    def count_dnsmasq_restart(self) -> None:
        self.dnsmasq_restarts += 1

    # -- what transports call ---------------------------------------------------------

    def lan_of(self, name: str | None) -> LanState | None:
        return self.lans.get(name or DEFAULT_LAN)

    def admit(self, request: AdmissionRequest) -> Rejection | None:
        state = self.lan_of(request.lan)
        if state is not None:
            rejection = state.admission.check(request)
        elif self.maker is not None and request.lan is not None:
            rejection = self._newcomers.check(request) or self.maker.refusal(request.lan)
        else:
            rejection = Rejection(404, f"no such LAN: {request.lan or DEFAULT_LAN}", 1008, "no-lan")
        if rejection is not None:
            kind = rejection.kind or _REFUSAL_KINDS.get(rejection.http_status, "other")
            self.refused[(request.transport, kind)] += 1
        return rejection

    def admission_delay(self, request: AdmissionRequest) -> float:
        state = self.lan_of(request.lan)
        return (state.admission if state is not None else self._newcomers).login_delay(request)

    def count_refusal(self, transport: str, reason: str) -> None:
        self.refused[(transport, reason)] += 1

    async def __call__(self, link: PeerLink) -> None:
        await self.handle_peer(link)

    def reload(self) -> None:
        """SIGHUP: re-read tokens and certificates; a bad file keeps the old one."""
        if self.tokens.enabled:
            try:
                log.info("reloaded %d tokens from %s", self.tokens.load(), self.tokens.path)
            except ConfigError as exc:
                log.error("token reload failed, keeping the old tokens: %s", exc)
        for transport in self.transports:
            reload = getattr(transport, "reload", None)
            if reload is not None:
                try:
                    reload()
                except SetupError as exc:
                    log.error("certificate reload failed, keeping the old one: %s", exc)

    # -- per peer -----------------------------------------------------------------------

    def _policy(
        self, state: LanState, peer_id: int, link: PeerLink, stats: RelayStats
    ) -> FramePolicy:
        lan = state.config.lan
        lock = lan.lock_mac == "all" or (lan.lock_mac == "ws" and link.transport in ("ws", "wss"))

        def claim(mac: bytes) -> None:
            self._claim_mac(state, peer_id, link, mac)

        guard = None
        if lock or lan.lock_ip:
            guard = SourceGuard(
                self.bridge_mac,
                claim=claim,
                leased_ip=state.leased_ip if lan.lock_ip else None,
            )
        return FramePolicy(
            state.check,
            stats.drops,
            guard,
            lan.rate_limit,
            state.rules,
            broadcast_limit=lan.broadcast_limit,
            # An unlocked peer (a VM) may send from other MACs too, but its first MAC is
            # recorded all the same: nobody else may take it over.
            claim=claim if guard is None else None,
        )

    def _claim_mac(self, state: LanState, peer_id: int, link: PeerLink, mac: bytes) -> None:
        """A peer's first frame names its MAC; resolve a clash with a connected peer.

        Every peer's first MAC is recorded, locked or not, whatever its transport: the
        bridge delivers a MAC's frames to the port that last sent from it, so a second
        peer sending from it would take the first one's traffic.

        A newcomer from the same address over the same transport takes the MAC over
        and the old connection is closed: that is v86 reconnecting after a network
        drop, before the server has noticed the old connection is dead. Otherwise it
        is refused, also from the same host: a web page in a browser there can reach
        the WebSocket listener, and must not take the MAC of a VM on a local socket.
        """
        owner_id = state.mac_owners.get(mac)
        owner = self.peers.get(owner_id) if owner_id is not None else None
        if owner is not None and owner_id != peer_id:
            if owner.remote_ip != link.remote_ip or owner.transport != link.transport:
                raise refuse_mac(mac, f"client {owner_id}")
            log.info(
                "client %d takes over MAC %s from client %d (same address: a reconnect)",
                peer_id,
                mac.hex(":"),
                owner_id,
            )
            owner.replaced_by = peer_id
            owner.cancel_scope.cancel()
        state.mac_owners[mac] = peer_id

    async def handle_peer(self, link: PeerLink) -> None:
        """Serve one peer until it ends; never raises anything but Cancelled."""
        ip = link.remote_ip
        name = getattr(link, "lan", None) or DEFAULT_LAN
        state = self.lans.get(name)
        if state is None and self.maker is not None and name != DEFAULT_LAN:
            refused = self.maker.refusal(name)
            if refused is not None:
                await self._refuse(link, refused, refused.kind or "limit")
                return
            try:
                state = await self.maker.make(name)
            except Exception as exc:  # whatever it was, it costs this client only
                why = first_error(exc)
                log.error(
                    "LAN %s could not be made: %s",
                    name,
                    why,
                    exc_info=None if isinstance(why, SetupError | OSError) else exc,
                )
                await self._refuse(link, Rejection(503, f"LAN {name}: {why}", 1013), "no-lan")
                return
        if state is None:
            await self._refuse(link, Rejection(404, f"no such LAN: {name}", 1008), "no-lan")
            return
        # Limits again, now synchronously with joining (the handshake-time check can race).
        rejection = state.admission.check(
            AdmissionRequest(link.transport, ip, lan=name), authenticate=False
        )
        if rejection is not None:
            await self._refuse(link, rejection, "limit")
            return
        state.admission.join(ip)
        state.idle_since = None
        try:
            await self._serve_admitted(state, link)
        finally:
            state.admission.leave(ip)
            if state.admission.clients == 0:
                state.idle_since = trio.current_time()

    async def _refuse(self, link: PeerLink, rejection: Rejection, kind: str) -> None:
        log.warning("%s %s refused: %s", link.transport, link.remote, rejection.reason)
        self.refused[(link.transport, kind)] += 1
        self.events.publish(
            "client-refused",
            transport=link.transport,
            remote=link.remote,
            reason=rejection.reason,
            lan=getattr(link, "lan", None) or DEFAULT_LAN,
        )
        await link.refuse(rejection)

    async def _open_tap_or_refuse(
        self, state: LanState, stack: contextlib.AsyncExitStack, link: PeerLink
    ) -> TapDevice | None:
        """The peer's TAP, attached and forwarding; None when the peer was refused.

        Not getting one (a full bridge, no fds, no memory) is this peer's bad luck, not
        the server's failure: the peer hears why, the log gets one line.
        """
        try:
            return await stack.enter_async_context(state.backend.open_tap())
        except (SetupError, OSError) as exc:
            reason = str(exc) if isinstance(exc, SetupError) else _describe(exc)
        except NetlinkError as exc:
            reason = f"netlink: {os.strerror(exc.code)}"
        except Exception:
            log.exception("%s %s: making its TAP failed", link.transport, link.remote)
            reason = "server error while making the TAP"
        await self._refuse(link, Rejection(503, reason, 1013), "no-tap")
        return None

    async def _serve_admitted(self, state: LanState, link: PeerLink) -> None:
        peer_id = next(self._ids)
        stats = RelayStats()
        reason: BaseException | None = None
        policy = self._policy(state, peer_id, link, stats)
        on_lan = f" on LAN {state.name}" if self.named else ""
        try:
            async with contextlib.AsyncExitStack() as stack:
                tap = await self._open_tap_or_refuse(state, stack, link)
                if tap is None:
                    return
                with trio.CancelScope() as scope:
                    info = PeerInfo(
                        peer_id, link.transport, link.remote, link.remote_ip, tap.name, stats, scope
                    )
                    info.link_drops = link.drops
                    info.lan = state.name
                    # Only WebSocket links have an Origin (a browser's page); not in PeerLink.
                    info.origin = getattr(link, "origin", None)
                    self.peers[peer_id] = info
                    self.totals.setdefault((link.transport, state.name), Totals()).connections += 1
                    stats.on_mac = functools.partial(self._mac_seen, info)
                    if self.capture is not None and self.capture.capture_all:
                        self.capture.start(info)
                    log.info(
                        "client %d connected%s: %s %s on %s%s",
                        peer_id,
                        on_lan,
                        link.transport,
                        link.remote,
                        tap.name,
                        _origin_text(link),
                    )
                    self._client_event("client-connected", info)
                    try:
                        # Only now is the peer told it joined: its TAP forwards.
                        await link.accept()
                        await relay(link, tap, policy, stats)
                    except* PeerClosed as group:
                        reason = group.exceptions[0]
                    except* PeerError as group:
                        reason = group.exceptions[0]
                    except* OSError as group:
                        reason = group.exceptions[0]
                if scope.cancelled_caught and reason is None:
                    if info.kicked is not None:
                        reason = PeerClosed(info.kicked)
                    elif info.replaced_by is not None:
                        reason = PeerClosed(
                            f"replaced by client {info.replaced_by} with the same MAC"
                        )
                    else:
                        reason = PeerClosed("disconnected by the server")
                queue_drops = tap.kernel_drops()
                if queue_drops:
                    stats.drops["peer-too-slow"] += queue_drops
        except* Exception as group:
            # A failure that is not this peer's fault (e.g. no TAP could be made): log it
            # for the operator, end this peer, keep serving the others.
            reason = group.exceptions[0]
            log.error(
                "client %d (%s %s) failed: %s",
                peer_id,
                link.transport,
                link.remote,
                reason,
                exc_info=not isinstance(reason, PeerError | OSError),
            )
        finally:
            mac = policy.mac
            if mac is not None and state.mac_owners.get(mac) == peer_id:
                del state.mac_owners[mac]
            info_gone = self.peers.pop(peer_id, None)
            stats.drops.update(link.drops)
            if stats.capture is not None and self.capture is not None:
                self.capture.stop(peer_id)
            if info_gone is not None:
                info_gone.gone.set()
                self.totals.setdefault((link.transport, state.name), Totals()).add(stats)
                log.info(
                    "client %d disconnected (%s): %s %s on %s, MAC %s: %s",
                    peer_id,
                    _describe(reason),
                    link.transport,
                    link.remote,
                    info_gone.tap,
                    mac_text(stats.mac) or "none seen",
                    stats.summary(),
                )
                self._client_event(
                    "client-disconnected",
                    info_gone,
                    mac=mac_text(stats.mac),
                    reason=_describe(reason),
                )
            await link.aclose(reason)


def _origin_text(link: PeerLink) -> str:
    """For the connect line: which page a browser client came from (no Origin: a program)."""
    if not hasattr(link, "origin"):  # not a WebSocket link
        return ""
    return f", origin {link.origin}" if link.origin is not None else ", no Origin header"


def _describe(reason: BaseException | None) -> str:
    if reason is None:
        return "server stopping"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__
