"""/run/wsnic-trio: every LAN's run directory is in it, and the API's default socket.

The directory is shared by every server on the host, so it is made by whoever needs it
first and removed by whoever leaves it empty: each user of it calls
:func:`release_run_root` when done, and the directory stays while anyone else has
something there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["RUN_ROOT", "make_run_root", "release_run_root"]

RUN_ROOT = Path("/run/wsnic-trio")


def make_run_root() -> None:
    """Make :data:`RUN_ROOT` (mode 0755) unless it exists: a socket is about to go there."""
    if not RUN_ROOT.is_dir():
        with contextlib.suppress(FileExistsError):
            os.mkdir(RUN_ROOT, 0o755)


def release_run_root() -> None:
    """Remove :data:`RUN_ROOT` if it is empty; while another LAN or socket is in it, it
    stays (the rmdir fails, and that is the answer)."""
    with contextlib.suppress(OSError):
        RUN_ROOT.rmdir()
