#!/bin/sh
# One command from a fresh Debian 12 machine (as root) to a running LAN or a tested tree.
#
#   ./quickstart.sh serve [wsnic-trio options]   install what is missing, run the server
#   ./quickstart.sh test  [pytest arguments]     install what is missing, run lint, mypy
#                                                and the whole test suite (what CI runs)
set -eu
cd "$(dirname "$0")"

APT_PACKAGES="python3 python3-venv python3-pip iproute2 iputils-ping busybox-static \
dnsmasq-base nftables iperf3 procps gcc libc6-dev libssl-dev chromium \
curl tshark slirp4netns passt udhcpc openssl"

if [ "$(id -u)" != 0 ]; then
    echo "quickstart.sh: run me as root (the server creates a bridge and TAP devices)" >&2
    exit 2
fi

missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "quickstart.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
# Reinstall only when the dependencies changed (pyproject.toml newer than the stamp).
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch .venv/.installed
fi

cmd="${1:-serve}"
[ $# -gt 0 ] && shift
case "$cmd" in
    serve) exec .venv/bin/wsnic-trio "$@" ;;
    test) exec .venv/bin/nox --no-error-on-external-run -s lint typecheck tests -- "$@" ;;
    *) echo "usage: $0 serve [options] | test [pytest args]" >&2; exit 2 ;;
esac
