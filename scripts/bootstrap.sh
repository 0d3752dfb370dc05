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
stamp=".venv/.installed-$extra"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing capture-export[$extra] into .venv …"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$extra]"
    .venv/bin/python -m pip check
    touch "$stamp"
fi
