#!/usr/bin/env bash
# The embedded default: sets up .venv, starts a local S3 server (SeaweedFS), seeds a SQLite capture store
# with 100k synthetic LLM usage records, runs examples/exporter.yaml until caught up, reports, stops.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh demo
exec .venv/bin/capture-export demo "$@"
