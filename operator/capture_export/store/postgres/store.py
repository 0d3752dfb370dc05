"""`PostgresStore`: the capture store protocol (store/base.py) over PostgreSQL; reads stop at the safe
horizon (horizon.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import psycopg

from ..base import ExpiredChunk, QuarantinedRecord, StoredRecord, StoreError
from ..columns import plain, readable_rows
from ..records import encode_body, refuse_own_ids
from ..seal import RecordSeal
from .connections import ConnectionPool, safe_label
from .horizon import SafeHorizon
from .locks import AdvisoryLock, ExporterLocks
from .schema import QUARANTINE, TABLE, introspect, migrate

__all__ = ["PostgresStore"]


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
        self.label = safe_label(dsn)
        self._pool = ConnectionPool(dsn, self.label, max_idle=max_idle, **connect_options)
        self._run = self._pool.run
        self._locks = ExporterLocks(self._pool)
        self._store_id = self._run(lambda conn: migrate(conn, self.label, create=create), retry_stale=False)
        layout = self._run(lambda conn: introspect(conn, self.label))
        self._seq_oid, self._seq_name, self._db_oid = layout.seq_oid, layout.seq_name, layout.db_oid
        self._seal: RecordSeal | None = layout.seal
        self._horizon = SafeHorizon(self._pool, layout, settle_seconds=settle_seconds, persist_every=persist_every)

    def __repr__(self) -> str:
        return f"PostgresStore({self.label!r})"

    def identity(self) -> str:
        return self._store_id

    def lock_exporter(self, exporter: str) -> AdvisoryLock | None:
        """A session-level advisory lock keyed by store and exporter, on one session this store keeps for
        all its exporters' locks (200 exporters are 200 locks, not 200 connections); it ends with the
        session (the process dies, the server restarts). One holder per exporter in this process too."""
        return self._locks.take(self._store_id, exporter)

    # -- writes --------------------------------------------------------------------------------------

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        return self._insert([encode_body(record) for record in records], sealed=True)

    def append_encoded(self, rows: list[tuple[int, bytes]], *, sealed: bool = False) -> int:
        """Insert already-encoded ``(timestamp_us, body)`` rows in one transaction; return the last id.
        ``sealed``: the bodies come from ``encode_body`` (one canonical map, credentials removed, no ``id``),
        so they are sealed as our own and the export ships them unchecked (a body holding ``id`` is refused:
        ValueError, nothing written); otherwise they are foreign rows."""
        if sealed:
            refuse_own_ids(rows)
        return self._insert(rows, sealed=sealed)

    def _insert(self, rows: list[tuple[int, bytes]], *, sealed: bool) -> int:
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

    # -- the safe horizon (horizon.py) ----------------------------------------------------------------

    def safe_horizon(self) -> int:
        return self._horizon.current()

    def horizon_holders(self) -> dict[str, int]:
        """Writer transactions in flight at the last observation and the lowest id each may commit."""
        return self._horizon.holders()

    @property
    def observations(self) -> int:
        """Horizon observations made so far (each two small statements)."""
        return self._horizon.observations

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
                rows = [StoredRecord(int(i), int(ts), bytes(body), None if seal is None else bytes(seal))
                        for i, ts, body, seal in cur]
                return rows if plain(rows) else readable_rows(rows)  # a ts_us outside years 1-9999

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
        purge_after_us: int | None = None,
    ) -> ExpiredChunk:
        # Candidates come from the partial index (ts_us, id) WHERE deleted_at_us IS NULL, in its order.
        keyset = "AND (ts_us, id) > (%s, %s) " if after is not None else ""
        if mark_at_us is None:
            action = f"DELETE FROM {TABLE} c USING taken t WHERE c.id = t.id"
            action_params: tuple[Any, ...] = ()
        else:
            action = f"UPDATE {TABLE} c SET deleted_at_us = %s, purge_after_us = %s FROM taken t WHERE c.id = t.id"
            action_params = (mark_at_us, purge_after_us)
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

    @staticmethod
    def _due(now_us: int, max_id: int | None,
             undated_marked_before_us: int | None) -> list[tuple[str, tuple[Any, ...]]]:
        """The soft-deleted records whose grace period is over, as ``SELECT id …`` parts, each a range of
        captures_hidden: those whose recorded end has passed, then (marks from before it was recorded)
        those marked at or before ``undated_marked_before_us``. Two parts, not one ``OR``: the planner
        answers that with a sequential scan."""
        bound = 2**63 - 1 if max_id is None else max_id
        parts: list[tuple[str, tuple[Any, ...]]] = [(
            f"SELECT id FROM {TABLE} WHERE purge_after_us <= %s AND deleted_at_us IS NOT NULL AND id <= %s",
            (now_us, bound))]
        if undated_marked_before_us is not None:
            parts.append((f"SELECT id FROM {TABLE} WHERE purge_after_us IS NULL AND deleted_at_us <= %s "
                          "AND deleted_at_us IS NOT NULL AND id <= %s", (undated_marked_before_us, bound)))
        return parts

    def purge_soft_deleted_chunk(self, now_us: int, limit: int, *, max_id: int | None = None,
                                 undated_marked_before_us: int | None = None) -> int:
        parts = self._due(now_us, max_id, undated_marked_before_us)
        # Each part limited on its own, the whole again: the second is read only if the first falls short.
        due = " UNION ALL ".join(f"({select} LIMIT %s)" for select, _ in parts)
        params = tuple(value for _, part_params in parts for value in (*part_params, limit))
        return self._rowcount(f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM ({due}) AS due LIMIT %s)",
                              (*params, limit))

    def soft_deleted_due_count(self, now_us: int, *, max_id: int | None = None,
                               undated_marked_before_us: int | None = None) -> int:
        parts = self._due(now_us, max_id, undated_marked_before_us)
        counts = " + ".join(f"(SELECT count(*) FROM ({select}) AS part)" for select, _ in parts)
        return self._scalar(f"SELECT {counts}", tuple(value for _, part_params in parts for value in part_params))

    def restore_chunk(self, limit: int, *, deleted_since_us: int | None = None) -> int:
        since = -(2**63) if deleted_since_us is None else deleted_since_us
        return self._rowcount(
            f"UPDATE {TABLE} SET deleted_at_us = NULL, purge_after_us = NULL WHERE id IN "
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

    def soft_deleted_count(self, deleted_before_us: int | None = None, *, max_id: int | None = None) -> int:
        params: tuple[int, ...] = ()
        if deleted_before_us is None:
            sql = f"SELECT count(*) FROM {TABLE} WHERE deleted_at_us IS NOT NULL"
        else:
            sql, params = f"SELECT count(*) FROM {TABLE} WHERE deleted_at_us <= %s", (deleted_before_us,)
        if max_id is not None:
            sql, params = sql + " AND id <= %s", (*params, max_id)
        return self._scalar(sql, params)

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

    def release(self, record_id: int, body: bytes, timestamp_us: int) -> int:
        seal = self.record_seal()
        mark = seal.seal(body) if seal is not None else None

        def work(conn: psycopg.Connection[Any]) -> int | None:
            row = conn.execute(
                f"WITH gone AS (DELETE FROM {QUARANTINE} WHERE id = %s RETURNING id) "
                f"INSERT INTO {TABLE} (ts_us, body, seal) SELECT %s, %b, %b FROM gone RETURNING id",
                (record_id, timestamp_us, body, mark),
            ).fetchone()
            return None if row is None else int(row[0])

        new_id = self._run(work, retry_stale=False)
        if new_id is None:
            raise StoreError(f"record {record_id} is not in the quarantine of {self.label}")
        return new_id

    def close(self) -> None:
        self._locks.close()
        self._pool.close()
