"""SQLite capture store: the embedded default.

SQLite serialises writers and assigns ``AUTOINCREMENT`` ids inside the write transaction, so ids are
visible in commit order and the safe horizon is simply the highest committed id.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .base import StoredRecord, StoreError
from .records import encode_body

__all__ = ["SQLiteStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_us  INTEGER NOT NULL,
    body   BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_ts_us ON captures (ts_us);
CREATE TABLE IF NOT EXISTS capture_export_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO capture_export_meta (key, value) VALUES ('schema_version', '1');
"""


class SQLiteStore:
    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from None

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        rows = [encode_body(record) for record in records]
        return self.append_encoded(rows)

    def append_encoded(self, rows: list[tuple[int, bytes]]) -> int:
        """Insert already-encoded ``(timestamp_us, body)`` rows in one transaction."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany("INSERT INTO captures (ts_us, body) VALUES (?, ?)", rows)
                    last = self._conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from None
        return int(last)

    def safe_horizon(self) -> int:
        return self.max_id()

    def max_id(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(id), 0) FROM captures")[0][0])

    def read_batch(self, after: int, limit: int, horizon: int | None = None) -> list[StoredRecord]:
        bound = self.safe_horizon() if horizon is None else horizon
        rows = self._query(
            "SELECT id, ts_us, body FROM captures WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
            (after, bound, limit),
        )
        return [StoredRecord(*row) for row in rows]

    def backlog(self, after: int, horizon: int | None = None) -> int:
        bound = self.safe_horizon() if horizon is None else horizon
        return int(self._query("SELECT COUNT(*) FROM captures WHERE id > ? AND id <= ?", (after, bound))[0][0])

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM captures")[0][0])

    def ids(self) -> Iterator[int]:
        after = 0
        while True:
            chunk = self._query("SELECT id FROM captures WHERE id > ? ORDER BY id LIMIT 50000", (after,))
            if not chunk:
                return
            for (record_id,) in chunk:
                yield record_id
            after = chunk[-1][0]

    def delete_up_to(self, max_id: int, older_than_us: int, batch_size: int) -> int:
        deleted = 0
        after = 0
        while True:
            with self._lock:
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        scanned = self._conn.execute(
                            "SELECT id, ts_us FROM captures WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                            (after, max_id, batch_size),
                        ).fetchall()
                        doomed = [(rid,) for rid, ts in scanned if ts < older_than_us]
                        self._conn.executemany("DELETE FROM captures WHERE id = ?", doomed)
                        self._conn.execute("COMMIT")
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                except sqlite3.Error as exc:
                    raise StoreError(f"SQLite store {self.path}: {exc}") from None
            if not scanned:
                return deleted
            deleted += len(doomed)
            after = scanned[-1][0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
