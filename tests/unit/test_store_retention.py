"""The SQLite store's retention methods: one short transaction each, soft deletion, migration from v1."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from capture_export.store import SQLiteStore, StoreError
from capture_export.store.base import ExpiredChunk
from capture_export.store.sqlite.schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from tests.support.retention import BODY
from tests.support.store_retention import HOUR, RETENTION_CONTRACT, filled


@pytest.mark.parametrize("case", RETENTION_CONTRACT, ids=lambda case: case.__name__)
def test_retention_contract(case: Callable[[SQLiteStore], None], sqlite_store: SQLiteStore) -> None:
    case(sqlite_store)


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
                                   ).fetchone() == (str(SQLITE_SCHEMA_VERSION),)
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


def test_a_version_6_store_gets_the_index_of_hidden_records(tmp_path: Path) -> None:
    """A store last opened by version 6 (its index of purge_after_us alone), holding marks from before version
    6 (no purge_after_us): opened again, its hidden records get their index, and the purge still removes
    undated marks by the purging policy's grace period and dated ones at their own end."""
    path = tmp_path / "v6.sqlite"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.executescript("""
        DROP INDEX captures_hidden;
        CREATE INDEX captures_purge_after ON captures (purge_after_us) WHERE purge_after_us IS NOT NULL;
        UPDATE capture_export_meta SET value = '6' WHERE key = 'schema_version';
        INSERT INTO captures (ts_us, body, deleted_at_us, purge_after_us) VALUES
            (1, x'a0', 10, NULL), (2, x'a0', 50, NULL), (3, x'a0', 10, 1000), (4, x'a0', NULL, NULL);
    """)
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store._conn.execute("SELECT value FROM capture_export_meta WHERE key = 'schema_version'"
                                   ).fetchone() == (str(SQLITE_SCHEMA_VERSION),)
        indexes = {row[0] for row in store._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "captures_hidden" in indexes and "captures_purge_after" not in indexes
        assert store.soft_deleted_due_count(100, undated_marked_before_us=20) == 1
        assert store.purge_soft_deleted_chunk(100, 10, undated_marked_before_us=20) == 1
        assert store.purge_soft_deleted_chunk(100, 10, undated_marked_before_us=60) == 1
        assert store.soft_deleted_count() == 1 and list(store.ids()) == [4]  # id 3's own grace: until 1000
        assert store.purge_soft_deleted_chunk(1000, 10, undated_marked_before_us=60) == 1
    finally:
        store.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE capture_export_meta SET value = '99'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)


DAY = 24 * HOUR


def _vm_steps(store: SQLiteStore, work: Callable[[], object]) -> int:
    """SQLite virtual-machine instructions ``work`` runs on the store's connection (to within 100)."""
    steps = [0]

    def count() -> int:
        steps[0] += 100
        return 0

    store._conn.set_progress_handler(count, 100)
    try:
        work()
    finally:
        store._conn.set_progress_handler(None, 100)
    return steps[0]


def _hidden_by_a_long_grace_policy(path: Path, records: int, now_us: int) -> SQLiteStore:
    """Records a policy with 30 days' grace hid 10 days ago: past a 1-day policy's cutoff, not yet due."""
    store = SQLiteStore(path)
    store.append_encoded([(HOUR, BODY)] * records)
    assert store.expire_chunk(records, 2 * HOUR, records, mark_at_us=now_us - 10 * DAY,
                              purge_after_us=now_us + 20 * DAY).count == records
    return store


def test_a_grace_period_purge_does_not_walk_records_whose_grace_period_is_not_over(tmp_path: Path) -> None:
    """A policy with a short grace period purges beside one with a long one. Its chunk looks for marks from
    before purge_after_us (judged by its own grace period) too: that must not visit, in its write
    transaction, every record the other policy hid before its cutoff (on a store with millions of them,
    a write stall of a second per run), nor must the dry run's count."""
    now_us = 100 * DAY
    steps = {}
    for records in (2_000, 20_000):
        store = _hidden_by_a_long_grace_policy(tmp_path / f"{records}.sqlite", records, now_us)
        try:
            steps[records] = _vm_steps(store, lambda store=store, bound=records: (
                store.purge_soft_deleted_chunk(now_us, 5000, max_id=bound, undated_marked_before_us=now_us - DAY),
                store.soft_deleted_due_count(now_us, max_id=bound, undated_marked_before_us=now_us - DAY)))
            assert store.soft_deleted_count() == records  # none was due
        finally:
            store.close()
    assert steps[20_000] < 2 * steps[2_000] + 1_000, steps


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
