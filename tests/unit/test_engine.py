"""The export engine against the in-memory object store: exactly once through failures and retries."""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
from typing import Any

import pytest

from capture_export.api import S3ExporterSpec
from capture_export.audit import decode_object, verify_export
from capture_export.export import Cursor, ExportEngine, ExporterId, pipeline
from capture_export.export.batch import encode_rows
from capture_export.export.model import PreparedBatch
from capture_export.export.provenance import object_metadata
from capture_export.objectstore import MemoryObjectStore, ObjectStoreError
from capture_export.store import SQLiteStore
from tests.support.engine import NO_WAIT, InstantClock, data_keys
from tests.support.records import make_record

EXPORTER = ExporterId("default", "usage")


def engine_for(store: SQLiteStore, objects: MemoryObjectStore, limit: int = 10, prefix: str = "p") -> ExportEngine:
    spec = S3ExporterSpec(bucket="bkt", region="us-east-1", prefix=prefix, limit=limit)
    return ExportEngine(spec, EXPORTER, store, objects, clock=InstantClock(), retry=NO_WAIT)


def test_drains_backlog_into_range_named_objects_and_checkpoints(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(25))
    objects = MemoryObjectStore()
    result = engine_for(sqlite_store, objects).run(Cursor())
    assert (result.outcome, result.rows, result.objects, result.backlog) == ("Succeeded", 25, 3, 0)
    assert data_keys(objects) == [
        "p/00000000000000000001-00000000000000000010.cbor.zstd",
        "p/00000000000000000011-00000000000000000020.cbor.zstd",
        "p/00000000000000000021-00000000000000000025.cbor.zstd",
    ]
    checkpoint = json.loads(objects.objects["p/_capture-export/checkpoints/default/usage.json"])
    assert checkpoint["cursor"] == "25" and checkpoint["epoch"] == 0
    assert [r["id"] for r in decode_object(objects.objects[data_keys(objects)[0]])] == list(range(1, 11))


def test_nothing_to_do_writes_nothing(sqlite_store: SQLiteStore) -> None:
    objects = MemoryObjectStore()
    result = engine_for(sqlite_store, objects).run(Cursor())
    assert result.outcome == "NothingToDo" and objects.objects == {}


def test_failed_checkpoint_keeps_cursor_and_retry_overwrites_the_same_key(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(10))
    objects = MemoryObjectStore()
    engine = engine_for(sqlite_store, objects)
    denied = ObjectStoreError("AccessDenied", "denied", transient=False, domain="Credentials")
    original_put = objects.put

    def put(key: str, data: bytes, **kw: object) -> None:
        if "checkpoints" in key and denied is not None and not objects.objects.get(key):
            raise denied
        original_put(key, data)

    objects.put = put  # type: ignore[method-assign]
    first = engine.run(Cursor())
    assert first.outcome == "Failed" and first.cursor.position == 0 and first.failure.reason == "AccessDenied"
    assert len(data_keys(objects)) == 1  # the data object landed, its checkpoint did not
    objects.put = original_put  # type: ignore[method-assign]
    second = engine.run(first.cursor)
    assert second.outcome == "Succeeded" and second.cursor.position == 10
    assert len(data_keys(objects)) == 1  # overwritten, not duplicated


def test_transient_failures_are_retried_with_backoff(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(5))
    objects = MemoryObjectStore()
    objects.fail_next = [ObjectStoreError("Throttled", "slow down", transient=True, domain="Bucket")] * 2
    engine = engine_for(sqlite_store, objects)
    result = engine.run(Cursor())
    assert result.outcome == "Succeeded" and result.rows == 5
    assert len(engine.clock.slept) == 2  # type: ignore[attr-defined]


def test_orphan_from_a_killed_run_with_other_bounds_is_swept(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(20))
    objects = MemoryObjectStore()
    # A run with limit 5 died after writing its data object and before its checkpoint.
    engine_for(sqlite_store, objects, limit=5)._commit  # noqa: B018 - documents the scenario
    # As a run of this exporter writes it: with metadata naming the exporter and the store.
    objects.put("p/00000000000000000001-00000000000000000005.cbor.zstd", b"stale",
                metadata=object_metadata("default/usage", sqlite_store.identity()))
    result = engine_for(sqlite_store, objects, limit=10).run(Cursor())
    assert result.rows == 20
    report = verify_export(sqlite_store, objects, "p")
    assert report.ok, report.summary()


def test_recover_never_resumes_past_the_checkpoint(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(30))
    objects = MemoryObjectStore()
    engine_for(sqlite_store, objects).run(Cursor(), max_seconds=0)  # one batch only
    fresh = engine_for(sqlite_store, objects)
    assert fresh.recover(Cursor(0, 0)).position == 10  # state file lost: the checkpoint wins
    # A saved state ahead of the checkpoint (edited; the checkpoint is written first) would skip 11..20:
    # the checkpoint wins, and the re-export sweeps up to the saved position.
    # (The high-water mark may be higher still: the first checkpoint claims every id read ahead for the
    # batches after it, export/uploads.py.)
    for saved in (Cursor(0, 20), Cursor(2, 20)):
        recovered = fresh.recover(saved)
        assert (recovered.epoch, recovered.position) == (0, 10) and recovered.high_water >= 20
    result = fresh.run(fresh.recover(Cursor(0, 20)))
    assert result.cursor.position == 30
    assert verify_export(sqlite_store, objects, "p").ok


def test_reset_reexports_everything_once_more_under_the_same_keys(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(25))
    objects = MemoryObjectStore()
    engine = engine_for(sqlite_store, objects)
    done = engine.run(Cursor())
    keys = data_keys(objects)
    reset = engine.reset(done.cursor)
    assert (reset.epoch, reset.position) == (1, 0)
    assert json.loads(objects.objects["p/_capture-export/checkpoints/default/usage.json"])["cursor"] == "0"
    again = engine.run(reset)
    assert again.rows == 25 and data_keys(objects) == keys
    assert verify_export(sqlite_store, objects, "p").ok


def test_reset_with_a_new_limit_leaves_no_duplicates(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(25))
    objects = MemoryObjectStore()
    done = engine_for(sqlite_store, objects, limit=10).run(Cursor())
    engine = engine_for(sqlite_store, objects, limit=7)
    engine.run(engine.reset(done.cursor))
    report = verify_export(sqlite_store, objects, "p")
    assert report.ok, report.summary()


def test_corrupt_record_holds_the_cursor_before_it(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(5))
    sqlite_store._conn.execute("UPDATE captures SET body = x'01' WHERE id = 3")
    objects = MemoryObjectStore()
    result = engine_for(sqlite_store, objects, limit=2).run(Cursor())
    assert result.failure is not None and result.failure.reason == "CorruptRecord"
    assert "record 3" in result.failure.message
    assert result.cursor.position == 2


@pytest.mark.parametrize("prefix", ["", "a/b"])
def test_keys_honour_prefix(sqlite_store: SQLiteStore, prefix: str) -> None:
    sqlite_store.append([make_record(1)])
    objects = MemoryObjectStore()
    engine_for(sqlite_store, objects, prefix=prefix).run(Cursor())
    expected = (f"{prefix}/" if prefix else "") + "00000000000000000001-00000000000000000001.cbor.zstd"
    assert data_keys(objects) == [expected]


def test_reset_after_a_purge_keeps_the_only_copy_of_purged_records_and_duplicates_nothing(
    sqlite_store: SQLiteStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(40))
    objects = MemoryObjectStore()
    done = engine_for(sqlite_store, objects, limit=10).run(Cursor())
    # Retention purged 5..24 after they were exported (committed cursor 40).
    sqlite_store._conn.execute("DELETE FROM captures WHERE id BETWEEN 5 AND 24")
    engine = engine_for(sqlite_store, objects, limit=7)  # and the user changed the batch size
    again = engine.run(engine.reset(done.cursor))
    assert again.failure is None and again.cursor.position == 40
    ids = sorted(r["id"] for key in data_keys(objects) for r in decode_object(objects.objects[key]))
    assert ids == list(range(1, 41)), "every record exactly once, purged ones from the objects kept"


@pytest.mark.parametrize(("cpus", "most_at_once"), [(1, 1), (2, 1), (3, 2), (8, 2)])
def test_the_default_format_encodes_one_batch_at_a_time_on_two_cpus(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, cpus: int, most_at_once: int
) -> None:
    """On two CPUs a second batch compressed beside the first only slows both (docs/benchmarks.md); from
    three on, two batches encode at once. Either way every record is exported once, in order."""
    sqlite_store.append(make_record(i) for i in range(60))
    monkeypatch.setattr(pipeline, "available_cpus", lambda: cpus, raising=False)
    encoding, most, lock = 0, 0, threading.Lock()

    def counted(*args: Any) -> Any:
        nonlocal encoding, most
        with lock:
            encoding += 1
            most = max(most, encoding)
        try:
            time.sleep(0.05)  # long enough for the reader to hand over the next batch meanwhile
            return encode_rows(*args)
        finally:
            with lock:
                encoding -= 1

    monkeypatch.setattr(pipeline, "encode_rows", counted)
    objects = MemoryObjectStore()
    result = engine_for(sqlite_store, objects).run(Cursor())
    assert (result.outcome, result.rows, result.objects) == ("Succeeded", 60, 6)
    assert [r["id"] for key in data_keys(objects) for r in decode_object(objects.objects[key])] == list(range(1, 61))
    assert most == most_at_once


class SlowDataUploads(MemoryObjectStore):
    """A bucket whose data PUTs each wait (up to ``patience`` seconds) for another data PUT to be under way
    too, noting the most ever under way at once; checkpoints, LISTs and the rest go through at once."""

    def __init__(self, patience: float = 1.0) -> None:
        super().__init__()
        self.patience = patience
        self.under_way = 0
        self.most_at_once = 0
        self.changed = threading.Condition()

    def put(self, key: str, data: bytes, **kwargs: Any) -> None:
        if "_capture-export" in key:
            super().put(key, data, **kwargs)
            return
        with self.changed:
            self.under_way += 1
            self.most_at_once = max(self.most_at_once, self.under_way)
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.under_way > 1, timeout=self.patience)
        try:
            super().put(key, data, **kwargs)
        finally:
            with self.changed:
                self.under_way -= 1


@pytest.mark.parametrize("fmt", ["cbor-zstd", "jsonl", "parquet"])
def test_the_next_batch_uploads_while_the_last_one_is_still_uploading(sqlite_store: SQLiteStore, fmt: str) -> None:
    """While one PUT is under way, neither this process nor the S3 server is necessarily busy (with S3 20 ms
    away, docs/benchmarks.md): from the second batch on, two data objects upload at once, never more, and
    every record is still exported once, in order, with the checkpoint at the end."""
    sqlite_store.append(make_record(i) for i in range(60))
    objects = SlowDataUploads()
    spec = S3ExporterSpec(bucket="bkt", region="us-east-1", prefix="p", limit=10, format=fmt)
    result = ExportEngine(spec, EXPORTER, sqlite_store, objects, clock=InstantClock(), retry=NO_WAIT).run(Cursor())
    assert (result.outcome, result.rows, result.objects, result.cursor.position) == ("Succeeded", 60, 6, 60)
    keys = sorted(key for key in objects.objects if "_capture-export" not in key)
    assert [r["id"] for key in keys for r in decode_object(objects.objects[key], key)] == list(range(1, 61))
    assert objects.most_at_once == 2
    assert verify_export(sqlite_store, objects, "p").ok


def batches_held_before(key: str) -> list[str | None]:
    """The batches of ``key``'s exporter (its prefix) this process still holds that ended before the one just
    before the batch of data object ``key`` (their keys only: a list of the batches themselves would hold them
    too). Other tests' batches are left out: a full run leaves some alive in its processes."""
    gc.collect()
    prefix = key.split("/", 1)[0] + "/"
    held = [o for o in gc.get_objects() if isinstance(o, PreparedBatch) and (o.key or "").startswith(prefix)]
    first_id = next(batch.first_id for batch in held if batch.key == key)
    return [batch.key for batch in held if batch.last_id < first_id - 1]


class UploadsThatLookBack(MemoryObjectStore):
    """A bucket whose data PUTs each note, as they begin, the batches the exporting process still holds that
    ended before the previous batch (committed by then: at most two upload at once), then wait (up to
    ``patience`` seconds) for the next data PUT to begin, so that the run cannot move on meanwhile."""

    def __init__(self, patience: float = 1.0) -> None:
        super().__init__()
        self.patience = patience
        self.begun = 0
        self.changed = threading.Condition()
        self.kept_alive: list[str | None] = []

    def put(self, key: str, data: bytes, **kwargs: Any) -> None:
        if "_capture-export" not in key:
            with self.changed:  # one at a time: one's list of what is held holds it for the other
                self.kept_alive += batches_held_before(key)
                self.begun += 1
                me = self.begun
                self.changed.notify_all()
                self.changed.wait_for(lambda: self.begun > me, timeout=self.patience)
        super().put(key, data, **kwargs)


@pytest.mark.parametrize("fmt", ["cbor-zstd", "jsonl", "parquet"])
def test_a_committed_batch_is_let_go_while_the_next_ones_upload(sqlite_store: SQLiteStore, fmt: str) -> None:
    """A committed batch gives its memory back to the budget, so the process must let go of its payload too:
    a dozen JSON Lines exporters each holding their last committed payload while the next two uploaded took
    the pod 2-5 MiB past its memory allowance (tests/integration/test_json_lines_backlog_memory.py)."""
    sqlite_store.append(make_record(i) for i in range(60))
    objects = UploadsThatLookBack()
    spec = S3ExporterSpec(bucket="bkt", region="us-east-1", prefix=f"let-go-{uuid.uuid4().hex}", limit=10,
                         format=fmt)
    result = ExportEngine(spec, EXPORTER, sqlite_store, objects, clock=InstantClock(), retry=NO_WAIT).run(Cursor())
    assert (result.outcome, result.rows, result.objects) == ("Succeeded", 60, 6)
    assert objects.begun == 6
    assert objects.kept_alive == []
