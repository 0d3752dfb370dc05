"""The trust model of the store: only a seal our own append wrote makes a row trusted, and a gateway that
may only write ``captures`` cannot make one.

* An upgraded SQLite store (schema version 3) whose rows a careless writer flagged ``stripped=1``: the
  flag is no longer believed, every old row is checked.
* A SQLite gateway that fills the ``seal`` column with anything but a 16-byte blob (TEXT, a number, a
  blob of another length; SQLite keeps each as written): the row is foreign and checked, never a batch
  that fails on the type of its seal.
* A writer that rewrites our sealed rows' bodies or copies their seals onto its own rows, anywhere in a
  batch of our rows (whose seals the export checks a batch at a time), in the default format, JSON Lines
  and Parquet: each such row is checked.
* PostgreSQL with the documented grants (``INSERT, SELECT ON captures`` only): the gateway's role can
  insert (identity columns need no sequence privilege), cannot read the seal key, and a row it writes
  with a seal copied from one of our rows is checked in full like any other.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from capture_export.local_s3 import LocalS3
from tests.support.trust import (
    EVERY_FORMAT,
    ExporterCase,
    PostgresGateway,
    Raw,
    SQLiteGateway,
    bucket_objects,
    bucket_records,
    build,
    find_leaks,
    good_record,
    run_export,
    text_chunks,
    timestamp_us,
    write_exporters,
)

CANARY = "cnrySealTrust5e8a0b17c2d9"

# The SQLite schema of version 3, as capture-export 0.1 created it.
VERSION_3 = """
CREATE TABLE captures (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_us INTEGER NOT NULL, body BLOB NOT NULL,
                       deleted_at_us INTEGER, stripped INTEGER NOT NULL DEFAULT 0);
CREATE INDEX captures_ts_us ON captures (ts_us);
CREATE INDEX captures_deleted_ts ON captures (deleted_at_us, ts_us);
CREATE VIEW captures_live AS SELECT id, ts_us, body FROM captures WHERE deleted_at_us IS NULL;
CREATE TABLE capture_export_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO capture_export_meta (key, value) VALUES ('schema_version', '3');
"""


def _with_credential(n: int) -> dict:
    record = good_record(n)
    record["capture"]["request"]["headers"][Raw(text_chunks("Author", "ization"))] = f"Bearer {CANARY}"
    return record


def test_rows_flagged_stripped_in_an_upgraded_store_are_checked(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    path = tmp_path / "v3.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(VERSION_3)
        conn.executemany("INSERT INTO captures (ts_us, body, stripped) VALUES (?, ?, 1)",
                         [(timestamp_us(n), build(_with_credential(n))) for n in range(1, 4)])
        conn.execute("INSERT INTO captures (ts_us, body, stripped) VALUES (?, ?, 1)",
                     (timestamp_us(4), build(good_record(4))[:-3]))  # "stripped", and truncated
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, [ExporterCase("usage", "llm", {})])
    run = run_export(manifest, path, tmp_path)
    assert run.returncode == 1 and "record 4 is corrupt" in run.stdout, run.stdout + run.stderr
    assert [r["id"] for r in bucket_records(s3_server, bucket, "llm")] == [1, 2, 3]
    assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY])


def test_a_seal_column_holding_text_or_a_number_leaves_the_row_foreign(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    own_id = db.append_own([good_record(1)])
    seals: list[object] = ["0123456789abcdef", 1234567890123456, 1.5, b"\x00" * 15, b"\x00" * 17]
    for n, seal in enumerate(seals, start=2):
        db.insert_with(timestamp_us(n), build(_with_credential(n)), {"seal": seal})
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, [ExporterCase("usage", "llm", {})])
    run = run_export(manifest, db, tmp_path)
    assert run.returncode == 0 and "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    records = bucket_records(s3_server, bucket, "llm")
    assert [r["id"] for r in records] == [own_id, *range(2, 2 + len(seals))]
    assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY])


@pytest.mark.parametrize("fmt", ["cbor-zstd", "jsonl.zst", "parquet"])
def test_rows_that_do_not_hold_their_seal_are_checked_wherever_they_sit_in_a_batch(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """A writer that rewrites the bodies of some of our sealed rows (their seals kept), and copies our rows'
    seals onto rows of its own, each with a credential: first, in the middle of and last in batches of our
    own rows (``limit: 10``), whose seals the export checks a whole batch at a time (natively where the
    extension is built). Each such row is checked in full, its credential stripped; every row goes out once."""
    db = SQLiteGateway(tmp_path / "store.sqlite")
    db.append_own([good_record(n) for n in range(1, 31)])  # ids 1-30, sealed: three batches
    rewritten = [1, 15, 30]
    with sqlite3.connect(db.path) as conn:
        conn.executemany("UPDATE captures SET body = ? WHERE id = ?", [(_written_by_them(n), n) for n in rewritten])
    copied = [db.insert_copying_row(2, timestamp_us(31), _written_by_them(31))]
    db.append_own([good_record(n) for n in range(32, 40)])
    copied.append(db.insert_copying_row(3, timestamp_us(40), _written_by_them(40)))
    assert copied == [31, 40]
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", EVERY_FORMAT[fmt])], limit=10)
    run = run_export(manifest, db, tmp_path)
    assert run.returncode == 0 and "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    records = bucket_records(s3_server, bucket, "llm")
    assert [r["id"] for r in records] == list(range(1, 41))
    assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY])
    theirs = [r["id"] for r in records if r["model"] == "their-model"]
    assert theirs == sorted(rewritten + copied)  # their bodies went out, checked


def _written_by_them(n: int) -> bytes:
    return build({**_with_credential(n), "model": "their-model"})


@pytest.mark.postgres
def test_a_gateway_granted_only_captures_cannot_forge_a_seal(
    pg_dsn: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = PostgresGateway(pg_dsn)  # created and migrated by the operator's role
    own_id = db.append_own([good_record(1)])
    role = f"gateway_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT INSERT, SELECT ON captures TO {role}")
    gateway_dsn = conninfo.make_conninfo(pg_dsn, user=role, password="")
    try:
        with psycopg.connect(gateway_dsn, autocommit=True) as gateway:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                gateway.execute("SELECT value FROM capture_export_meta")
            # It can write rows, and copy our row's seal onto them: a credential, and a malformed row.
            gateway.execute("INSERT INTO captures (ts_us, body, seal) SELECT %s, %s, seal FROM captures WHERE id = %s",
                            (timestamp_us(2), build(_with_credential(2)), own_id))
            gateway.execute("INSERT INTO captures (ts_us, body, seal) SELECT %s, %s, seal FROM captures WHERE id = %s",
                            (timestamp_us(3), build(good_record(3)) + build({"ver": 2}), own_id))
        manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                                   [ExporterCase("usage", "llm", {})])
        run = run_export(manifest, db, tmp_path)
        assert run.returncode == 1 and "record 3 is corrupt" in run.stdout, run.stdout + run.stderr
        assert [r["id"] for r in bucket_records(s3_server, bucket, "llm")] == [1, 2]
        assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY])
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f"REVOKE ALL ON captures FROM {role}")
            admin.execute(f"DROP ROLE {role}")
