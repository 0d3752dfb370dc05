"""The stores' insert-or-ignore by capture_id (what the ingest server commits through), on SQLite and
PostgreSQL, and the schema migration that adds it to a store created by an older version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from capture_export.store import SQLiteStore, StoreError
from capture_export.store.records import encode_body
from capture_export.store.sqlite.schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from tests.support.records import make_record


def _rows(numbers: list[int]) -> list[tuple[int, bytes, str]]:
    out = []
    for n in numbers:
        ts, body = encode_body(make_record(n))
        out.append((ts, body, f"cap-{n}"))
    return out


def _open(kind: str, tmp_path: Path, request: pytest.FixtureRequest):
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "store.sqlite")
    from capture_export.store.postgres import PostgresStore

    return PostgresStore(request.getfixturevalue("pg_dsn"))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_capture_id_is_stored_once_whatever_the_group(kind: str, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    store = _open(kind, tmp_path, request)
    try:
        # Two requests committed together; the second repeats one id of the first and one of its own.
        assert store.append_unique([_rows([1, 2, 3]), _rows([3, 4, 4])]) == [3, 1]
        # A retry of the first request: nothing new.
        assert store.append_unique([_rows([1, 2, 3])]) == [0]
        assert store.count() == 4
        # Rows written any other way carry no capture_id and are never taken for duplicates.
        store.append([make_record(1), make_record(1)])
        assert store.count() == 6
        # Ingested rows are our own: credentials stripped before they were stored.
        bodies = [row.body for row in store.read_batch(0, 100)]
        assert all(b"sk-secret" not in body for body in bodies)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_ingested_rows_are_sealed_as_our_own(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Rows the ingest server commits come from encode_body, like append's: they carry the store's seal,
    so the export ships them without the full check of foreign rows (its default, fast path)."""
    store = _open(kind, tmp_path, request)
    try:
        assert store.append_unique([_rows([1, 2]), _rows([2, 3])]) == [2, 1]
        seal = store.record_seal()
        assert seal is not None
        rows = store.read_batch(0, 100)
        assert len(rows) == 3
        assert [seal.valid(row.body, row.seal) for row in rows] == [True, True, True]
    finally:
        store.close()


def test_a_failed_group_commits_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        # The second group's row breaks a constraint (a timestamp is required): the first group is not kept.
        with pytest.raises(StoreError):
            store.append_unique([_rows([1, 2]), [(None, _rows([3])[0][1], "x")]])  # type: ignore[list-item]
        assert store.count() == 0
        assert store.append_unique([_rows([1, 2])]) == [2]
    finally:
        store.close()


def test_a_version_3_store_gains_the_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE captures (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_us INTEGER NOT NULL, body BLOB NOT NULL,
                               deleted_at_us INTEGER, stripped INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX captures_ts_us ON captures (ts_us);
        CREATE INDEX captures_deleted_ts ON captures (deleted_at_us, ts_us);
        CREATE TABLE capture_export_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO capture_export_meta VALUES ('schema_version', '3');
        INSERT INTO captures (ts_us, body) VALUES (1, x'a0');
    """)
    conn.commit()
    conn.close()
    for _ in range(2):  # opening again migrates nothing more
        store = SQLiteStore(path)
        assert store.append_unique([_rows([7, 7])]) in ([1], [0])
        assert store.count() == 2
        store.close()
    conn = sqlite3.connect(path)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(captures)")}
    version = conn.execute("SELECT value FROM capture_export_meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    assert {"capture_id", "seal"} <= columns and version == str(SQLITE_SCHEMA_VERSION)


def test_a_store_migrated_past_the_gap_gets_version_4_when_it_arrives(tmp_path: Path) -> None:
    """A store an operator with the ingest server but without version 4 (the seal) migrated: version 3,
    version 5's column, and the marker saying version 5 ran. Version 4 runs, version 5 does not again."""
    path = tmp_path / "past-the-gap.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE captures (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_us INTEGER NOT NULL, body BLOB NOT NULL,
                               deleted_at_us INTEGER, stripped INTEGER NOT NULL DEFAULT 0, capture_id TEXT);
        CREATE INDEX captures_ts_us ON captures (ts_us);
        CREATE INDEX captures_deleted_ts ON captures (deleted_at_us, ts_us);
        CREATE UNIQUE INDEX captures_capture_id ON captures (capture_id) WHERE capture_id IS NOT NULL;
        CREATE TABLE capture_export_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO capture_export_meta VALUES ('schema_version', '3'), ('migrated_5', '1');
        INSERT INTO captures (ts_us, body, capture_id) VALUES (1, x'a0', 'earlier');
    """)
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.append_unique([_rows([1, 2])]) == [2]
        assert [row.seal is not None for row in store.read_batch(0, 10)] == [False, True, True]
    finally:
        store.close()
    conn = sqlite3.connect(path)
    meta = dict(conn.execute("SELECT key, value FROM capture_export_meta").fetchall())
    conn.execute("SELECT count(*) FROM captures_quarantine").fetchone()
    conn.close()
    assert meta["schema_version"] == str(SQLITE_SCHEMA_VERSION) and "migrated_5" not in meta and "seal_key" in meta
