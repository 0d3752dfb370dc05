"""The ``capture-export`` argument parser: the top level, then each command from its topic's module, in
the order `capture-export --help` lists them."""

from __future__ import annotations

import argparse

from .. import __version__
from .bucket import add_cat, add_verify
from .cluster import add_crds, add_operator
from .ingest import add_ingest
from .local import add_demo, add_s3
from .options import HelpFormatter
from .run import add_run, add_status
from .store import add_quarantine, add_restore, add_seed, add_store

__all__ = ["build_parser"]

_COMMANDS = (add_run, add_status, add_seed, add_store, add_cat, add_verify, add_restore, add_quarantine,
             add_ingest, add_crds, add_operator, add_demo, add_s3)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capture-export", formatter_class=HelpFormatter,
        description="Export LLM gateway capture records from a capture store (SQLite, PostgreSQL) to S3-compatible "
        "storage exactly once, and purge the store only once records are exported. The same S3Exporter and "
        "RetentionPolicy manifests run in Kubernetes (`capture-export operator`) and without a cluster "
        "(`capture-export run`). `capture-export COMMAND --help` describes each command, with examples.",
        epilog="a first try, without a cluster:\n"
        "  capture-export s3 serve                          # a local S3 server, in another terminal\n"
        "  capture-export seed --count 100000               # synthetic records in .capture-export/store.sqlite\n"
        "  capture-export run --once -f examples/exporter.yaml\n"
        "  capture-export status")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(sub)
    return parser
