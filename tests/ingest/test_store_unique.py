"""The stores' insert-or-ignore by capture_id (what the ingest server commits through), on SQLite and
PostgreSQL, and the schema migration that adds it to a store created by an older version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from capture_export.store import SQLiteStore, StoreError
from capture_export.store.records import encode_body
from tests.conftest import make_record


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


def test_a_failed_group_commits_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        # The second group's row breaks a constraint (a body is required): the first group is not kept.
        with pytest.raises(StoreError):
            store.append_unique([_rows([1, 2]), [(1, None, "x")]])  # type: ignore[list-item]
        assert store.count() == 0
        assert store.append_unique([_rows([1, 2])]) == [2]
    finally:
        store.close()


def test_a_version_3_store_gains_the_column_and_keeps_its_rows(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
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
    for _ in range(2):  # opening again re-runs the migration past the reserved gap harmlessly
        store = SQLiteStore(path)
        assert store.append_unique([_rows([7, 7])]) in ([1], [0])
        assert store.count() == 2
        store.close()
    conn = sqlite3.connect(path)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(captures)")}
    version = conn.execute("SELECT value FROM capture_export_meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    assert "capture_id" in columns
    # Version 4 is reserved for a change not merged yet: the recorded version stays below the gap, so
    # that change's migration still runs on this store once it arrives.
    assert version == "3"
    # When the reserved migration arrives, it runs on this store, and the version moves past the gap.
    from capture_export.store import sqlite as sqlite_module

    monkeypatch.setitem(sqlite_module.MIGRATIONS, 4, ["CREATE TABLE reserved_change (x INTEGER)"])
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    meta = dict(conn.execute("SELECT key, value FROM capture_export_meta").fetchall())
    conn.execute("SELECT count(*) FROM reserved_change").fetchone()
    conn.close()
    assert meta["schema_version"] == "5" and "migrated_5" not in meta
