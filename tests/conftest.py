"""Fixtures shared by the tests; integration tests get a private namespace world."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from .guestlan import GuestLan, choose_accel
from .guests.boot import GuestBuildError, GuestImages, build_guests
from .netns import NsFactory, netns_world
from .vmclients import short_tmpdir


def require(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing, except under CI, where that is a failure."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_integration() -> None:
    require(os.geteuid() == 0, "integration tests need root (network namespaces, TAP devices)")
    require(shutil.which("ip") is not None, "iproute2's ip is not installed")
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing")


@pytest.fixture
async def world(nursery: trio.Nursery) -> AsyncIterator[NsFactory]:
    """A factory of network namespaces that are all deleted after the test."""
    require_integration()
    async with netns_world(nursery) as factory:
        yield factory


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short temporary directory for unix sockets (pytest's tmp_path can exceed the
    107-byte limit of a socket path)."""
    with short_tmpdir() as path:
        yield path


# ---------------------------------------------------------------------------
# real guests (tests/guests images): test_guests_e2e.py, test_lans_guests.py


@dataclasses.dataclass(frozen=True)
class Guests:
    images: GuestImages
    accel: str


@pytest.fixture(scope="session")
def guests() -> Guests:
    """Build (or reuse) the guest images once per session; pick KVM only if it works."""
    require_integration()
    busybox = shutil.which("busybox") or "/bin/busybox"
    require(os.access(busybox, os.X_OK), "busybox (busybox-static) is not installed")
    require(shutil.which("dnsmasq") is not None, "dnsmasq (dnsmasq-base) is not installed")
    try:
        images = build_guests()
    except GuestBuildError as exc:
        require(False, f"the test guests cannot be built: {exc}")
        raise
    require(shutil.which(images.qemu_binary) is not None, f"{images.qemu_binary} is missing")
    return Guests(images, choose_accel(images))


@pytest.fixture
async def lan(world: NsFactory, guests: Guests) -> AsyncIterator[GuestLan]:
    """A server namespace for the test's guests; guests are stopped at the end."""
    glan = GuestLan(world.new("srv"), guests.images, guests.accel)
    try:
        yield glan
    finally:
        await glan.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "world" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
