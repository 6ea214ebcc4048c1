"""The LAN's host filter, and NAT: one nftables table the server owns for its run.

Everything the server adds to the firewall lives in a single table,
``inet wsnic_trio_<bridge>``, so removing it is one ``delete table`` and never touches
rules that belong to somebody else. The table exists for every run in root mode, with
or without ``-i``: it decides, for both IP families, what the LAN may reach on the host
itself and whether anything is forwarded into or out of the bridge (without ``-i``:
nothing, also on a host that forwards for Docker or libvirt). With ``-i`` it also
masquerades the LAN out of the uplink, and the server turns IPv4 forwarding on.

The table's comment is the run's memory: it records the owner pid and, with ``-i``, the
value ``net.ipv4.ip_forward`` had before this run changed it (``ip_forward=-``: this
run changes no sysctl). A run killed with SIGKILL cannot restore the sysctl itself, so
the next start reads the comment of the table it left, puts the sysctl back, and
deletes the table. The table is written *before* the sysctl is changed and deleted
*after* it is restored, so at every instant either the sysctl is untouched or the table
says how to undo it.

The ruleset text is built by :func:`build_ruleset`, a pure function, and applied
atomically with ``nft -f -``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Sequence

import trio

from wsnic_trio.config import LanConfig
from wsnic_trio.errors import SetupError
from wsnic_trio.host import netlink
from wsnic_trio.host.procs import pid_is_wsnic
from wsnic_trio.host.sysctl import IP_FORWARD, read_sysctl, write_sysctl

__all__ = [
    "BLOCKED_PRIVATE",
    "NatPlan",
    "TableNote",
    "build_ruleset",
    "check_nft",
    "clear_leftover_forwarding",
    "clear_leftover_table",
    "host_filter",
    "table_name",
]

log = logging.getLogger("wsnic_trio.nat")

# Networks a guest must not reach through the host unless --allow-private says so:
# RFC 1918, shared address space (RFC 6598) and link-local (where cloud metadata lives).
BLOCKED_PRIVATE: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
)
_NOTE_PREFIX = "wsnic-trio"
_COMMENT = re.compile(r'^\s*comment "([^"]*)"', re.MULTILINE)
_CLEANUP_TIMEOUT = 10.0


def table_name(bridge: str) -> str:
    """The table's name: nft identifiers allow fewer characters than interface names."""
    return "wsnic_trio_" + re.sub(r"[^A-Za-z0-9_]", "_", bridge)


@dataclasses.dataclass(frozen=True)
class TableNote:
    """What the table's comment remembers about the run that made it.

    ``ip_forward`` is the value to restore after a crash; None when the run does not
    change the sysctl (no ``-i``, or it found forwarding on): a later run must then leave
    it alone, whatever it is, since somebody else (Docker, libvirt) may have changed it
    since.
    """

    pid: int
    bridge: str
    ip_forward: str | None

    def render(self) -> str:
        forward = "-" if self.ip_forward is None else self.ip_forward
        return f"{_NOTE_PREFIX} pid={self.pid} bridge={self.bridge} ip_forward={forward}"

    @classmethod
    def parse(cls, comment: str | None) -> TableNote | None:
        if not comment or not comment.startswith(_NOTE_PREFIX + " "):
            return None
        fields = dict(w.split("=", 1) for w in comment.split()[1:] if "=" in w)
        try:
            forward = fields["ip_forward"]
            return cls(int(fields["pid"]), fields["bridge"], None if forward == "-" else forward)
        except (KeyError, ValueError):
            return None


@dataclasses.dataclass(frozen=True)
class NatPlan:
    """Everything the ruleset depends on, so the text can be built without any I/O.

    ``uplink`` None: no ``-i``, so the LAN is isolated (no NAT, no forwarding at all).
    """

    bridge: str
    subnet: ipaddress.IPv4Network
    bridge_address: ipaddress.IPv4Address
    uplink: str | None
    allow_private: Sequence[ipaddress.IPv4Network]
    note: TableNote


def _quote(name: str) -> str:
    # Interface names are limited to [A-Za-z0-9_.-] by the config, so quoting is enough.
    return '"' + name + '"'


def _set(networks: Sequence[ipaddress.IPv4Network]) -> str:
    return "{ " + ", ".join(str(n) for n in networks) + " }"


def build_ruleset(plan: NatPlan) -> str:
    """The ``nft -f`` script that (re)creates our table with the LAN's rules.

    It first creates-then-deletes the table, so applying it replaces any older table of
    the same name in one atomic transaction.

    Policy: every base chain accepts by default, so traffic that is not the LAN's is left
    to the host's own firewall. For the LAN, in both modes: client to client is always
    allowed; the host's own private IPv4 addresses are closed to it, except the bridge
    address and the allowed networks; over IPv6 (which the server does not offer the
    LAN) it reaches on the host only neighbour discovery, ping of the bridge's
    link-local address, and replies to what the host opened. DNS and DHCP on the bridge
    address answer the LAN and the host itself only. Nothing is forwarded into or out of
    the LAN, except with ``-i``: out through the uplink (IPv4, masqueraded), except to
    private networks not explicitly allowed; into the LAN only replies (conntrack
    established/related).
    """
    table = table_name(plan.bridge)
    br = _quote(plan.bridge)
    # nft refuses overlapping intervals in one set; 10.0.0.0/8 and 10.1.0.0/16 become one.
    allowed = list(ipaddress.collapse_addresses(plan.allow_private))
    lines = [
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        f'    comment "{plan.note.render()}"',
        "",
        "    chain input {",
        "        type filter hook input priority filter; policy accept;",
        # Linux takes a packet for any of its addresses on any interface (the weak host
        # model): without this, the uplink side could ask the LAN's dnsmasq for names.
        f'        iifname != {{ {br}, "lo" }} ip daddr {plan.bridge_address} '
        "meta l4proto { tcp, udp } th dport { 53, 67 } drop",
        f"        iifname {br} ip daddr {plan.subnet} accept",
    ]
    if allowed:
        lines.append(f"        iifname {br} ip daddr {_set(allowed)} accept")
    lines += [
        f"        iifname {br} ip daddr {_set(BLOCKED_PRIVATE)} drop",
        f"        iifname {br} meta nfproto ipv6 ct state established,related accept",
        f"        iifname {br} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept",
        f"        iifname {br} ip6 daddr fe80::/10 icmpv6 type echo-request accept",
        f"        iifname {br} meta nfproto ipv6 drop",
        "    }",
        "",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        # Frames bridged between two clients: where br_netfilter is loaded (and a new
        # namespace has bridge-nf-call-iptables=1) they pass this hook with the bridge
        # as both in and out device. Client to client is always allowed.
        f"        iifname {br} oifname {br} accept",
    ]
    if plan.uplink is not None:
        lines.append(f"        oifname {br} ct state established,related accept")
    lines.append(f"        oifname {br} drop")
    if plan.uplink is not None:
        if allowed:
            lines.append(f"        iifname {br} ip daddr {_set(allowed)} accept")
        lines += [
            f"        iifname {br} ip daddr {_set(BLOCKED_PRIVATE)} drop",
            f"        iifname {br} oifname {_quote(plan.uplink)} meta nfproto ipv4 accept",
        ]
    lines += [f"        iifname {br} drop", "    }"]
    if plan.uplink is not None:
        lines += [
            "",
            "    chain postrouting {",
            "        type nat hook postrouting priority srcnat; policy accept;",
            f"        ip saddr {plan.subnet} ip daddr != {plan.subnet} oifname != {br} masquerade",
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def delete_script(bridge: str) -> str:
    """Delete our table if it exists (create-then-delete never fails on a missing table)."""
    return _delete_table(table_name(bridge))


def _delete_table(table: str) -> str:
    return f"table inet {table}\ndelete table inet {table}\n"


# -- I/O ------------------------------------------------------------------------------


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
#: concurrent runs contend for the ruleset's commit lock: measured with 200 LAN tables in a
#: namespace, 100 deletes at once took 16.6 s, one after another about 5 s, and one
#: script deleting all 100 tables 0.08 s (see :class:`_TableDeleter`).
_NFT_LOCK = trio.Lock()


async def _nft(args: Sequence[str], script: str | None = None) -> str:
    async with _NFT_LOCK:
        return await _run_nft(args, script)


async def _run_nft(args: Sequence[str], script: str | None = None) -> str:
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


async def _read_note(bridge: str) -> tuple[bool, TableNote | None]:
    """(table exists, its note) for our table, without failing when nft is missing."""
    if shutil.which("nft") is None:
        return False, None
    try:
        text = await _nft(["list", "table", "inet", table_name(bridge)])
    except SetupError:
        return False, None
    # nft's JSON output leaves table comments out (nftables 1.0.6), so read the text.
    m = _COMMENT.search(text)
    return True, TableNote.parse(m.group(1) if m else None)


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


async def clear_leftover_table(bridge: str) -> None:
    """Undo what a killed run left: put ip_forward back (if it recorded a value), then
    drop its table.

    The caller has already made sure no live wsnic-trio owns this bridge.
    """
    exists, note = await _read_note(bridge)
    if not exists:
        return
    if note is not None and note.pid and pid_is_wsnic(note.pid):
        raise SetupError(
            f"nftables table inet {table_name(bridge)} belongs to a running wsnic-trio "
            f"(pid {note.pid}); stop it first or choose another name with --bridge"
        )
    if note is not None:
        await _restore_recorded(note)
    await delete_table(table_name(bridge))
    log.warning(
        "removed nftables table inet %s left behind by an earlier run%s",
        table_name(bridge),
        f" (pid {note.pid})" if note is not None else "",
    )


class _TableDeleter:
    """Deletes tables in batches: a table asked for while another batch runs goes in the
    next one. When the server stops, every LAN lets go of its table at the same moment;
    one ``nft -f`` for all of them takes about as long as one for a single table, where
    200 runs in a row would outlast each LAN's clean-up timeout.

    A batch that fails or is cancelled puts its tables back, so the next caller retries
    them (a create-then-delete script cannot fail on a table that is already gone).
    """

    def __init__(self) -> None:
        self.pending: set[str] = set()

    async def delete(self, table: str) -> None:
        self.pending.add(table)
        async with _NFT_LOCK:
            if table not in self.pending:
                return  # an earlier batch took it
            batch = sorted(self.pending)
            self.pending.clear()
            try:
                await _run_nft(["-f", "-"], "".join(_delete_table(t) for t in batch))
            except BaseException:
                self.pending.update(batch)
                raise


_DELETER = _TableDeleter()


async def delete_table(table: str) -> None:
    """Delete table ``inet TABLE`` if it exists (batched with concurrent deletes)."""
    await _DELETER.delete(table)


# -- ip_forward: one switch for the namespace, shared by every LAN that does NAT ----------

#: The table that remembers, for the next start after a crash, what ip_forward was.
_FORWARD_TABLE = "wsnic_trio_forward_{pid}"
_FORWARD_TABLE_NAME = re.compile(r"^table inet (wsnic_trio_forward_(\d+))$", re.MULTILINE)


class _Forwarding:
    """``net.ipv4.ip_forward`` belongs to the whole namespace, and any number of LANs of
    this server may need it on (LANs made on demand come and go in any order). The first
    one turns it on and writes the old value into a table of its own (the record for the
    next start if this process is killed); the last one to stop puts the value back."""

    def __init__(self) -> None:
        self.users = 0
        self.before: str | None = None
        self.lock = trio.Lock()
        #: Whether a killed run's record has been looked for (see clear_leftover_forwarding).
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
            await delete_table(_FORWARD_TABLE.format(pid=pid))


_FORWARDING = _Forwarding()


async def clear_leftover_forwarding() -> None:
    """Put ip_forward back as a killed run found it (its forward table says how).

    Once per process, before any LAN of this run claims forwarding: listing every table
    makes nft read the whole ruleset (2.7 s with 200 LAN tables), far too slow to repeat
    for each LAN made on demand, and a killed run's record can only predate this run.
    """
    async with _FORWARDING.lock:
        if _FORWARDING.leftovers_cleared or shutil.which("nft") is None:
            return
        listing = await _nft(["list", "tables"])
        for table, pid_text in _FORWARD_TABLE_NAME.findall(listing):
            pid = int(pid_text)
            if pid == os.getpid() or pid_is_wsnic(pid):
                continue  # ours, or a running server's
            text = await _nft(["list", "table", "inet", table])
            m = _COMMENT.search(text)
            note = TableNote.parse(m.group(1) if m else None)
            if note is not None:
                await _restore_recorded(note)
            await delete_table(table)
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
    """Install the LAN's table (with ``-i``: NAT, and forwarding on); undo on exit.

    Yields the uplink's name, or None without ``-i``.
    """
    check_nft()
    uplink = await _find_uplink(lan) if lan.enable_inet else None
    forwarding = uplink is not None
    plan = NatPlan(
        bridge=lan.bridge,
        subnet=lan.subnet,
        bridge_address=lan.bridge_address,
        uplink=uplink,
        allow_private=lan.allow_private,
        # ip_forward has a table of its own (_Forwarding): the LANs share it.
        note=TableNote(pid, lan.bridge, None),
    )
    table = table_name(lan.bridge)
    installed = claimed = False
    try:
        await _nft(["-f", "-"], build_ruleset(plan))
        installed = True
        if uplink is None:
            log.info(
                "LAN isolated: nothing forwarded into or out of %s (table inet %s)",
                lan.bridge,
                table,
            )
        else:
            log.info("NAT on: %s masqueraded out of %s (table inet %s)", lan.subnet, uplink, table)
        if forwarding:
            await _FORWARDING.claim(pid)
            claimed = True
        yield uplink
    finally:
        with trio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            if claimed:
                await _FORWARDING.release(pid)
            if installed:
                await delete_table(table)
                log.info(
                    "%s off: table inet %s deleted", "NAT" if forwarding else "host filter", table
                )
