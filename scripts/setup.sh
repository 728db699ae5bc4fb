#!/usr/bin/env bash
# Set up a fresh machine for meshctl: Debian packages from scripts/apt-packages.txt,
# then a virtualenv in .venv with the project and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^\s*$/d' scripts/apt-packages.txt)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# The proxy's HTTP/1 reader is compiled in place by the install (setup.py); the build is
# optional for users without a compiler, but here it must have happened.
if ! .venv/bin/python -c 'import sys, meshctl_proxy.wire.http1 as m; sys.exit(not m.__file__.endswith(".so"))'; then
    echo "setup: meshctl_proxy.wire.http1 was not compiled (is gcc with the Python headers installed?)" >&2
    exit 1
fi
echo "setup: done (.venv ready)" >&2
