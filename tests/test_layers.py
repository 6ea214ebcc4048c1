"""The package's shape: no import cycles, and each layer imports only the layers below it.

Every import counts, also those under ``if TYPE_CHECKING:`` and inside functions: a
cycle hidden in a function is still a cycle a reader must untangle, and a type-only
import still says "this layer knows that one".
"""

from __future__ import annotations

import ast
import os
import pathlib
import sys
from collections.abc import Iterator

import pytest

#: Read as files, not imported: the lint session runs this check without installing
#: the project (``python tests/test_layers.py``).
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "wsnic_trio"

#: Bottom to top. A module may import its own layer and those listed as allowed for it.
LAYERS: dict[str, set[str]] = {
    "errors": set(),
    "util": {"errors"},
    "config": {"errors", "util"},
    "net": {"errors", "util"},
    "host": {"errors", "util", "config"},
    # Front ends see the settings, the socket helpers and errors; not the core's insides.
    "transports": {"errors", "util", "config", "net"},
    "lan": {"errors", "util", "config", "net", "host"},
    "core": {"errors", "util", "config", "net", "host", "transports", "lan"},
    "control": {"errors", "util", "config", "net", "host", "transports", "core"},
    "cli": {"errors", "util", "config", "net", "host", "transports", "lan", "core", "control"},
}
#: Layers that others may use only through the package's own ``__init__`` (its public
#: objects), never a module inside it.
PUBLIC_ONLY = {"core": {"control"}}


def _modules() -> dict[str, pathlib.Path]:
    found: dict[str, pathlib.Path] = {}
    paths = [
        pathlib.Path(top, name)
        for top, _, names in os.walk(PACKAGE, followlinks=True)  # into the transports link
        for name in names
        if name.endswith(".py")
    ]
    for path in sorted(paths):
        parts = ["wsnic_trio", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> Iterator[str]:
    """The project modules ``name`` imports, resolved to module names."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            # ``from pkg import mod`` imports the module; ``from mod import name`` the module.
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in MODULES else origin
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: set(_imports(name, path)) for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_every_layer_and_the_transports() -> None:
    """The checks below are only as good as the module list they walk."""
    assert {_layer(m) for m in MODULES} >= set(LAYERS)
    assert "wsnic_trio.transports.websocket" in MODULES
    assert "wsnic_trio.core" in GRAPH["wsnic_trio.cli.serve"]
    assert "wsnic_trio.config" in GRAPH["wsnic_trio.transports.websocket"]


def test_no_module_import_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_no_cycle_between_layers() -> None:
    layers: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        src = _layer(module)
        if src is None:
            continue
        for target in targets:
            dst = _layer(target)
            if dst is not None and dst != src:
                layers.setdefault(src, set()).add(dst)
    assert _cycles(layers) == []


def _violations() -> list[str]:
    wrong = []
    for module, targets in sorted(GRAPH.items()):
        src = _layer(module)
        if src is None:
            continue
        for target in sorted(targets):
            dst = _layer(target)
            if dst is None or dst == src:
                continue
            if dst not in LAYERS[src]:
                wrong.append(f"{module} imports {target}: {src}/ may not use {dst}/")
            elif src in PUBLIC_ONLY.get(dst, set()) and target != f"wsnic_trio.{dst}":
                wrong.append(f"{module} imports {target}: {src}/ uses {dst}/ only through it")
    return wrong


def test_layer_contract() -> None:
    assert _violations() == []


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("wsnic_trio.transports.websocket", "wsnic_trio.core.server"),
        ("wsnic_trio.host.nat", "wsnic_trio.lan.bridge"),
        ("wsnic_trio.control.handlers", "wsnic_trio.core.server"),
    ],
)
def test_the_contract_catches_a_wrong_import(module: str, forbidden: str) -> None:
    """Add one import the contract forbids and watch it being reported."""
    GRAPH[module].add(forbidden)
    try:
        assert any(line.startswith(f"{module} imports {forbidden}") for line in _violations())
    finally:
        GRAPH[module].discard(forbidden)


def test_the_cycle_check_catches_a_cycle() -> None:
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["wsnic_trio.errors"].add("wsnic_trio.cli.main")
    assert _cycles(graph)


def main() -> int:
    """The lint session's check: every cycle and every wrong import, one per line."""
    problems = [f"import cycle: {' -> '.join(c)}" for c in _cycles(GRAPH)] + _violations()
    for line in problems:
        print(line, file=sys.stderr)
    print(f"layers: {len(MODULES)} modules, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
