"""The PostgreSQL store's schema, created and migrated here (the gateway just runs ``INSERT INTO captures
(ts_us, body) …``)::

    captures (id bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY, ts_us bigint, body bytea,
              deleted_at_us bigint,   -- schema version 2: soft deletion, see store/base.py
              seal bytea,             -- schema version 3: rows our own append wrote, see store/seal.py
              capture_id text,        -- schema version 4: the ingest server's idempotency key
              purge_after_us bigint)  -- schema version 5: when a soft-deleted record's grace period ends
    captures_quarantine (id, ts_us, body, reason, exporter, quarantined_at_us)   -- version 3

Version 6 indexes the hidden records by ``(purge_after_us, deleted_at_us)`` (``captures_hidden``, in place
of version 5's index of ``purge_after_us`` alone), so that the grace-period purge finds the records due
both by their recorded end and, marks from before version 5, by their mark, without reading the others:
it used to test both in one ``OR`` that the planner answered with a sequential scan of the table.

Rows of a store upgraded to version 3 have no seal: the export checks each of them in full once. The
seal's key is ``seal_key`` in ``capture_export_meta``. Grant the gateway's role ``INSERT`` (and ``SELECT``
if it needs it) on ``captures`` only, never on ``capture_export_meta``: then it cannot forge a seal, and
every row it writes is checked in full before export (identity columns need no sequence privilege)::

    GRANT INSERT, SELECT ON captures TO gateway;
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from ..base import StoreError, StoreNotFound, new_store_id
from ..seal import SEAL_KEY_META, RecordSeal, new_seal_key

__all__ = ["META", "QUARANTINE", "SCHEMA_VERSION", "TABLE", "StoreLayout", "introspect", "migrate"]

SCHEMA_VERSION = 6
TABLE = "captures"
QUARANTINE = "captures_quarantine"
META = "capture_export_meta"
# pg_advisory_lock key serialising migrations between operator replicas and tools.
MIGRATION_LOCK = 0x63617074757265  # "capture"

META_DDL = f"CREATE TABLE IF NOT EXISTS {META} (key text PRIMARY KEY, value text NOT NULL)"
# Migrations from version N-1 to N. Each statement runs in its own transaction (so that indexes can be
# built CONCURRENTLY, without blocking the gateway's inserts on a large table) and is idempotent: a
# migration cut short is simply run again.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            id    bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
            ts_us bigint NOT NULL,
            body  bytea  {{compression}}NOT NULL
        )""",
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {TABLE}_ts_us ON {TABLE} (ts_us)",
    ],
    # Soft deletion (store/base.py): a nullable mark without default (adding it rewrites nothing and
    # leaves the gateway's INSERT as it is), partial indexes for the purge by age of live records and
    # for the grace-period purge and restore, and a view of the live records for other readers.
    2: [
        f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS deleted_at_us bigint",
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {TABLE}_live_ts_id ON {TABLE} (ts_us, id) "
        "WHERE deleted_at_us IS NULL",
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {TABLE}_deleted_at ON {TABLE} (deleted_at_us) "
        "WHERE deleted_at_us IS NOT NULL",
        f"CREATE OR REPLACE VIEW {TABLE}_live AS SELECT id, ts_us, body FROM {TABLE} WHERE deleted_at_us IS NULL",
    ],
    # The seal of rows our own append wrote (store/seal.py; nullable, no default: adding it rewrites
    # nothing) and the quarantine of rows that fail the check (onCorruptRecord: Quarantine), which
    # retention never touches. Ids there are the rows' ids in captures before they were moved.
    3: [
        f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS seal bytea",
        f"CREATE TABLE IF NOT EXISTS {QUARANTINE} (id bigint PRIMARY KEY, ts_us bigint NOT NULL, body bytea, "
        "reason text NOT NULL, exporter text, quarantined_at_us bigint NOT NULL)",
    ],
    # The ingest server's idempotency key: a record whose capture_id is stored already is not stored again.
    # NULL for rows written any other way (the gateway's own INSERTs), which the partial index leaves out.
    4: [
        f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS capture_id text",
        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {TABLE}_capture_id ON {TABLE} (capture_id) "
        "WHERE capture_id IS NOT NULL",
    ],
    # The end of a soft-deleted record's own grace period (store/base.py), set with the mark, so that a
    # policy with a shorter grace period cannot remove it early; NULL on marks from before.
    # (Version 5 also indexed it, as captures_purge_after; version 6 drops that index, so it is no longer
    # built here only to be dropped.)
    5: [f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS purge_after_us bigint"],
    # The hidden records by the end of their grace period, then (marks from before version 5) by their mark.
    6: [
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {TABLE}_hidden ON {TABLE} (purge_after_us, deleted_at_us) "
        "WHERE deleted_at_us IS NOT NULL",
        f"DROP INDEX CONCURRENTLY IF EXISTS {TABLE}_purge_after",
    ],
}


def migrate(conn: psycopg.Connection[Any], label: str, *, create: bool) -> str:
    """Create or migrate the schema (one migrator at a time, across processes); return the store's
    identity. ``create=False``: a database without the table is StoreNotFound."""
    # Wait for another migrator without sitting in a transaction: CREATE INDEX CONCURRENTLY
    # waits for every open transaction, a blocked pg_advisory_lock() call included (deadlock).
    deadline = time.monotonic() + 120
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,)).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise StoreError(f"PostgreSQL store {label}: another process has held the schema "
                             "migration lock for 2 minutes")
        time.sleep(0.05)
    try:
        return _migrate_locked(conn, label, create)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _migrate_locked(conn: psycopg.Connection[Any], label: str, create: bool) -> str:
    if not create and conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0] is None:  # type: ignore[index]
        raise StoreNotFound(f"PostgreSQL database {label} holds no capture store (no {TABLE} table): a typo "
                            "in the DSN? Create one with `capture-export store init --store DSN`")
    conn.execute(META_DDL)
    row = conn.execute(f"SELECT value FROM {META} WHERE key = 'schema_version'").fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"PostgreSQL store {label} has schema version {current}, newer than this "
            f"operator's {SCHEMA_VERSION}: upgrade the operator"
        )
    # Statements that need a table lock queue behind open writers and block new ones meanwhile:
    # never wait long for one (a migration that gives up is retried on the next open).
    conn.execute("SET lock_timeout = '5s'")
    # lz4 TOAST compression (PostgreSQL 14+, when built with it): for ~3.5 KB records, 3x faster
    # inserts (the gateway's too) and 40% faster reads than the default pglz, same size on disk.
    lz4 = conn.execute(
        "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
    ).fetchone()
    compression = "COMPRESSION lz4 " if lz4 else ""
    try:
        # The recorded version is the highest one reached without a gap (a version with no migration
        # here, reserved for a change on its way). A migration past a gap is applied and marked
        # ('migrated_N'), so it runs once, and the gap's own migration still runs when it arrives.
        past_gap = {key for (key,) in conn.execute(f"SELECT key FROM {META} WHERE key LIKE 'migrated%%'")}
        reached = current
        for version in range(current + 1, SCHEMA_VERSION + 1):
            if version not in MIGRATIONS:
                continue
            marker = f"migrated_{version}"
            if marker not in past_gap:
                for template in MIGRATIONS[version]:
                    statement = template.replace("{compression}", compression)
                    if statement.startswith("CREATE") and "CONCURRENTLY" in statement:
                        _drop_invalid_index(conn, statement)
                    conn.execute(statement)
            if reached == version - 1:
                reached = version
                conn.execute(
                    f"INSERT INTO {META} (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (str(version),),
                )
                conn.execute(f"DELETE FROM {META} WHERE key = %s", (marker,))
            elif marker not in past_gap:
                conn.execute(f"INSERT INTO {META} (key, value) VALUES (%s, '1') ON CONFLICT DO NOTHING",
                             (marker,))
        conn.execute(f"INSERT INTO {META} (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                     (SEAL_KEY_META, new_seal_key()))
        # A per-backend sequence cache hands out old ids in later transactions, which would defeat
        # the safe horizon: put it back to 1 if a DBA changed it (only then: ALTER takes a lock).
        cache = conn.execute(
            "SELECT p.seqcache FROM pg_sequence p WHERE p.seqrelid = pg_get_serial_sequence(%s, 'id')::regclass",
            (TABLE,),
        ).fetchone()
        if cache is not None and cache[0] != 1:
            conn.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id SET CACHE 1")
        # The store's identity: made with the store, or now for a store from before identities.
        conn.execute(f"INSERT INTO {META} (key, value) VALUES ('store_id', %s) ON CONFLICT (key) DO NOTHING",
                     (new_store_id(),))
        store_id = str(conn.execute(f"SELECT value FROM {META} WHERE key = 'store_id'").fetchone()[0])  # type: ignore[index]
    finally:
        conn.execute("RESET lock_timeout")
    return store_id


def _drop_invalid_index(conn: psycopg.Connection[Any], statement: str) -> None:
    """A CREATE INDEX CONCURRENTLY cut short leaves an invalid index that IF NOT EXISTS would keep."""
    name = statement.split("IF NOT EXISTS", 1)[1].split()[0]
    invalid = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace AND NOT i.indisvalid",
        (name,),
    ).fetchone()
    if invalid:
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


@dataclass(frozen=True)
class StoreLayout:
    """What the store learns about the server's objects once, when it opens."""

    seq_oid: int  # the identity sequence of captures.id
    seq_name: str
    db_oid: int
    floor: int  # the last safe horizon this store proved (persisted in the meta table), or 0
    seal: RecordSeal | None


def introspect(conn: psycopg.Connection[Any], label: str) -> StoreLayout:
    row = conn.execute(
        "SELECT s.oid, s.oid::regclass::text, d.oid FROM pg_class s, pg_database d "
        "WHERE s.oid = pg_get_serial_sequence(%s, 'id')::regclass AND d.datname = current_database()",
        (TABLE,),
    ).fetchone()
    if row is None:
        raise StoreError(f"PostgreSQL store {label}: table {TABLE} has no identity sequence")
    floor_row = conn.execute(f"SELECT value FROM {META} WHERE key = 'safe_horizon'").fetchone()
    key_row = conn.execute(f"SELECT value FROM {META} WHERE key = %s", (SEAL_KEY_META,)).fetchone()
    seal = RecordSeal(key_row[0]) if key_row else None
    return StoreLayout(int(row[0]), str(row[1]), int(row[2]), int(floor_row[0]) if floor_row else 0, seal)
