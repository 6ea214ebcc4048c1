"""Fixtures shared by the tests; integration tests get a private namespace world."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "world" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
