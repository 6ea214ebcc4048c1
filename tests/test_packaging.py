"""What gets installed: one import package, and transports found by entry point.

The unit tests build plug-in metadata in a temporary directory (a ``*.dist-info``
beside a module, which importlib.metadata reads like an installed distribution). The
integration test builds the real wheel, installs it into an empty venv on Debian's
python with the example plug-in (tests/plugin_example) and runs it from there: nothing
of this checkout is on that venv's path.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

import pytest

import wsnic_trio.transports as transports_pkg
from wsnic_trio import Config, ConfigError, SetupError
from wsnic_trio.transports import BUILTIN_NAMES, ENTRY_POINT_GROUP, _builtin, load_transports

REPO = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).resolve().parent / "plugin_example"
DEBIAN_PYTHON = "/usr/bin/python3"  # the default python3 of some machines lives under /root


def _names(factories: Iterable[Callable[..., object]]) -> list[str]:
    return [f"{f.__module__}:{getattr(f, '__qualname__', f)}" for f in factories]


def test_pyproject_registers_the_builtin_table() -> None:
    """The entry points and the table for a bare checkout must not drift apart."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][ENTRY_POINT_GROUP]
    assert tuple(declared) == BUILTIN_NAMES == tuple(_builtin())
    for name, factory in _builtin().items():
        module, _, attr = declared[name].partition(":")
        target: object = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
        assert target == factory, name


def _fake_distribution(
    root: Path, name: str, entry_points: dict[str, str], code: str | None
) -> None:
    """An installed-looking distribution ``name`` with these entry points and a module
    of the same name (unless ``code`` is None)."""
    module = name.replace("-", "_")
    if code is not None:
        (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"{key} = {value}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


GOOD = """
    def zeta(config):
        return []

    def alpha(config):
        return []
"""


def test_builtins_first_then_plug_ins_by_name(site: Path) -> None:
    _fake_distribution(
        site, "plug-good", {"zeta": "plug_good:zeta", "alpha": "plug_good:alpha"}, GOOD
    )
    names = _names(load_transports())
    assert names[: len(BUILTIN_NAMES)] == _names(_builtin().values())
    assert names[len(BUILTIN_NAMES) :] == ["plug_good:alpha", "plug_good:zeta"]


def test_installed_builtins_come_from_the_entry_points(site: Path) -> None:
    """With metadata, the distribution's entry points decide (here a wsnic-trio found
    first on the path that registers two of the names, in the wrong order)."""
    _fake_distribution(site, "plug-good", {}, GOOD)
    entries = {"qemu": "plug_good:zeta", "ws": "plug_good:alpha"}
    _fake_distribution(site, "wsnic-trio", entries, None)
    assert _names(load_transports()) == ["plug_good:alpha", "plug_good:zeta"]


def test_without_own_metadata_the_builtin_table_stands_in(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare checkout (or an install from before the entry points) still has every
    built-in transport, and still loads plug-ins."""
    _fake_distribution(site, "plug-good", {"alpha": "plug_good:alpha"}, GOOD)
    everything = metadata.entry_points

    def without_ours(*, group: str) -> metadata.EntryPoints:
        found = everything(group=group)
        return metadata.EntryPoints(ep for ep in found if ep.dist and ep.dist.name != "wsnic-trio")

    monkeypatch.setattr(transports_pkg, "entry_points", without_ours)
    names = _names(load_transports())
    assert names == [*_names(_builtin().values()), "plug_good:alpha"]


def test_a_plug_in_that_cannot_be_imported_is_one_setup_error(site: Path) -> None:
    _fake_distribution(site, "plug-bad", {"bad": "plug_bad:factory"}, "import no_such_module\n")
    with pytest.raises(SetupError) as caught:
        load_transports()
    message = str(caught.value)
    assert "\n" not in message
    assert "'bad' (plug_bad:factory from plug-bad) cannot be loaded" in message
    assert "ModuleNotFoundError" in message


def test_a_plug_in_whose_factory_raises_is_one_setup_error(site: Path) -> None:
    code = """
        def factory(config):
            raise KeyError("port")

        def refuses(config):
            from wsnic_trio import ConfigError
            raise ConfigError("--example-port is missing")
    """
    _fake_distribution(
        site, "plug-raises", {"raises": "plug_raises:factory", "z": "plug_raises:refuses"}, code
    )
    *_, raises, refuses = load_transports()
    with pytest.raises(SetupError, match=r"^transport plug-in 'raises' \(plug_raises:factory "):
        raises(Config())
    with pytest.raises(ConfigError, match=r"^transport plug-in 'z' .*: --example-port is missing$"):
        refuses(Config())


def test_a_plug_in_may_not_take_a_builtin_name(site: Path) -> None:
    _fake_distribution(site, "plug-ws", {"ws": "plug_ws:alpha"}, GOOD)
    with pytest.raises(ConfigError, match=r"'ws' .* the name is taken by a built-in transport"):
        load_transports()


# -- the built wheel, installed --------------------------------------------------------------


def _outside() -> dict[str, str]:
    """This environment (pip's settings) without what would put this checkout on a path."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    return {key: value for key, value in os.environ.items() if key not in drop}


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    """Run to success and return stdout; every command but the build runs ``_outside``."""
    done = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        env=_outside() if env is None else env,
        cwd="/",
        check=False,
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.mark.integration
def test_the_wheel_installs_one_package_and_finds_plug_ins(tmp_path: Path) -> None:
    assert os.path.exists(DEBIAN_PYTHON), f"{DEBIAN_PYTHON} is missing"
    assert importlib.util.find_spec("build") is not None, (
        "install the test extra: pip install -e '.[test]'"
    )
    assert shutil.which("unshare"), "util-linux's unshare is missing"
    # A copy of the checkout (with its symlink), so that the build leaves nothing here.
    source = tmp_path / "source"
    junk = shutil.ignore_patterns(".*", "__pycache__", "build", "*.egg-info", "results")
    shutil.copytree(REPO, source, symlinks=True, ignore=junk)
    assert (source / "wsnic_trio/transports").is_symlink()
    dist = tmp_path / "dist"
    # sdist first, the wheel from it: the symlinked transports must survive both.
    _run(sys.executable, "-m", "build", "--outdir", dist, source, env=dict(os.environ))
    (wheel,) = dist.glob("wsnic_trio-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        members = {info.filename: info for info in archive.infolist()}
        (top_level,) = (n for n in members if n.endswith(".dist-info/top_level.txt"))
        assert archive.read(top_level).decode().split() == ["wsnic_trio"]
    tops = {name.split("/")[0] for name in members if ".dist-info/" not in name}
    assert tops == {"wsnic_trio"}
    shipped = {n.rpartition("/")[2] for n in members if n.startswith("wsnic_trio/transports/")}
    assert shipped == {p.name for p in (REPO / "transports").glob("*.py")}
    links = [n for n, info in members.items() if (info.external_attr >> 16) & 0o170000 == 0o120000]
    assert links == []

    venv = tmp_path / "venv"
    _run(DEBIAN_PYTHON, "-m", "venv", venv)
    pip: list[str | Path] = [
        venv / "bin/python",
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    _run(*pip, wheel)
    for argv in ([], ["connect"], ["ctl"]):
        assert _run(venv / "bin/wsnic-trio", *argv, "--help").startswith("usage: wsnic-trio")

    plugin = tmp_path / "plugin"
    shutil.copytree(PLUGIN, plugin)  # pip builds in the tree: not in this checkout
    _run(*pip, "--no-deps", plugin)
    probe = """
        import json
        from importlib.metadata import entry_points
        from wsnic_trio import Config
        from wsnic_trio.transports import load_transports
        factories = load_transports()
        print(json.dumps({
            "entry_points": sorted(
                (ep.name, ep.dist.name) for ep in entry_points(group="wsnic_trio.transports")
            ),
            "factories": [f.__module__ + ":" + f.__qualname__ for f in factories],
            "example": [t.describe() for t in factories[-1](Config())],
        }))
    """
    found = json.loads(_run(venv / "bin/python", "-c", textwrap.dedent(probe)))
    assert found["entry_points"] == sorted(
        [*([name, "wsnic-trio"] for name in BUILTIN_NAMES), ["example", "wsnic-plugin-example"]]
    )
    assert found["factories"] == [
        *_names(_builtin().values()),
        "wsnic_plugin_example:from_config",
    ]
    assert found["example"] == ["example plug-in transport (listens nowhere)"]

    # A plug-in that fails stops start-up with one line naming it, before the host is
    # touched (in a private network namespace all the same, should that ever break).
    failing = subprocess.run(
        ["unshare", "--net", venv / "bin/wsnic-trio", "-q", "--ws-port", "0", "--bridge", "wtpkg0"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "WSNIC_PLUGIN_EXAMPLE_FAIL": "1"},
        cwd="/",
        timeout=60,
        check=False,
    )
    assert failing.returncode == 2, failing.stderr
    assert failing.stderr.splitlines() == [
        "wsnic-trio: error: transport plug-in 'example' (wsnic_plugin_example:from_config "
        "from wsnic-plugin-example) failed: RuntimeError: the example plug-in was told to fail"
    ]
