"""Shared pieces for the retention unit tests: a controllable clock, tiny records, a flaky bucket, and a
small world of one store (SQLite in memory unless given another) and a few exporters with their buckets
and a policy worker."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2

from capture_export.api import RetentionPolicySpec, RetentionPolicyStatus, S3ExporterSpec
from capture_export.audit import decode_object
from capture_export.export import Cursor, ExportEngine, ExporterId, RetryPolicy
from capture_export.export import engine as engine_module
from capture_export.export.layout import ObjectLayout
from capture_export.objectstore import MemoryObjectStore, ObjectStoreError
from capture_export.retention import ExporterRef, RetentionOutcome, RetentionWorker
from capture_export.retention.gate import micros
from capture_export.store import SQLiteStore
from capture_export.store.postgres import PostgresStore

NAMESPACE = "ns"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
BODY = cbor2.dumps({"ver": 2, "model": "m"})  # for rows that are never exported (it has no timestamp)


def body_at(ts_us: int) -> bytes:
    """A tiny record timed ``ts_us``, as a foreign row stored at ``ts_us`` must be to be exported."""
    return cbor2.dumps({"ver": 2, "timestamp": datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us),
                        "model": "m"}, timezone=UTC)
NO_WAIT = RetryPolicy(attempts=2, base_delay=0.0, throttle_delay=0.0)
HOUR_US = 3_600_000_000


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.current = start
        self.mono = 0.0
        self.slept = 0.0

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.slept += seconds

    def advance(self, delta: timedelta) -> None:
        self.current += delta
        self.mono += delta.total_seconds()


class FlakyBucket(MemoryObjectStore):
    """A bucket that can be down (every request fails, transiently) or fail one matching PUT."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.fail_put_containing: str | None = None
        self._decoded: dict[tuple[str, bytes], list[int]] = {}

    def _maybe_fail(self) -> None:
        if self.down:
            raise ObjectStoreError("EndpointUnreachable", "bucket unreachable", transient=True, domain="Bucket")
        super()._maybe_fail()

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        if self.fail_put_containing is not None and self.fail_put_containing in key:
            self.fail_put_containing = None
            raise ObjectStoreError("AccessDenied", "denied once", transient=False, domain="Credentials")
        super().put(key, data, content_type=content_type, metadata=metadata)

    def data_ids(self) -> set[int]:
        ids: set[int] = set()
        for key, data in self.objects.items():
            if key.endswith(".cbor.zstd"):
                decoded = self._decoded.get((key, data))
                if decoded is None:
                    decoded = self._decoded[(key, data)] = [int(r["id"]) for r in decode_object(data)]
                ids.update(decoded)
        return ids


def sync_pipeline() -> Any:
    from unittest import mock

    return mock.patch.object(engine_module, "_PreparePipeline", engine_module.SynchronousPipeline)


@dataclass
class Exporter:
    name: str
    spec: S3ExporterSpec
    bucket: FlakyBucket
    engine: ExportEngine
    cursor: Cursor = field(default_factory=Cursor)
    labels: dict[str, str] = field(default_factory=dict)
    present: bool = True

    def export(self) -> Any:
        result = self.engine.run(self.cursor)
        self.cursor = result.cursor
        return result

    def reset(self) -> bool:
        try:
            self.cursor = self.engine.reset(self.cursor)
        except engine_module.ExportFailure:
            return False
        return True

    def checkpoint(self) -> Cursor | None:
        """Read back independently of the engine: the JSON object at the layout's checkpoint key."""
        raw = self.bucket.objects.get(ObjectLayout(self.spec.prefix, NAMESPACE, self.name).checkpoint_key())
        if raw is None:
            return None
        data = json.loads(raw)
        return Cursor(int(data["epoch"]), int(data["cursor"]))


class World:
    """One store, some exporters (each with its own bucket) and one policy worker."""

    def __init__(self, *, limits: list[int], store: SQLiteStore | PostgresStore | None = None,
                 clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.store: SQLiteStore | PostgresStore = store or SQLiteStore(":memory:")
        self.exporters: dict[str, Exporter] = {}
        for index, limit in enumerate(limits):
            name = f"x{index}"
            spec = S3ExporterSpec(bucket=f"bucket-{index}", region="r", prefix="p", limit=limit)
            bucket = FlakyBucket()
            engine = ExportEngine(spec, ExporterId(NAMESPACE, name), self.store, bucket, clock=self.clock,
                                  retry=NO_WAIT)
            self.exporters[name] = Exporter(name, spec, bucket, engine)
        buckets = {e.spec.bucket: e.bucket for e in self.exporters.values()}
        self.worker = RetentionWorker(ExporterId(NAMESPACE, "policy"), open_store=lambda spec, ns: self.store,
                                      secrets={}, clock=self.clock, retry=NO_WAIT, pause_seconds=0.0,
                                      object_store_factory=lambda loc, cred: buckets[loc.bucket])
        self.status = RetentionPolicyStatus()
        self.inserted: dict[int, int] = {}  # id -> ts_us

    def now_us(self) -> int:
        return micros(self.clock.now())

    def insert(self, ages_minutes: list[int]) -> list[int]:
        now = self.now_us()
        rows = [(now - age * 60_000_000, body_at(now - age * 60_000_000)) for age in ages_minutes]
        last = self.store.append_encoded(rows)
        ids = list(range(last - len(rows) + 1, last + 1))
        self.inserted.update(zip(ids, (ts for ts, _ in rows), strict=True))
        return ids

    def refs(self) -> dict[str, ExporterRef]:
        return {e.name: ExporterRef(e.name, e.spec, e.labels) for e in self.exporters.values() if e.present}

    def purge(self, spec: RetentionPolicySpec, **kwargs: Any) -> RetentionOutcome:
        outcome = self.worker.cycle(spec, self.status, self.refs(), **kwargs)
        self.status = outcome.status
        return outcome

    def visible(self) -> set[int]:
        return set(self.store.ids())


_SCRATCH: list[SQLiteStore] = []


def scratch_store() -> SQLiteStore:
    """An empty in-memory store, reused between hypothesis examples (making one costs a millisecond)."""
    if not _SCRATCH:
        _SCRATCH.append(SQLiteStore(":memory:"))
    store = _SCRATCH[0]
    store._conn.execute("DELETE FROM captures")
    store._conn.execute("DELETE FROM sqlite_sequence")
    return store


def policy(**spec: Any) -> RetentionPolicySpec:
    return RetentionPolicySpec.model_validate(spec)
