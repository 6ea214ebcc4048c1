"""dnsmasq's lease file as a table the server can ask: which address does this MAC hold?

dnsmasq rewrites the file on every change, so the table re-reads it when its
modification time moves, from a background task, never on the frame path. The frame
path only does a dictionary lookup.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

__all__ = ["Lease", "LeaseTable", "parse_leases"]

log = logging.getLogger("wsnic_trio.leases")

POLL_INTERVAL = 0.25


@dataclasses.dataclass(frozen=True)
class Lease:
    mac: bytes
    ip: ipaddress.IPv4Address
    hostname: str | None
    expires: int  # seconds since the epoch; 0 means infinite


def parse_leases(text: str) -> dict[bytes, Lease]:
    """Parse dnsmasq's ``EXPIRY MAC IP HOSTNAME CLIENT-ID`` lines (IPv4 only).

    Malformed lines are skipped: the file is dnsmasq's, not ours, and one odd line must
    not blind the server to every other lease.
    """
    leases: dict[bytes, Lease] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] == "duid":
            continue
        try:
            expires = int(parts[0])
            mac = bytes.fromhex(parts[1].replace(":", ""))
            ip = ipaddress.IPv4Address(parts[2])
        except ValueError:
            continue
        if len(mac) != 6:
            continue
        hostname = None if parts[3] == "*" else parts[3]
        leases[mac] = Lease(mac, ip, hostname, expires)
    return leases


class LeaseTable:
    """The current leases, refreshed by :meth:`watch`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.leases: dict[bytes, Lease] = {}
        self._by_mac_ip: dict[bytes, bytes] = {}
        self._stamp: tuple[int, int] | None = None
        self._stat_error: int | None = None
        #: Called (in the trio thread) with the old and new table after each change.
        self.on_change: list[Callable[[dict[bytes, Lease], dict[bytes, Lease]], None]] = []
        self._lock = trio.Lock()

    def ip_of(self, mac: bytes) -> bytes | None:
        """The packed IPv4 address leased to ``mac``, or None."""
        return self._by_mac_ip.get(mac)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the table changed (blocking I/O)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            # A directory this account cannot search (--user), say: the table stays as
            # it was; the watcher and every reader go on.
            if self._stat_error != exc.errno:
                log.warning("cannot read lease file %s: %s", self.path, exc.strerror)
                self._stat_error = exc.errno
            return False
        else:
            stamp = (st.st_mtime_ns, st.st_size)
        self._stat_error = None
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        text = ""
        if stamp is not None:
            try:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                log.warning("cannot read lease file %s: %s", self.path, exc.strerror)
                return False
        self.leases = parse_leases(text)
        self._by_mac_ip = {mac: lease.ip.packed for mac, lease in self.leases.items()}
        return True

    def _unchanged(self) -> bool:
        """Whether the file is surely as last read, by one ``stat`` in the Trio thread.

        Every LAN's watcher asks four times a second: with 205 LANs, a worker thread per
        question cost the idle server 19 % of a core, against 7 % with this
        (``python -m bench --lans``). A ``stat`` of the lease file (in /run, a tmpfs,
        unless --dhcp-lease-file says otherwise) costs microseconds; reading the file
        still goes to a worker thread. Anything unusual (an error) takes the full path.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            stamp = None
        except OSError:
            return False
        else:
            stamp = (st.st_mtime_ns, st.st_size)
        return self._stat_error is None and stamp == self._stamp

    def by_hostname(self, name: str) -> Lease | None:
        """The lease of the client that sent DHCP hostname ``name`` (newest if several)."""
        name = name.lower()
        found = [
            lease
            for lease in self.leases.values()
            if lease.hostname is not None and lease.hostname.lower() == name
        ]
        return max(found, key=lambda lease: lease.expires or 2**63) if found else None

    async def update(self) -> bool:
        """Refresh now (off the trio thread) and tell ``on_change``; True on a change.

        Every reader goes through here, one at a time, so no change is seen by one
        caller and missed by the hooks.
        """
        async with self._lock:
            if self._unchanged():
                await trio.lowlevel.checkpoint()
                return False
            old = self.leases
            changed = await trio.to_thread.run_sync(self.refresh)
            if changed:
                for hook in self.on_change:
                    hook(old, self.leases)
            return changed

    async def watch(self) -> None:
        while True:
            await self.update()
            await trio.sleep(POLL_INTERVAL)
