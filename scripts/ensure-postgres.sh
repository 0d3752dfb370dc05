#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries (initdb, pg_ctl, postgres) are on this machine, for the tests'
# throwaway clusters (tests/support/pg.py) and the benchmarks. Finds them where Debian, RHEL, Homebrew or $PG_BINDIR
# put them; installs Debian's `postgresql` with apt-get when none are found. Prints the bin directory.
# Starts no server: each test session starts (and removes) its own cluster on a free loopback port.
set -euo pipefail

find_bindir() {
    local candidates=()
    [ -n "${PG_BINDIR:-}" ] && candidates+=("$PG_BINDIR")
    if command -v pg_config >/dev/null 2>&1; then
        candidates+=("$(pg_config --bindir 2>/dev/null || true)")
    fi
    if command -v initdb >/dev/null 2>&1; then
        candidates+=("$(dirname "$(readlink -f "$(command -v initdb)")")")
    fi
    # Newest version first.
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin /usr/pgsql-*/bin /usr/local/pgsql/bin 2>/dev/null | sort -Vr); do
        candidates+=("$dir")
    done
    for dir in "${candidates[@]}"; do
        if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

if bindir="$(find_bindir)"; then
    echo "PostgreSQL: $("$bindir/postgres" --version) in $bindir"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL server binaries not found and no apt-get here: install PostgreSQL (initdb, pg_ctl," \
         "postgres) and set PG_BINDIR to its bin directory" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
echo "installing Debian's postgresql (server binaries for the test clusters)…"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d-less containers may try to start the packaged cluster; that is harmless and not needed.
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
if ! bindir="$(find_bindir)"; then
    echo "installed postgresql but initdb/pg_ctl/postgres are still not found" >&2
    exit 1
fi
echo "PostgreSQL: $("$bindir/postgres" --version) in $bindir"
