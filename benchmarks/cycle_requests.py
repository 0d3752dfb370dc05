"""Object-store requests per cycle of one exporter, by kind: what one writer per destination costs.

One ExporterWorker (as the operator and the standalone runner use it) against an in-memory bucket and a
real SQLite store, on a clock the script moves: a first cycle (connection test, conditional-write probe,
claim), an idle cycle, and writing cycles more and less than a third of the lease TTL after the last
lease write. Counts only: no timing, so the machine's load does not matter.

    .venv/bin/python benchmarks/cycle_requests.py
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from capture_export.api import S3ExporterSpec, S3ExporterStatus
from capture_export.export import ExporterId
from capture_export.export.cycle import ExporterWorker
from capture_export.objectstore import MemoryObjectStore
from capture_export.seed import generate_records
from capture_export.store import SQLiteStore

METHODS = ("put", "put_conditional", "get", "fetch", "head", "list", "delete", "check")


class ScriptClock:
    def __init__(self) -> None:
        self.current = datetime(2026, 1, 1, tzinfo=UTC)
        self.mono = 0.0

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)
        self.mono += seconds


class CountingBucket(MemoryObjectStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattribute__(self, name: str) -> Any:
        if name in METHODS:
            object.__getattribute__(self, "calls")[name] += 1
        return object.__getattribute__(self, name)


def main(directory: Path) -> None:
    bucket, clock = CountingBucket(), ScriptClock()
    store = SQLiteStore(directory / "store.sqlite")
    spec = S3ExporterSpec(bucket="bench", region="us-east-1", limit=100, prefix="p", every=30)
    worker = ExporterWorker(ExporterId("default", "usage"), open_store=lambda _spec, _ns: store,
                            secrets={}, clock=clock, object_store_factory=lambda _loc, _access: bucket)
    status = S3ExporterStatus()
    if hasattr(worker, "ownership"):
        print(f"lease TTL {worker.ownership.ttl:.0f}s; renewed at most every {worker.ownership.ttl / 3:.0f}s")
    steps = [("first cycle: connection test, probe, claim; 300 records", 300, 0.0),
             ("idle, 30 s later", 0, 30.0),
             ("100 records, 25 s later (> TTL/3 since the lease write)", 100, 25.0),
             ("100 records, 5 s later (< TTL/3)", 100, 5.0),
             ("100 records, 5 s later (< TTL/3)", 100, 5.0)]
    for label, records, wait in steps:
        clock.advance(wait)
        if records:
            store.append(generate_records(records, seed=records))
        bucket.calls.clear()
        outcome = worker.cycle(spec, status)
        status = outcome.status
        rows = outcome.result.rows if outcome.result else 0
        made = sum(bucket.calls.values())
        print(f"{label:58s} rows {rows:>3}  requests {made:>2}  {dict(sorted(bucket.calls.items()))}")
    getattr(worker, "close", lambda: None)()  # main before one writer per destination has no close
    store.close()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help, and no stray arguments
    with tempfile.TemporaryDirectory(prefix="cycle-requests-") as directory:
        main(Path(directory))
