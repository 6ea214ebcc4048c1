"""End-to-end: real Linux guests (QEMU, User Mode Linux) on the server's LAN.

The guests are the tiny images of ``tests/guests`` (a Debian kernel or
``linux.uml`` with a busybox initramfs), built and cached by the session
fixture below. Each guest reports what it did on its console (``WSNIC-GUEST``
lines): the DHCP lease it got, its pings, the sha256 of what it fetched over
HTTP. Every test runs the server, the guests and the helpers inside its own
network namespace; the guests are started once the server's listener is up
(QEMU 7.2 connects once and never retries; UML gives up for good after one
failed connect).

The command lines run here are the ones in docs/qemu.md and docs/uml.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import signal
from pathlib import Path

import pytest

from .guestlan import GATEWAY, GuestLan, lease_domain, make_payload, removed_after
from .guests.boot import guest_cmdline
from .lanhost import BUSYBOX, add_client
from .netns import NsFactory
from .vmclients import exists, taps

POOL = (ipaddress.IPv4Address("192.168.86.2"), ipaddress.IPv4Address("192.168.86.254"))


# ---------------------------------------------------------------------------
# (a) one guest per transport: lease, ping, HTTP


@dataclasses.dataclass(frozen=True)
class Case:
    listener: tuple[str, ...]  # server options
    kind: str  # "qemu" or "uml"
    net: str  # -netdev value (QEMU) or vec0: value (UML)
    remote: str  # regex of the peer name in the server's "connected" line
    connection: bool  # the peer ends when the guest exits (stream, seqpacket)


def case(name: str, d: str) -> Case:
    if name == "qemu-stream-unix":
        return Case(
            ("--qemu", f"unix:{d}/qemu.sock"),
            "qemu",
            f"stream,id=n0,server=off,addr.type=unix,addr.path={d}/qemu.sock",
            rf"qemu unix:{re.escape(d)}/qemu\.sock",
            True,
        )
    if name == "qemu-stream-tcp":
        return Case(
            ("--qemu", "tcp:127.0.0.1:9000"),
            "qemu",
            "stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=9000",
            r"qemu 127\.0\.0\.1:\d+",
            True,
        )
    if name == "uml-bess":
        return Case(
            ("--bess", f"{d}/bess.sock"),
            "uml",
            f"transport=bess,dst={d}/bess.sock,src={d}/uml1.sock",
            rf"bess unix:{re.escape(d)}/uml1\.sock",
            True,
        )
    assert name == "qemu-dgram"
    return Case(
        ("--dgram", f"{d}/vm.sock"),
        "qemu",
        f"dgram,id=n0,local.type=unix,local.path={d}/vm1.sock,"
        f"remote.type=unix,remote.path={d}/vm.sock",
        rf"dgram unix:{re.escape(d)}/vm1\.sock",
        False,  # datagrams: the peer stays until its idle timeout
    )


@pytest.mark.parametrize("name", ["qemu-stream-unix", "qemu-stream-tcp", "uml-bess", "qemu-dgram"])
async def test_guest_gets_a_lease_pings_the_gateway_and_fetches_over_http(
    lan: GuestLan, sockdir: str, tmp_path: Path, name: str
) -> None:
    c = case(name, sockdir)
    server = await lan.start_server(*c.listener)
    await lan.server_line(r"listening on ")
    www = tmp_path / "www"
    www.mkdir()
    digest = make_payload(www)
    http = await lan.start_http(www)
    url = f"http://{GATEWAY}:8000/payload.bin"
    hostname = "g1"
    cmdline = guest_cmdline(hostname=hostname, ping=[GATEWAY], http=[url])

    with removed_after(f"{sockdir}/uml1.sock"):  # UML leaves its src= socket behind
        if c.kind == "qemu":
            guest = await lan.start_qemu(hostname, 1, c.net, cmdline)
        else:
            guest = await lan.start_uml(hostname, 1, c.net, cmdline)
        connected = await lan.server_line(rf"client (\d+) connected: {c.remote} on (wstap\d+)")
        peer, tap = connected.group(1), connected.group(2)
        # The TAP is a port of the bridge while the guest runs.
        lan.check(
            "master wsbr0" in lan.ns.ip("link", "show", tap, check=False).stdout,
            f"{tap} is not a port of wsbr0",
        )
        code, res = await guest.finish()

    lan.check(code == 0, f"the guest exited with {code}")
    lan.check(not res.errors and res.done, f"the guest reported errors: {res.errors}")
    lan.check(res.mac == guest.mac, f"the guest's MAC is {res.mac}, not {guest.mac}")
    lease = res.lease
    lan.check(lease is not None and not lease.static, "the guest got no DHCP lease")
    assert lease is not None
    ip = ipaddress.IPv4Address(lease.ip)
    lan.check(POOL[0] <= ip <= POOL[1], f"leased {ip} is outside the pool")
    lan.check(lease.prefix == 24, f"prefix /{lease.prefix}")
    lan.check(
        (lease.router, lease.dns, lease.server) == (GATEWAY, GATEWAY, GATEWAY),
        f"router {lease.router}, DNS {lease.dns}, DHCP server {lease.server}",
    )
    lan.check(lease_domain(res) == "lan", f"domain {lease_domain(res)}")
    ping = res.pings.get(GATEWAY)
    lan.check(ping is not None and ping.ok, f"ping of the gateway: {ping}")
    got = res.http.get(url)
    lan.check(
        got is not None and got.ok and got.size == 256 * 1024 and got.sha256 == digest,
        f"HTTP fetch: {got}, expected 262144 bytes with sha256 {digest}",
    )
    lan.check(
        http.log.find(rf"^{re.escape(lease.ip)} .*\"GET /payload\.bin HTTP/1\.[01]\" 200"),
        "the HTTP server did not serve the file to the guest's address",
    )
    await lan.server_line(
        rf"dnsmasq: DHCPACK\(wsbr0\) {re.escape(lease.ip)} {guest.mac} {hostname}$"
    )
    if c.connection:
        # The guest is gone: its connection ended, so did its TAP.
        await lan.server_line(rf"client {peer} disconnected")
        await lan.wait_until(lambda: tap not in taps(lan.ns, ready=False), 10, f"{tap} deleted")
    lan.check(not server.log.find(r"Traceback"), "the server logged a traceback")
    lan.check(await server.stop() == 0, "the server did not exit with 0")


# ---------------------------------------------------------------------------
# (b) QEMU, UML and a WebSocket client on one LAN


async def test_qemu_uml_and_websocket_client_reach_each_other(
    world: NsFactory, lan: GuestLan, sockdir: str, tmp_path: Path
) -> None:
    # The WebSocket listener on every address: the client comes in over a veth.
    server = await lan.start_server(
        "-a", "0.0.0.0", "--qemu", f"unix:{sockdir}/qemu.sock", "--bess", f"{sockdir}/bess.sock"
    )
    # 1. The QEMU guest serves HTTP; meanwhile the WebSocket client gets its lease.
    qemu = await lan.start_qemu(
        "qsrv",
        1,
        f"stream,id=n0,server=off,addr.type=unix,addr.path={sockdir}/qemu.sock",
        guest_cmdline(hostname="qsrv", ping=[GATEWAY], serve=True, extra={"lifetime": 600}),
    )
    client = await add_client(world, lan.ns, tmp_path, 0, "ws")
    lan.watch(client.connect)
    lease = await client.dhcp("wsc")
    ws_ip = lease["ip"]
    lan.check(lease["router"] == GATEWAY and lease["dns"] == GATEWAY, f"client lease {lease}")
    await lan.server_line(r"client \d+ connected: ws 198\.18\.0\.2:\d+ on wstap\d+")
    ready = await qemu.wait_line(r"WSNIC-GUEST ready ip=(\S+) .*blob_sha256=(\S+)")
    q_ip, blob_sha = ready.group(1), ready.group(2)

    # 2. The UML guest fetches from the QEMU guest by name (short and qualified), pings
    #    the client, then serves HTTP itself.
    blob_url, index_url = "http://qsrv/blob.bin", "http://qsrv.lan/index.html"
    with removed_after(f"{sockdir}/uml1.sock"):
        uml = await lan.start_uml(
            "usrv",
            2,
            f"transport=bess,dst={sockdir}/bess.sock,src={sockdir}/uml1.sock",
            guest_cmdline(
                hostname="usrv",
                ping=[GATEWAY, ws_ip, "qsrv"],
                resolve=["qsrv"],
                http=[blob_url, index_url],
                serve=True,
                extra={"lifetime": 600},
            ),
        )
        u_ready = await uml.wait_line(r"WSNIC-GUEST ready ip=(\S+) ")
        u_ip = u_ready.group(1)
        res = uml.results()
        lan.check(not res.errors, f"UML guest errors: {res.errors}")
        lan.check(res.resolved.get("qsrv") == q_ip, f"qsrv resolved to {res.resolved}")
        for target in (GATEWAY, ws_ip, "qsrv"):
            ping = res.pings.get(target)
            lan.check(ping is not None and ping.ok, f"UML ping {target}: {ping}")
        blob = res.http.get(blob_url)
        lan.check(
            blob is not None and blob.ok and blob.sha256 == blob_sha,
            f"UML fetched {blob} from the QEMU guest, expected sha256 {blob_sha}",
        )
        index = res.http.get(index_url)
        lan.check(
            index is not None and index.body is not None and f"ip={q_ip}".encode() in index.body,
            f"UML fetched {index} from qsrv.lan",
        )

        # 3. The WebSocket client reaches both guests: ping, DNS, HTTP.
        for ip in (q_ip, u_ip):
            result = await client.ns.exec("ping", "-c", "2", "-i", "0.3", "-W", "3", ip)
            lan.check(result.returncode == 0, f"client ping {ip}:\n{result.stdout.decode()}")
        for name, ip in (("qsrv", q_ip), ("usrv.lan", u_ip)):
            result = await client.ns.exec(BUSYBOX, "nslookup", name, GATEWAY)
            lan.check(ip in result.stdout.decode(), f"nslookup {name}:\n{result.stdout.decode()}")
        for ip, name in ((q_ip, "qsrv"), (u_ip, "usrv")):
            result = await client.ns.exec(
                "timeout", "30", BUSYBOX, "wget", "-q", "-O", "-", f"http://{ip}/index.html"
            )
            body = result.stdout.decode(errors="replace")
            lan.check(
                result.returncode == 0 and f"hostname={name} ip={ip}" in body,
                f"client fetch from {name}: {body!r} {result.stderr.decode()}",
            )
        result = await client.ns.exec(
            "sh",
            "-c",
            f"timeout 30 {BUSYBOX} wget -q -O - http://{q_ip}/blob.bin | sha256sum",
        )
        lan.check(
            result.stdout.decode().split()[:1] == [blob_sha],
            f"client fetched the blob with sha256 {result.stdout.decode()!r}",
        )
        await lan.server_line(r"client \d+ connected: qemu unix:.* on wstap\d+")
        await lan.server_line(rf"client \d+ connected: bess unix:{re.escape(sockdir)}/uml1\.sock")
        lan.check(len(taps(lan.ns)) == 3, f"TAPs: {taps(lan.ns)}")
        for guest in (qemu, uml):
            await guest.stop()
    lan.check(not server.log.find(r"Traceback"), "the server logged a traceback")
    assert await client.connect.stop() == 0
    lan.check(await server.stop() == 0, "the server did not exit with 0")


# ---------------------------------------------------------------------------
# outbound mode: the server dials a listening QEMU, and survives a restart


async def test_outbound_mode_reaches_a_listening_qemu_across_a_server_restart(
    lan: GuestLan, sockdir: str
) -> None:
    path = f"{sockdir}/vm1-net.sock"
    # QEMU listens first; the server dials it.
    qemu = await lan.start_qemu(
        "q1",
        1,
        f"stream,id=n0,server=on,addr.type=unix,addr.path={path}",
        guest_cmdline(hostname="q1", ping=[GATEWAY], serve=True, extra={"lifetime": 600}),
    )
    await lan.wait_until(lambda: exists(path), 60, f"QEMU listening on {path}")
    server = await lan.start_server("--qemu-connect", f"unix:{path}")
    await lan.server_line(rf"client 1 connected: qemu unix:{re.escape(path)} on wstap\d+")
    ready = await qemu.wait_line(r"WSNIC-GUEST ready ip=(\S+) ")
    ip = ready.group(1)
    res = qemu.results()
    ping = res.pings.get(GATEWAY)
    lan.check(ping is not None and ping.ok, f"ping of the gateway: {ping}")

    # Restart the server: the bridge, dnsmasq and the TAP go away and come back.
    lan.check(await server.stop() == 0, "the server did not exit with 0")
    lan.check("wsbr0" not in lan.ns.links(), "the bridge outlived the server")
    server = await lan.start_server("--qemu-connect", f"unix:{path}")
    await lan.server_line(rf"client 1 connected: qemu unix:{re.escape(path)} on wstap\d+")
    # The guest kept its address and answers from the gateway's side.
    result = await lan.ns.exec("ping", "-c", "3", "-i", "0.3", "-W", "3", ip)
    lan.check(result.returncode == 0, f"ping {ip} after the restart:\n{result.stdout.decode()}")
    result = await lan.ns.exec(
        "timeout", "30", BUSYBOX, "wget", "-q", "-O", "-", f"http://{ip}/index.html"
    )
    body = result.stdout.decode(errors="replace")
    lan.check(f"hostname=q1 ip={ip}" in body, f"index.html after the restart: {body!r}")
    lan.check(qemu.proc.proc.returncode is None, "QEMU exited")
    qemu.proc.send_signal(signal.SIGTERM)
    await lan.server_line(r"client 1 disconnected")
    lan.check(await server.stop() == 0, "the server did not exit with 0")
