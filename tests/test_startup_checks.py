"""Every path an option names is checked before the host is touched.

For each bad path the server exits with code 2 and one error line that names the path,
before it made the bridge (its log never says so), and leaves the namespace exactly as
it was (the snapshot the restore tests compare: links, IPv4 addresses and routes, the
nft ruleset, forwarding sysctls, the LAN's run directory, processes).
"""

from __future__ import annotations

import pwd
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from .lanhost import forget_stale_run_dir, require_tools
from .netns import NetNS, NsFactory, NsProcess
from .test_restore import snapshot
from .test_security import write_cert

#: Log lines of the steps that change the host: none may appear.
_HOST_CHANGED = r"bridge \S+ up|LAN isolated|NAT on|dnsmasq ready|ready: LAN"

#: Runs the rest of argv in a private mount namespace where "$0" is mounted read-only.
_READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'


class Files:
    """What a case may point at: a certificate with its key apart, and one holding
    both, a regular file, a directory nobody but root may write to."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cert, self.key = write_cert(trustme.CA(), tmp, "server")
        self.file = tmp / "a-file"
        self.file.write_text("not a directory\n")
        self.garbage = tmp / "garbage.crt"
        self.garbage.write_text("not a certificate\n")
        self.root_only = tmp / "root-only"
        self.root_only.mkdir(mode=0o700)
        self.read_only = tmp / "read-only"
        self.read_only.mkdir()


#: case -> (arguments, the path the error must name, what it must say about it);
#: "read-only" cases run with Files.read_only mounted read-only.
Case = Callable[[Files], tuple[list[str], Path, str]]

CASES: dict[str, Case] = {
    "pcap-missing": lambda f: (["--pcap", str(f.tmp / "nope")], f.tmp / "nope", "does not exist"),
    "pcap-is-a-file": lambda f: (["--pcap", str(f.file)], f.file, "is not a directory"),
    "pcap-under-a-file": lambda f: (
        ["--pcap", str(f.file / "pcap")],
        f.file / "pcap",
        "does not exist",
    ),
    "pcap-read-only": lambda f: (
        ["--pcap", str(f.read_only)],
        f.read_only,
        r"is not writable \(a read-only file system\)",
    ),
    "pcap-not-writable-by-user": lambda f: (
        ["--pcap", str(f.root_only), "--user", "nobody"],
        f.root_only,
        "is not writable by user nobody",
    ),
    "lease-dir-missing": lambda f: (
        ["--dhcp-lease-file", str(f.tmp / "nope" / "leases")],
        f.tmp / "nope",
        "does not exist",
    ),
    "lease-dir-is-a-file": lambda f: (
        ["--dhcp-lease-file", str(f.file / "leases")],
        f.file,
        "is not a directory",
    ),
    "lease-dir-read-only": lambda f: (
        ["--dhcp-lease-file", str(f.read_only / "leases")],
        f.read_only,
        r"is not writable \(a read-only file system\)",
    ),
    "cert-missing": lambda f: (
        ["-r", str(f.tmp / "nope.crt"), "-k", str(f.key)],
        f.tmp / "nope.crt",
        "cannot read certificate .*: No such file",
    ),
    "key-missing": lambda f: (
        ["-r", str(f.cert), "-k", str(f.tmp / "nope.key")],
        f.tmp / "nope.key",
        "cannot read private key .*: No such file",
    ),
    "cert-without-key": lambda f: (
        ["-r", str(f.cert)],
        f.cert,
        "holds no private key; give the key with -k/--wss-private-key",
    ),
    "garbage-cert": lambda f: (["-r", str(f.garbage)], f.garbage, "holds no PEM certificate"),
    "key-is-a-certificate": lambda f: (
        ["-r", str(f.cert), "-k", str(f.cert)],
        f.cert,
        "holds no PEM private key",
    ),
    "token-file-missing": lambda f: (
        ["--auth-token-file", str(f.tmp / "nope.tokens")],
        f.tmp / "nope.tokens",
        "No such file",
    ),
    "api-token-file-missing": lambda f: (
        ["--api", f"unix:{f.tmp / 'api.sock'}", "--api-token-file", str(f.tmp / "nope.tokens")],
        f.tmp / "nope.tokens",
        "No such file",
    ),
    "socket-dir-missing": lambda f: (
        ["--bess", str(f.file / "bess.sock")],
        f.file,
        "does not exist",
    ),
    "api-socket-dir-missing": lambda f: (
        ["--api", f"unix:{f.file / 'api.sock'}"],
        f.file,
        "does not exist",
    ),
    "config-file-missing": lambda f: (
        ["-c", str(f.tmp / "nope.conf")],
        f.tmp / "nope.conf",
        "No such file",
    ),
}


async def _start(srv: NetNS, files: Files, case: str, args: list[str]) -> NsProcess:
    server = [sys.executable, "-m", "wsnic_trio", *args]
    if "read-only" not in case:
        return await srv.start(server, label="wsnic-trio")
    private_mounts = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _READ_ONLY]
    return await srv.start([*private_mounts, str(files.read_only), *server], label="wsnic-trio")


@pytest.mark.parametrize("case", list(CASES))
async def test_a_bad_path_exits_2_before_the_host_is_touched(
    world: NsFactory, sockdir: str, case: str
) -> None:
    require_tools()
    if case.endswith("-by-user"):
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("no user nobody on this host")
    files = Files(Path(sockdir))  # short: socket paths must fit in 107 bytes
    args, path, problem = CASES[case](files)
    srv = world.new("srv")
    forget_stale_run_dir(srv)
    before = snapshot(srv)
    server = await _start(srv, files, case, args)
    assert await server.wait() == 2, server.log.text()
    text = server.log.text()
    errors = [line for line in text.splitlines() if "wsnic-trio: error:" in line]
    assert len(errors) == 1, text
    assert errors[0].startswith("wsnic-trio: error: "), text
    assert str(path) in errors[0], errors[0]
    assert not server.log.find(_HOST_CHANGED), text
    assert server.log.find(problem), errors[0]
    assert "Traceback" not in text
    assert snapshot(srv) == before
