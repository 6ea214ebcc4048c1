"""The nftables text of the host filter and NAT, built without any I/O.

Every base chain of every table runs for every packet of the namespace, whatever its
interfaces: with a table of base chains per LAN, 205 LANs cut loopback TCP in a
namespace from 28.5 to 4.5 Gbit/s, and one LAN's relay tenfold (``python -m bench
--lans``). So a server has **one table** (:func:`run_table`) whose few base chains hand
each packet, by a verdict map keyed on its interface (or address), to the chains of the
LAN it concerns: per-packet work is the same with 1 or 1000 LANs. A LAN comes and goes
as a few chains and map elements (:func:`lan_script`, :func:`lan_removal`), each change
one atomic ``nft -f``.

The LAN's chains decide with ``return`` (pass on) or ``drop``, never ``accept``: in one
base chain an ``accept`` of the chains of the packet's input LAN would skip those of its
output LAN, which must agree as well.

Policy, in both modes: client to client is always allowed; the host's own private IPv4
addresses are closed to the LAN, except the bridge address and the allowed networks;
over IPv6 (which the server does not offer the LAN) it reaches on the host only
neighbour discovery, ping of the bridge's link-local address, and replies to what the
host opened. DNS and DHCP on the bridge address answer the LAN and the host itself only.
Nothing is forwarded into or out of the LAN, except with ``-i``: out through the uplink
(IPv4, masqueraded), except to private networks not explicitly allowed; into the LAN
only replies (conntrack established/related); and with ``route_to``, connections the LAN
opens to other LANs of the server. Every base chain's policy is accept, so traffic that
is not a LAN's is left to the host's own firewall.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Sequence

__all__ = [
    "BLOCKED_PRIVATE",
    "ROUTE_MARK",
    "NatPlan",
    "TableNote",
    "build_ruleset",
    "delete_table_script",
    "lan_removal",
    "lan_script",
    "run_table",
    "table_name",
]

# Networks a guest must not reach through the host unless --allow-private says so:
# RFC 1918, shared address space (RFC 6598) and link-local (where cloud metadata lives).
BLOCKED_PRIVATE: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
)
#: The conntrack mark of a connection one LAN may open to another (``route_to``). The
#: base forward chain accepts what carries it; only the routing LAN's chain sets it, and
#: only on a connection's first packet from its bridge, so a reached LAN cannot open one
#: back.
ROUTE_MARK = 0x57534E01
_NOTE_PREFIX = "wsnic-trio"
#: The verdict maps of the run table, and what each is keyed on.
_MAPS = {
    "in_lan": "type ifname : verdict",  # input, by input interface
    "dns_guard": "type ipv4_addr : verdict",  # input to a bridge's DNS/DHCP, by address
    "to_lan": "type ifname : verdict",  # forward, by output interface
    "from_lan": "type ifname : verdict",  # forward, by input interface
    "route_lan": "type ifname : verdict",  # route marking, by input interface
    # NAT, by input interface (an interval map keyed on the subnet cannot take an
    # element for a chain made in the same transaction: nftables 1.0.6 answers ENOENT).
    "post_lan": "type ifname : verdict",
}


def table_name(bridge: str) -> str:
    """A table named after a bridge (the rootless helper's, one per LAN): nft
    identifiers allow fewer characters than interface names."""
    return "wsnic_trio_" + re.sub(r"[^A-Za-z0-9_]", "_", bridge)


def _chain_suffix(bridge: str) -> str:
    """A bridge name as part of a chain name, one to one: ``_`` doubles, ``-`` and ``.``
    become ``_d`` and ``_p`` (``wsl-a.b`` and ``wsl-a_b`` must not share chains)."""
    return bridge.replace("_", "__").replace("-", "_d").replace(".", "_p")


@dataclasses.dataclass(frozen=True)
class TableNote:
    """What a table's comment remembers about the run that made it.

    ``ip_forward`` is the value to restore after a crash; None when the run does not
    change the sysctl (no ``-i``, or it found forwarding on): a later run must then leave
    it alone, whatever it is, since somebody else (Docker, libvirt) may have changed it
    since. ``bridge`` is ``-`` for a table of the whole run.
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
    """Everything one LAN's rules depend on.

    ``uplink`` None: no ``-i``, so the LAN is isolated (no NAT, no forwarding at all).
    """

    bridge: str
    subnet: ipaddress.IPv4Network
    bridge_address: ipaddress.IPv4Address
    uplink: str | None
    allow_private: Sequence[ipaddress.IPv4Network]
    note: TableNote
    #: Other LANs' subnets (or the pool of LANs on demand) this LAN may open connections to.
    route_to: Sequence[ipaddress.IPv4Network] = ()

    def chains(self) -> dict[str, list[str]]:
        """This LAN's chains (by name) and their rules."""
        br = _quote(self.bridge)
        # nft refuses overlapping intervals in one set; 10.0.0.0/8 and 10.1.0.0/16 become one.
        allowed = list(ipaddress.collapse_addresses(self.allow_private))
        suffix = _chain_suffix(self.bridge)
        # Input from the LAN to the host itself.
        into_host = [f"ip daddr {self.subnet} return"]
        if allowed:
            into_host.append(f"ip daddr {_set(allowed)} return")
        into_host += [
            f"ip daddr {_set(BLOCKED_PRIVATE)} drop",
            "meta nfproto ipv6 ct state established,related return",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } return",
            "ip6 daddr fe80::/10 icmpv6 type echo-request return",
            "meta nfproto ipv6 drop",
        ]
        # Forwarded into the LAN: only replies, with -i.
        into_lan = ["ct state established,related return"] if self.uplink is not None else []
        into_lan.append("drop")
        # Forwarded out of the LAN: with -i, IPv4 out of the uplink, not to private networks.
        out_of_lan = []
        if self.uplink is not None:
            if allowed:
                out_of_lan.append(f"ip daddr {_set(allowed)} return")
            out_of_lan += [
                f"ip daddr {_set(BLOCKED_PRIVATE)} drop",
                f"oifname {_quote(self.uplink)} meta nfproto ipv4 return",
            ]
        out_of_lan.append("drop")
        chains = {
            f"in_{suffix}": into_host,
            # Linux takes a packet for any of its addresses on any interface (the weak
            # host model): without this, the uplink side could ask the LAN's dnsmasq.
            f"guard_{suffix}": [f'iifname != {{ {br}, "lo" }} drop'],
            f"to_{suffix}": into_lan,
            f"from_{suffix}": out_of_lan,
        }
        if self.route_to:
            routes = _set(list(ipaddress.collapse_addresses(self.route_to)))
            chains[f"route_{suffix}"] = [
                f"ip daddr {routes} ct state new ct mark set {ROUTE_MARK:#x}"
            ]
        if self.uplink is not None:
            chains[f"post_{suffix}"] = [
                f"ip saddr {self.subnet} ip daddr != {self.subnet} oifname != {br} masquerade"
            ]
        return chains

    def elements(self) -> dict[str, str]:
        """This LAN's elements, by map (or set): how the base chains find its chains."""
        br = _quote(self.bridge)
        suffix = _chain_suffix(self.bridge)
        found = {
            "in_lan": f"{br} : jump in_{suffix}",
            "dns_guard": f"{self.bridge_address} : jump guard_{suffix}",
            "to_lan": f"{br} : jump to_{suffix}",
            "from_lan": f"{br} : jump from_{suffix}",
            "intra": f"{br} . {br}",
        }
        if self.route_to:
            found["route_lan"] = f"{br} : jump route_{suffix}"
        if self.uplink is not None:
            found["post_lan"] = f"{br} : jump post_{suffix}"
        return found


def _quote(name: str) -> str:
    # Interface names are limited to [A-Za-z0-9_.-] by the config, so quoting is enough.
    return '"' + name + '"'


def _set(networks: Sequence[ipaddress.IPv4Network]) -> str:
    return "{ " + ", ".join(str(n) for n in networks) + " }"


def run_table(table: str, note: TableNote) -> str:
    """The ``nft -f`` script that (re)creates the run's table: its note, its maps and
    its base chains, and no LAN yet. Create-then-delete first, so a leftover table of
    the same name is replaced in the same atomic transaction."""
    lines = [
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        f'    comment "{note.render()}"',
    ]
    for name, spec in _MAPS.items():
        lines.append(f"    map {name} {{ {spec}; }}")
    lines += [
        "    set intra { type ifname . ifname; }",
        "",
        "    chain input {",
        "        type filter hook input priority filter; policy accept;",
        "        meta l4proto { tcp, udp } th dport { 53, 67 } ip daddr vmap @dns_guard",
        "        iifname vmap @in_lan",
        "    }",
        "",
        # Before the forward chain, so that it sees the mark a route sets.
        "    chain route {",
        "        type filter hook forward priority filter - 10; policy accept;",
        "        iifname vmap @route_lan",
        "    }",
        "",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        f"        ct mark {ROUTE_MARK:#x} accept",
        # Frames bridged between two clients: where br_netfilter is loaded (and a new
        # namespace has bridge-nf-call-iptables=1) they pass this hook with the bridge
        # as both in and out device. Client to client is always allowed.
        "        iifname . oifname @intra accept",
        "        oifname vmap @to_lan",
        "        iifname vmap @from_lan",
        "    }",
        "",
        "    chain postrouting {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        # To another LAN of this server: routed with the client's own address.
        f"        ct mark {ROUTE_MARK:#x} accept",
        "        iifname vmap @post_lan",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def lan_script(table: str, plan: NatPlan) -> str:
    """Add one LAN to the run's table. Each chain is flushed first, so applying it again
    (a LAN of the same bridge after a failed removal) leaves each rule once."""
    lines = []
    for chain, rules in plan.chains().items():
        lines += [f"add chain inet {table} {chain}", f"flush chain inet {table} {chain}"]
        lines += [f"add rule inet {table} {chain} {rule}" for rule in rules]
    for name, element in plan.elements().items():
        lines.append(f"add element inet {table} {name} {{ {element} }}")
    return "\n".join(lines) + "\n"


def lan_removal(table: str, plan: NatPlan) -> str:
    """Remove one LAN from the run's table: its elements (nothing jumps to its chains
    any more), then its chains."""
    lines = []
    for name, element in plan.elements().items():
        key = element.split(" : ", 1)[0]
        lines.append(f"delete element inet {table} {name} {{ {key} }}")
    for chain in plan.chains():
        lines += [f"flush chain inet {table} {chain}", f"delete chain inet {table} {chain}"]
    return "\n".join(lines) + "\n"


def delete_table_script(table: str) -> str:
    """Delete a table if it exists (create-then-delete never fails on a missing table)."""
    return f"table inet {table}\ndelete table inet {table}\n"


def build_ruleset(plan: NatPlan) -> str:
    """A table of one LAN's own, named after its bridge: the run table's base chains and
    this LAN (the rootless helper, whose namespace the LAN is alone in)."""
    table = table_name(plan.bridge)
    return run_table(table, plan.note) + lan_script(table, plan)
