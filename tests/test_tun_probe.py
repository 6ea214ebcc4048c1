"""Root mode refuses to start a LAN that no client could join (issue 11, defect 5).

The server tries one TAP on the bridge during start-up, where every client will need
one; rootless mode and --user do the same in their helpers (tests/test_rootless.py,
tests/test_privdrop.py). Here the server runs as root in a test namespace whose private
mount namespace has no /dev/net/tun, as in a container started without the device.
"""

from __future__ import annotations

from pathlib import Path

from .lanhost import forget_stale_run_dir, snapshot, wsnic
from .netns import NsFactory
from .rootlesshost import refused_at_start, with_unusable_tun


async def test_root_mode_without_tun_does_not_start(world: NsFactory, sockdir: str) -> None:
    """No /dev/net/tun: the server does not say "ready" and then fail every client; it
    exits with code 2 and one line that says what is missing and what to do, and the
    namespace is exactly as before (no bridge, no dnsmasq, no run directory), the API
    socket file removed."""
    srv = world.new("srv")
    forget_stale_run_dir(srv)
    api_sock = Path(sockdir) / "api.sock"
    before = snapshot(srv)
    server = await srv.start(
        [*with_unusable_tun("missing"), *wsnic(), "--api", f"unix:{api_sock}"],
        label="wsnic-trio",
    )
    problems = await refused_at_start(server, timeout=30)
    assert problems == [
        "wsnic-trio: error: /dev/net/tun is missing: load the tun module (modprobe tun), or "
        "pass the device into the container (e.g. docker run --device /dev/net/tun); see "
        "docs/user-guide.md"
    ], server.log.text()
    assert not api_sock.exists()
    assert snapshot(srv) == before
