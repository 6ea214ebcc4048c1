"""A TAP device as a nonblocking file descriptor driven by Trio's readiness waits.

The kernel hands out one Ethernet frame per ``read`` on a TAP fd, so the cost that
matters is wake-ups, not syscalls: each wake-up drains every frame that is ready (up to
a batch limit) before going back to sleep. The fd is never shared and never wrapped in
a stream abstraction (those loop over partial writes, which a packet device has none of).

TAPs are opened without ``TUNSETPERSIST``: the kernel deletes the device when the last
fd closes, so even a ``kill -9`` of the server leaves no TAP behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import trio

from wsnic_trio.errors import SetupError, TapUnavailable
from wsnic_trio.util.fairness import Fairness

__all__ = ["TapDevice", "open_tap_fd"]

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_READ_SIZE = 65536 + 64


def open_tap_fd(name: str) -> tuple[int, str]:
    """Create a TAP (IFF_TAP | IFF_NO_PI) and return its nonblocking fd and real name.

    ``name`` may contain ``%d`` to let the kernel pick the first free number. Blocking
    (it takes the RTNL lock): call it from a worker thread.
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        hint = {
            errno.ENOENT: " (is the tun module loaded?)",
            errno.ENODEV: " (is the tun module loaded?)",
            errno.EACCES: " (the device's mode or a container's device rules refuse it)",
            errno.EPERM: " (the device's mode or a container's device rules refuse it)",
        }.get(exc.errno or 0, "")
        raise _exhausted(exc) or SetupError(
            f"cannot open /dev/net/tun: {exc.strerror}{hint}"
        ) from None
    try:
        ifr = struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI)
        result = fcntl.ioctl(fd, _TUNSETIFF, ifr)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EPERM:
            raise SetupError("creating a TAP device needs CAP_NET_ADMIN (run as root)") from None
        raise _exhausted(exc) or SetupError(f"cannot create TAP {name}: {exc.strerror}") from None
    real = result[:16].split(b"\0", 1)[0].decode()
    return fd, real


def _exhausted(exc: OSError) -> TapUnavailable | None:
    """The errors that mean "not one more TAP now" rather than "no TAPs at all"."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return TapUnavailable(
            f"out of file descriptors ({exc.strerror}): raise the server's limit "
            "(ulimit -n, or LimitNOFILE= in a systemd unit)"
        )
    if exc.errno in (errno.ENOMEM, errno.ENOBUFS):
        return TapUnavailable(f"the kernel is out of memory for a new TAP ({exc.strerror})")
    return None


class TapDevice:
    """One open TAP: batched nonblocking reads and writes of whole frames."""

    def __init__(self, fd: int, name: str, max_frame: int = _READ_SIZE) -> None:
        self.fd = fd
        self.name = name
        # Sized to the largest frame the MTU allows: os.read allocates this much per call.
        self._read_size = max_frame + 4
        self._closed = False
        self._fair = Fairness()

    async def read_batch(self, max_frames: int = 64) -> list[bytes]:
        """Wait until a frame is ready, then return every ready frame (up to ``max_frames``)."""
        frames: list[bytes] = []
        waited = False
        while True:
            try:
                while len(frames) < max_frames:
                    frames.append(os.read(self.fd, self._read_size))
            except BlockingIOError:
                pass
            if frames:
                if waited:
                    self._fair.waited()
                else:
                    await self._fair.tick()
                return frames
            await trio.lowlevel.wait_readable(self.fd)
            waited = True

    async def write_frames(self, frames: list[bytes]) -> int:
        """Write each frame; returns how many the kernel refused (counted as drops).

        A TAP write only blocks when the kernel's backlog is full; then we wait, since
        the frames came from the peer whose own socket is already our backpressure.
        """
        refused = 0
        for frame in frames:
            while True:
                try:
                    os.write(self.fd, frame)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.fd)
                except OSError as exc:
                    if exc.errno in (errno.EINVAL, errno.EMSGSIZE):
                        refused += 1
                        break
                    raise
        return refused

    def kernel_drops(self) -> int:
        """Frames the kernel dropped on their way to us because our queue was full.

        This is where a slow peer's backpressure ends up (see ``core.relay``); read from
        sysfs, which ``ip netns exec`` remounts per namespace.
        """
        try:
            with open(f"/sys/class/net/{self.name}/statistics/tx_dropped") as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        """Close the fd, which makes the kernel delete the (non-persistent) TAP."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
