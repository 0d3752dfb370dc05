"""The SQLite store's retention methods: one short transaction each, soft deletion, migration from v1."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from capture_export.store import SQLiteStore, StoreError
from capture_export.store.base import ExpiredChunk
from tests.unit.retention_support import BODY

HOUR = 3_600_000_000


def filled(store: SQLiteStore, stamps: list[int]) -> list[int]:
    last = store.append_encoded([(ts, BODY) for ts in stamps])
    return list(range(last - len(stamps) + 1, last + 1))


def test_expire_takes_old_records_at_or_below_the_bound_in_chunks(sqlite_store: SQLiteStore) -> None:
    filled(sqlite_store, [1 * HOUR, 9 * HOUR, 2 * HOUR, 3 * HOUR, 8 * HOUR, 1 * HOUR, 4 * HOUR])  # ids 1..7
    # Old: ts < 5h -> ids 1, 3, 4, 6, 7; at or below bound 6 -> 1, 3, 4, 6.
    assert sqlite_store.count_expired(6, 5 * HOUR) == 4
    first = sqlite_store.expire_chunk(6, 5 * HOUR, 3)
    assert first == ExpiredChunk(3, (2 * HOUR, 3))  # (ts, id) order: 1@1h, 6@1h, 3@2h
    second = sqlite_store.expire_chunk(6, 5 * HOUR, 3, after=first.resume_after)
    assert second == ExpiredChunk(1, None)
    assert list(sqlite_store.ids()) == [2, 5, 7]
    assert sqlite_store.expire_chunk(6, 5 * HOUR, 3) == ExpiredChunk(0, None)


def test_expire_keyset_skips_what_earlier_chunks_passed(sqlite_store: SQLiteStore) -> None:
    filled(sqlite_store, [HOUR] * 4)
    # The keyset is honoured: nothing at or before (HOUR, 2) is taken.
    chunk = sqlite_store.expire_chunk(10, 2 * HOUR, 10, after=(HOUR, 2))
    assert chunk == ExpiredChunk(2, None)
    assert list(sqlite_store.ids()) == [1, 2]


def test_strictly_older_and_exact_limit(sqlite_store: SQLiteStore) -> None:
    filled(sqlite_store, [HOUR, 2 * HOUR])
    assert sqlite_store.count_expired(10, 2 * HOUR) == 1  # ts == cutoff is not older
    assert sqlite_store.expire_chunk(10, 3 * HOUR, 2) == ExpiredChunk(2, (2 * HOUR, 2))  # full chunk: maybe more


def test_soft_delete_hides_from_inventory_not_from_the_export_stream(sqlite_store: SQLiteStore) -> None:
    filled(sqlite_store, [HOUR, HOUR, 9 * HOUR])
    chunk = sqlite_store.expire_chunk(10, 5 * HOUR, 10, mark_at_us=100)
    assert chunk.count == 2
    assert list(sqlite_store.ids()) == [3] and sqlite_store.count() == 1
    assert sqlite_store.soft_deleted_count() == 2 and sqlite_store.soft_deleted_count(99) == 0
    # Exporters still see them (a cursor must keep meaning "everything at or below is exported").
    assert [r.id for r in sqlite_store.read_batch(0, 10)] == [1, 2, 3]
    assert sqlite_store.backlog(0) == 3
    assert (sqlite_store.max_id(), sqlite_store.safe_horizon(), sqlite_store.highest_assigned_id()) == (3, 3, 3)
    # Not expired again, and not counted as expirable.
    assert sqlite_store.count_expired(10, 5 * HOUR) == 0
    assert sqlite_store.expire_chunk(10, 5 * HOUR, 10) == ExpiredChunk(0, None)
    live = sqlite_store._conn.execute("SELECT id FROM captures_live").fetchall()
    assert live == [(3,)]


def test_purge_soft_deleted_after_grace_and_restore(sqlite_store: SQLiteStore) -> None:
    filled(sqlite_store, [HOUR] * 5)
    sqlite_store.expire_chunk(2, 5 * HOUR, 10, mark_at_us=100)  # ids 1, 2 marked at 100
    sqlite_store.expire_chunk(10, 5 * HOUR, 10, mark_at_us=200)  # ids 3..5 marked at 200
    assert sqlite_store.purge_soft_deleted_chunk(99, 10) == 0
    assert sqlite_store.purge_soft_deleted_chunk(100, 1) == 1
    assert sqlite_store.purge_soft_deleted_chunk(150, 10) == 1
    assert sqlite_store.soft_deleted_count() == 3 and sqlite_store.max_id() == 5
    assert sqlite_store.restore_chunk(10, deleted_since_us=201) == 0
    assert sqlite_store.restore_chunk(2, deleted_since_us=200) == 2
    assert sqlite_store.restore_chunk(10) == 1
    assert list(sqlite_store.ids()) == [3, 4, 5] and sqlite_store.soft_deleted_count() == 0


def test_never_above_the_bound_whatever_the_age(sqlite_store: SQLiteStore) -> None:
    filled(sqlite_store, [HOUR] * 5)
    assert sqlite_store.expire_chunk(0, 100 * HOUR, 100) == ExpiredChunk(0, None)
    assert sqlite_store.expire_chunk(3, 100 * HOUR, 100).count == 3
    assert list(sqlite_store.ids()) == [4, 5]


def test_highest_assigned_id_survives_deletes(sqlite_store: SQLiteStore) -> None:
    filled(sqlite_store, [HOUR] * 3)
    sqlite_store.expire_chunk(3, 2 * HOUR, 10)
    assert sqlite_store.max_id() == 0 and sqlite_store.highest_assigned_id() == 3
    assert filled(sqlite_store, [HOUR]) == [4]


def test_migrates_a_version_1_store(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE captures (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_us INTEGER NOT NULL, body BLOB NOT NULL);
        CREATE INDEX captures_ts_us ON captures (ts_us);
        CREATE TABLE capture_export_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO capture_export_meta VALUES ('schema_version', '1');
        INSERT INTO captures (ts_us, body) VALUES (1, x'a0'), (2, x'a0');
    """)
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store._conn.execute("SELECT value FROM capture_export_meta WHERE key = 'schema_version'"
                                   ).fetchone() == ("5",)
        # Rows written before the migration came from unknown writers: unsealed, the export checks them.
        assert [(r.id, r.seal) for r in store.read_batch(0, 10)] == [(1, None), (2, None)]
        assert store.expire_chunk(10, 2, 10, mark_at_us=5).count == 1
        assert list(store.ids()) == [2]
    finally:
        store.close()
    # Opening again is a no-op, and the gateway's plain INSERT still works.
    again = SQLiteStore(path)
    again._conn.execute("INSERT INTO captures (ts_us, body) VALUES (3, x'a0')")
    assert list(again.ids()) == [2, 3] and again.soft_deleted_count() == 1
    assert again.read_batch(2, 10)[0].seal is None
    again.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE capture_export_meta SET value = '99'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)


def test_a_writer_on_another_connection_keeps_writing_during_a_purge(tmp_path: Path) -> None:
    """Short transactions: a second connection appends between chunks (and nothing it adds is lost)."""
    from capture_export.retention import Purger

    path = tmp_path / "store.sqlite"
    purger_store, writer_store = SQLiteStore(path), SQLiteStore(path)
    try:
        purger_store.append_encoded([(HOUR, BODY)] * 20_000)
        written: list[int] = []
        done = threading.Event()

        def write() -> None:
            while not done.is_set():
                written.append(writer_store.append_encoded([(100 * HOUR, BODY)]))

        writer = threading.Thread(target=write)
        writer.start()
        stats = Purger(purger_store, batch_size=500).expire(20_000, 2 * HOUR)
        done.set()
        writer.join()
        assert stats.expired == 20_000 and stats.chunks >= 40
        assert written and list(purger_store.ids()) == written
    finally:
        purger_store.close()
        writer_store.close()
