"""The export engine with formats, dated key templates, privacy mode and filters (in-memory bucket)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest

from capture_export.api import S3ExporterSpec, S3ExporterStatus
from capture_export.audit import decode_object, verify_export, verify_options
from capture_export.export import Cursor, ExportEngine, ExporterId, RetryPolicy
from capture_export.export import engine as engine_module
from capture_export.export.cycle import ExporterWorker
from capture_export.export.formats import CborZstdEncoder, data_extension
from capture_export.export.provenance import object_metadata
from capture_export.objectstore import MemoryObjectStore
from capture_export.status.conditions import get_condition
from capture_export.store import SQLiteStore
from tests.support.records import make_record

EXPORTER = ExporterId("default", "usage")
NO_WAIT = RetryPolicy(attempts=2, base_delay=0.0, throttle_delay=0.0)
CHECKPOINT = "p/_capture-export/checkpoints/default/usage.json"
START = datetime(2026, 11, 24, 22, 0, tzinfo=UTC)


def make_spec(**fields: Any) -> S3ExporterSpec:
    return S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": "p", "limit": 10,
                                          **fields})


def engine_for(store: SQLiteStore, objects: MemoryObjectStore, **fields: Any) -> ExportEngine:
    return ExportEngine(make_spec(**fields), EXPORTER, store, objects, retry=NO_WAIT)


def data_keys(objects: MemoryObjectStore) -> list[str]:
    return sorted(k for k in objects.objects if data_extension(k) and "_capture-export" not in k)


def verify(store: SQLiteStore, objects: MemoryObjectStore, **fields: Any):
    return verify_export(store, objects, "p", **verify_options(make_spec(**fields), "default", "usage"))


def spread(count: int, step: timedelta) -> list[dict[str, Any]]:
    """Records every ``step`` from 22:00 on 2026-11-24, with models and statuses that vary."""
    out = []
    for n in range(count):
        model = ("gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro")[n % 3]
        out.append(make_record(n, timestamp=START + n * step, model=model, status_code=200 if n % 4 else 429))
    return out


def test_default_path_never_decodes_and_writes_the_same_bytes(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_store.append(make_record(i) for i in range(25))
    expected = CborZstdEncoder().encode(engine_module.encode_batch(sqlite_store.read_batch(0, 10)))

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the default path decoded a record")

    monkeypatch.setattr(cbor2, "loads", no_decoding)
    objects = MemoryObjectStore()
    result = engine_for(sqlite_store, objects).run(Cursor())
    assert (result.rows, result.objects, result.filtered) == (25, 3, 0)
    assert objects.objects["p/00000000000000000001-00000000000000000010.cbor.zstd"] == expected


def test_dated_template_cuts_batches_at_the_records_day(sqlite_store: SQLiteStore) -> None:
    # 60 records 5 minutes apart from 22:00: 24 on the 24th, 36 on the 25th.
    sqlite_store.append(spread(60, timedelta(minutes=5)))
    objects = MemoryObjectStore()
    result = engine_for(sqlite_store, objects, path_template="{prefix}/{date}").run(Cursor())
    assert result.rows == 60 and result.cursor.position == 60
    keys = data_keys(objects)
    assert keys[2] == "p/2026-11-24/00000000000000000021-00000000000000000024.cbor.zstd"  # cut at midnight
    assert keys[3] == "p/2026-11-25/00000000000000000025-00000000000000000034.cbor.zstd"  # the next starts there
    for key in keys:
        days = {r["timestamp"].date().isoformat() for r in decode_object(objects.objects[key])}
        assert days == {key.split("/")[1]}, key
    assert verify(sqlite_store, objects, path_template="{prefix}/{date}").ok


def test_hourly_hive_folders_read_every_record_once(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(spread(200, timedelta(minutes=7)))
    reads: list[int] = []
    original = sqlite_store.read_batch

    def counting(after: int, limit: int, horizon: int | None = None):
        rows = original(after, limit, horizon)
        reads.append(len(rows))
        return rows

    sqlite_store.read_batch = counting  # type: ignore[method-assign]
    objects = MemoryObjectStore()
    fields = {"path_template": "{prefix}/{year}/{month}/{day}/{hour}", "hive_partitioning": True, "limit": 50}
    result = engine_for(sqlite_store, objects, **fields).run(Cursor())
    assert result.rows == 200 and sum(reads) == 200  # rows past a cut are kept for the next batch, not re-read
    first = "p/year=2026/month=11/day=24/hour=22/00000000000000000001-00000000000000000009.cbor.zstd"
    assert data_keys(objects)[0] == first
    assert result.objects == len({k.rsplit("/", 1)[0] for k in data_keys(objects)})  # 8-9 records an hour
    assert verify(sqlite_store, objects, **fields).ok


def test_filter_excludes_records_but_they_advance_the_cursor(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_store.append(spread(30, timedelta(minutes=1)))
    objects = MemoryObjectStore()
    fields = {"filter": {"models": ["claude-*"], "statusCodes": [200]}}
    with monkeypatch.context() as patched:
        # A filter alone peeks at the fields it needs: no record is decoded in full.
        patched.setattr(cbor2, "loads", lambda *a, **k: pytest.fail("decoded a whole record"))
        result = engine_for(sqlite_store, objects, **fields).run(Cursor())
    passing = [n for n in range(30) if n % 3 == 1 and n % 4]
    assert (result.rows, result.filtered, result.cursor.position) == (len(passing), 30 - len(passing), 30)
    exported = [r["id"] for k in data_keys(objects) for r in decode_object(objects.objects[k])]
    assert exported == [n + 1 for n in passing]
    # Named by the range each batch handled, holding only what passed.
    assert data_keys(objects)[0] == "p/00000000000000000001-00000000000000000010.cbor.zstd"
    report = verify(sqlite_store, objects, **fields)
    assert report.ok and report.filtered == 30 - len(passing), report.summary()
    unfiltered = verify_export(sqlite_store, objects, "p")
    assert not unfiltered.ok and len(unfiltered.missing) == 30 - len(passing)


def test_a_batch_the_filter_empties_writes_no_object_but_checkpoints_and_sweeps(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(20))
    objects = MemoryObjectStore()
    # A killed attempt without the filter left an object in the range of the first batch.
    # As a run of this exporter writes it: with metadata naming the exporter and the store.
    objects.put("p/00000000000000000001-00000000000000000005.cbor.zstd", b"stale",
                metadata=object_metadata("default/usage", sqlite_store.identity()))
    fields = {"filter": {"apiTypes": ["ant_messages"]}}
    result = engine_for(sqlite_store, objects, **fields).run(Cursor())
    assert (result.outcome, result.rows, result.objects, result.filtered) == ("Succeeded", 0, 0, 20)
    assert result.cursor.position == 20 and result.last_key is None and data_keys(objects) == []
    assert json.loads(objects.objects[CHECKPOINT])["cursor"] == "20"
    assert verify(sqlite_store, objects, **fields).ok


def test_changing_format_and_limit_after_a_reset_leaves_no_duplicates(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(make_record(i) for i in range(25))
    objects = MemoryObjectStore()
    done = engine_for(sqlite_store, objects, path_template="{prefix}/{date}").run(Cursor())
    engine = engine_for(sqlite_store, objects, path_template="{prefix}/{date}", format="jsonl", compression="gzip",
                        limit=7)
    engine.run(engine.reset(done.cursor))
    assert {data_extension(k) for k in data_keys(objects)} == {".jsonl.gz"}
    report = verify(sqlite_store, objects, path_template="{prefix}/{date}")
    assert report.ok, report.summary()


@pytest.mark.parametrize(("fmt", "compression"), [("cbor-zstd", None), ("jsonl", "zstd"), ("parquet", None)])
def test_privacy_mode_in_every_format(sqlite_store: SQLiteStore, fmt: str, compression: str | None) -> None:
    sqlite_store.append(make_record(i) for i in range(12))
    objects = MemoryObjectStore()
    result = engine_for(sqlite_store, objects, format=fmt, compression=compression, privacy_mode=True,
                        redact_fields=["identity.login_name"]).run(Cursor())
    assert result.rows == 12
    records = [r for k in data_keys(objects) for r in decode_object(objects.objects[k], k)]
    assert [r["id"] for r in records] == list(range(1, 13))
    for record in records:
        capture = record["capture"]
        text = json.dumps(capture)
        assert "messages" not in capture["request"]["body"] and "hello" not in text and '"hi"' not in text
        assert "raw_body" not in capture["response"] and "login_name" not in record["identity"]
        assert record["usage"]["input_tokens"] >= 10 and record["model"] == "gpt-4o"


@pytest.mark.parametrize(("fmt", "compression"), [("jsonl", "none"), ("parquet", None), ("cbor-zstd", None)])
def test_credential_headers_never_leave_in_any_format(
    sqlite_store: SQLiteStore, fmt: str, compression: str | None
) -> None:
    # Written by a gateway that does not strip: the credential headers are in the store.
    rows = [(0, cbor2.dumps({k: v for k, v in make_record(i).items()}, timezone=UTC)) for i in range(5)]
    sqlite_store.append_encoded(rows)
    objects = MemoryObjectStore()
    engine_for(sqlite_store, objects, format=fmt, compression=compression,
               filter={"models": ["gpt-4o"]}).run(Cursor())
    for key in data_keys(objects):
        text = json.dumps([r["capture"] for r in decode_object(objects.objects[key], key)], default=str).lower()
        assert "authorization" not in text and "set-cookie" not in text and "sk-secret" not in text


def worker_for(store: SQLiteStore, objects: MemoryObjectStore) -> ExporterWorker:
    class NoSecrets:
        def get(self, namespace: str, name: str) -> None:
            return None

    return ExporterWorker(EXPORTER, open_store=lambda spec, ns: store, secrets=NoSecrets(),
                          object_store_factory=lambda location, credentials: objects)


def test_status_reports_filtered_records(sqlite_store: SQLiteStore) -> None:
    sqlite_store.append(spread(12, timedelta(minutes=1)))
    worker = worker_for(sqlite_store, MemoryObjectStore())
    spec = make_spec(filter={"models": ["gpt-4o"]})
    outcome = worker.cycle(spec, S3ExporterStatus())
    status = outcome.status
    assert (status.last_run.rows, status.last_run.filtered) == (4, 8)
    assert (status.totals.rows, status.totals.filtered, status.cursor) == (4, 8, "12")
    assert status.model_dump(by_alias=True)["totals"]["filtered"] == 8


def test_parquet_without_pyarrow_is_a_clear_condition(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capture_export.export import formats

    def missing() -> None:
        raise formats.FormatUnavailable("format parquet needs pyarrow, which is not installed here: install "
                                        "capture-export[parquet]")

    # Missing here, and so in the encode pool's workers (which write Parquet when there is a pool).
    monkeypatch.setattr(formats, "_pyarrow", missing)
    monkeypatch.setattr(formats, "_require_pyarrow", missing)
    sqlite_store.append(make_record(i) for i in range(3))
    objects = MemoryObjectStore()
    outcome = worker_for(sqlite_store, objects).cycle(make_spec(format="parquet"), S3ExporterStatus())
    ready = get_condition(outcome.status.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "FormatUnavailable")
    assert "capture-export[parquet]" in ready.message and outcome.status.cursor == "0"
    assert any(e.reason == "ExportFailed" and "pyarrow" in e.message for e in outcome.events)
    assert data_keys(objects) == []


def _stored_rows(store: SQLiteStore, ids: list[int]) -> list[Any]:
    """Sealed rows as the store reads them, with the given ids (large ones need other map heads)."""
    store.append(make_record(n) for n in range(len(ids)))
    return [row._replace(id=record_id) for row, record_id in zip(store.read_batch(0, len(ids)), ids, strict=True)]


def _same_batch(left: Any, right: Any) -> bool:
    fields = ("payload", "rows", "filtered", "raw_bytes", "first_id", "last_id", "last_timestamp_us",
              "kept_first_id", "kept_last_id", "quarantined", "held")
    return all(getattr(left, name) == getattr(right, name) for name in fields)


def test_a_batch_of_sealed_rows_is_checked_at_once_and_written_as_the_row_by_row_check_writes_it(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capture_export.export import batch
    from capture_export.store.base import StoredRecord
    from capture_export.store.seal import RecordSeal

    seal = sqlite_store.record_seal()
    rows = _stored_rows(sqlite_store, [1, 2, 255, 256, 300, 65_535, 65_536, 2**32 - 1, 2**32, 2**40])
    recipe = batch.BatchRecipe("cbor-zstd", "zstd", seal=seal)
    expected = CborZstdEncoder().encode(engine_module.encode_batch(rows, seal))
    # Record 4 as a gateway writes it (credential headers in), under the seal of our own record 4.
    foreign = cbor2.dumps({k: v for k, v in make_record(4).items()}, timezone=UTC)
    corrupt = StoredRecord(2**40 + 1, rows[-1].timestamp_us, b"\xff", None)
    cases = {
        "all sealed": (rows, recipe),
        "a body changed under its seal": ([*rows[:4], rows[4]._replace(body=foreign), *rows[5:]], recipe),
        "the last row unsealed": ([*rows, StoredRecord(2**40 + 1, rows[4].timestamp_us, foreign, None)], recipe),
        "a corrupt row, hold": ([*rows, corrupt], recipe),
        "a corrupt row, quarantine": ([*rows, corrupt], batch.BatchRecipe("cbor-zstd", "zstd", seal=seal,
                                                                          on_corrupt_record="Quarantine")),
        "more headers stripped": (rows, batch.BatchRecipe("cbor-zstd", "zstd", seal=seal,
                                                          strip_headers=("x-request-id",))),
    }
    at_once = {name: batch.encode_rows(case, batch_rows) for name, (batch_rows, case) in cases.items()}
    assert at_once["all sealed"].payload == expected
    changed = decode_object(at_once["a body changed under its seal"].payload, "k.cbor.zstd")
    assert [record["id"] for record in changed] == [row.id for row in rows]
    assert "authorization" not in json.dumps([record["capture"] for record in changed], default=str).lower()
    monkeypatch.setattr(RecordSeal, "all_valid", lambda self, rows, native=None: False)  # every batch row by row
    for name, (batch_rows, case) in cases.items():
        assert _same_batch(at_once[name], batch.encode_rows(case, batch_rows)), name
    monkeypatch.undo()

    def no_row_by_row(*args: object, **kwargs: object) -> None:
        raise AssertionError("a batch of sealed rows was checked row by row")

    monkeypatch.setattr(batch, "check_rows", no_row_by_row)
    assert _same_batch(batch.encode_rows(recipe, rows), at_once["all sealed"])
