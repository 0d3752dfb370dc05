#!/usr/bin/env bash
# Create .venv and install the project with the given extra (demo or test). Re-installs only when
# pyproject.toml changed since the last install, so repeated runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-demo}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "capture-export needs Python >= 3.11 (found $("$python" --version))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv …"
    "$python" -m venv .venv
fi
# The native paths (hatch_build.py: JSON Lines, Parquet, privacy mode) need a C compiler; without one the
# install is pure Python.
# CI builds it (its tests fail without it), so there a missing compiler is installed as the tests' other
# Debian packages are.
if [ "$extra" = test ] && [ -n "${CI:-}" ] && ! command -v "$("$python" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's gcc (the native JSON Lines, Parquet and privacy mode paths) …"
        SUDO=""
        [ "$(id -u)" != 0 ] && SUDO="sudo"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
    fi
fi
stamp=".venv/.installed-$extra"
native=operator/capture_export/export/_cbor_json.c
constraints=scripts/constraints.txt  # the versions the tests passed with (its header says why)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ hatch_build.py -nt "$stamp" ] || [ "$native" -nt "$stamp" ] \
        || [ "$constraints" -nt "$stamp" ]; then
    echo "installing capture-export[$extra] into .venv …"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c "$constraints" -e ".[$extra]"
    .venv/bin/python -m pip check
    touch "$stamp"
fi
