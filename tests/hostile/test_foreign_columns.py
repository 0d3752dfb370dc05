"""A careless gateway writes odd values into the columns of ``captures`` other than a malformed body.

SQLite keeps whatever storage class is written into a column (type affinity, not enforcement): a TEXT or
REAL ``ts_us``, an INTEGER ``body``, an integer ``capture_id``, a TEXT ``deleted_at_us``. One such row must
never stall or crash anything: it is exported when its value is usable (SQLite itself turns ``'17…'`` and
``1.7e15`` into integers), and otherwise held or quarantined like a corrupt record, with a reason naming
the column; its neighbours are exported; ``verify``, ``status``, the purge, ``restore`` and ``quarantine``
run without a traceback; and nothing is purged that was not exported. PostgreSQL enforces the types, so
only the values it accepts are tried there (a negative or huge ``ts_us``).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from capture_export.local_s3 import LocalS3
from tests.support.cli import run_cli
from tests.support.trust import (
    ExporterCase,
    GatewayDB,
    PostgresGateway,
    SQLiteGateway,
    bucket_records,
    build,
    good_record,
    run_export,
    state_of,
    timestamp_us,
    write_exporters,
)

ODD = 4  # rows 1-3 and 5-6 are good
EXPORTED = "exported"

# name -> (the odd row's columns beside a good body, or with its own body; what becomes of it: EXPORTED or
# the column its corrupt-record reason names)
SQLITE_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "ts_us-text-date": ({"ts_us": "2026-01-01"}, "ts_us"),
    "ts_us-text-digits": ({"ts_us": str(timestamp_us(ODD))}, EXPORTED),  # INTEGER affinity makes it an integer
    "ts_us-text-digits-padded": ({"ts_us": f" {timestamp_us(ODD)}x"}, "ts_us"),
    "ts_us-real-integral": ({"ts_us": float(timestamp_us(ODD))}, EXPORTED),  # stored as an integer
    "ts_us-real-fraction": ({"ts_us": timestamp_us(ODD) + 0.5}, EXPORTED),  # within the 1 ms tolerance,
    "ts_us-real-infinite": ({"ts_us": float("inf")}, "ts_us"),
    "ts_us-huge": ({"ts_us": 2**63 - 1}, "ts_us"),
    "ts_us-most-negative": ({"ts_us": -(2**63)}, "ts_us"),
    "ts_us-negative": ({"ts_us": -1}, "ts_us"),
    "ts_us-blob": ({"ts_us": b"\x00\x01"}, "ts_us"),
    "body-json-text": ({"body": json.dumps({"ver": 2, "model": "gpt-4o"})}, "TEXT"),
    "body-integer": ({"body": 12345}, "body is stored as INTEGER"),
    "body-real": ({"body": 1.5}, "body is stored as REAL"),
    "body-empty-blob": ({"body": b""}, "empty"),
    "capture_id-integer": ({"capture_id": 42}, EXPORTED),
    "capture_id-blob": ({"capture_id": b"\x00cap"}, EXPORTED),
    "seal-text": ({"seal": "0123456789abcdef"}, EXPORTED),
    "seal-integer": ({"seal": 2**62}, EXPORTED),
    "seal-real": ({"seal": 0.5}, EXPORTED),
    "seal-empty-blob": ({"seal": b""}, EXPORTED),
    "stripped-text": ({"stripped": "yes"}, EXPORTED),
    "stripped-blob": ({"stripped": b"\x01"}, EXPORTED),
}
POSTGRES_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "ts_us-huge": ({"ts_us": 2**63 - 1}, "ts_us"),
    "ts_us-most-negative": ({"ts_us": -(2**63)}, "ts_us"),
    "ts_us-negative": ({"ts_us": -1}, "ts_us"),
    "body-empty-bytea": ({"body": b""}, "empty"),
}


def _insert_rows(db: GatewayDB, odd: dict[str, Any]) -> None:
    for n in range(1, 7):
        columns = {"ts_us": timestamp_us(n), "body": build(good_record(n))}
        if n == ODD:
            columns.update(odd)
        ts_us, body = columns.pop("ts_us"), columns.pop("body")
        assert db.insert_with(ts_us, body, columns) == n


def _no_traceback(result: Any) -> str:
    output = str(result.stdout + result.stderr)
    assert "Traceback" not in output and "InternalError" not in output, output
    return output


def _all_accounted(db: GatewayDB, s3: LocalS3, bucket: str, quarantined: set[int]) -> set[int]:
    """Every id 1-6 is in the store, in the bucket or in the quarantine; the ids in the bucket."""
    in_store = {row[0] for row in db.query("SELECT id FROM captures")}
    in_bucket = {record["id"] for record in bucket_records(s3, bucket, "llm")}
    assert in_store | in_bucket | quarantined >= set(range(1, 7)), (in_store, in_bucket, quarantined)
    return in_bucket


def _case(db: GatewayDB, odd: dict[str, Any], expected: str, s3: LocalS3, bucket: str, tmp_path: Path,
          spec: dict[str, Any] | None = None, *, inserted: bool = False) -> None:
    spec = spec or {}
    if not inserted:
        _insert_rows(db, odd)
    # Hold (the default): the odd row is exported, or the export stops before it naming it and the column.
    manifest = write_exporters(tmp_path / "exporter.yaml", s3, bucket, [ExporterCase("usage", "llm", spec)])
    held = run_export(manifest, db, tmp_path)
    output = _no_traceback(held)
    status = state_of(tmp_path, "usage")
    if expected == EXPORTED:
        assert held.returncode == 0 and status["cursor"] == "6", output
        assert _all_accounted(db, s3, bucket, set()) == set(range(1, 7))
    else:
        assert held.returncode == 1 and status["cursor"] == "3", output
        assert status["lastRun"]["reason"] == "CorruptRecord", status["lastRun"]
        assert f"record {ODD}" in status["lastRun"]["error"] and expected in status["lastRun"]["error"], status

    # Quarantine, and a RetentionPolicy (maxAge 1d: every record is older) on the same run: the neighbours
    # are exported and purged, the odd row is exported or moved aside, nothing else is lost.
    policy = {"apiVersion": "capture.dev/v1alpha1", "kind": "RetentionPolicy",
              "metadata": {"name": "keep-1d", "namespace": "default"},
              "spec": {"maxAge": "1d", "exporters": ["usage"], "every": 3600}}
    manifest = write_exporters(tmp_path / "exporter.yaml", s3, bucket,
                               [ExporterCase("usage", "llm", {**spec, "onCorruptRecord": "Quarantine"})],
                               more=[policy])
    for _ in range(2):  # the second run purges what the first exported
        run = run_export(manifest, db, tmp_path)
        output = _no_traceback(run)
        assert run.returncode == 0, output
    assert state_of(tmp_path, "usage")["cursor"] == "6", output
    quarantined = set() if expected == EXPORTED else {ODD}
    in_bucket = _all_accounted(db, s3, bucket, quarantined)
    assert in_bucket == set(range(1, 7)) - quarantined

    verify = run_cli("verify", "-f", manifest, "--store", db.url, cwd=tmp_path)
    output = _no_traceback(verify)
    assert verify.returncode == 0 and "missing: 0" in output and "duplicated: 0" in output, output
    for args in (["status", "--state", str(tmp_path / "state.json")],
                 ["status", "-o", "wide", "--state", str(tmp_path / "state.json")]):
        shown = run_cli(*args, cwd=tmp_path)
        assert shown.returncode == 0, _no_traceback(shown)

    listing = run_cli("quarantine", "list", "--store", db.url, cwd=tmp_path)
    output = _no_traceback(listing)
    assert listing.returncode == 0, output
    assert {int(m) for m in re.findall(r"^\s*(\d+)\s", output, re.MULTILINE)} == quarantined, output
    if quarantined:
        assert expected in output, output
        shown = run_cli("quarantine", "show", str(ODD), "--store", db.url, cwd=tmp_path)
        assert shown.returncode == 0 and expected in _no_traceback(shown), shown.stdout
        # Released with a corrected body, it goes back as a new record and is exported.
        fixed = tmp_path / "fixed.cbor"
        fixed.write_bytes(build(good_record(ODD)))
        released = run_cli("quarantine", "release", str(ODD), "--body", str(fixed), "--store", db.url, cwd=tmp_path)
        assert released.returncode == 0, _no_traceback(released)
        again = run_export(manifest, db, tmp_path)
        assert again.returncode == 0, _no_traceback(again)
        assert len(bucket_records(s3, bucket, "llm")) == 6


@pytest.mark.parametrize("case", sorted(SQLITE_CASES))
def test_an_odd_column_value_never_stalls_the_export_sqlite(
    case: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    odd, expected = SQLITE_CASES[case]
    _case(SQLiteGateway(tmp_path / "store.sqlite"), odd, expected, s3_server, bucket, tmp_path)


@pytest.mark.postgres
@pytest.mark.parametrize("case", sorted(POSTGRES_CASES))
def test_an_odd_column_value_never_stalls_the_export_postgres(
    case: str, s3_server: LocalS3, bucket: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    odd, expected = POSTGRES_CASES[case]
    _case(PostgresGateway(request.getfixturevalue("pg_dsn")), odd, expected, s3_server, bucket, tmp_path)


DATED_CASES = ["ts_us-text-date", "ts_us-blob", "ts_us-huge", "ts_us-most-negative", "ts_us-real-infinite",
               "ts_us-real-fraction", "body-integer"]


@pytest.mark.parametrize("case", DATED_CASES)
def test_an_odd_column_value_never_stalls_a_dated_export(
    case: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """A dated ``pathTemplate`` files each batch by its first record's ``ts_us``: a value no folder can
    name is held, and quarantined under Quarantine, like any corrupt record."""
    odd, expected = SQLITE_CASES[case]
    _case(SQLiteGateway(tmp_path / "store.sqlite"), odd, expected, s3_server, bucket, tmp_path,
          {"pathTemplate": "{prefix}/{date}"})


@pytest.mark.parametrize("case", ["ts_us-real-fraction", "ts_us-text-date", "body-integer", "ts_us-huge"])
def test_an_odd_column_value_never_stalls_a_decoding_export(
    case: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """Parquet encodes every batch in a worker process of the encode pool, which
    receives its timestamps as an array of integers."""
    odd, expected = SQLITE_CASES[case]
    _case(SQLiteGateway(tmp_path / "store.sqlite"), odd, expected, s3_server, bucket, tmp_path,
          {"format": "parquet", "pathTemplate": "{prefix}/{date}"})


@pytest.mark.parametrize("ts_us", ["2026-01-01", 2**63 - 1, -(2**63)], ids=["text", "huge", "most-negative"])
def test_our_own_seal_copied_beside_an_odd_ts_us_is_not_trusted(
    ts_us: Any, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """The seal covers the body, not ``ts_us``: a gateway that copies one of our rows (body and seal) with
    an unusable ``ts_us`` gets that row quarantined, not filed under a time no folder can name."""
    db = SQLiteGateway(tmp_path / "store.sqlite")
    for n in range(1, 4):
        db.insert_with(timestamp_us(n), build(good_record(n)), {})
    db.append_own([good_record(ODD)])
    assert db.query("SELECT id FROM captures WHERE seal IS NOT NULL") == [(ODD,)]
    db.query("UPDATE captures SET ts_us = ? WHERE id = ?", (ts_us, ODD))  # as if copied so, seal and all
    for n in range(5, 7):
        db.insert_with(timestamp_us(n), build(good_record(n)), {})
    _case(db, {}, "ts_us", s3_server, bucket, tmp_path, {"pathTemplate": "{prefix}/{date}"}, inserted=True)


@pytest.mark.parametrize("marks", [
    {"deleted_at_us": "yesterday"}, {"deleted_at_us": 1.7e15}, {"deleted_at_us": b"\x01"},
    {"deleted_at_us": 1_700_000_000_000_000, "purge_after_us": "never"},
    {"deleted_at_us": 1_700_000_000_000_000, "purge_after_us": 1.5},
], ids=["deleted-text", "deleted-real", "deleted-blob", "purge-after-text", "purge-after-real"])
def test_a_row_soft_deleted_by_hand_with_odd_marks(
    marks: dict[str, Any], s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """A foreign writer hides a row itself, with TEXT or REAL marks: the export still exports every row,
    the soft-deleting purge and ``restore`` run without a traceback, and nothing unexported is purged."""
    db = SQLiteGateway(tmp_path / "store.sqlite")
    _insert_rows(db, marks)
    policy = {"apiVersion": "capture.dev/v1alpha1", "kind": "RetentionPolicy",
              "metadata": {"name": "keep-1d", "namespace": "default"},
              "spec": {"maxAge": "1d", "exporters": ["usage"], "every": 3600, "softDelete": {"gracePeriod": "1s"}}}
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, [ExporterCase("usage", "llm", {})],
                               more=[policy])
    for _ in range(2):
        run = run_export(manifest, db, tmp_path)
        assert run.returncode == 0, _no_traceback(run)
    assert _all_accounted(db, s3_server, bucket, set()) == set(range(1, 7))
    shown = run_cli("status", "-o", "wide", "--state", str(tmp_path / "state.json"), cwd=tmp_path)
    assert shown.returncode == 0, _no_traceback(shown)
    for args in (["--dry-run"], ["--since", "2h"], []):
        restored = run_cli("restore", "-f", manifest, "--store", db.url, *args, cwd=tmp_path)
        assert restored.returncode == 0, _no_traceback(restored)
    verify = run_cli("verify", "-f", manifest, "--store", db.url, cwd=tmp_path)
    output = _no_traceback(verify)
    assert verify.returncode == 0 and "missing: 0" in output and "duplicated: 0" in output, output
    again = run_export(manifest, db, tmp_path)
    assert again.returncode == 0, _no_traceback(again)
    assert _all_accounted(db, s3_server, bucket, set()) == set(range(1, 7))


PAST_US = 1_577_836_800_000_000  # 2020-01-01T00:00:00Z
# name -> (the marks a hand soft-delete leaves on row 4, what the purge reads in them: "past" (a time long
# gone: purged once exported), "future" (kept), "unreadable" (no time at all: marked when the purge first reads
# it, so its grace period starts then))
HAND_MARKS: dict[str, tuple[dict[str, Any], str]] = {
    "current-timestamp": ({"deleted_at_us": "2020-01-01 00:00:00"}, "past"),  # SQLite's CURRENT_TIMESTAMP form
    "iso-8601-z": ({"deleted_at_us": "2020-01-01T00:00:00Z"}, "past"),
    "iso-8601-offset-fraction": ({"deleted_at_us": "2020-01-01T02:00:00.5+02:00"}, "past"),
    "digits": ({"deleted_at_us": str(PAST_US)}, "past"),  # INTEGER affinity stores an integer
    "digits-padded": ({"deleted_at_us": f" {PAST_US} "}, "past"),
    "purge-after-text": ({"deleted_at_us": PAST_US, "purge_after_us": "2020-01-02"}, "past"),
    "future-date": ({"deleted_at_us": "2999-01-01 00:00:00"}, "future"),
    "words": ({"deleted_at_us": "yesterday"}, "unreadable"),
    "empty-text": ({"deleted_at_us": ""}, "unreadable"),
    "blob": ({"deleted_at_us": b"\x01"}, "unreadable"),
    "purge-after-words": ({"deleted_at_us": PAST_US, "purge_after_us": "never"}, "unreadable"),
}


@pytest.mark.parametrize("name", list(HAND_MARKS))
def test_a_row_soft_deleted_by_hand_with_a_text_mark_is_purged_by_the_time_it_names(
    name: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """``UPDATE captures SET deleted_at_us = CURRENT_TIMESTAMP`` (or any text, or a BLOB): SQLite keeps the TEXT,
    which sorts after every number, so the purge's ``deleted_at_us <= ?`` never matched it and the row stayed
    hidden for ever. The purge reads such a mark as the time it names (a date/time SQLite writes or ISO 8601,
    UTC unless it says otherwise; digits: microseconds, as the column holds) and removes the row once exported
    and past its grace period, never before; a mark that names no time is dated when the purge first reads it,
    so the grace period starts then. The run says which records it read so. PostgreSQL's columns are BIGINT:
    it refuses such values (a text of digits is that number), so only SQLite is tried."""
    marks, meaning = HAND_MARKS[name]
    db = SQLiteGateway(tmp_path / "store.sqlite")
    _insert_rows(db, marks)
    started_us = int(time.time() * 1_000_000)
    policy = {"apiVersion": "capture.dev/v1alpha1", "kind": "RetentionPolicy",
              "metadata": {"name": "keep-1d", "namespace": "default"},
              "spec": {"maxAge": "1d", "exporters": ["usage"], "every": 3600, "softDelete": {"gracePeriod": "1s"}}}
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, [ExporterCase("usage", "llm", {})],
                               more=[policy])
    outputs = []
    for attempt in range(2):
        if attempt:
            time.sleep(1.1)  # the grace period (1 s) of what the first run soft-deleted is over, however fast it ran
        run = run_export(manifest, db, tmp_path)
        outputs.append(_no_traceback(run))
        assert run.returncode == 0, outputs[-1]
    left = dict(db.query("SELECT id, deleted_at_us FROM captures"))
    assert set(left) <= {ODD}, left  # the others: exported, soft-deleted, purged
    if meaning == "past":
        assert ODD not in left, left
    elif meaning == "future":
        assert left == {ODD: 32_472_144_000_000_000}, left  # read, kept
    else:  # dated when first read, not before: its grace period (1 s) may be over by the second run
        assert ODD not in left or started_us <= left[ODD] <= int(time.time() * 1_000_000), left
        time.sleep(1.2)
        run = run_export(manifest, db, tmp_path)
        assert run.returncode == 0, _no_traceback(run)
        assert db.query("SELECT id FROM captures") == []
    if not name.startswith("digits"):  # (SQLite stored those digits as an integer: nothing odd to say)
        assert any(re.search(rf"soft-deleted record.*\({ODD}\)", output) for output in outputs), outputs
    assert _all_accounted(db, s3_server, bucket, set()) == set(range(1, 7))


def test_sqlite_refuses_a_null_ts_us_or_body(tmp_path: Path) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        db.insert_with(None, build(good_record(1)), {})  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        db.insert_with(timestamp_us(1), None, {})  # type: ignore[arg-type]
