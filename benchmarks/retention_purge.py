"""Retention purge throughput on a large SQLite store, and the longest stall a concurrent writer sees.

    .venv/bin/python benchmarks/retention_purge.py [--records 1000000] [--body-bytes 200] [--batch-size 5000]
                                                   [--soft] [--seed-records] [--keep]

Fills a store (compact records written with ``append_encoded``; ``--body-bytes`` sets their size, or
``--seed-records`` uses the realistic generator, about 3.5 KB each) with 95% of the records past maxAge,
then runs one RetentionPolicy cycle (the real worker, gate and purge; ``requireExport: false`` so that
no bucket is needed: the purge path is the same) while a writer in another process appends one record
every ``--write-interval`` seconds, as a gateway would, timing every append. With ``--soft`` the cycle
soft-deletes, and a second cycle after the grace period removes what the first one marked.

Prints purge throughput (records/s), chunk count and longest chunk, and the writer's append latency
(max, p99, p50), with the load average. Targets: >= 100k records/s, no write stall over 100 ms. Needs
nothing beyond capture-export itself. The store is deleted at the end unless ``--keep`` (or ``--workdir``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2

from bench_support import add_keep_argument, work_directory
from capture_export.api import RetentionPolicySpec, RetentionPolicyStatus
from capture_export.export import ExporterId
from capture_export.retention import RetentionWorker
from capture_export.retention.gate import micros
from capture_export.store import SQLiteStore

FILL_CHUNK = 50_000


class SteppedClock:
    """Wall time, plus an offset the benchmark can jump forward (to pass the grace period)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def compact_body(size: int) -> bytes:
    filler = (b"the quick brown fox jumps over the lazy dog " * (size // 40 + 1))[: max(size - 60, 0)]
    return cbor2.dumps({"ver": 2, "model": "gpt-4o", "api_type": "oai_completions", "status_code": 200,
                        "usage": {"input_tokens": 812, "output_tokens": 96}, "pad": filler})


def fill(path: Path, records: int, body_bytes: int, seed_records: bool) -> None:
    store = SQLiteStore(path)
    now_us = micros(datetime.now(UTC))
    old = int(records * 0.95)
    started = time.perf_counter()
    if seed_records:
        from capture_export.seed import seed_store

        # Two batches: the old ones 60 to 31 days ago, the young ones within the last day.
        seed_store(store, old, seed=1, start=datetime.now(UTC) - timedelta(days=60), span=timedelta(days=29))
        seed_store(store, records - old, seed=2, start=datetime.now(UTC) - timedelta(days=1), span=timedelta(hours=23))
    else:
        body = compact_body(body_bytes)
        day = 86_400_000_000
        for start in range(0, records, FILL_CHUNK):
            rows = []
            for index in range(start, min(start + FILL_CHUNK, records)):
                age = 60 * day - index * (29 * day // old) if index < old else day // 2
                rows.append((now_us - age, body))
            store.append_encoded(rows)
    size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))
    print(f"filled {records:,} records ({old:,} past maxAge) in {time.perf_counter() - started:.1f}s; "
          f"store {size / 1e6:,.0f} MB", flush=True)
    store.close()


def writer(path: str, interval: float, ready: Any, stop: Any, results: Any) -> None:
    """The gateway: one single-record transaction every ``interval`` seconds, each timed."""
    store = SQLiteStore(path)
    body = compact_body(200)
    latencies: list[float] = []
    ready.set()
    while not stop.is_set():
        t0 = time.perf_counter()
        store.append_encoded([(micros(datetime.now(UTC)), body)])
        latencies.append(time.perf_counter() - t0)
        time.sleep(interval)
    store.close()
    results.put(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--body-bytes", type=int, default=200, help="size of each compact record (CBOR bytes)")
    parser.add_argument("--seed-records", action="store_true", help="realistic records from capture_export.seed")
    parser.add_argument("--batch-size", type=int, default=5000, help="the policy's batchSize")
    parser.add_argument("--soft", action="store_true", help="softDelete, then remove after the grace period")
    parser.add_argument("--write-interval", type=float, default=0.005, help="seconds between the writer's appends")
    parser.add_argument("--workdir", help="keep the store here (default: a temporary directory, removed)")
    add_keep_argument(parser)
    args = parser.parse_args()

    with work_directory("capture-export-retention-", keep=args.keep or bool(args.workdir),
                        path=args.workdir) as workdir:
        path = workdir / "store.sqlite"
        for leftover in workdir.glob("store.sqlite*"):
            leftover.unlink()
        fill(path, args.records, args.body_bytes, args.seed_records)
        spec_fields: dict = {"maxAge": "30d", "requireExport": False, "batchSize": args.batch_size}
        if args.soft:
            spec_fields["softDelete"] = {"gracePeriod": "1h"}
        spec = RetentionPolicySpec.model_validate(spec_fields)
        store = SQLiteStore(path)
        clock = SteppedClock()
        worker = RetentionWorker(ExporterId("bench", "retention"), open_store=lambda s, n: store, secrets={},
                                 clock=clock)

        ctx = multiprocessing.get_context("spawn")
        ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
        process = ctx.Process(target=writer, args=(str(path), args.write_interval, ready, stop, results))
        process.start()
        if not ready.wait(60):
            process.kill()
            raise SystemExit(f"the writer process did not start (exit code {process.exitcode})")
        time.sleep(0.2)
        phases = [("purge" if not args.soft else "soft-delete", None)]
        if args.soft:
            phases.append(("remove after grace", timedelta(hours=2)))
        status = RetentionPolicyStatus()
        lines = []
        for label, jump in phases:
            if jump is not None:
                clock.offset += jump
            started = time.perf_counter()
            outcome = worker.cycle(spec, status, {})
            elapsed = time.perf_counter() - started
            status = outcome.status
            run = status.last_run
            assert run is not None and run.outcome == "Succeeded", run
            done = run.purged + run.soft_deleted
            lines.append(f"{label}: {done:,} records in {elapsed:.2f}s = {done / elapsed:,.0f} records/s "
                         f"({run.chunks} chunks, longest {run.longest_chunk_seconds * 1000:.1f} ms)")
        time.sleep(0.2)
        stop.set()
        try:
            latencies = sorted(results.get(timeout=60))
        except queue.Empty:
            raise SystemExit(f"the writer process sent no latencies (exit code {process.exitcode})") from None
        process.join()
        remaining = store.count()
        store.close()

    print(f"store: {args.records:,} records, batchSize {args.batch_size}, "
          f"{'realistic seed records' if args.seed_records else f'{args.body_bytes}-byte records'}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for line in lines:
        print(line)
    print(f"records left: {remaining:,} (young ones and the writer's)")
    if latencies:
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"concurrent writer: {len(latencies):,} appends, latency max {latencies[-1] * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, p50 {p50 * 1000:.2f} ms")


if __name__ == "__main__":
    main()
