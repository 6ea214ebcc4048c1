"""Tiny Debian-built Linux guests (QEMU and User Mode Linux) for end-to-end tests.

See README.md in this folder.  Import from :mod:`tests.guests.boot`:
``build_guests()`` builds or reuses the cached images, ``qemu_argv()`` /
``uml_argv()`` return command lines to run them and ``parse_results()`` reads
the ``WSNIC-GUEST`` lines they print.  (Nothing is imported here so that
``python3 -m tests.guests.build`` runs without a runpy warning.)
"""
