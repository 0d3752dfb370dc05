"""PostgreSQL capture store: the production store, read below a safe horizon so no record is skipped.

The table (created and migrated here; the gateway just runs ``INSERT INTO captures (ts_us, body) …``)::

    captures (id bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY, ts_us bigint, body bytea,
              deleted_at_us bigint,   -- schema version 2: soft deletion, see store/base.py
              seal bytea,             -- schema version 3: rows our own append wrote, see store/seal.py
              capture_id text)        -- schema version 4: the ingest server's idempotency key
    captures_quarantine (id, ts_us, body, reason, exporter, quarantined_at_us)   -- version 3

Rows of a store upgraded to version 3 have no seal: the export checks each of them in full once. The
seal's key is ``seal_key`` in ``capture_export_meta``. Grant the gateway's role ``INSERT`` (and ``SELECT``
if it needs it) on ``captures`` only, never on ``capture_export_meta``: then it cannot forge a seal, and
every row it writes is checked in full before export (identity columns need no sequence privilege)::

    GRANT INSERT, SELECT ON captures TO gateway;

The problem
-----------
Ids come from a sequence, and ``nextval`` is not transactional: transaction A takes id 10, B takes
id 11, B commits, and for a while a reader sees 11 but not 10. An exporter that reads ``id > cursor``
and advances its cursor to 11 never sees 10, which commits a moment later. Waiting ("only read rows
older than 5 s") narrows the window but does not close it: a gateway transaction can stay open for
any length of time. Snapshot xids do not close it either: an ``INSERT`` evaluates its id before it
writes a tuple, and only then is the transaction given an xid, so a snapshot taken in between does
not list it as in flight although it already owns id 10; and even with an xid, nothing tells a reader
*which* ids an invisible transaction owns.

The safe horizon
----------------
Every ``nextval`` locks the sequence in ``RowExclusiveLock`` on behalf of the *top-level* transaction
(``lock_and_open_sequence`` uses the top transaction's resource owner, so even a rolled-back savepoint
keeps it), the lock is taken before the value is drawn, and it is released only after the transaction
has left the proc array, that is after its commit (or abort) is visible to any later snapshot. So the
transactions that may still make an id appear are exactly those holding that lock, and ``pg_locks``
lists them, each with a virtual transaction id that no other transaction reuses. One *observation*:

1. ``L`` = the sequence's ``last_value``: every id ``<= L`` has been drawn by now;
2. ``H`` = the virtual transactions holding (or awaiting) ``RowExclusiveLock`` on the sequence, read
   after ``L`` (``SELECT … FROM`` the sequence takes a weaker lock: readers are not writers). A transaction
   that drew an id ``<= L`` either has ended (its row, if committed, is visible to any snapshot taken
   from here on) or is in ``H``.

With ``CACHE 1`` (enforced: a per-backend cache hands out old values later) the sequence is monotonic
in time, so a transaction in ``H_i`` that was not in the previous observation's ``H_{i-1}`` had drawn
nothing when ``H_{i-1}`` was read: all its ids are ``> L_{i-1}``. Each in-flight transaction thus
carries a lower bound on the ids it may still commit (set when first seen, inherited while it stays in
``H``), and the horizon is::

    horizon_i = min(L_i, min over T in H_i of bound(T) - 1)

Every id at or below it is committed or aborted for good; a later snapshot (the read that follows,
in its own statement) sees all of them. It derives from the oldest in-flight *writer* only: readers,
purges and other tables' transactions do not hold it back; a writer that stays open holds it at its
first id, exactly as DESIGN.md §2 asks, and nothing above that is handed out until it ends.

Precision, not correctness, depends on how often observations happen: a transaction first seen by an
observation long after the previous one gets a stale (lower) bound. When the limiting bound is stale
the store re-observes for a few milliseconds (``settle_seconds``), by which time ordinary gateway
transactions have ended. A transaction already in flight at the first observation of this process has
no bound; the floor then is the last horizon this store proved, persisted (at most every few seconds)
in ``capture_export_meta``: a proven horizon stays true for ever. A server restart (new
``pg_postmaster_start_time``) or a sequence that went backwards starts the tracking afresh.

Limits: read the primary (a standby's ``pg_locks`` does not show the primary's writers); writers must
let the identity draw ids (``GENERATED ALWAYS`` refuses explicit ids unless ``OVERRIDING SYSTEM
VALUE``, which is unsupported); ``synchronous_commit = off`` can lose a commit that was already
exported if the server crashes (the record then shows as "in bucket but no longer in store").

Cost: two small autocommit statements per horizon (the sequence tuple, and ``pg_locks`` filtered on
the sequence); ``benchmarks/postgres_export.py`` measures them. Writers pay nothing.

Connections: a small pool, one connection per concurrent caller (the engine reads on a helper thread
while the main thread may ask for the backlog), autocommit, TCP keepalives. A read that fails on a
pooled connection that went stale (server restarted) is retried once on a fresh connection; writes
are never retried here.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo as pg_conninfo

from .base import ExpiredChunk, QuarantinedRecord, StoredRecord, StoreError, StoreNotFound, new_store_id
from .records import encode_body
from .seal import SEAL_KEY_META, RecordSeal, new_seal_key

__all__ = ["HorizonTracker", "PostgresStore"]

T = TypeVar("T")

SCHEMA_VERSION = 4
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
}

DEFAULT_CONNECT_OPTIONS = {
    "connect_timeout": "10",
    "application_name": "capture-export",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


# --------------------------------------------------------------------------------------------------
# The horizon tracker: pure bookkeeping over observations, unit-testable without a server.


@dataclass(frozen=True)
class _InFlight:
    bound: int  # every id this transaction may still commit is >= bound
    stale: bool  # the bound comes from an old observation (or none): re-observing may raise it


class HorizonTracker:
    """Turns successive observations ``(L, H)`` into a safe horizon (see the module docstring).

    ``observe`` must be called with observations in the order they were made, each ``L`` read before
    its ``H``; the caller serialises that.
    """

    def __init__(self, floor: int = 0, *, precise_within: float = 0.05) -> None:
        self.floor = floor
        self.precise_within = precise_within
        self.proven = floor
        self._last_value: int | None = None
        self._last_time = 0.0
        self._server: object = None
        self._in_flight: dict[str, _InFlight] = {}

    def observe(self, last_value: int, holders: Iterable[str], now: float, server: object = None) -> tuple[int, bool]:
        """Record one observation; return ``(horizon, stale)``, ``stale`` meaning that an observation
        a moment later may well give a higher horizon."""
        if server != self._server or (self._last_value is not None and last_value < self._last_value):
            # A restarted server (every old transaction is gone, virtual ids start again) or a sequence
            # moved backwards: nothing learnt so far can be relied upon, except what is proven.
            self._server = server
            self._last_value = None
            self._in_flight = {}
            self.floor = self.proven = min(self.proven, last_value)
        previous, gap = self._last_value, now - self._last_time
        tracked: dict[str, _InFlight] = {}
        for vxid in holders:
            known = self._in_flight.get(vxid)
            if known is not None:
                tracked[vxid] = known
            elif previous is None:
                tracked[vxid] = _InFlight(min(self.floor, last_value) + 1, True)
            else:
                tracked[vxid] = _InFlight(previous + 1, gap > self.precise_within)
        self._in_flight = tracked
        self._last_value, self._last_time = last_value, now
        horizon, stale = last_value, False
        if tracked:
            oldest = min(tracked.values(), key=lambda t: t.bound)
            if oldest.bound - 1 < horizon:
                horizon, stale = oldest.bound - 1, oldest.stale
        self.proven = max(self.proven, horizon)
        return self.proven, stale

    def settled(self) -> None:
        """The caller has re-observed for as long as it is willing to: stop calling the current
        in-flight transactions' bounds stale, so that a long transaction is waited for only once."""
        self._in_flight = {vxid: _InFlight(t.bound, False) for vxid, t in self._in_flight.items()}

    def holders(self) -> dict[str, int]:
        """In-flight writer transactions (virtual xid) and the lowest id each may still commit."""
        return {vxid: t.bound for vxid, t in self._in_flight.items()}


# --------------------------------------------------------------------------------------------------


def _safe_label(dsn: str) -> str:
    """``host:port/dbname`` for messages: never the password."""
    try:
        params = pg_conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


class PostgresStore:
    """A capture store in PostgreSQL (psycopg 3). Thread-safe."""

    def __init__(
        self,
        dsn: str,
        *,
        settle_seconds: float = 0.05,
        persist_every: float = 5.0,
        max_idle: int = 8,
        create: bool = True,
        **connect_options: Any,
    ) -> None:
        self.label = _safe_label(dsn)
        try:
            given = pg_conninfo.conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise StoreError(f"invalid PostgreSQL DSN: {exc.__class__.__name__}") from None
        defaults = {k: v for k, v in DEFAULT_CONNECT_OPTIONS.items() if k not in given}
        self._conninfo = pg_conninfo.make_conninfo(dsn, **{**defaults, **connect_options})
        self.settle_seconds = settle_seconds
        self.persist_every = persist_every
        self.max_idle = max_idle
        self._idle: list[psycopg.Connection[Any]] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        self._horizon_lock = threading.Lock()
        self._persisted_at = 0.0
        self._persisted = 0
        self.observations = 0
        self._seal: RecordSeal | None = None  # read with the rest of the store's metadata (_introspect)
        self._create = create
        self._store_id = ""
        # Exporter locks (lock_exporter): one session for all of them.
        self._locks_mutex = threading.Lock()
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._lock_scope = ""
        self._held_locks: set[int] = set()
        self._lock_generation = 0
        self._migrate()
        self._seq_oid, self._seq_name, self._db_oid, floor = self._run(self._introspect)
        self._tracker = HorizonTracker(floor)
        self._persisted = floor

    def __repr__(self) -> str:
        return f"PostgresStore({self.label!r})"

    # -- connections ---------------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL store {self.label}: {_first_line(exc)}") from None

    def _take(self) -> tuple[psycopg.Connection[Any], bool]:
        with self._pool_lock:
            if self._closed:
                raise StoreError(f"PostgreSQL store {self.label} is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn, False
        return self._connect(), True

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        healthy = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._pool_lock:
            if healthy and not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        with contextlib.suppress(Exception):
            conn.close()

    def _run(self, work: Callable[[psycopg.Connection[Any]], T], *, retry_stale: bool = True) -> T:
        """Run ``work`` on a pooled connection, mapping failures to StoreError. A failure on a reused
        connection that turns out broken is retried once on a fresh one when ``retry_stale``."""
        attempts = 2 if retry_stale else 1
        for attempt in range(attempts):
            conn, fresh = self._take()
            try:
                result = work(conn)
            except psycopg.Error as exc:
                broken = conn.closed or conn.broken
                with contextlib.suppress(Exception):
                    conn.close()
                if broken and not fresh and attempt + 1 < attempts:
                    continue
                raise StoreError(f"PostgreSQL store {self.label}: {_first_line(exc)}") from None
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.close()
                raise
            self._give_back(conn)
            return result
        raise AssertionError("unreachable")

    # -- schema --------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            # Wait for another migrator without sitting in a transaction: CREATE INDEX CONCURRENTLY
            # waits for every open transaction, a blocked pg_advisory_lock() call included (deadlock).
            deadline = time.monotonic() + 120
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,)).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() > deadline:
                    raise StoreError(f"PostgreSQL store {self.label}: another process has held the schema "
                                     "migration lock for 2 minutes")
                time.sleep(0.05)
            try:
                self._migrate_locked(conn)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))

        self._run(work, retry_stale=False)

    def _migrate_locked(self, conn: psycopg.Connection[Any]) -> None:
        if not self._create and conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0] is None:  # type: ignore[index]
            raise StoreNotFound(f"PostgreSQL database {self.label} holds no capture store (no {TABLE} table): a typo "
                                "in the DSN? Create one with `capture-export store init --store DSN`")
        conn.execute(META_DDL)
        row = conn.execute(f"SELECT value FROM {META} WHERE key = 'schema_version'").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"PostgreSQL store {self.label} has schema version {current}, newer than this "
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
                        if "CONCURRENTLY" in statement:
                            self._drop_invalid_index(conn, statement)
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
            self._store_id = str(conn.execute(f"SELECT value FROM {META} WHERE key = 'store_id'").fetchone()[0])  # type: ignore[index]
        finally:
            conn.execute("RESET lock_timeout")

    def identity(self) -> str:
        return self._store_id

    def lock_exporter(self, exporter: str) -> _AdvisoryLock | None:
        """A session-level advisory lock keyed by store and exporter, on one session this store keeps for
        all its exporters' locks (200 exporters are 200 locks, not 200 connections); it ends with the
        session (the process dies, the server restarts). One holder per exporter in this process too."""
        digest = hashlib.sha256(f"capture-export:{self._store_id}:{exporter}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with self._locks_mutex:
            try:
                session = self._lock_session()
                if key in self._held_locks:
                    return None
                taken = session.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]  # type: ignore[index]
            except psycopg.Error as exc:
                self._drop_lock_session()
                raise StoreError(f"PostgreSQL store {self.label}: {_first_line(exc)}") from None
            if not taken:
                return None
            self._held_locks.add(key)
            return _AdvisoryLock(self, key, self._lock_generation, self._lock_scope)

    def _lock_session(self) -> psycopg.Connection[Any]:
        """The session holding this store's exporter locks (opened on first use, again after it died)."""
        session = self._lock_conn
        if session is not None and not session.closed:
            return session
        self._drop_lock_session()
        session = self._connect()
        started, db_oid = session.execute(
            "SELECT pg_postmaster_start_time(), oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()  # type: ignore[misc]
        try:
            system = session.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]  # type: ignore[index]
        except psycopg.Error:  # not granted to this role: the postmaster's start time tells servers apart
            system = started.isoformat()
        self._lock_conn, self._lock_scope = session, f"postgres:{system}:{db_oid}"
        return session

    def _drop_lock_session(self) -> None:
        """The session is gone or going: every lock it held is released with it."""
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                self._lock_conn.close()
        self._lock_conn = None
        self._held_locks.clear()
        self._lock_generation += 1

    def _lock_alive(self, key: int, generation: int) -> bool:
        with self._locks_mutex:
            if generation != self._lock_generation or key not in self._held_locks or self._lock_conn is None:
                return False
            try:
                self._lock_conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                self._drop_lock_session()
                return False

    def _unlock(self, key: int, generation: int) -> None:
        with self._locks_mutex:
            if generation != self._lock_generation or key not in self._held_locks:
                return
            self._held_locks.discard(key)
            if self._lock_conn is not None:
                try:
                    self._lock_conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except psycopg.Error:
                    self._drop_lock_session()

    @staticmethod
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

    def _introspect(self, conn: psycopg.Connection[Any]) -> tuple[int, str, int, int]:
        row = conn.execute(
            "SELECT s.oid, s.oid::regclass::text, d.oid FROM pg_class s, pg_database d "
            "WHERE s.oid = pg_get_serial_sequence(%s, 'id')::regclass AND d.datname = current_database()",
            (TABLE,),
        ).fetchone()
        if row is None:
            raise StoreError(f"PostgreSQL store {self.label}: table {TABLE} has no identity sequence")
        floor_row = conn.execute(f"SELECT value FROM {META} WHERE key = 'safe_horizon'").fetchone()
        key_row = conn.execute(f"SELECT value FROM {META} WHERE key = %s", (SEAL_KEY_META,)).fetchone()
        self._seal = RecordSeal(key_row[0]) if key_row else None
        return int(row[0]), str(row[1]), int(row[2]), int(floor_row[0]) if floor_row else 0

    # -- writes --------------------------------------------------------------------------------------

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        return self.append_encoded([encode_body(record) for record in records], sealed=True)

    def append_encoded(self, rows: list[tuple[int, bytes]], *, sealed: bool = False) -> int:
        """Insert already-encoded ``(timestamp_us, body)`` rows in one transaction; return the last id.
        ``sealed``: the bodies come from ``encode_body`` (one canonical map, credentials removed), so they
        are sealed as our own and the export ships them unchecked; otherwise they are foreign rows."""
        if not rows:
            return self.max_id()
        stamps = [ts for ts, _ in rows]
        bodies = [body for _, body in rows]
        seal = self.record_seal() if sealed else None
        seals = [seal.seal(body) for body in bodies] if seal is not None else [None] * len(bodies)

        def work(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(
                f"WITH added AS (INSERT INTO {TABLE} (ts_us, body, seal) SELECT * FROM "
                "unnest(%s::bigint[], %b::bytea[], %b::bytea[]) RETURNING id) SELECT max(id) FROM added",
                (stamps, bodies, seals),
            ).fetchone()
            return int(row[0]) if row else 0

        return self._run(work, retry_stale=False)

    def append_unique(self, groups: Sequence[Sequence[tuple[int, bytes, str]]]) -> list[int]:
        """Insert-or-ignore by capture_id, for the ingest server: every group's ``(timestamp_us, body,
        capture_id)`` rows in ONE transaction (a group commit), skipping rows whose capture_id is stored
        already (or came earlier in the same call). Returns how many rows of each group were new. Never
        retried here: the caller's client retries, and the unique index makes that safe. The bodies come
        from ``encode_body``: our own rows, sealed."""
        record_seal = self.record_seal()
        seal = record_seal.seal if record_seal is not None else (lambda body: None)

        def work(conn: psycopg.Connection[Any]) -> list[int]:
            added: list[int] = []
            with conn.transaction(), conn.cursor() as cur:
                for rows in groups:
                    if not rows:
                        added.append(0)
                        continue
                    # Keep the first of repeated ids in this group (ON CONFLICT cannot see its own rows).
                    seen: set[str] = set()
                    unique = []
                    for row in rows:
                        if row[2] not in seen:
                            seen.add(row[2])
                            unique.append(row)
                    cur.execute(
                        f"INSERT INTO {TABLE} (ts_us, body, seal, capture_id) "
                        "SELECT * FROM unnest(%s::bigint[], %b::bytea[], %b::bytea[], %s::text[]) "
                        "ON CONFLICT (capture_id) WHERE capture_id IS NOT NULL DO NOTHING",
                        ([r[0] for r in unique], [r[1] for r in unique], [seal(r[1]) for r in unique],
                         [r[2] for r in unique]),
                    )
                    added.append(max(cur.rowcount, 0))
            return added

        return self._run(work, retry_stale=False)

    # -- the safe horizon ----------------------------------------------------------------------------

    def _observe(self, conn: psycopg.Connection[Any]) -> tuple[int, bool]:
        # Two statements, in this order: L first, then the lock holders. Each is its own snapshot.
        last_value, is_called, cache, started = conn.execute(
            f"SELECT s.last_value, s.is_called, p.seqcache, pg_postmaster_start_time() "
            f"FROM {self._seq_name} s, pg_sequence p WHERE p.seqrelid = %s",
            (self._seq_oid,),
        ).fetchone()  # type: ignore[misc]
        if cache != 1:
            raise StoreError(
                f"PostgreSQL store {self.label}: sequence {self._seq_name} has CACHE {cache}; the safe "
                "horizon needs CACHE 1 (ALTER TABLE captures ALTER COLUMN id SET CACHE 1)"
            )
        holders = [
            vxid
            for (vxid,) in conn.execute(
                "SELECT virtualtransaction FROM pg_locks "
                "WHERE locktype = 'relation' AND database = %s AND relation = %s AND mode = 'RowExclusiveLock'",
                (self._db_oid, self._seq_oid),
            )
        ]
        self.observations += 1
        drawn = int(last_value) if is_called else int(last_value) - 1
        return self._tracker.observe(drawn, holders, time.monotonic(), started)

    def safe_horizon(self) -> int:
        def work(conn: psycopg.Connection[Any]) -> int:
            deadline = time.monotonic() + self.settle_seconds
            horizon, stale = self._observe(conn)
            pause = 0.001
            while stale and time.monotonic() + pause < deadline:
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
                horizon, stale = self._observe(conn)
            if stale:
                self._tracker.settled()
            return horizon

        with self._horizon_lock:
            horizon = self._run(work)
            self._persist_floor(horizon)
        return horizon

    def _persist_floor(self, horizon: int) -> None:
        """Remember a proven horizon so that a restarted operator need not wait for transactions that
        were already in flight when it started. Best effort: a read-only role simply does not."""
        now = time.monotonic()
        if horizon <= self._persisted or now - self._persisted_at < self.persist_every:
            return
        self._persisted_at = now

        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                f"INSERT INTO {META} (key, value) VALUES ('safe_horizon', %s) ON CONFLICT (key) DO UPDATE "
                f"SET value = EXCLUDED.value WHERE {META}.value::bigint < EXCLUDED.value::bigint",
                (str(horizon),),
            )

        with contextlib.suppress(StoreError):
            self._run(work, retry_stale=False)
            self._persisted = horizon

    def horizon_holders(self) -> dict[str, int]:
        """Writer transactions in flight at the last observation and the lowest id each may commit."""
        with self._horizon_lock:
            return self._tracker.holders()

    # -- reads ---------------------------------------------------------------------------------------

    def read_batch(self, after: int, limit: int, horizon: int | None = None) -> list[StoredRecord]:
        bound = self.safe_horizon() if horizon is None else horizon
        if bound <= after or limit <= 0:
            return []

        def work(conn: psycopg.Connection[Any]) -> list[StoredRecord]:
            with conn.cursor(binary=True) as cur:
                cur.execute(
                    f"SELECT id, ts_us, body, seal FROM {TABLE} WHERE id > %s AND id <= %s ORDER BY id LIMIT %s",
                    (after, bound, limit),
                )
                return [StoredRecord(int(i), int(ts), bytes(body), None if seal is None else bytes(seal))
                        for i, ts, body, seal in cur]

        return self._run(work)

    def record_seal(self) -> RecordSeal | None:
        return self._seal

    def backlog(self, after: int, horizon: int | None = None) -> int:
        bound = self.safe_horizon() if horizon is None else horizon
        if bound <= after:
            return 0
        return self._scalar(f"SELECT count(*) FROM {TABLE} WHERE id > %s AND id <= %s", (after, bound))

    def max_id(self) -> int:
        return self._scalar(f"SELECT COALESCE(max(id), 0) FROM {TABLE}")

    def count(self) -> int:
        """Records in the inventory: soft-deleted ones are left out (store/base.py)."""
        return self._scalar(f"SELECT count(*) FROM {TABLE} WHERE deleted_at_us IS NULL")

    def _scalar(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        def work(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(sql, params).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return self._run(work)

    @staticmethod
    def _id_chunk(after: int, conn: psycopg.Connection[Any]) -> list[tuple[int, bool]]:
        """``(id, live)`` of the next 50,000 records after ``after``."""
        return [
            (int(r[0]), bool(r[1]))
            for r in conn.execute(
                f"SELECT id, deleted_at_us IS NULL FROM {TABLE} WHERE id > %s ORDER BY id LIMIT 50000", (after,)
            )
        ]

    def ids(self) -> Iterator[int]:
        """Every live record id, in order (soft-deleted ones are left out)."""
        after = 0
        while True:
            chunk = self._run(partial(self._id_chunk, after))
            if not chunk:
                return
            yield from (record_id for record_id, live in chunk if live)
            after = chunk[-1][0]

    # -- retention: one short transaction per call (store/base.py) ----------------------------------

    def expire_chunk(
        self,
        max_id: int,
        older_than_us: int,
        limit: int,
        *,
        after: tuple[int, int] | None = None,
        mark_at_us: int | None = None,
    ) -> ExpiredChunk:
        # Candidates come from the partial index (ts_us, id) WHERE deleted_at_us IS NULL, in its order.
        keyset = "AND (ts_us, id) > (%s, %s) " if after is not None else ""
        if mark_at_us is None:
            action = f"DELETE FROM {TABLE} c USING taken t WHERE c.id = t.id"
            action_params: tuple[Any, ...] = ()
        else:
            action = f"UPDATE {TABLE} c SET deleted_at_us = %s FROM taken t WHERE c.id = t.id"
            action_params = (mark_at_us,)
        sql = (
            f"WITH taken AS (SELECT id, ts_us FROM {TABLE} WHERE deleted_at_us IS NULL AND ts_us < %s AND id <= %s "
            f"{keyset}ORDER BY ts_us, id LIMIT %s), "
            f"done AS ({action} RETURNING c.id) "
            "SELECT (SELECT count(*) FROM taken), "
            "(SELECT ARRAY[ts_us, id] FROM taken ORDER BY ts_us DESC, id DESC LIMIT 1), (SELECT count(*) FROM done)"
        )
        params: tuple[Any, ...] = (older_than_us, max_id, *(after or ()), limit, *action_params)

        def work(conn: psycopg.Connection[Any]) -> ExpiredChunk:
            taken, last, _done = conn.execute(sql, params).fetchone()  # type: ignore[misc]
            resume = (int(last[0]), int(last[1])) if taken >= limit and last else None
            return ExpiredChunk(int(taken), resume)

        # Retrying after a lost connection is harmless: what was done is no longer a candidate.
        return self._run(work)

    def purge_soft_deleted_chunk(self, deleted_before_us: int, limit: int) -> int:
        return self._rowcount(
            f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} WHERE deleted_at_us <= %s LIMIT %s)",
            (deleted_before_us, limit),
        )

    def restore_chunk(self, limit: int, *, deleted_since_us: int | None = None) -> int:
        since = -(2**63) if deleted_since_us is None else deleted_since_us
        return self._rowcount(
            f"UPDATE {TABLE} SET deleted_at_us = NULL WHERE id IN "
            f"(SELECT id FROM {TABLE} WHERE deleted_at_us IS NOT NULL AND deleted_at_us >= %s LIMIT %s)",
            (since, limit),
        )

    def _rowcount(self, sql: str, params: tuple[Any, ...]) -> int:
        def work(conn: psycopg.Connection[Any]) -> int:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return max(cur.rowcount, 0)

        return self._run(work)

    def count_expired(self, max_id: int, older_than_us: int) -> int:
        return self._scalar(
            f"SELECT count(*) FROM {TABLE} WHERE deleted_at_us IS NULL AND ts_us < %s AND id <= %s",
            (older_than_us, max_id),
        )

    def highest_assigned_id(self) -> int:
        def work(conn: psycopg.Connection[Any]) -> int:
            last_value, is_called = conn.execute(f"SELECT last_value, is_called FROM {self._seq_name}").fetchone()  # type: ignore[misc]
            return int(last_value) if is_called else 0

        return self._run(work)

    def soft_deleted_count(self, deleted_before_us: int | None = None) -> int:
        if deleted_before_us is None:
            return self._scalar(f"SELECT count(*) FROM {TABLE} WHERE deleted_at_us IS NOT NULL")
        return self._scalar(f"SELECT count(*) FROM {TABLE} WHERE deleted_at_us <= %s", (deleted_before_us,))

    # -- quarantine (store/base.py QuarantineStore): each call one statement, so one transaction --------

    def quarantine(self, record_id: int, reason: str, exporter: str, at_us: int) -> bool:
        def work(conn: psycopg.Connection[Any]) -> bool:
            return conn.execute(
                f"WITH moved AS (DELETE FROM {TABLE} WHERE id = %s RETURNING id, ts_us, body) "
                f"INSERT INTO {QUARANTINE} (id, ts_us, body, reason, exporter, quarantined_at_us) "
                "SELECT id, ts_us, body, %s, %s, %s FROM moved RETURNING id",
                (record_id, reason, exporter, at_us),
            ).fetchone() is not None

        return self._run(work, retry_stale=False)

    def quarantined(self) -> list[QuarantinedRecord]:
        return self._run(lambda conn: [QuarantinedRecord(*row) for row in conn.execute(
            f"SELECT id, ts_us, reason, exporter, quarantined_at_us, length(body) FROM {QUARANTINE} ORDER BY id")])

    def quarantined_row(self, record_id: int) -> QuarantinedRecord | None:
        def work(conn: psycopg.Connection[Any]) -> QuarantinedRecord | None:
            with conn.cursor(binary=True) as cur:
                row = cur.execute(f"SELECT id, ts_us, reason, exporter, quarantined_at_us, length(body), body "
                                  f"FROM {QUARANTINE} WHERE id = %s", (record_id,)).fetchone()
            if row is None:
                return None
            moved_id, timestamp_us, reason, exporter, quarantined_at_us, size, body = row
            return QuarantinedRecord(moved_id, timestamp_us, reason, exporter, quarantined_at_us, size,
                                     bytes(body) if body is not None else None)

        return self._run(work)

    def release(self, record_id: int, body: bytes) -> int:
        seal = self.record_seal()
        mark = seal.seal(body) if seal is not None else None

        def work(conn: psycopg.Connection[Any]) -> int | None:
            row = conn.execute(
                f"WITH gone AS (DELETE FROM {QUARANTINE} WHERE id = %s RETURNING ts_us) "
                f"INSERT INTO {TABLE} (ts_us, body, seal) SELECT ts_us, %b, %b FROM gone RETURNING id",
                (record_id, body, mark),
            ).fetchone()
            return None if row is None else int(row[0])

        new_id = self._run(work, retry_stale=False)
        if new_id is None:
            raise StoreError(f"record {record_id} is not in the quarantine of {self.label}")
        return new_id

    def close(self) -> None:
        with self._locks_mutex:
            self._drop_lock_session()
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


class _AdvisoryLock:
    """One exporter's advisory lock, held on its store's lock session: that session is its life."""

    def __init__(self, store: PostgresStore, key: int, generation: int, scope: str) -> None:
        self._store = store
        self._key = key
        self._generation = generation
        self.scope = scope

    def alive(self) -> bool:
        return self._store._lock_alive(self._key, self._generation)

    def release(self) -> None:
        self._store._unlock(self._key, self._generation)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__

