"""Build the tiny Linux guests that the end-to-end tests boot.

Everything comes from Debian packages:

* QEMU guest: the kernel of Debian's ``linux-image-amd64`` (downloaded with
  ``apt-get download`` and unpacked, never installed) plus a gzip'ed newc
  initramfs holding ``busybox-static``, the virtio-net modules (with their
  dependencies, in load order), ``/init`` (``init.sh``) and the udhcpc script.
* UML guest: ``/usr/bin/linux.uml`` of ``user-mode-linux`` (the vector
  driver with the ``bess`` and ``tap`` transports is built in) plus the same
  initramfs without modules, loaded with UML's ``initrd=`` option.

The result lives in a cache directory (``/var/cache/wsnic-trio-guests`` or
``$WSNIC_GUEST_CACHE``) under a key hashed from the package versions, the
init scripts and this builder's format version, so a rebuild happens only
when one of them changed.  Missing apt packages are installed
(``apt-get install --no-install-recommends``).  Any failure raises
:class:`GuestBuildError` with a message saying what is missing.

Usage::

    python3 -m tests.guests.build          # build (or reuse) and print paths
    python3 tests/guests/build.py --json   # same, as JSON

    from tests.guests.build import build_guests
    images = build_guests()
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_CACHE",
    "GuestBuildError",
    "GuestImages",
    "build_guests",
    "cache_dir",
    "main",
]

#: Bump when the layout or content of the produced images changes in a way
#: the hashed inputs do not capture.
FORMAT_VERSION = 1

DEFAULT_CACHE = Path("/var/cache/wsnic-trio-guests")
HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "init.sh"
UDHCPC_SCRIPT = HERE / "udhcpc.sh"

KERNEL_META = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
UML_BINARY = Path("/usr/bin/linux.uml")
QEMU_BINARY = "qemu-system-x86_64"

#: apt package -> a file it must provide.
APT_PACKAGES: dict[str, str] = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "user-mode-linux": str(UML_BINARY),
    "busybox-static": str(BUSYBOX),
}

#: Modules the QEMU guest needs; their dependencies are added automatically.
ROOT_MODULES = ("virtio_pci", "virtio_net")
#: Module files considered when resolving dependencies (basename patterns).
MODULE_CANDIDATES = re.compile(r"^(virtio[a-z0-9_]*|failover|net_failover)\.ko(\.xz)?$")


class GuestBuildError(RuntimeError):
    """The guests cannot be built; the message says why and what to do."""


class _DownloadFailed(GuestBuildError):
    """apt-get download failed (stale package lists after a kernel update?)."""


@dataclasses.dataclass(frozen=True)
class GuestImages:
    """Paths of a built guest set (all absolute)."""

    root: Path
    key: str
    qemu_binary: str
    qemu_kernel: Path
    qemu_initrd: Path
    uml_binary: Path
    uml_initrd: Path
    kernel_version: str
    uml_version: str
    busybox_version: str

    def as_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> GuestImages:
        return cls(
            root=Path(data["root"]),
            key=data["key"],
            qemu_binary=data["qemu_binary"],
            qemu_kernel=Path(data["qemu_kernel"]),
            qemu_initrd=Path(data["qemu_initrd"]),
            uml_binary=Path(data["uml_binary"]),
            uml_initrd=Path(data["uml_initrd"]),
            kernel_version=data["kernel_version"],
            uml_version=data["uml_version"],
            busybox_version=data["busybox_version"],
        )


# ---------------------------------------------------------------------------
# helpers


def _log(msg: str) -> None:
    print(f"[guests] {msg}", file=sys.stderr, flush=True)


def _run(
    argv: Sequence[str], *, what: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, env=env, cwd=cwd, check=False
        )
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{what}: command not found: {argv[0]}") from exc
    if proc.returncode != 0:
        raise GuestBuildError(
            f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc.stdout


def cache_dir() -> Path:
    return Path(os.environ.get("WSNIC_GUEST_CACHE") or DEFAULT_CACHE)


def _query(argv: Sequence[str]) -> str | None:
    """What a query command prints, or None where it fails (nothing installed or known)."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def _dpkg_version(package: str) -> str | None:
    out = _query(["dpkg-query", "-W", "-f=${Status}\t${Version}", package])
    if out is None:
        return None
    status, _, version = out.partition("\t")
    return version if status.endswith(" installed") else None


def _apt_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DEBIAN_FRONTEND"] = "noninteractive"
    return env


def _apt_update() -> None:
    _log("apt-get update")
    for attempt in range(30):
        proc = subprocess.run(
            ["apt-get", "-q", "update"],
            capture_output=True,
            text=True,
            env=_apt_env(),
            check=False,
        )
        if proc.returncode == 0:
            return
        if "lock" in (proc.stderr + proc.stdout).lower() and attempt < 29:
            time.sleep(5)  # another apt-get update holds the lists lock
            continue
        raise GuestBuildError(f"apt-get update failed:\n{proc.stderr[-2000:]}")


def _apt_install(packages: Sequence[str]) -> None:
    if os.geteuid() != 0:
        raise GuestBuildError(
            f"apt packages missing: {' '.join(packages)}; run as root or install them:\n"
            f"  apt-get install -y --no-install-recommends {' '.join(packages)}"
        )
    argv = [
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=600",
        *packages,
    ]
    _log("installing " + " ".join(packages))
    proc = subprocess.run(argv, capture_output=True, text=True, env=_apt_env(), check=False)
    if proc.returncode != 0:
        _apt_update()
        proc = subprocess.run(argv, capture_output=True, text=True, env=_apt_env(), check=False)
    if proc.returncode != 0:
        raise GuestBuildError(
            f"apt-get install {' '.join(packages)} failed:\n{proc.stderr[-3000:]}"
        )


def ensure_packages() -> dict[str, str]:
    """Install missing apt packages; return {package: version}."""
    missing = [p for p in APT_PACKAGES if _dpkg_version(p) is None]
    if missing:
        _apt_install(missing)
    versions: dict[str, str] = {}
    for package, needed in APT_PACKAGES.items():
        version = _dpkg_version(package)
        if version is None or not Path(needed).exists():
            raise GuestBuildError(f"package {package} is not usable: {needed} missing")
        versions[package] = version
    return versions


def _kernel_package() -> tuple[str, str]:
    """Return (package, version) of the kernel image linux-image-amd64 points to."""

    def query() -> tuple[str, str] | None:
        out = _query(["apt-cache", "show", "--no-all-versions", KERNEL_META])
        if out is None:
            return None
        m = re.search(
            r"^Depends:.*?\b(linux-image-[0-9][^\s,(]*)\s*\(=\s*([^)\s]+)\)",
            out,
            re.MULTILINE,
        )
        return (m.group(1), m.group(2)) if m else None

    found = query()
    if found is None:
        _apt_update()
        found = query()
    if found is None:
        raise GuestBuildError(
            f"cannot find the kernel package {KERNEL_META} depends on (apt-cache show)"
        )
    return found


def _download_deb(package: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    arch = _run(["dpkg", "--print-architecture"], what="dpkg").strip()
    deb = dest / f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
    if deb.is_file():
        return deb
    _log(f"downloading {package}={version}")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        os.chmod(tmp, 0o755)  # let the _apt sandbox user write there
        argv = ["apt-get", "download", "-q", f"{package}={version}"]
        proc = subprocess.run(
            argv, capture_output=True, text=True, cwd=tmp, env=_apt_env(), check=False
        )
        if proc.returncode != 0:
            raise _DownloadFailed(
                f"apt-get download {package}={version} failed:\n{proc.stderr[-2000:]}"
            )
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise GuestBuildError(f"apt-get download {package} produced {debs}")
        debs[0].replace(deb)
    for old in dest.glob("linux-image-*.deb"):  # keep only the current kernel
        if old != deb:
            old.unlink(missing_ok=True)
    return deb


# ---------------------------------------------------------------------------
# kernel modules


def _modinfo_depends(data: bytes) -> list[str]:
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if m is None:
        return []
    return [d for d in m.group(1).decode().split(",") if d]


def _extract_kernel(deb: Path) -> tuple[bytes, dict[str, bytes]]:
    """Return (bzImage, {module name: uncompressed .ko}) from a linux-image deb."""
    bzimage: bytes | None = None
    modules: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                base = name.rsplit("/", 1)[-1]
                if re.fullmatch(r"\./boot/vmlinuz-.*", name):
                    f = tar.extractfile(member)
                    assert f is not None
                    bzimage = f.read()
                elif "/kernel/" in name and MODULE_CANDIDATES.match(base):
                    f = tar.extractfile(member)
                    assert f is not None
                    data = f.read()
                    if base.endswith(".xz"):
                        data = lzma.decompress(data)
                    modules[base.split(".ko")[0].replace("-", "_")] = data
        if proc.wait() != 0:
            raise GuestBuildError(f"dpkg-deb --fsys-tarfile {deb} failed")
    if bzimage is None:
        raise GuestBuildError(f"no /boot/vmlinuz-* in {deb}")
    return bzimage, modules


def _module_load_order(modules: dict[str, bytes]) -> list[str]:
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in visiting:
            raise GuestBuildError(f"module dependency cycle: {' -> '.join(chain)}")
        if name not in modules:
            raise GuestBuildError(
                f"kernel module {name} (needed by {' -> '.join(chain) or 'guest'}) not "
                f"found in the kernel package; extend MODULE_CANDIDATES in build.py"
            )
        visiting.add(name)
        for dep in _modinfo_depends(modules[name]):
            visit(dep, (*chain, name))
        visiting.discard(name)
        order.append(name)

    for root in ROOT_MODULES:
        visit(root, ())
    return order


# ---------------------------------------------------------------------------
# initramfs (newc cpio written here: deterministic, no cpio binary needed)


class _Cpio:
    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        rdev: tuple[int, int] = (0, 0),
        nlink: int = 1,
    ) -> None:
        raw_name = name.encode() + b"\x00"
        fields = (
            self._ino,
            mode,
            0,
            0,
            nlink,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(raw_name),
            0,
        )
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._buf.write(header + raw_name)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\x00" * (-self._buf.tell() % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self._buf.write(b"\x00" * (-self._buf.tell() % 512))
        return self._buf.getvalue()


def _initramfs(
    busybox: bytes, init: bytes, udhcpc: bytes, modules: dict[str, bytes], order: list[str]
) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "proc", "root", "sys", "tmp", "var", "www"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox, 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", init, 0o755)
    cpio.file("etc/udhcpc.script", udhcpc, 0o755)
    cpio.file("etc/hosts", b"127.0.0.1 localhost\n")
    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.file("etc/group", b"root:x:0:\n")
    if order:
        cpio.dir("lib/modules")
        for name in order:
            cpio.file(f"lib/modules/{name}.ko", modules[name])
        cpio.file("lib/modules/load.list", "".join(f"{n}.ko\n" for n in order).encode())
    return gzip.compress(cpio.finish(), compresslevel=9, mtime=0)


# ---------------------------------------------------------------------------
# build


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _inputs() -> tuple[dict[str, str], str, str]:
    versions = ensure_packages()
    kpkg, kver = _kernel_package()
    for script in (INIT_SCRIPT, UDHCPC_SCRIPT):
        if not script.is_file():
            raise GuestBuildError(f"missing guest script {script}")
    inputs = {
        "format": str(FORMAT_VERSION),
        "kernel": f"{kpkg}={kver}",
        **{f"pkg:{k}": v for k, v in versions.items()},
        "init.sh": hashlib.sha256(INIT_SCRIPT.read_bytes()).hexdigest(),
        "udhcpc.sh": hashlib.sha256(UDHCPC_SCRIPT.read_bytes()).hexdigest(),
        "busybox": hashlib.sha256(BUSYBOX.read_bytes()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return inputs, kpkg, key


def build_guests(cache: Path | None = None, *, force: bool = False) -> GuestImages:
    """Build the guests (or reuse the cached build) and return their paths."""
    cache = (cache or cache_dir()).resolve()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuestBuildError(f"cannot create guest cache {cache}: {exc}") from exc
    with _locked(cache / ".lock"):
        try:
            return _build_locked(cache, force)
        except _DownloadFailed:
            # The lists name a kernel the mirror no longer has: refresh, retry once.
            _apt_update()
            return _build_locked(cache, force)


def _build_locked(cache: Path, force: bool) -> GuestImages:
    inputs, kpkg, key = _inputs()
    out = cache / key
    manifest = out / "manifest.json"
    if manifest.is_file() and not force:
        images = GuestImages.from_json(json.loads(manifest.read_text())["images"])
        if all(
            p.is_file()
            for p in (
                images.qemu_kernel,
                images.qemu_initrd,
                images.uml_initrd,
                images.uml_binary,
            )
        ):
            return images
    start = time.monotonic()
    kver = inputs["kernel"].split("=", 1)[1]
    deb = _download_deb(kpkg, kver, cache / "debs")
    bzimage, modules = _extract_kernel(deb)
    order = _module_load_order(modules)
    busybox = BUSYBOX.read_bytes()
    init = INIT_SCRIPT.read_bytes()
    udhcpc = UDHCPC_SCRIPT.read_bytes()

    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
    try:
        tmp.chmod(0o755)
        (tmp / "qemu").mkdir()
        (tmp / "uml").mkdir()
        (tmp / "qemu" / "bzImage").write_bytes(bzimage)
        (tmp / "qemu" / "initrd.gz").write_bytes(_initramfs(busybox, init, udhcpc, modules, order))
        (tmp / "uml" / "initrd.gz").write_bytes(_initramfs(busybox, init, udhcpc, {}, []))
        images = GuestImages(
            root=out,
            key=key,
            qemu_binary=QEMU_BINARY,
            qemu_kernel=out / "qemu" / "bzImage",
            qemu_initrd=out / "qemu" / "initrd.gz",
            uml_binary=UML_BINARY,
            uml_initrd=out / "uml" / "initrd.gz",
            kernel_version=kpkg.removeprefix("linux-image-") + f" ({kver})",
            uml_version=inputs["pkg:user-mode-linux"],
            busybox_version=inputs["pkg:busybox-static"],
        )
        (tmp / "manifest.json").write_text(
            json.dumps(
                {"inputs": inputs, "modules": order, "images": images.as_json()},
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Drop builds of older inputs.
    for old in cache.iterdir():
        if old.is_dir() and old.name != key and re.fullmatch(r"[0-9a-f]{16}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    _log(f"built guests {key} in {time.monotonic() - start:.1f}s (modules: {' '.join(order)})")
    return images


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"cache dir (default $WSNIC_GUEST_CACHE or {DEFAULT_CACHE})",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--json", action="store_true", help="print the paths as JSON")
    args = parser.parse_args(argv)
    try:
        images = build_guests(args.cache, force=args.force)
    except GuestBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(images.as_json(), indent=2))
    else:
        for k, v in images.as_json().items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
