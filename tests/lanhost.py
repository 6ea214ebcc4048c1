"""Helpers for DHCP/DNS/NAT tests: LAN clients with a real DHCP client, host snapshots.

A client is a namespace linked to the server's namespace by a veth (the WebSocket path)
and running ``wsnic-trio connect``; its TAP ``lan0`` is configured by busybox ``udhcpc``
with the script below, which records what the lease said.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from .conftest import require
from .netns import NetNS, NsFactory, NsProcess

BUSYBOX = shutil.which("busybox") or "/bin/busybox"

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc -s script: apply the lease to $interface and record its fields in $LEASE_OUT.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        first_router=""
        for r in $router; do [ -z "$first_router" ] && first_router="$r"; done
        [ -n "$first_router" ] && ip route replace default via "$first_router" dev "$interface"
        {
            echo "ip=$ip"
            echo "mask=$mask"
            echo "router=$router"
            echo "dns=$dns"
            echo "domain=$domain"
            echo "lease=$lease"
            echo "serverid=$serverid"
        } > "$LEASE_OUT"
        ;;
esac
exit 0
"""


def require_tools() -> None:
    require(os.access(BUSYBOX, os.X_OK), "busybox (busybox-static) is not installed")
    require(shutil.which("dnsmasq") is not None, "dnsmasq (dnsmasq-base) is not installed")
    require(shutil.which("nft") is not None, "nft (nftables) is not installed")


def wsnic() -> list[str]:
    return [sys.executable, "-m", "wsnic_trio"]


class LanClient:
    """A namespace on the LAN through ``wsnic-trio connect`` with TAP ``lan0``."""

    def __init__(self, ns: NetNS, connect: NsProcess, tmp: Path) -> None:
        self.ns = ns
        self.connect = connect
        self.tmp = tmp

    async def dhcp(self, hostname: str | None = None) -> dict[str, str]:
        """Run udhcpc once on lan0; returns the lease fields the script recorded."""
        script = self.tmp / f"udhcpc-{self.ns.name}.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        out = self.tmp / f"lease-{self.ns.name}.env"
        argv = [
            "env",
            f"LEASE_OUT={out}",
            BUSYBOX,
            "udhcpc",
            "-i",
            "lan0",
            "-s",
            str(script),
            "-f",
            "-q",
            "-n",
            "-t",
            "10",
            "-T",
            "1",
        ]
        if hostname is not None:
            argv += ["-x", f"hostname:{hostname}"]
        result = await self.ns.exec(*argv, timeout=60)
        assert result.returncode == 0, (result.stdout + result.stderr).decode()
        fields = {}
        for line in out.read_text().splitlines():
            key, _, value = line.partition("=")
            fields[key] = value.strip()
        return fields


async def add_client(
    world: NsFactory,
    server_ns: NetNS,
    tmp: Path,
    index: int,
    tag: str = "c",
    wait: bool = True,
    extra: tuple[str, ...] = (),
    path: str = "/",
) -> LanClient:
    """A client namespace joined to the server's ws:// listener (which must bind 0.0.0.0).

    With ``wait=False`` the client may start before the server; it retries until connected.
    """
    ns = world.new(tag)
    base = 4 * index
    world.link(server_ns, f"198.18.0.{base + 1}/30", ns, f"198.18.0.{base + 2}/30")
    proc = await ns.start(
        [*wsnic(), "connect", f"ws://198.18.0.{base + 1}:8086{path}", "--tap", "lan0", *extra],
        label=f"connect-{tag}",
    )
    if wait:
        await proc.log.wait_for(r"connected to ws://")
    return LanClient(ns, proc, tmp)


def snapshot(ns: NetNS) -> dict[str, str]:
    """Everything the server may change inside its namespace, as text to compare."""
    # IPv4 only for addresses and routes: IPv6 link-local addresses of the test's own
    # veths change state (DAD) on their own; a leftover bridge or TAP shows under links.
    rundir = Path("/run/wsnic-trio") / f"net{netns_inode(ns)}-wsbr0"
    return {
        "links": ns.ip("-o", "link", "show").stdout,
        "addresses": ns.ip("-o", "-4", "addr", "show").stdout,
        "routes": ns.ip("-4", "route", "show", "table", "all").stdout,
        "run_dir": "present" if rundir.exists() else "absent",
        "nft": _in_ns(ns, "nft", "list", "ruleset"),
        "ip_forward": _in_ns(ns, "sysctl", "-n", "net.ipv4.ip_forward"),
        "processes": " ".join(sorted(_ns_commands(ns))),
    }


def _in_ns(ns: NetNS, *argv: str) -> str:
    from .netns import run

    return run("ip", "netns", "exec", ns.name, *argv).stdout


def _ns_commands(ns: NetNS) -> list[str]:
    """Names of the processes inside ``ns`` that are not the test's own long-lived ones."""
    from .netns import run

    names = []
    own = {p.pid for p in ns.processes if p.proc.returncode is None}
    for pid in run("ip", "netns", "pids", ns.name, check=False).stdout.split():
        if int(pid) in own:
            continue
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def forget_stale_run_dir(ns: NetNS) -> None:
    """A brand-new namespace may reuse the inode of one deleted while its server was
    being killed; that run's directory is stale, not part of this test's "before"."""
    shutil.rmtree(Path("/run/wsnic-trio") / f"net{netns_inode(ns)}-wsbr0", ignore_errors=True)


def run_dirs() -> list[str]:
    root = Path("/run/wsnic-trio")
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def netns_inode(ns: NetNS) -> int:
    return os.stat(f"/run/netns/{ns.name}").st_ino


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie, not reaped) process."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def watchdog_of(dnsmasq_pid: int) -> int | None:
    """The pid of the server's watchdog process for one dnsmasq."""
    marker = b"wsnic-trio-dnsmasq-watchdog\0" + str(dnsmasq_pid).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                    return int(entry)
            except OSError:
                continue
    return None
