#!/usr/bin/env bash
# Rewrite scripts/constraints.txt from .venv (its header comment kept): run it once the README's test command
# passed on that venv.
set -euo pipefail
cd "$(dirname "$0")/.."
header=$(grep '^#' scripts/constraints.txt)
{ printf '%s\n' "$header"; .venv/bin/python -m pip freeze --exclude-editable; } > scripts/constraints.txt.new
mv scripts/constraints.txt.new scripts/constraints.txt
