"""Hold and Quarantine in the export engine, the status and the metrics, against the in-memory object
store (tests/hostile drives the same through the CLI, SeaweedFS and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

from capture_export.api import S3ExporterSpec, S3ExporterStatus
from capture_export.audit import decode_object, verify_export
from capture_export.export import Cursor, ExportEngine, ExporterId
from capture_export.metrics import OperatorMetrics
from capture_export.objectstore import MemoryObjectStore
from capture_export.status.exporter import StatusUpdate
from capture_export.store import SQLiteStore
from tests.support.engine import NO_WAIT, InstantClock, data_keys
from tests.support.records import make_record

EXPORTER = ExporterId("default", "usage")


def _engine(store: SQLiteStore, objects: MemoryObjectStore, **spec: object) -> ExportEngine:
    return ExportEngine(S3ExporterSpec(bucket="bkt", region="us-east-1", prefix="p", limit=10, **spec), EXPORTER,
                        store, objects, clock=InstantClock(), retry=NO_WAIT)


def _store_with_tampered_rows(store: SQLiteStore) -> None:
    store.append(make_record(i) for i in range(1, 8))
    # Another writer rewrites the bytes of rows our append sealed: the seals no longer match.
    store._conn.execute("UPDATE captures SET body = CAST(body || x'00' AS BLOB) WHERE id = 3")  # trailing byte
    store._conn.execute("UPDATE captures SET body = x'a1' WHERE id IN (1, 7)")  # a map head, nothing after


def test_hold_commits_the_records_before_the_corrupt_one_and_names_it(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(1, 6))
    sqlite_store._conn.execute("UPDATE captures SET body = CAST(body || x'00' AS BLOB) WHERE id = 4")
    objects = MemoryObjectStore()
    result = _engine(sqlite_store, objects).run(Cursor())
    assert result.failure is not None and result.failure.reason == "CorruptRecord"
    assert result.failure.message.startswith("record 4 is corrupt: 1 bytes trailing")
    assert result.cursor.position == 3
    assert data_keys(objects) == ["p/00000000000000000001-00000000000000000003.cbor.zstd"]
    assert [r["id"] for r in decode_object(objects.objects[data_keys(objects)[0]])] == [1, 2, 3]
    assert sqlite_store.quarantined() == []


def test_quarantine_moves_the_corrupt_rows_and_exports_the_rest(sqlite_store: SQLiteStore) -> None:
    _store_with_tampered_rows(sqlite_store)
    objects = MemoryObjectStore()
    result = _engine(sqlite_store, objects, on_corrupt_record="Quarantine").run(Cursor())
    assert result.failure is None and result.cursor.position == 7
    assert [record_id for record_id, _ in result.quarantined] == [1, 3, 7]
    assert [row.id for row in sqlite_store.quarantined()] == [1, 3, 7]
    assert [row.exporter for row in sqlite_store.quarantined()] == ["default/usage"] * 3
    # The object is named by the records it holds (2..6), though the batch handled 1..7.
    assert data_keys(objects) == ["p/00000000000000000002-00000000000000000006.cbor.zstd"]
    assert [r["id"] for r in decode_object(objects.objects[data_keys(objects)[0]])] == [2, 4, 5, 6]
    report = verify_export(sqlite_store, objects, "p")
    assert report.ok and report.quarantined == 3, report.summary()

    update = StatusUpdate(S3ExporterStatus(), now=datetime.now(UTC), generation=1)
    update.record_run(result)
    status, events = update.finish()
    assert status.quarantined == 3 and status.last_run is not None and status.last_run.quarantined == 3
    (event,) = [e for e in events if e.reason == "RecordQuarantined"]
    assert event.type == "Warning" and "record 1: " in event.message and "record 7: " in event.message

    metrics = OperatorMetrics()
    from capture_export.export.model import BatchResult

    metrics.batch("default", "usage", BatchResult(key=None, first_id=1, last_id=7, rows=4, raw_bytes=1, bytes=1,
                                                  cursor=result.cursor, read_seconds=0, encode_seconds=0,
                                                  upload_seconds=0, quarantined=tuple(result.quarantined)))
    assert metrics.registry.get_sample_value("capture_export_records_quarantined_total",
                                             {"namespace": "default", "name": "usage"}) == 3


def test_a_released_record_is_exported_under_its_new_id(sqlite_store: SQLiteStore) -> None:
    from capture_export.store.quarantine import release
    from capture_export.store.records import encode_body

    _store_with_tampered_rows(sqlite_store)
    objects = MemoryObjectStore()
    engine = _engine(sqlite_store, objects, on_corrupt_record="Quarantine")
    cursor = engine.run(Cursor()).cursor
    new_id = release(sqlite_store, 3, encode_body(make_record(3))[1])
    assert new_id == 8 and [row.id for row in sqlite_store.quarantined()] == [1, 7]
    again = engine.run(cursor)
    assert again.failure is None and again.rows == 1 and again.cursor.position == 8
    assert verify_export(sqlite_store, objects, "p").ok
