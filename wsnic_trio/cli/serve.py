"""How ``wsnic-trio`` (the server command) is assembled and run.

Order matters, and it is the promise of "fail before the host is touched": paths are
checked first (:mod:`wsnic_trio.cli.preflight`), then listeners are bound (a taken port
fails here), then the LAN backend creates the bridge, NAT and dnsmasq, then (``--user``)
privileges are dropped, then the control layer starts, and only then do listeners accept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
from contextlib import AbstractAsyncContextManager

import trio

from wsnic_trio.cli.ondemand import OnDemandLans
from wsnic_trio.cli.preflight import check_paths
from wsnic_trio.config import Config
from wsnic_trio.config.lans import DEFAULT_LAN
from wsnic_trio.control.forward import OpenRemote, open_remote_here
from wsnic_trio.control.http import ApiListener, bind_api
from wsnic_trio.control.start import load_api_tokens, start_control
from wsnic_trio.core import Server
from wsnic_trio.core.admission import TokenStore
from wsnic_trio.host.dnsmasq import serve_dnsmasq
from wsnic_trio.lan.bridge import LanBackend
from wsnic_trio.lan.modes import LanOpener, helper_of, open_lans
from wsnic_trio.lan.privsep import (
    SeparatedLan,
    drop_privileges,
    resolve_account,
    socket_files,
    unreadable_files,
)
from wsnic_trio.lan.rootless import RootlessLan, open_backend, this_mode
from wsnic_trio.lan.services import clear_leftover_lans
from wsnic_trio.net.listen import bind_all
from wsnic_trio.transports import Transport, load_transports

__all__ = ["raise_fd_limit", "run_server", "serve_until_signal"]

log = logging.getLogger("wsnic_trio.server")

_FD_CEILING = 1 << 16


class _Listeners(list[Transport]):
    """One factory's listeners, released together when a later factory fails."""

    def close(self) -> None:
        for transport in self:
            transport.close()


def build_transports(config: Config) -> list[Transport]:
    """Create (and bind) every configured listener; on failure release those made so far."""
    made = bind_all(lambda factory: _Listeners(factory(config)), load_transports())
    return [transport for listeners in made for transport in listeners]


async def run_server(
    config: Config, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until cancelled. ``started()`` reports the Server once every listener accepts."""
    account = resolve_account(config, euid=os.geteuid())  # --user: checked before anything
    # Paths used only later (captures, the lease file), as the side that will use them.
    await trio.to_thread.run_sync(check_paths, config, account)
    raise_fd_limit()
    tokens = TokenStore(config.server.auth_token_file)
    if tokens.enabled:
        log.info(
            "authentication on: %d tokens from %s", tokens.load(), config.server.auth_token_file
        )
    api_tokens = load_api_tokens(config)
    transports = build_transports(config)
    api_listeners: list[ApiListener] = []
    try:
        api_listeners = bind_api(config.server.api)
        if not transports:
            log.warning("no listener is configured: nothing can connect")
        several = list(config.all_lans()) != [DEFAULT_LAN] or config.server.lan_pool is not None
        if account is None and not (await this_mode(config))[0]:
            # What a killed run left of LANs this run does not make again (LANs made on
            # demand live on their name alone); this run's own LANs clear theirs.
            await clear_leftover_lans({config.for_lan(n).lan.bridge for n in config.all_lans()})
        sockets = socket_files([*transports, *api_listeners]) if account is not None else []
        async with contextlib.AsyncExitStack() as stack:
            backends: dict[str, LanBackend] = {}
            open_lan: LanOpener | None = None
            if several:
                # One opener for the mode: the LANs of --user and rootless mode are all
                # built by one helper, also those made on demand after the drop.
                open_lan = await stack.enter_async_context(open_lans(config, account, sockets))
                for name in config.all_lans():
                    view = config.for_lan(name)
                    backends[name] = await stack.enter_async_context(open_lan(name, view))
            else:
                backend: AbstractAsyncContextManager[LanBackend] = (
                    open_backend(config.for_lan(DEFAULT_LAN))
                    if account is None
                    else SeparatedLan(config, account, sockets)
                )
                backends[DEFAULT_LAN] = await stack.enter_async_context(backend)
                # Rootless: the lease file is in the helper's run directory.
                config = backends[DEFAULT_LAN].config
            server = Server(config, backends, transports, tokens)
            if account is not None:
                # --user: listeners are bound and the LAN is up; nothing below needs root.
                drop_privileges(account)
                for problem in unreadable_files(config):
                    log.warning("as user %s: %s", account.user, problem)
            async with trio.open_nursery() as nursery:
                if open_lan is not None and config.server.lan_pool is not None:
                    server.maker = OnDemandLans(config, server, nursery, open_lan)
                    log.info(
                        "LANs on demand: /%d blocks of %s, at most %s, removed after %g s idle",
                        config.server.lan_prefix,
                        config.server.lan_pool,
                        config.server.max_lans or "any number",
                        config.server.lan_idle_timeout,
                    )
                for state in list(server.lans.values()):
                    view = state.config
                    if not view.lan.disable_dhcp and helper_of(state.backend) is None:
                        await nursery.start(serve_dnsmasq, view, server.count_dnsmasq_restart)
                    watch_leases = view.lan.lock_ip or view.server.api or view.lan.forward
                    if state.leases is not None and watch_leases:
                        nursery.start_soon(state.leases.watch)
                # Forwards open their remote side in the LAN's namespace (rootless: the
                # helper makes the socket), else here.
                main = helper_of(backends[DEFAULT_LAN]) if DEFAULT_LAN in backends else None
                open_remote: OpenRemote = (
                    main.open_remote if isinstance(main, RootlessLan) else open_remote_here
                )
                await start_control(nursery, server, api_listeners, api_tokens, open_remote)
                for transport in transports:
                    await nursery.start(transport.serve, server)
                    log.info("listening on %s", transport.describe())
                if not server.lans:
                    log.info("ready: no LAN until a client asks for one (/lan/NAME)")
                for state in server.lans.values():
                    named = f" {state.name}" if server.named else ""
                    log.info(
                        "ready: LAN%s %s on bridge %s",
                        named,
                        state.config.lan.subnet,
                        state.config.lan.bridge,
                    )
                task_status.started(server)
    finally:
        for transport in transports:
            transport.close()
        for listener in api_listeners:
            listener.close()


def raise_fd_limit() -> None:
    """Take the hard limit of open files as the soft one: every client costs two fds (its
    socket and its TAP), and the soft default (1024 under systemd and in most shells)
    would refuse clients around 500, long before a bridge is full (1023 ports)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _FD_CEILING if hard == resource.RLIM_INFINITY else min(hard, _FD_CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
            target = soft
        else:
            log.info("open-file limit raised from %d to %d", soft, target)
    else:
        target = soft
    if target < 2 * 1024 + 64:
        log.warning(
            "the open-file limit is %d: room for about %d clients (raise it: ulimit -Hn, "
            "or LimitNOFILE= in a systemd unit)",
            target,
            max(0, (target - 64) // 2),
        )


def _count_tasks() -> int:
    count = 0
    root = trio.lowlevel.current_root_task()
    stack = [root] if root is not None else []
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def log_status(server: Server) -> None:
    """One line an operator (or a leak test) can read: peers, tasks, open fds."""
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    log.info("status: %d clients, %d tasks, %d open fds", len(server.peers), _count_tasks(), fds)


async def serve_until_signal(config: Config) -> None:
    """The CLI's main: run until SIGINT or SIGTERM; SIGHUP reloads tokens and certificates,
    SIGUSR1 logs a status line."""
    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
    with trio.open_signal_receiver(*wanted) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(run_server, config)
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    log_status(server)
                    continue
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP: reloading")
                    server.reload()
                    continue
                log.info("received %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
