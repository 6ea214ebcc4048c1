"""The lease table reader never ends the server, whatever happens to the lease file."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsnic_trio.host.leases import LeaseTable

LINE = "1738317741 52:54:00:12:34:56 192.168.86.23 alpine 01:52:54:00:12:34:56\n"


def test_unreadable_lease_path_keeps_the_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """(issue 11 audit) A lease file the server cannot even stat (here: a path through a
    regular file, ENOTDIR; under --user a directory the account cannot search, EACCES)
    used to raise out of the watcher task and end the server."""
    good = tmp_path / "leases"
    good.write_text(LINE)
    table = LeaseTable(good)
    assert table.refresh() is True
    assert table.ip_of(bytes.fromhex("525400123456")) == bytes([192, 168, 86, 23])
    table.path = good / "not-a-directory"
    assert table.refresh() is False
    assert table.refresh() is False
    assert table.ip_of(bytes.fromhex("525400123456")) is not None, "the table is kept"
    warnings = [r for r in caplog.records if "cannot read lease file" in r.getMessage()]
    assert len(warnings) == 1, "said once, not at every poll"
    table.path = good
    good.write_text("")
    assert table.refresh() is True
    assert table.leases == {}
