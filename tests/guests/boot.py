"""Command lines for booting the test guests, and parsing what they print.

Nothing here starts a process: the (trio) tests run the returned argv with
``trio.run_process`` / ``trio.open_process`` and feed the console text
(stdout) to :func:`parse_results`.

Example::

    images = build_guests()
    argv = qemu_argv(
        images,
        "stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/q.sock",
        mac=guest_mac(1),
        cmdline_extra=guest_cmdline(hostname="q1", ping=["192.168.86.1"]),
    )
    proc = await trio.run_process(argv, capture_stdout=True, check=False)
    res = parse_results(proc.stdout.decode(errors="replace"))
    assert res.lease is not None and res.pings["192.168.86.1"].ok
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .build import GuestBuildError, GuestImages, build_guests

__all__ = [
    "MARKER",
    "GuestBuildError",
    "GuestImages",
    "GuestResults",
    "HttpResult",
    "Lease",
    "PingResult",
    "build_guests",
    "guest_cmdline",
    "guest_mac",
    "parse_results",
    "qemu_argv",
    "uml_argv",
    "uml_env",
]

#: Every result line of the guest starts with this.
MARKER = "WSNIC-GUEST"

QEMU_CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=3 ipv6.disable=1"
UML_CMDLINE = "panic=-1 quiet loglevel=3"


def guest_mac(index: int, prefix: str = "52:54:00:86") -> str:
    """A stable locally administered-style MAC for guest number ``index``."""
    if not 0 <= index <= 0xFFFF:
        raise ValueError("guest index out of range")
    return f"{prefix}:{index >> 8:02x}:{index & 0xFF:02x}"


def guest_cmdline(
    *,
    hostname: str | None = None,
    ping: Iterable[str] = (),
    http: Iterable[str] = (),
    resolve: Iterable[str] = (),
    arping: Iterable[str] = (),
    serve: bool = False,
    static: str | None = None,
    gateway: str | None = None,
    extra: Mapping[str, str | int] | None = None,
) -> str:
    """Build the ``wsnic.*`` kernel parameters (see README.md)."""
    parts: list[str] = []
    if hostname:
        parts.append(f"wsnic.hostname={hostname}")
    pings = list(ping)
    if pings:
        parts.append("wsnic.ping=" + ",".join(pings))
    parts.extend(f"wsnic.http={url}" for url in http)
    names = list(resolve)
    if names:
        parts.append("wsnic.resolve=" + ",".join(names))
    arpings = list(arping)
    if arpings:
        parts.append("wsnic.arping=" + ",".join(arpings))
    if serve:
        parts.append("wsnic.serve=1")
    if static:
        parts.append(f"wsnic.static={static}")
    if gateway:
        parts.append(f"wsnic.gw={gateway}")
    for key, value in (extra or {}).items():
        parts.append(f"wsnic.{key}={value}")
    for part in parts:
        if any(c.isspace() for c in part) or '"' in part:
            raise ValueError(f"kernel parameter must not contain blanks or quotes: {part!r}")
    return " ".join(parts)


def _netdev_id(netdev: str) -> str:
    m = re.search(r"(?:^|,)id=([^,]+)", netdev)
    if m is None:
        raise ValueError(f"-netdev value has no id=: {netdev!r}")
    return m.group(1)


def qemu_argv(
    images: GuestImages,
    netdev: str,
    *,
    mac: str,
    cmdline_extra: str = "",
    memory_mb: int = 128,
    extra_args: Iterable[str] = (),
) -> list[str]:
    """argv for the QEMU guest (TCG, serial console on stdout, exits on poweroff).

    ``netdev`` is the ``-netdev`` value, e.g.
    ``stream,id=n0,server=off,addr.type=unix,addr.path=/run/x.sock``,
    ``stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=9000``,
    ``dgram,id=n0,local.type=unix,local.path=A,remote.type=unix,remote.path=B`` or
    ``tap,id=n0,ifname=tap0,script=no,downscript=no``.
    """
    nid = _netdev_id(netdev)
    return [
        images.qemu_binary,
        "-accel",
        "tcg",
        "-nodefaults",
        "-no-user-config",
        "-m",
        str(memory_mb),
        "-smp",
        "1",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
        "-kernel",
        str(images.qemu_kernel),
        "-initrd",
        str(images.qemu_initrd),
        "-append",
        f"{QEMU_CMDLINE} {cmdline_extra}".strip(),
        "-netdev",
        netdev,
        "-device",
        f"virtio-net-pci,netdev={nid},mac={mac},romfile=",
        *extra_args,
    ]


def uml_argv(
    images: GuestImages,
    vec: str,
    *,
    mac: str,
    cmdline_extra: str = "",
    memory_mb: int = 64,
    umid: str | None = None,
    uml_dir: Path | str | None = None,
) -> list[str]:
    """argv for the User Mode Linux guest; console output goes to stdout.

    ``vec`` is the value after ``vec0:``, e.g.
    ``transport=bess,dst=/run/wsnic/bess.sock,src=/tmp/uml-1.sock`` or
    ``transport=tap,ifname=tap0``.  ``mac=`` is appended.  Run it with the
    environment from :func:`uml_env` (UML needs a writable ``TMPDIR`` for
    its memory file).  ``uml_dir`` (default: UML's ``~/.uml``) holds the
    ``umid`` pid/mconsole files; pass a temporary directory in tests.
    """
    argv = [
        str(images.uml_binary),
        f"mem={memory_mb}M",
        f"initrd={images.uml_initrd}",
        "con=null",
        "ssl=null",
        "con0=null,fd:1",
        f"vec0:{vec},mac={mac}",
    ]
    if umid:
        argv.append(f"umid={umid}")
    if uml_dir is not None:
        argv.append(f"uml_dir={uml_dir}")
    argv.extend(f"{UML_CMDLINE} {cmdline_extra}".split())
    return argv


def uml_env(tmpdir: Path | str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for :func:`uml_argv`: ``base`` (default os.environ) + TMPDIR."""
    env = dict(os.environ if base is None else base)
    env["TMPDIR"] = str(tmpdir)
    return env


# ---------------------------------------------------------------------------
# results


@dataclasses.dataclass
class Lease:
    ip: str
    prefix: int | None
    router: str | None
    dns: str | None
    server: str | None
    uptime: float | None
    static: bool = False


@dataclasses.dataclass
class PingResult:
    target: str
    ok: bool
    tries: int | None
    rtt_ms: float | None


@dataclasses.dataclass
class HttpResult:
    url: str
    ok: bool
    size: int | None = None
    sha256: str | None = None
    body: bytes | None = None  # only for bodies of at most 512 bytes


@dataclasses.dataclass
class GuestResults:
    lines: list[str] = dataclasses.field(default_factory=list)
    boot: dict[str, str] | None = None
    iface: str | None = None
    mac: str | None = None
    lease: Lease | None = None
    pings: dict[str, PingResult] = dataclasses.field(default_factory=dict)
    http: dict[str, HttpResult] = dataclasses.field(default_factory=dict)
    resolved: dict[str, str | None] = dataclasses.field(default_factory=dict)
    arpings: dict[str, bool] = dataclasses.field(default_factory=dict)
    ready: dict[str, str] | None = None
    done: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def ip(self) -> str | None:
        return self.lease.ip if self.lease else None


_LINE = re.compile(rf"{MARKER} (\S+)(.*)$")


def _kv(text: str) -> tuple[list[str], dict[str, str]]:
    words: list[str] = []
    pairs: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            pairs[key] = value
        else:
            words.append(token)
    return words, pairs


def _opt(value: str | None) -> str | None:
    return None if value in (None, "", "none", "?") else value


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_results(console_text: str) -> GuestResults:
    """Collect the ``WSNIC-GUEST`` lines of a guest console transcript.

    Tolerates CR/LF, ANSI noise and kernel messages before the marker on the
    same line; later lines for the same ping target/URL win.
    """
    res = GuestResults()
    for raw in console_text.replace("\r", "\n").split("\n"):
        m = _LINE.search(raw)
        if m is None:
            continue
        kind, rest = m.group(1), m.group(2)
        res.lines.append(f"{MARKER} {kind}{rest}".rstrip())
        words, kv = _kv(rest)
        if kind == "boot":
            res.boot = kv
        elif kind == "iface":
            res.iface, res.mac = kv.get("name"), kv.get("mac")
        elif kind in ("lease", "static"):
            res.lease = Lease(
                ip=kv.get("ip", ""),
                prefix=_int(kv.get("prefix")),
                router=_opt(kv.get("router")),
                dns=_opt(kv.get("dns")),
                server=_opt(kv.get("server")),
                uptime=_float(kv.get("uptime")),
                static=kind == "static",
            )
        elif kind == "ping" and len(words) >= 2:
            res.pings[words[0]] = PingResult(
                target=words[0],
                ok=words[1] == "ok",
                tries=_int(kv.get("tries")),
                rtt_ms=_float(_opt(kv.get("rtt_ms"))),
            )
        elif kind == "http" and words:
            url = kv.get("url", "")
            body = kv.get("body64")
            res.http[url] = HttpResult(
                url=url,
                ok=words[0] == "ok",
                size=_int(kv.get("bytes")),
                sha256=kv.get("sha256"),
                body=base64.b64decode(body) if body is not None else None,
            )
        elif kind == "resolve" and len(words) >= 2:
            res.resolved[words[0]] = kv.get("addr") if words[1] == "ok" else None
        elif kind == "arping" and len(words) >= 2:
            res.arpings[words[0]] = words[1] == "ok"
        elif kind == "ready":
            res.ready = kv
        elif kind == "done":
            res.done = True
        elif kind == "error":
            res.errors.append(rest.strip())
    return res
