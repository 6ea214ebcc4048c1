"""Sessions CI runs (``nox``) and developers run one at a time (``nox -s tests``).

Every session uses Debian's /usr/bin/python3 where it exists: the default python of
some machines lives under /root, which the unprivileged users of later tests cannot read.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting; the import-layer contract (tests/test_layers.py)."""
    session.install("ruff>=0.6", "pytest>=8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("python", "tests/test_layers.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the code, the tests and the benchmarks."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, integration tests included (needs root)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark suite (needs root, iperf3, gcc, libssl-dev): ``nox -s bench -- --quick``.

    Results: a table on stdout and JSON under bench/results/; see docs/performance.md.
    """
    session.install("-e", ".")
    session.install("py-spy")  # for ``nox -s bench -- --profile``
    session.run("python", "-m", "bench", *session.posargs)
