"""The SQLite store's schema and its migrations.

Schema version 2 adds soft deletion (RetentionPolicy ``softDelete``): a nullable ``deleted_at_us``
column and an index on ``(deleted_at_us, ts_us)``, which also serves the purge (visible records by age:
the ``deleted_at_us IS NULL`` part of the index) and restore (the marked part; the grace-period purge
has its own index since version 7), and a view ``captures_live`` of the records that are not
soft-deleted, for anyone else who reads the store. A store of version 1 is migrated when opened; the
gateway's ``INSERT INTO captures (ts_us, body)`` is unaffected. Soft-deleted rows are left out of
``count`` and ``ids`` but stay in the export stream (``read_batch``, ``backlog``): see store/base.py for
why.

Schema version 4 replaces version 3's ``stripped`` flag (any writer could set it, so it is no longer
read; the column stays, ignored) with a nullable ``seal`` column that our own append fills
(store/seal.py; the key is ``seal_key`` in ``capture_export_meta``, created by the migration), and adds
``captures_quarantine``, where ``onCorruptRecord: Quarantine`` moves rows that fail the check. Rows of
an upgraded store have no seal, so the export checks each of them in full once: safe, at the cost of
checking old rows that were in fact ours. Anyone who can open the file can read the key: with SQLite
the seal keeps out careless writers (and flags), not hostile ones (see store/seal.py).

Schema version 6 records, with each soft-delete mark, when the record's grace period ends
(``purge_after_us``), so that a policy with a shorter grace period on the same store
cannot remove it early. Marks from before have none: the grace period of the policy that purges decides.

Schema version 7 replaces version 6's index of ``purge_after_us`` with ``captures_hidden``, the hidden
records by ``(purge_after_us, deleted_at_us)``, which serves both parts of the grace-period purge
without reading the table: dated marks by their end, then undated ones (``purge_after_us IS NULL``) by
their mark. Before, the undated ones were found through ``captures_deleted_ts`` over
``deleted_at_us <= cutoff``, a range that also holds every dated mark made before the cutoff, each read
from the table to see it had a ``purge_after_us``: a policy with a short grace period walked, in a write
transaction, all the records a policy with a long one had hidden. Still three indexes to update per
removed record, as in version 6. Building it reads the whole table once, when the store is opened.
"""

from __future__ import annotations

import sqlite3

from ..base import StoreError, new_store_id
from ..seal import SEAL_KEY_META, RecordSeal, new_seal_key

__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "migrate"]

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
SCHEMA_VERSION = 7
# Migrations from version N-1 to N, each run in one write transaction. A version with no entry here is a
# gap (reserved for a change on its way): see migrate.
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
    # The end of a soft-deleted record's own grace period (store/base.py), set with the mark.
    # (Version 6 also indexed it, as captures_purge_after; version 7 drops that index, so it is no longer
    # built here only to be dropped.)
    6: ["ALTER TABLE captures ADD COLUMN purge_after_us INTEGER"],
    # The hidden records by the end of their grace period, then (marks from before version 6) by their mark.
    7: [
        "CREATE INDEX IF NOT EXISTS captures_hidden ON captures (purge_after_us, deleted_at_us) "
        "WHERE deleted_at_us IS NOT NULL",
        "DROP INDEX IF EXISTS captures_purge_after",
    ],
}


def migrate(conn: sqlite3.Connection, path: object) -> tuple[str, RecordSeal]:
    """Bring the schema to SCHEMA_VERSION and give the store an identity if it has none; return it and the
    store's record seal."""
    conn.execute("BEGIN IMMEDIATE")  # one migrator at a time, however many processes open the file
    try:
        current = int(conn.execute("SELECT value FROM capture_export_meta WHERE key = 'schema_version'")
                      .fetchone()[0])
        if current > SCHEMA_VERSION:
            raise StoreError(f"SQLite store {path} has schema version {current}, newer than this "
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
                    _apply(conn, statement)
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
        seal = RecordSeal(key)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return store_id, seal


def _apply(conn: sqlite3.Connection, statement: str) -> None:
    words = statement.split()
    if words[:5] == ["ALTER", "TABLE", "captures", "ADD", "COLUMN"]:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(captures)")}
        if words[5] in columns:
            return
    conn.execute(statement)
