"""`SQLiteStore`: the capture store protocol (store/base.py) over one SQLite file."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ...path_errors import why_unusable
from ..base import ExpiredChunk, QuarantinedRecord, StoredRecord, StoreError, StoreNotFound
from ..columns import mark_micros, plain, readable_rows
from ..records import encode_body, refuse_own_ids
from ..seal import RecordSeal
from .locks import IN_MEMORY, FileLock, ProcessLock, exporter_lock
from .schema import SCHEMA, migrate

__all__ = ["SQLiteStore", "refuse_directory"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_INSERT_UNIQUE = ("INSERT INTO captures (ts_us, body, seal, capture_id) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (capture_id) WHERE capture_id IS NOT NULL DO NOTHING")
# json_each (to pass a chunk's ids as one parameter) is built in from SQLite 3.38.
_HAS_JSON = sqlite3.sqlite_version_info >= (3, 38, 0)
# A new store file's page size. A record is ~3.5 KB: with SQLite's default 4 KiB pages most take a page
# of their own and many spill into an overflow page; 16 KiB pages hold four, and the insert costs ~25% less
# CPU (benchmarks/ingest_throughput.py --stages). A store that exists keeps its page size.
PAGE_SIZE = 16384
# The page cache of the ingest server's writer connection, in KiB: the capture_id index takes inserts in
# random order, and with SQLite's default 2 MiB cache each one reads and writes back a page the cache no
# longer holds (measured at 300k records: 16 MiB cuts the insert's CPU by ~25%; 32 MiB gains nothing more).
INGEST_CACHE_KIB = 16384


_new_tuple = tuple.__new__


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def refuse_directory(path: Path) -> None:
    """StoreNotFound when ``path``, named as a SQLite store file, is a directory: neither "does not exist"
    nor SQLite's "unable to open database file", but what it is."""
    if path.is_dir():
        raise StoreNotFound(f"SQLite store {path} is a directory, not a SQLite file: name a file in "
                            f"store.sqlite.path or --store (such as {path / 'store.sqlite'})")


def _file_identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


class SQLiteStore:
    """A SQLite capture store. ``create``: make the file and the schema when there is none (``seed``,
    ``store init``, the demo, tests); without it a missing file, or one without a ``captures`` table, is
    StoreNotFound and nothing is created. A directory where the file should be is StoreNotFound either way."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0, create: bool = True) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        in_memory = str(path) == IN_MEMORY
        if not in_memory:
            refuse_directory(self.path)
        if not create and not in_memory and not self.path.is_file():
            raise StoreNotFound(f"SQLite store {self.path} does not exist (a typo in store.sqlite.path or --store?); "
                                f"create one with `capture-export store init --store {self.path}`")
        try:
            if create and not in_memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path) if create or in_memory else f"{self.path.resolve().as_uri()}?mode=rw"
            self._conn = sqlite3.connect(
                target, timeout=timeout, isolation_level=None, check_same_thread=False, uri=not create and not in_memory
            )
            # A gateway may store a body as TEXT, even TEXT that is not UTF-8: sqlite3 would then fail the
            # whole read with the row's bytes in its message. Read it as a str (undecodable bytes escaped);
            # the export's check refuses it as "stored as TEXT".
            self._conn.text_factory = _lenient_text
            if not create and not self._has_captures():
                self._conn.close()
                raise StoreNotFound(f"SQLite file {self.path} holds no capture store (no captures table); create "
                                    f"one with `capture-export store init --store {self.path}`")
            # Only a new, empty file takes it (before WAL mode is set); an existing store keeps its own.
            self._conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._ingest_cache = False
            self._conn.executescript(SCHEMA)
            self._store_id, self._seal = migrate(self._conn, self.path)
            self._file: tuple[int, int] | None = None if in_memory else _file_identity(self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from None
        except OSError as exc:  # its directory cannot be made: "afile is not a directory", not "[Errno 17] …"
            why = why_unusable(exc, directory=True, given=str(self.path))
            raise StoreError(f"cannot open SQLite store {self.path}: {why}") from None

    def _has_captures(self) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'captures'").fetchone() is not None

    def identity(self) -> str:
        return self._store_id

    def lock_exporter(self, exporter: str) -> FileLock | ProcessLock | None:
        return exporter_lock(self.path, self, exporter)

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
        return self._insert(rows, sealed=True)

    def append_encoded(self, rows: list[tuple[int, bytes]], *, sealed: bool = False) -> int:
        """Insert already-encoded ``(timestamp_us, body)`` rows in one transaction. ``sealed``: the bodies
        come from ``encode_body`` (one canonical map, credentials removed, no ``id``), so they are sealed as
        our own and the export ships them unchecked (a body holding ``id`` is refused: ValueError, nothing
        written); otherwise they are foreign rows like the gateway's."""
        if sealed:
            refuse_own_ids(rows)
        return self._insert(rows, sealed=sealed)

    def _insert(self, rows: list[tuple[int, bytes]], *, sealed: bool) -> int:
        seal = self._seal.seal if sealed else (lambda body: None)
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany("INSERT INTO captures (ts_us, body, seal) VALUES (?, ?, ?)",
                                           [(ts, body, seal(body)) for ts, body in rows])
                    last = self._conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from None
        return int(last)

    def append_unique(self, groups: Sequence[Sequence[tuple[int, bytes, str]]]) -> list[int]:
        """Insert-or-ignore by capture_id, for the ingest server: every group's ``(timestamp_us, body,
        capture_id)`` rows in ONE transaction (a group commit), skipping rows whose capture_id is stored
        already (or came earlier in the same call). Bodies come from ``encode_body`` (credential headers
        removed), so they are our own rows, and sealed. Returns how many rows of each group were new. The
        connection that calls it (the ingest server's writer) gets a larger page cache (``INGEST_CACHE_KIB``)."""
        seal = self._seal.seal
        added: list[int] = []
        with self._lock:
            try:
                if not self._ingest_cache:
                    self._conn.execute(f"PRAGMA cache_size=-{INGEST_CACHE_KIB}")
                    self._ingest_cache = True
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for rows in groups:
                        before = self._conn.total_changes
                        self._conn.executemany(_INSERT_UNIQUE, [(ts, body, seal(body), capture_id)
                                                                for ts, body, capture_id in rows])
                        added.append(self._conn.total_changes - before)
                    self._check_same_file()
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from None
        return added

    def _check_same_file(self) -> None:
        """StoreError when the file at ``path`` is no longer the one this connection opened (deleted or
        replaced under it): a commit would land in a file no one will read again, after a 2xx."""
        if self._file is None:
            return
        try:
            current = _file_identity(self.path)
        except OSError:
            current = None
        if current != self._file:
            raise StoreError(f"SQLite store {self.path} was deleted or replaced since it was opened; "
                             "nothing was committed")

    def safe_horizon(self) -> int:
        return self.max_id()

    def max_id(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(id), 0) FROM captures")[0][0])

    def read_batch(self, after: int, limit: int, horizon: int | None = None) -> list[StoredRecord]:
        bound = self.safe_horizon() if horizon is None else horizon
        rows = self._query(
            "SELECT id, ts_us, body, seal FROM captures WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
            (after, bound, limit),
        )
        if not plain(rows):  # a foreign writer's TEXT ts_us, INTEGER body… (store/columns.py)
            return readable_rows(rows)
        return [_new_tuple(StoredRecord, row) for row in rows]  # the columns are the fields, in order

    def record_seal(self) -> RecordSeal:
        return self._seal

    def backlog(self, after: int, horizon: int | None = None) -> int:
        bound = self.safe_horizon() if horizon is None else horizon
        return int(self._query("SELECT COUNT(*) FROM captures WHERE id > ? AND id <= ?", (after, bound))[0][0])

    def count(self) -> int:
        total = int(self._query("SELECT COUNT(*) FROM captures")[0][0])
        return total - self.soft_deleted_count() if total else 0

    def ids(self) -> Iterator[int]:
        after = 0
        while True:
            chunk = self._query("SELECT id FROM captures WHERE id > ? ORDER BY id LIMIT 50000", (after,))
            if not chunk:
                return
            last = chunk[-1][0]
            hidden = {row[0] for row in self._query(
                "SELECT id FROM captures INDEXED BY captures_deleted_ts "
                "WHERE deleted_at_us IS NOT NULL AND id > ? AND id <= ?", (after, last)
            )}
            for (record_id,) in chunk:
                if record_id not in hidden:
                    yield record_id
            after = last
            del chunk, hidden  # not held while the next chunk is read: one chunk at a time

    # -- retention: one short write transaction per call (see store/base.py) ----------------------------

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """One retention transaction, with ``secure_delete=FAST``: many SQLite builds (Debian's, Python's)
        default to secure_delete=ON, which zeroes every freed page and writes it through the WAL; a
        record nearly a page long then costs a whole page of I/O to delete (measured: 4x slower purges
        of 3.5 KB records, and writers stalled behind it). FAST still zeroes deleted cells inside pages
        that stay in use; pages freed whole keep their bytes until new records reuse them (the gateway
        fills the freelist first) or a VACUUM. The connection's setting is restored afterwards."""
        with self._lock:
            try:
                previous = self._conn.execute("PRAGMA secure_delete").fetchone()[0]
                self._conn.execute("PRAGMA secure_delete = FAST")
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = work(self._conn)
                        self._conn.execute("COMMIT")
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                finally:
                    self._conn.execute(f"PRAGMA secure_delete = {int(previous)}")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from None
        return result

    def expire_chunk(
        self,
        max_id: int,
        older_than_us: int,
        limit: int,
        *,
        after: tuple[int, int] | None = None,
        mark_at_us: int | None = None,
        purge_after_us: int | None = None,
    ) -> ExpiredChunk:
        # A covering scan of the (deleted_at_us IS NULL, ts_us) part of captures_deleted_ts: old rows only.
        sql = ("SELECT ts_us, id FROM captures INDEXED BY captures_deleted_ts "
               "WHERE deleted_at_us IS NULL AND ts_us < ? AND id <= ?")
        params: tuple[Any, ...] = (older_than_us, max_id)
        if after is not None:
            sql += " AND (ts_us, id) > (?, ?)"
            params += (after[0], after[1])
        sql += " ORDER BY ts_us, id LIMIT ?"
        params += (limit,)

        def work(conn: sqlite3.Connection) -> ExpiredChunk:
            taken = conn.execute(sql, params).fetchall()
            if taken:
                ids = [row[1] for row in taken]
                if mark_at_us is None:
                    self._by_ids(conn, "DELETE FROM captures WHERE id", ids, ())
                else:
                    self._by_ids(conn, "UPDATE captures SET deleted_at_us = ?, purge_after_us = ? WHERE id", ids,
                                 (mark_at_us, purge_after_us))
            resume = (int(taken[-1][0]), int(taken[-1][1])) if len(taken) >= limit else None
            return ExpiredChunk(len(taken), resume)

        return self._write(work)

    @staticmethod
    def _by_ids(conn: sqlite3.Connection, statement: str, ids: list[int], leading: tuple[Any, ...]) -> None:
        """Run ``statement`` (ending in ``WHERE id``) for all ``ids`` at once."""
        if _HAS_JSON:
            conn.execute(f"{statement} IN (SELECT value FROM json_each(?))", (*leading, json.dumps(ids)))
        else:
            conn.executemany(f"{statement} = ?", [(*leading, record_id) for record_id in ids])

    @staticmethod
    def _due(now_us: int, max_id: int | None,
             undated_marked_before_us: int | None) -> list[tuple[str, tuple[Any, ...]]]:
        """The soft-deleted records whose grace period is over, as ``FROM … WHERE …`` parts: those with a
        recorded end (its partial index), then those marked without one (theirs: schema.py, version 7)."""
        bound = 2**63 - 1 if max_id is None else max_id
        parts: list[tuple[str, tuple[Any, ...]]] = [(
            "FROM captures INDEXED BY captures_hidden WHERE purge_after_us <= ? AND deleted_at_us IS NOT NULL "
            "AND id <= ?", (now_us, bound))]
        if undated_marked_before_us is not None:
            parts.append(("FROM captures INDEXED BY captures_hidden WHERE purge_after_us IS NULL "
                          "AND deleted_at_us <= ? AND deleted_at_us IS NOT NULL AND id <= ?",
                          (undated_marked_before_us, bound)))
        return parts

    def _settle_marks(self, conn: sqlite3.Connection, now_us: int) -> None:
        """Write back as numbers the soft-delete marks a hand ``UPDATE`` left as TEXT or a BLOB (SQLite keeps
        them so: ``SET deleted_at_us = CURRENT_TIMESTAMP``), which sort after every number: the purge's
        ``<=`` never matched them and ``restore --since`` matched them all. Each becomes the time it names
        (columns.py ``mark_micros``); a mark that names none makes the record marked now, so its grace
        period starts when this first reads it (never early, never kept for ever: a ``purge_after_us`` that
        names none is cleared, the policy's grace period deciding, as for marks from before version 6).
        Logged with the records' ids. Two range probes of the marks' indexes (TEXT and BLOB sort after
        every number: ``>= ''``), empty in a store no one marked by hand."""
        rows = conn.execute(
            "SELECT id, deleted_at_us, purge_after_us FROM captures INDEXED BY captures_deleted_ts "
            "WHERE deleted_at_us >= '' UNION SELECT id, deleted_at_us, purge_after_us FROM captures "
            "INDEXED BY captures_hidden WHERE deleted_at_us IS NOT NULL AND purge_after_us >= ''").fetchall()
        if not rows:
            return
        updates, dated_now = [], []
        for record_id, deleted_at, purge_after in rows:
            if isinstance(deleted_at, str | bytes):
                deleted_at = mark_micros(deleted_at)
            if isinstance(purge_after, str | bytes):
                purge_after = mark_micros(purge_after)
                if purge_after is None:
                    deleted_at = None
            if deleted_at is None:
                deleted_at = now_us
                dated_now.append(record_id)
            updates.append((deleted_at, purge_after, record_id))
        conn.executemany("UPDATE captures SET deleted_at_us = ?, purge_after_us = ? WHERE id = ?", updates)
        ids = sorted(update[2] for update in updates)
        shown = ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        log.warning("SQLite store %s: %d soft-deleted record(s) marked by hand with a deleted_at_us or purge_after_us "
                    "that is not a number (%s): read as the time each names%s", self.path, len(ids), shown,
                    f"; {len(dated_now)} name(s) none and count as marked now (their grace period starts now)"
                    if dated_now else "")

    def purge_soft_deleted_chunk(self, now_us: int, limit: int, *, max_id: int | None = None,
                                 undated_marked_before_us: int | None = None) -> int:
        def work(conn: sqlite3.Connection) -> int:
            self._settle_marks(conn, now_us)
            deleted = 0
            for where, params in self._due(now_us, max_id, undated_marked_before_us):
                if deleted >= limit:
                    break
                deleted += conn.execute(f"DELETE FROM captures WHERE id IN (SELECT id {where} LIMIT ?)",
                                        (*params, limit - deleted)).rowcount
            return deleted

        return int(self._write(work))

    def soft_deleted_due_count(self, now_us: int, *, max_id: int | None = None,
                               undated_marked_before_us: int | None = None) -> int:
        return sum(int(self._query(f"SELECT COUNT(*) {where}", params)[0][0])
                   for where, params in self._due(now_us, max_id, undated_marked_before_us))

    def restore_chunk(self, limit: int, *, deleted_since_us: int | None = None) -> int:
        since = -(2**63) if deleted_since_us is None else deleted_since_us
        return int(self._write(lambda conn: conn.execute(
            "UPDATE captures SET deleted_at_us = NULL, purge_after_us = NULL WHERE id IN (SELECT id FROM captures "
            "INDEXED BY captures_deleted_ts WHERE deleted_at_us >= ? LIMIT ?)", (since, limit)
        ).rowcount))

    def count_expired(self, max_id: int, older_than_us: int) -> int:
        return int(self._query(
            "SELECT COUNT(*) FROM captures INDEXED BY captures_deleted_ts "
            "WHERE deleted_at_us IS NULL AND ts_us < ? AND id <= ?", (older_than_us, max_id)
        )[0][0])

    def highest_assigned_id(self) -> int:
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'captures'")
        return max(int(rows[0][0]) if rows else 0, self.max_id())

    def soft_deleted_count(self, deleted_before_us: int | None = None, *, max_id: int | None = None) -> int:
        if deleted_before_us is None:
            sql = "SELECT COUNT(*) FROM captures INDEXED BY captures_deleted_ts WHERE deleted_at_us IS NOT NULL"
            params: tuple[Any, ...] = ()
        else:
            sql, params = ("SELECT COUNT(*) FROM captures INDEXED BY captures_deleted_ts WHERE deleted_at_us <= ?",
                           (deleted_before_us,))
        if max_id is not None:
            sql, params = sql + " AND id <= ?", (*params, max_id)
        return int(self._query(sql, params)[0][0])

    # -- quarantine (store/base.py QuarantineStore) ---------------------------------------------------

    def quarantine(self, record_id: int, reason: str, exporter: str, at_us: int) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            moved = conn.execute(
                "INSERT INTO captures_quarantine (id, ts_us, body, reason, exporter, quarantined_at_us) "
                "SELECT id, ts_us, body, ?, ?, ? FROM captures WHERE id = ?", (reason, exporter, at_us, record_id)
            ).rowcount
            conn.execute("DELETE FROM captures WHERE id = ?", (record_id,))
            return moved > 0

        return bool(self._write(work))

    def quarantined(self) -> list[QuarantinedRecord]:
        return [QuarantinedRecord(*row) for row in self._query(
            "SELECT id, ts_us, reason, exporter, quarantined_at_us, length(body) FROM captures_quarantine ORDER BY id"
        )]

    def quarantined_row(self, record_id: int) -> QuarantinedRecord | None:
        rows = self._query("SELECT id, ts_us, reason, exporter, quarantined_at_us, length(body), body "
                           "FROM captures_quarantine WHERE id = ?", (record_id,))
        return QuarantinedRecord(*rows[0]) if rows else None

    def release(self, record_id: int, body: bytes, timestamp_us: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT 1 FROM captures_quarantine WHERE id = ?", (record_id,)).fetchone()
            if row is None:
                raise StoreError(f"record {record_id} is not in the quarantine of {self.path}")
            new_id = conn.execute("INSERT INTO captures (ts_us, body, seal) VALUES (?, ?, ?)",
                                  (timestamp_us, body, self._seal.seal(body))).lastrowid
            conn.execute("DELETE FROM captures_quarantine WHERE id = ?", (record_id,))
            return int(new_id or 0)

        return int(self._write(work))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
