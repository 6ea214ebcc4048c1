"""A tiny DNS server for tests: ``python -m tests.dnsresponder ADDR NAME=IPV4...``.

It stands in for "the Internet's" resolver in an upstream namespace (or for a stub
resolver on a loopback address). Every query it gets is printed as ``query NAME TYPE``
(names in lower case, without the final dot), so a test can tell what reached it and
what did not. Known names get their A record (and an empty answer for other types);
everything else gets NXDOMAIN. UDP only, port 53, answers with TTL 0 so that no cache
hides a later query.
"""

from __future__ import annotations

import socket
import struct
import sys

_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 16: "TXT", 28: "AAAA", 33: "SRV"}


def _question(packet: bytes) -> tuple[str, int, int]:
    """(name, type, offset after the question) of the first question."""
    labels: list[str] = []
    pos = 12
    while packet[pos]:
        length = packet[pos]
        labels.append(packet[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    qtype = struct.unpack_from("!H", packet, pos + 1)[0]
    return ".".join(labels).lower(), qtype, pos + 5


def answer(packet: bytes, records: dict[str, str]) -> tuple[str, bytes]:
    """(what to log, the reply) for one query."""
    name, qtype, end = _question(packet)
    query_id, flags = struct.unpack_from("!HH", packet)
    known = name in records
    rcode = 0 if known else 3
    reply_flags = 0x8080 | (flags & 0x0100) | rcode  # QR, RA, copy RD
    answers = b""
    if known and qtype == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(records[name])
    header = struct.pack("!HHHHHH", query_id, reply_flags, 1, 1 if answers else 0, 0, 0)
    return f"query {name} {_TYPES.get(qtype, qtype)}", header + packet[12:end] + answers


def main(argv: list[str]) -> None:
    address, *pairs = argv
    records = dict(pair.lower().split("=", 1) for pair in pairs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    print(f"dns responder on {address}:53", flush=True)
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            line, reply = answer(packet, records)
        except (IndexError, struct.error):
            print(f"malformed query from {peer[0]}", flush=True)
            continue
        print(line, flush=True)
        sock.sendto(reply, peer)


if __name__ == "__main__":
    main(sys.argv[1:])
