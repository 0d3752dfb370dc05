#!/usr/bin/env bash
# Build the real kube-apiserver and etcd that the tests/kube tier runs on loopback, from the Go modules
# pinned in tests/apiserver/go.mod (k8s.io/kubernetes with its staging replace lines, etcd's server).
# Builds once into .cache/apiserver/<versions>/ (ignored by git) and reuses that; prints the build time
# to stderr and the directory holding the two binaries as the last line on stdout.
#
# Needs Go (the version go.mod names, or newer) and the Go module proxy. Module downloads and compiled
# packages go to Go's own caches (`go env GOMODCACHE GOCACHE`), so another clone or worktree on the same
# machine builds again in well under a minute. A cold build (empty caches) took 31 minutes on 2 busy cores
# (13 minutes of CPU); ./test.sh and CI run it first, so that no test waits for it.
#
# With --no-build it only prints the folder when the binaries are already built, and exits 3 otherwise.
#
# Environment: CAPTURE_EXPORT_APISERVER_CACHE overrides the cache root; GOMODCACHE, GOCACHE and
# GOPROXY are Go's own.
set -euo pipefail
cd "$(dirname "$0")/.."
module_dir="tests/apiserver"
no_build=""
if [ "${1:-}" = "--no-build" ]; then
    no_build=1
fi

if [ -z "$no_build" ] && ! command -v go >/dev/null 2>&1; then
    echo "build-apiserver: no 'go' on PATH: the real Kubernetes API tier (tests/kube) needs Go to build" \
         "kube-apiserver and etcd" >&2
    exit 2
fi

required_version() {  # the version go.mod requires for module $1
    awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$module_dir/go.mod"
}
kube_version="$(required_version k8s.io/kubernetes)"
etcd_version="$(required_version go.etcd.io/etcd/server/v3)"
if [ -z "$kube_version" ] || [ -z "$etcd_version" ]; then
    echo "build-apiserver: $module_dir/go.mod does not require k8s.io/kubernetes and go.etcd.io/etcd/server/v3" >&2
    exit 2
fi
# The go.sum digest is part of the key, so a changed dependency graph never reuses old binaries.
sum_digest="$(sha256sum "$module_dir/go.sum" | cut -c1-12)"
cache_root="${CAPTURE_EXPORT_APISERVER_CACHE:-$PWD/.cache/apiserver}"
bin_dir="$cache_root/kube-$kube_version-etcd-$etcd_version-$sum_digest"

if [ -x "$bin_dir/kube-apiserver" ] && [ -x "$bin_dir/etcd" ]; then
    echo "build-apiserver: kube-apiserver $kube_version and etcd $etcd_version already built in $bin_dir" >&2
    echo "$bin_dir"
    exit 0
fi

if [ -n "$no_build" ]; then
    echo "build-apiserver: kube-apiserver $kube_version and etcd $etcd_version are not built yet: run" \
         "scripts/build-apiserver.sh (or ./test.sh, which runs it)" >&2
    exit 3
fi
mkdir -p "$cache_root"
# Two test runs starting at once build once: the second waits for the first and then reuses its binaries.
exec 9>"$cache_root/.build.lock"
flock 9
if [ -x "$bin_dir/kube-apiserver" ] && [ -x "$bin_dir/etcd" ]; then
    echo "$bin_dir"
    exit 0
fi

echo "build-apiserver: building kube-apiserver $kube_version and etcd $etcd_version with $(go version)" \
     "(cold: up to half an hour on 2 cores; later builds reuse Go's caches)…" >&2
started=$SECONDS
staging="$(mktemp -d "$cache_root/.building.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

# Static, stripped, reproducible: no cgo (nothing here needs it), no paths of this machine, no DWARF.
# The version stamps are what `kubectl version` and Helm's kubeVersion checks read from the server.
export CGO_ENABLED=0
build_date="1970-01-01T00:00:00Z"
minor="$(echo "$kube_version" | cut -d. -f2)"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
(
    cd "$module_dir"
    nice go build -trimpath -ldflags "$kube_ldflags" -o "$staging/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    nice go build -trimpath -ldflags "-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3
)
"$staging/kube-apiserver" --version >&2
"$staging/etcd" --version >&2
rm -rf "$bin_dir"
mv "$staging" "$bin_dir"
trap - EXIT
echo "build-apiserver: built in $((SECONDS - started)) s into $bin_dir ($(du -sh "$bin_dir" | cut -f1))" >&2
echo "$bin_dir"
