"""Two data objects upload at once (export/uploads.py): a worker that dies with both in the bucket and
neither checkpointed, followed by a run that cuts its batches elsewhere (a user who changed `limit`
meanwhile), must leave every record in exactly one object; and a failed run returns only once the upload
still under way has ended, so that no object lands behind the next run's back."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from capture_export.api import S3ExporterSpec
from capture_export.audit import decode_object, verify_export
from capture_export.export import Cursor, ExportEngine, ExporterId
from capture_export.objectstore import MemoryObjectStore, ObjectStoreError
from capture_export.store import SQLiteStore
from tests.support.engine import NO_WAIT, InstantClock
from tests.support.records import make_record

EXPORTER = ExporterId("default", "usage")
DENIED = ObjectStoreError("AccessDenied", "denied", transient=False, domain="Credentials")


def jsonl_engine(store: SQLiteStore, objects: MemoryObjectStore, limit: int) -> ExportEngine:
    spec = S3ExporterSpec(bucket="bkt", region="us-east-1", prefix="p", limit=limit, format="jsonl")
    return ExportEngine(spec, EXPORTER, store, objects, clock=InstantClock(), retry=NO_WAIT)


def data_ranges(objects: MemoryObjectStore) -> list[str]:
    return sorted(key.removeprefix("p/").removesuffix(".jsonl") for key in objects.objects if key.endswith(".jsonl"))


class DiesBeforeSecondCheckpoint(MemoryObjectStore):
    """The first data PUT takes a second (the reader reads the next batches meanwhile, so the first
    checkpoint claims them); every checkpoint after the first fails for good, as if the worker died just
    before writing it, with the uploads under way landing."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints = 0
        self.dead = False

    def put(self, key: str, data: bytes, **kwargs: Any) -> None:
        if "_capture-export" in key:
            self.checkpoints += 1
            if self.dead and self.checkpoints > 1:
                raise DENIED
        elif not any(k.endswith(".jsonl") for k in self.objects):
            time.sleep(1.0)
        super().put(key, data, **kwargs)


@pytest.mark.parametrize("resumed_by", ["a new process", "the same process"])
def test_two_objects_past_the_checkpoint_are_swept_when_the_next_run_cuts_other_batches(
    sqlite_store: SQLiteStore, resumed_by: str
) -> None:
    sqlite_store.append(make_record(i) for i in range(60))
    objects = DiesBeforeSecondCheckpoint()
    objects.dead = True
    crashed = jsonl_engine(sqlite_store, objects, limit=10).run(Cursor())
    assert crashed.outcome == "Failed" and crashed.cursor.position == 10
    # The premise: two batches after the checkpoint's were in the bucket when the worker died.
    assert data_ranges(objects)[:3] == ["00000000000000000001-00000000000000000010",
                                        "00000000000000000011-00000000000000000020",
                                        "00000000000000000021-00000000000000000030"], data_ranges(objects)
    objects.dead = False
    if resumed_by == "a new process":
        engine = jsonl_engine(sqlite_store, objects, limit=7)
        cursor = engine.recover(None)
    else:
        engine, cursor = jsonl_engine(sqlite_store, objects, limit=7), crashed.cursor
    assert cursor.position == 10 and cursor.high_water >= 30  # the first checkpoint claimed both
    resumed = engine.run(cursor)
    assert resumed.outcome == "Succeeded" and resumed.cursor.position == 60
    report = verify_export(sqlite_store, objects, "p")
    assert report.ok and not report.duplicated and not report.missing, report.summary()
    ids = sorted(r["id"] for key in objects.objects if key.endswith(".jsonl")
                 for r in decode_object(objects.objects[key], key))
    assert ids == list(range(1, 61))


class FailsOneUploadWhileAnotherIsSlow(MemoryObjectStore):
    """The first data PUT takes a second; after it, the PUT of records 11-20 fails for good while the
    one of records 21-30 takes half a second more. Notes when each data PUT ended."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: dict[str, float] = {}
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes, **kwargs: Any) -> None:
        if key.endswith(".jsonl"):
            if "-00000000000000000010." in key:
                time.sleep(1.0)
            elif "00000000000000000011-" in key:
                time.sleep(0.1)
                raise DENIED
            elif "00000000000000000021-" in key:
                time.sleep(0.5)
        super().put(key, data, **kwargs)
        with self.lock:
            self.ended[key] = time.monotonic()


def test_a_failed_run_returns_only_once_its_other_upload_has_ended(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(60))
    objects = FailsOneUploadWhileAnotherIsSlow()
    failed = jsonl_engine(sqlite_store, objects, limit=10).run(Cursor())
    returned = time.monotonic()
    assert failed.outcome == "Failed" and failed.failure is not None and failed.failure.reason == "AccessDenied"
    assert failed.cursor.position == 10
    late = "p/00000000000000000021-00000000000000000030.jsonl"
    assert late in objects.ended, "the upload under way beside the failed one was started (the premise)"
    assert objects.ended[late] <= returned, "an object landed after the run had returned"
    # The next run (the failing PUT now goes through) exports every record once.
    objects.put = MemoryObjectStore.put.__get__(objects)  # type: ignore[method-assign]
    again = jsonl_engine(sqlite_store, objects, limit=7).run(failed.cursor)
    assert again.outcome == "Succeeded" and again.cursor.position == 60
    report = verify_export(sqlite_store, objects, "p")
    assert report.ok and not report.duplicated and not report.missing, report.summary()
