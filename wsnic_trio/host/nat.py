"""The LANs' host filter, and NAT: one nftables table the server owns for its run.

Everything the server adds to the firewall lives in a table of its own,
``inet wsnic_trio_pid<PID>``, made with the run's first LAN and deleted with its last,
so nothing of it ever touches rules that belong to somebody else. Each LAN is a few
chains and map entries in it (:mod:`wsnic_trio.host.nftrules` says why one table, and
the policy). The table exists for every run in root mode, with or without ``-i``: it
decides, for both IP families, what a LAN may reach on the host itself and whether
anything is forwarded into or out of its bridge (without ``-i``: nothing, also on a
host that forwards for Docker or libvirt). With ``-i`` it also masquerades the LAN out
of the uplink, and the server turns IPv4 forwarding on.

Tables are the runs' memory: each one's comment records its owner's pid, and the table
``wsnic_trio_forward_<PID>`` the value ``net.ipv4.ip_forward`` had before that run
turned it on. A run killed with SIGKILL cannot undo either, so the next start finds
the tables of runs that are gone, puts the sysctl back, and deletes them. The record is
written *before* the sysctl is changed and deleted *after* it is restored, so at every
instant either the sysctl is untouched or a table says how to undo it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Sequence

import trio

from wsnic_trio.config import LanConfig
from wsnic_trio.errors import SetupError
from wsnic_trio.host import netlink
from wsnic_trio.host.nftrules import (
    BLOCKED_PRIVATE,
    NatPlan,
    TableNote,
    build_ruleset,
    delete_table_script,
    lan_removal,
    lan_script,
    run_table,
    table_name,
)
from wsnic_trio.host.procs import pid_is_wsnic
from wsnic_trio.host.sysctl import IP_FORWARD, read_sysctl, write_sysctl

__all__ = [
    "BLOCKED_PRIVATE",
    "NatPlan",
    "TableNote",
    "build_ruleset",
    "check_nft",
    "clear_leftover_tables",
    "delete_script",
    "host_filter",
    "run_table_name",
    "table_name",
]

log = logging.getLogger("wsnic_trio.nat")

_COMMENT = re.compile(r'^\s*comment "([^"]*)"', re.MULTILINE)
_OUR_TABLES = re.compile(r"^table inet (wsnic_trio_\S+)$", re.MULTILINE)
_CLEANUP_TIMEOUT = 10.0


def delete_script(bridge: str) -> str:
    """Delete the table named after ``bridge`` if it exists (the rootless helper's)."""
    return delete_table_script(table_name(bridge))


def run_table_name() -> str:
    """The table of this process's run."""
    return f"wsnic_trio_pid{os.getpid()}"


def check_nft() -> str:
    """nft's path. It is needed for every LAN, not only with ``-i``: the host filter
    keeps the LAN away from the host's other networks, and a server that cannot set it
    up does not run (the LAN would be open on any host that forwards)."""
    nft = shutil.which("nft")
    if nft is None:
        raise SetupError(
            "wsnic-trio needs nftables' nft command for the LAN's host filter (and NAT "
            "with --enable-inet), which is not installed (Debian: apt-get install nftables)"
        )
    return nft


#: nft runs one at a time. Every run reads the kernel's whole ruleset (its cache), and
#: concurrent runs contend for the ruleset's commit lock: measured with 200 tables in a
#: namespace, 100 deletes at once took 16.6 s, one after another about 5 s, and one
#: script deleting all 100 0.08 s (hence the batches of :class:`_RunTable`).
_NFT_LOCK = trio.Lock()


async def _nft(args: Sequence[str], script: str | None = None) -> str:
    async with _NFT_LOCK:
        result = await trio.run_process(
            [check_nft(), *args],
            stdin=script.encode() if script is not None else b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise SetupError(f"nft {' '.join(args)} failed: {message}")
    return result.stdout.decode()


async def _restore_recorded(note: TableNote) -> None:
    """Put ip_forward back to what a killed run's note recorded (if it recorded one)."""
    if note.ip_forward is None:
        return
    current = await trio.to_thread.run_sync(read_sysctl, IP_FORWARD)
    if current != note.ip_forward:
        await trio.to_thread.run_sync(write_sysctl, IP_FORWARD, note.ip_forward)
        log.warning(
            "%s restored to %s, as it was before an earlier run (pid %d) that did not stop cleanly",
            IP_FORWARD,
            note.ip_forward,
            note.pid,
        )


class _RunTable:
    """The run's one table: made with its first LAN, deleted with its last.

    LANs come and go one ``nft -f`` each. When the server stops, every LAN lets go at the
    same moment: a LAN asked to leave while another change runs goes in the next one,
    so 200 LANs stop in a few runs (and the last run deletes the table, with all that is
    left in it). A run that fails or is cancelled puts its LANs back, and the next
    caller takes them again.
    """

    def __init__(self) -> None:
        self.lans: dict[str, NatPlan] = {}
        self.leaving: dict[str, NatPlan] = {}
        self.lock = trio.Lock()

    async def add(self, plan: NatPlan) -> None:
        async with self.lock:
            table = run_table_name()
            script = lan_script(table, plan)
            if not self.lans:
                script = run_table(table, TableNote(os.getpid(), "-", None)) + script
            await _nft(["-f", "-"], script)
            self.lans[plan.bridge] = plan

    async def remove(self, plan: NatPlan) -> None:
        self.leaving[plan.bridge] = plan
        async with self.lock:
            if plan.bridge not in self.leaving:
                return  # an earlier run took it
            batch, self.leaving = self.leaving, {}
            rest = {b: p for b, p in self.lans.items() if b not in batch}
            table = run_table_name()
            if rest:
                script = "".join(lan_removal(table, p) for p in batch.values())
            else:
                script = delete_table_script(table)
            try:
                await _nft(["-f", "-"], script)
            except BaseException:
                self.leaving.update(batch)
                raise
            self.lans = rest


_RUN_TABLE = _RunTable()


# -- ip_forward: one switch for the namespace, shared by every LAN that does NAT ----------

#: The table that remembers, for the next start after a crash, what ip_forward was.
_FORWARD_TABLE = "wsnic_trio_forward_{pid}"


class _Forwarding:
    """``net.ipv4.ip_forward`` belongs to the whole namespace, and any number of LANs of
    this server may need it on (LANs made on demand come and go in any order). The first
    one turns it on and writes the old value into a table of its own (the record for the
    next start if this process is killed); the last one to stop puts the value back."""

    def __init__(self) -> None:
        self.users = 0
        self.before: str | None = None
        self.lock = trio.Lock()
        #: Whether dead runs' tables have been looked for (see clear_leftover_tables).
        self.leftovers_cleared = False

    async def claim(self, pid: int) -> None:
        async with self.lock:
            if self.users == 0:
                before = await trio.to_thread.run_sync(read_sysctl, IP_FORWARD)
                if before != "1":
                    note = TableNote(pid, "-", before)
                    table = _FORWARD_TABLE.format(pid=pid)
                    await _nft(
                        ["-f", "-"], f'table inet {table} {{\n    comment "{note.render()}"\n}}\n'
                    )
                    await trio.to_thread.run_sync(write_sysctl, IP_FORWARD, "1")
                    log.info("%s was %s: set to 1 for this run", IP_FORWARD, before)
                    self.before = before
            self.users += 1

    async def release(self, pid: int) -> None:
        async with self.lock:
            self.users -= 1
            if self.users > 0 or self.before is None:
                return
            before, self.before = self.before, None
            now = await trio.to_thread.run_sync(read_sysctl, IP_FORWARD)
            if now != before:
                await trio.to_thread.run_sync(write_sysctl, IP_FORWARD, before)
                log.info("%s restored to %s", IP_FORWARD, before)
            await _nft(["-f", "-"], delete_table_script(_FORWARD_TABLE.format(pid=pid)))


_FORWARDING = _Forwarding()


async def clear_leftover_tables() -> None:
    """Remove the tables of runs that are gone (restoring the ip_forward they recorded).

    Once per process, before any LAN of this run claims forwarding: a killed run's
    records can only predate this run, and listing every table makes nft read the whole
    ruleset. Tables of running servers (another namespace's helper, a second server
    with other bridges) are left alone.
    """
    async with _FORWARDING.lock:
        if _FORWARDING.leftovers_cleared or shutil.which("nft") is None:
            return
        for table in _OUR_TABLES.findall(await _nft(["list", "tables"])):
            # nft's JSON output leaves table comments out (nftables 1.0.6): read the text.
            m = _COMMENT.search(await _nft(["list", "table", "inet", table]))
            note = TableNote.parse(m.group(1) if m else None)
            if note is not None and (note.pid == os.getpid() or pid_is_wsnic(note.pid)):
                continue
            if note is not None:
                await _restore_recorded(note)
            await _nft(["-f", "-"], delete_table_script(table))
            log.warning(
                "removed nftables table inet %s left behind by an earlier run%s",
                table,
                f" (pid {note.pid})" if note is not None else "",
            )
        _FORWARDING.leftovers_cleared = True


async def _find_uplink(lan: LanConfig) -> str:
    if lan.inet_iface is not None:
        link = await trio.to_thread.run_sync(netlink.find_link, lan.inet_iface)
        if link is None:
            raise SetupError(f"--inet-iface {lan.inet_iface}: no such interface")
        uplink = lan.inet_iface
    else:
        found = await trio.to_thread.run_sync(netlink.default_route_interface)
        if found is None:
            raise SetupError(
                "--enable-inet: this host has no IPv4 default route to find the uplink by; "
                "add one or name the uplink with --inet-iface"
            )
        uplink = found
    if uplink == lan.bridge:
        raise SetupError(f"the uplink for --enable-inet cannot be the LAN's own bridge {uplink}")
    return uplink


@contextlib.asynccontextmanager
async def host_filter(lan: LanConfig, pid: int) -> AsyncIterator[str | None]:
    """Put the LAN's rules into the run's table (with ``-i``: NAT, and forwarding on);
    undo on exit.

    Yields the uplink's name, or None without ``-i``.
    """
    check_nft()
    uplink = await _find_uplink(lan) if lan.enable_inet else None
    forwarding = uplink is not None or bool(lan.route_to)
    plan = NatPlan(
        bridge=lan.bridge,
        subnet=lan.subnet,
        bridge_address=lan.bridge_address,
        uplink=uplink,
        allow_private=lan.allow_private,
        # ip_forward has a table of its own (_Forwarding): the LANs share it.
        note=TableNote(pid, lan.bridge, None),
        route_to=lan.route_to,
    )
    table = run_table_name()
    installed = claimed = False
    try:
        await _RUN_TABLE.add(plan)
        installed = True
        if uplink is None:
            log.info(
                "LAN isolated: nothing forwarded into or out of %s (table inet %s)",
                lan.bridge,
                table,
            )
        else:
            log.info("NAT on: %s masqueraded out of %s (table inet %s)", lan.subnet, uplink, table)
        if lan.route_to:
            log.info(
                "routes from %s to %s: connections may be opened that way only",
                lan.subnet,
                ", ".join(str(n) for n in lan.route_to),
            )
        if forwarding:
            await _FORWARDING.claim(pid)
            claimed = True
        yield uplink
    finally:
        with trio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            if claimed:
                await _FORWARDING.release(pid)
            if installed:
                await _RUN_TABLE.remove(plan)
                log.info(
                    "%s off: %s's rules removed from table inet %s",
                    "NAT" if uplink is not None else "host filter",
                    lan.bridge,
                    table,
                )
