"""--user without a host: who the server becomes, and what it reads in /proc/self/status."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from wsnic_trio._config import Config
from wsnic_trio._exceptions import ConfigError
from wsnic_trio._privsep import caps_of, resolve_account, unreadable_files


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this system has no user nobody")


def test_no_user_means_no_drop() -> None:
    assert resolve_account(Config(), euid=0) is None


def test_user_needs_root() -> None:
    with pytest.raises(ConfigError, match="needs a server started as root"):
        resolve_account(Config(user="nobody"), euid=1000)


def test_unknown_user_and_group() -> None:
    with pytest.raises(ConfigError, match="--user wsnic-no-such-user-7: no such user"):
        resolve_account(Config(user="wsnic-no-such-user-7"), euid=0)
    _nobody()
    with pytest.raises(ConfigError, match="--group wsnic-no-such-group-7: no such group"):
        resolve_account(Config(user="nobody", group="wsnic-no-such-group-7"), euid=0)


def test_root_is_not_a_drop() -> None:
    with pytest.raises(ConfigError, match="is root"):
        resolve_account(Config(user="root"), euid=0)


def test_group_needs_user() -> None:
    with pytest.raises(ConfigError, match="--group needs --user"):
        resolve_account(Config(group="nogroup"), euid=0)


def test_user_with_rootless_contradicts() -> None:
    with pytest.raises(ConfigError, match="contradict"):
        Config(user="nobody", rootless=True)


def test_account_of_nobody() -> None:
    entry = _nobody()
    account = resolve_account(Config(user="nobody"), euid=0)
    assert account is not None
    assert (account.user, account.uid, account.gid) == ("nobody", entry.pw_uid, entry.pw_gid)
    assert entry.pw_gid in account.groups and 0 not in account.groups
    by_id = resolve_account(Config(user=str(entry.pw_uid)), euid=0)
    assert by_id == account


def test_caps_of() -> None:
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000001000\n"
    status += "CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n"
    caps = caps_of(status)
    assert caps["CapPrm"] == 1 << 12
    assert caps["CapEff"] == caps["CapBnd"] == (1 << 41) - 1
    assert caps["CapInh"] == caps["CapAmb"] == 0


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    config = Config(auth_token_file=missing, pcap=missing)
    problems = unreadable_files(config)
    assert any("--auth-token-file" in p and "SIGHUP" in p for p in problems)
    assert any("--pcap" in p for p in problems)
    assert unreadable_files(Config()) == []
