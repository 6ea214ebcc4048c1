"""The helper process's entry point: ``python -m wsnic_trio.lan.helper [--in-place] FD``.

Rootless mode runs :mod:`~wsnic_trio.lan.nshelper` (its own namespaces, blocking, one
thread); ``--user`` runs :mod:`~wsnic_trio.lan.privsep`'s side with ``--in-place`` (real
root in the server's namespace, with Trio). One module names both so neither of them
has to import the other.
"""

from __future__ import annotations

import sys

from wsnic_trio.lan import nshelper, privsep


def main(argv: list[str]) -> int:
    if argv[:1] == ["--in-place"]:
        return privsep.helper_main(argv[1:])
    return nshelper.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
