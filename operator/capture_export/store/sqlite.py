"""SQLite capture store: the embedded default.

SQLite serialises writers and assigns ``AUTOINCREMENT`` ids inside the write transaction, so ids are
visible in commit order and the safe horizon is simply the highest committed id.

Schema version 2 adds soft deletion (RetentionPolicy ``softDelete``): a nullable ``deleted_at_us``
column and an index on ``(deleted_at_us, ts_us)``, which also serves the purge (visible records by age:
the ``deleted_at_us IS NULL`` part of the index) and the grace-period purge and restore (the marked
part), and a view ``captures_live`` of the records that are not soft-deleted, for anyone else who reads
the store. A store of version 1 is migrated when opened; the gateway's ``INSERT INTO captures (ts_us,
body)`` is unaffected. Soft-deleted rows are left out of ``count`` and ``ids`` but stay in the export
stream (``read_batch``, ``backlog``): see store/base.py for why.

Schema version 4 replaces version 3's ``stripped`` flag (any writer could set it, so it is no longer
read; the column stays, ignored) with a nullable ``seal`` column that our own append fills
(store/seal.py; the key is ``seal_key`` in ``capture_export_meta``, created by the migration), and adds
``captures_quarantine``, where ``onCorruptRecord: Quarantine`` moves rows that fail the check. Rows of
an upgraded store have no seal, so the export checks each of them in full once: safe, at the cost of
checking old rows that were in fact ours. Anyone who can open the file can read the key: with SQLite
the seal keeps out careless writers (and flags), not hostile ones (see store/seal.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from .base import ExpiredChunk, QuarantinedRecord, StoredRecord, StoreError, StoreNotFound, new_store_id
from .records import encode_body
from .seal import SEAL_KEY_META, RecordSeal, new_seal_key

__all__ = ["SQLiteStore"]

T = TypeVar("T")

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
SCHEMA_VERSION = 5
# Migrations from version N-1 to N, each run in one write transaction. A version with no entry here is a
# gap (reserved for a change on its way): see _migrate.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        "ALTER TABLE captures ADD COLUMN deleted_at_us INTEGER",
        "CREATE INDEX IF NOT EXISTS captures_deleted_ts ON captures (deleted_at_us, ts_us)",
        "CREATE VIEW IF NOT EXISTS captures_live AS SELECT id, ts_us, body FROM captures WHERE deleted_at_us IS NULL",
    ],
    # Version 3's flag for rows our own append wrote. Any writer can set a flag: since version 4 it is
    # no longer read (a seal is, below).
    3: ["ALTER TABLE captures ADD COLUMN stripped INTEGER NOT NULL DEFAULT 0"],
    4: [
        "ALTER TABLE captures ADD COLUMN seal BLOB",
        "CREATE TABLE IF NOT EXISTS captures_quarantine (id INTEGER PRIMARY KEY, ts_us INTEGER NOT NULL, body BLOB, "
        "reason TEXT NOT NULL, exporter TEXT, quarantined_at_us INTEGER NOT NULL)",
    ],
    # The ingest server's idempotency key: a record whose capture_id is stored already is not stored
    # again. NULL for rows written any other way (the gateway's own INSERTs, seed), which the partial
    # unique index leaves out.
    5: [
        "ALTER TABLE captures ADD COLUMN capture_id TEXT",
        "CREATE UNIQUE INDEX IF NOT EXISTS captures_capture_id ON captures (capture_id) WHERE capture_id IS NOT NULL",
    ],
}
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


_IN_MEMORY = ":memory:"


class _FileLock:
    """``flock`` on a lock file beside the database: dies with the process (README "What exactly-once
    assumes"). The scope names the database file (host, device, inode): a copy of the file is another."""

    def __init__(self, handle: IO[str], scope: str) -> None:
        self._handle = handle
        self.scope = scope

    def alive(self) -> bool:
        return not self._handle.closed

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()


class _ProcessLock:
    """The lock of an in-memory store: no other process can see the store anyway."""

    _held: set[tuple[int, str]] = set()
    _mutex = threading.Lock()

    def __init__(self, key: tuple[int, str]) -> None:
        self._key = key
        self.scope = f"memory:{os.getpid()}:{key[0]}"

    @classmethod
    def take(cls, key: tuple[int, str]) -> _ProcessLock | None:
        with cls._mutex:
            if key in cls._held:
                return None
            cls._held.add(key)
        return cls(key)

    def alive(self) -> bool:
        return self._key in self._held

    def release(self) -> None:
        with self._mutex:
            self._held.discard(self._key)


class SQLiteStore:
    """A SQLite capture store. ``create``: make the file and the schema when there is none (``seed``,
    ``store init``, the demo, tests); without it a missing file, or one without a ``captures`` table, is
    StoreNotFound and nothing is created."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0, create: bool = True) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        in_memory = str(path) == _IN_MEMORY
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
            self._store_id = self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from None

    def _has_captures(self) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'captures'").fetchone() is not None

    def identity(self) -> str:
        return self._store_id

    def lock_exporter(self, exporter: str) -> _FileLock | _ProcessLock | None:
        if str(self.path) == _IN_MEMORY:
            return _ProcessLock.take((id(self), exporter))
        directory = Path(f"{self.path}-locks")
        try:
            directory.mkdir(exist_ok=True)
            handle = (directory / f"{exporter.replace('/', '.')}.export.lock").open("a+")
        except OSError as exc:
            raise StoreError(f"cannot create the exporter lock beside SQLite store {self.path}: {exc}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        stat = self.path.stat()
        return _FileLock(handle, f"sqlite:{socket.gethostname()}:{stat.st_dev}:{stat.st_ino}")

    def _migrate(self) -> str:
        """Bring the schema to SCHEMA_VERSION and give the store an identity if it has none; return it."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")  # one migrator at a time, however many processes open the file
        try:
            current = int(conn.execute("SELECT value FROM capture_export_meta WHERE key = 'schema_version'")
                          .fetchone()[0])
            if current > SCHEMA_VERSION:
                raise StoreError(f"SQLite store {self.path} has schema version {current}, newer than this "
                                 f"operator's {SCHEMA_VERSION}: upgrade the operator")
            # The recorded version is the highest one reached without a gap (a version with no migration
            # here, reserved for a change on its way). A migration past a gap is applied and marked
            # ('migrated_N'), so it runs once, and the gap's own migration still runs when it arrives.
            past_gap = {row[0] for row in conn.execute(
                "SELECT key FROM capture_export_meta WHERE key LIKE 'migrated%'")}
            reached = current
            for version in range(current + 1, SCHEMA_VERSION + 1):
                if version not in MIGRATIONS:
                    continue
                marker = f"migrated_{version}"
                if marker not in past_gap:
                    for statement in MIGRATIONS[version]:
                        self._apply(statement)
                if reached == version - 1:
                    reached = version
                    conn.execute("DELETE FROM capture_export_meta WHERE key = ?", (marker,))
                elif marker not in past_gap:
                    conn.execute("INSERT INTO capture_export_meta (key, value) VALUES (?, '1')", (marker,))
            if reached != current:
                conn.execute("UPDATE capture_export_meta SET value = ? WHERE key = 'schema_version'",
                             (str(reached),))
            # The store's identity: made with the store; a store from before identities gets one now (its
            # checkpoints, which have none, adopt it on their next write). No schema change: a meta row.
            conn.execute("INSERT OR IGNORE INTO capture_export_meta (key, value) VALUES ('store_id', ?)",
                         (new_store_id(),))
            store_id = str(conn.execute("SELECT value FROM capture_export_meta WHERE key = 'store_id'").fetchone()[0])
            conn.execute("INSERT OR IGNORE INTO capture_export_meta (key, value) VALUES (?, ?)",
                         (SEAL_KEY_META, new_seal_key()))
            key = conn.execute("SELECT value FROM capture_export_meta WHERE key = ?", (SEAL_KEY_META,)).fetchone()[0]
            self._seal = RecordSeal(key)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return store_id

    def _apply(self, statement: str) -> None:
        words = statement.split()
        if words[:5] == ["ALTER", "TABLE", "captures", "ADD", "COLUMN"]:
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(captures)")}
            if words[5] in columns:
                return
        self._conn.execute(statement)

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
        return self.append_encoded(rows, sealed=True)

    def append_encoded(self, rows: list[tuple[int, bytes]], *, sealed: bool = False) -> int:
        """Insert already-encoded ``(timestamp_us, body)`` rows in one transaction. ``sealed``: the bodies
        come from ``encode_body`` (one canonical map, credentials removed), so they are sealed as our own
        and the export ships them unchecked; otherwise they are foreign rows like the gateway's."""
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
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from None
        return added

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
                    self._by_ids(conn, "UPDATE captures SET deleted_at_us = ? WHERE id", ids, (mark_at_us,))
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

    def purge_soft_deleted_chunk(self, deleted_before_us: int, limit: int) -> int:
        return int(self._write(lambda conn: conn.execute(
            "DELETE FROM captures WHERE id IN (SELECT id FROM captures INDEXED BY captures_deleted_ts "
            "WHERE deleted_at_us <= ? LIMIT ?)", (deleted_before_us, limit)
        ).rowcount))

    def restore_chunk(self, limit: int, *, deleted_since_us: int | None = None) -> int:
        since = -(2**63) if deleted_since_us is None else deleted_since_us
        return int(self._write(lambda conn: conn.execute(
            "UPDATE captures SET deleted_at_us = NULL WHERE id IN (SELECT id FROM captures INDEXED BY "
            "captures_deleted_ts WHERE deleted_at_us >= ? LIMIT ?)", (since, limit)
        ).rowcount))

    def count_expired(self, max_id: int, older_than_us: int) -> int:
        return int(self._query(
            "SELECT COUNT(*) FROM captures INDEXED BY captures_deleted_ts "
            "WHERE deleted_at_us IS NULL AND ts_us < ? AND id <= ?", (older_than_us, max_id)
        )[0][0])

    def highest_assigned_id(self) -> int:
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'captures'")
        return max(int(rows[0][0]) if rows else 0, self.max_id())

    def soft_deleted_count(self, deleted_before_us: int | None = None) -> int:
        if deleted_before_us is None:
            sql = "SELECT COUNT(*) FROM captures INDEXED BY captures_deleted_ts WHERE deleted_at_us IS NOT NULL"
            params: tuple[Any, ...] = ()
        else:
            sql, params = ("SELECT COUNT(*) FROM captures INDEXED BY captures_deleted_ts WHERE deleted_at_us <= ?",
                           (deleted_before_us,))
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

    def release(self, record_id: int, body: bytes) -> int:
        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT ts_us FROM captures_quarantine WHERE id = ?", (record_id,)).fetchone()
            if row is None:
                raise StoreError(f"record {record_id} is not in the quarantine of {self.path}")
            new_id = conn.execute("INSERT INTO captures (ts_us, body, seal) VALUES (?, ?, ?)",
                                  (row[0], body, self._seal.seal(body))).lastrowid
            conn.execute("DELETE FROM captures_quarantine WHERE id = ?", (record_id,))
            return int(new_id or 0)

        return int(self._write(work))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
