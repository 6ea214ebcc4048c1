"""Text a peer chooses (its socket name) or a secret the user typed (a token in a URL)
never reaches a log line or a terminal as it is. No root needed: real unix sockets."""

from __future__ import annotations

import os
import socket

import pytest

from wsnic_trio.cli.connect import shown_url
from wsnic_trio.control.ctl import show_clients, table
from wsnic_trio.transports.dgram import _name
from wsnic_trio.transports.uml_bess import _remote
from wsnic_trio.util.text import printable

#: A path a hostile VM could bind: a forged log line, and a terminal escape.
HOSTILE = "vm\n2025-01-01 wsnic-trio[1] INFO client 9 connected: ws \x1b[2Jx\u202e"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("/run/vm.sock", "/run/vm.sock"),
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("right\u202eto-left", "right\\u202eto-left"),
        ("back\\slash", "back\\\\slash"),  # doubled, so an escape cannot be faked
        ("bad\udcffbyte", "bad\\xffbyte"),  # a byte that was not UTF-8 (surrogateescape)
        ("caf\u00e9 \u6771\u4eac", "caf\u00e9 \u6771\u4eac"),  # printable text stays
    ],
)
def test_printable_escapes_what_is_not_visible(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_cuts_long_text() -> None:
    assert printable("a" * 300, 10) == "a" * 10 + "..."


def is_safe(text: str) -> bool:
    return text.isprintable()


def test_datagram_peer_names_are_escaped(sockdir: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(os.path.join(sockdir, "srv"))
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(os.path.join(sockdir, HOSTILE))
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(b"\0wsnic-test\n\xff" + os.urandom(4).hex().encode())
    try:
        peer.sendto(b"x", server.getsockname())
        abstract.sendto(b"y", server.getsockname())
        _, addr = server.recvfrom(10)
        name = _name(addr)
        assert is_safe(name), name
        assert name == f"unix:{sockdir}/vm\\x0a2025-01-01 wsnic-trio[1] INFO client 9 " + (
            "connected: ws \\x1b[2Jx\\u202e"
        )
        _, addr = server.recvfrom(10)
        name = _name(addr)
        assert is_safe(name) and name.startswith("unix:@wsnic-test\\x0a\\xff"), name
    finally:
        for sock in (server, peer, abstract):
            sock.close()


def test_seqpacket_peer_names_are_escaped(sockdir: str) -> None:
    path = os.path.join(sockdir, "bess")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen()
    uml = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    uml.bind(os.path.join(sockdir, HOSTILE))
    uml.connect(path)
    conn, _ = listener.accept()
    try:
        name = _remote(conn, path)
        assert is_safe(name) and "\\x0a2025-01-01" in name and "\\x1b[2J" in name, name
    finally:
        for sock in (listener, uml, conn):
            sock.close()


def test_ctl_tables_escape_cells() -> None:
    text = table(["remote", "hostname"], [("unix:/x\x1b[2J", "evil\nHOST  12")])
    assert text.splitlines() == [
        "REMOTE          HOSTNAME",
        "unix:/x\\x1b[2J  evil\\x0aHOST  12",
    ]
    # What the server escaped already is shown as it is, not escaped twice.
    assert table(["remote"], [("unix:/vm\\x0a",)]).splitlines()[1] == "unix:/vm\\x0a"
    client = {
        "id": 1,
        "lan": "default",
        "transport": "dgram",
        "remote": "unix:/x\x07",
        "tap": "wstap0",
        "mac": None,
        "ip": None,
        "hostname": None,
        "connected_since": None,
        "frames_in": 0,
        "bytes_in": 0,
        "frames_out": 0,
        "bytes_out": 0,
        "drops": {},
    }
    shown = show_clients({"clients": [client]})
    assert "\x07" not in shown and "unix:/x\\x07" in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ws://relay:8086/?token=s3cret", "ws://relay:8086/?token=***"),
        ("wss://relay/lan?x=1&token=s3cret&y=2", "wss://relay/lan?x=1&token=***&y=2"),
        ("ws://relay/?%74oken=s3cret", "ws://relay/?%74oken=***"),  # as the server decodes it
        ("ws://relay/?tokens=1", "ws://relay/?tokens=1"),
        ("qemu+unix:/run/vm.sock", "qemu+unix:/run/vm.sock"),
    ],
)
def test_connect_hides_the_token_of_its_url(url: str, shown: str) -> None:
    assert shown_url(url) == shown
