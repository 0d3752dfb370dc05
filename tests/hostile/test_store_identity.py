"""Issue 10, item 2: a recreated store. The exporter must never resume against another store than the one
its checkpoint (or state) was written from, and ``verify`` must see that the bucket's records are not the
store's (it compares content, not ids alone).

The careless operator: exports 5,000 records, deletes the SQLite file (or drops the PostgreSQL tables),
seeds 3,000 new records. Before the fix the exporter resumed at cursor 5,000 and never exported the new
records, and ``verify`` said OK because ids 1..3,000 were all in the bucket.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest

from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore

from .identity_support import (
    HostileExporter,
    assert_no_traceback,
    failed_reasons,
    remove_sqlite,
    seed_postgres,
    seed_sqlite,
)


@pytest.mark.parametrize("state", ["state kept", "state lost"])
def test_recreated_sqlite_store_is_refused_and_verify_sees_it(
    s3_server: LocalS3, bucket: str, tmp_path: Path, state: str
) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 5000, seed=1)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=1000)
    first = exporter.run_once()
    assert first.returncode == 0, first.stdout + first.stderr

    remove_sqlite(store)
    seed_sqlite(store, 3000, seed=2)  # a new store: ids 1..3000 again, other records
    if state == "state lost":
        exporter.state.unlink()
    before = exporter.snapshot()

    refused = exporter.run_once()
    assert refused.returncode != 0, refused.stdout
    assert_no_traceback(refused)
    assert "StoreMismatch" in failed_reasons(exporter.status()), exporter.status()
    assert "StoreMismatch" in refused.stdout  # the Event, as the runner prints it
    assert exporter.snapshot() == before  # nothing written, nothing deleted

    # A reset does not talk it round: re-exporting into this prefix would overwrite the old store's
    # objects, the only copy of its records now.
    exporter.reset()
    again = exporter.run_once()
    assert again.returncode != 0 and "StoreMismatch" in failed_reasons(exporter.status())
    assert exporter.snapshot() == before

    # verify compares content: the bucket holds ids 1..5000, but not these records.
    audit = exporter.verify()
    assert audit.returncode != 0, audit.stdout
    assert_no_traceback(audit)
    assert "FAILED" in audit.stdout


def test_recreated_postgres_store_is_refused(s3_server: LocalS3, bucket: str, tmp_path: Path, pg_dsn: str) -> None:
    seed_postgres(pg_dsn, 2000, seed=1)
    exporter = HostileExporter(s3_server, bucket, tmp_path, pg_dsn, limit=500)
    first = exporter.run_once()
    assert first.returncode == 0, first.stdout + first.stderr

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a DBA recreates the schema
        conn.execute("DROP TABLE captures, capture_export_meta CASCADE")
    seed_postgres(pg_dsn, 1200, seed=2)
    before = exporter.snapshot()

    refused = exporter.run_once()
    assert refused.returncode != 0, refused.stdout
    assert_no_traceback(refused)
    assert "StoreMismatch" in failed_reasons(exporter.status()), exporter.status()
    assert exporter.snapshot() == before
    audit = exporter.verify()
    assert audit.returncode != 0 and "FAILED" in audit.stdout, audit.stdout


def test_store_keeps_its_identity_across_opens_and_copies(tmp_path: Path) -> None:
    """The identity lives in the store: reopening (or copying the file, as a backup restore does) keeps
    it; a new store gets another one."""
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    first = store.identity()
    store.close()
    reopened = SQLiteStore(path)
    assert reopened.identity() == first
    reopened.close()
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(path.read_bytes())
    copied = SQLiteStore(copy)
    assert copied.identity() == first
    copied.close()
    other = SQLiteStore(tmp_path / "other.sqlite")
    assert other.identity() != first
    other.close()


def test_an_existing_export_without_store_identity_keeps_working_and_adopts_it(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """The upgrade: a store and a checkpoint from before store identity existed (checkpoint version 1, no
    store id in the store's meta table, none in the state) resume as before, and the first checkpoint
    written afterwards records the store's identity."""
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 1000, seed=1)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=250)
    assert exporter.run_once().returncode == 0

    # Make it look like an install of the previous version: no metadata on the objects, no identity.
    exporter.strip_metadata()
    with sqlite3.connect(store) as conn:
        conn.execute("DELETE FROM capture_export_meta WHERE key = 'store_id'")
    checkpoint = exporter.checkpoint()
    assert checkpoint is not None
    exporter.put_checkpoint({"version": 1, "exporter": "default/usage", "epoch": checkpoint["epoch"],
                             "cursor": checkpoint["cursor"], "highWater": checkpoint["highWater"],
                             "lastKey": checkpoint["lastKey"], "updated": checkpoint["updated"]})
    state = json.loads(exporter.state.read_text())
    for status in state.values():
        status.pop("storeId", None)
    exporter.state.write_text(json.dumps(state))

    more = SQLiteStore(store)
    seed_store(more, 500, seed=2)
    more.close()
    resumed = exporter.run_once()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "500 records" in resumed.stdout

    with sqlite3.connect(store) as conn:
        row = conn.execute("SELECT value FROM capture_export_meta WHERE key = 'store_id'").fetchone()
    assert row is not None, "the store got an identity on its first open by the exporter"
    after = exporter.checkpoint()
    assert after is not None and after["version"] == 2 and after["storeId"] == row[0]
    status = exporter.status()
    assert status is not None and status.get("storeId") == row[0]
    audit = exporter.verify()
    assert audit.returncode == 0 and "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout, audit.stdout
