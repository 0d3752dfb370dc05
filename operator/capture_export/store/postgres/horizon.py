"""The safe horizon of a PostgreSQL store: the id below which no record can still appear.

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
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from ..base import StoreError
from .connections import ConnectionPool
from .schema import META, StoreLayout

__all__ = ["HorizonTracker", "SafeHorizon"]


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


class SafeHorizon:
    """Observes one store's sequence and its writers, and keeps the proven horizon (persisted at most
    every ``persist_every`` seconds). Thread-safe."""

    def __init__(self, pool: ConnectionPool, layout: StoreLayout, *, settle_seconds: float,
                 persist_every: float) -> None:
        self._pool = pool
        self._seq_oid, self._seq_name, self._db_oid = layout.seq_oid, layout.seq_name, layout.db_oid
        self.settle_seconds = settle_seconds
        self.persist_every = persist_every
        self._lock = threading.Lock()
        self._tracker = HorizonTracker(layout.floor)
        self._persisted = layout.floor
        self._persisted_at = 0.0
        self.observations = 0

    def _observe(self, conn: psycopg.Connection[Any]) -> tuple[int, bool]:
        # Two statements, in this order: L first, then the lock holders. Each is its own snapshot.
        last_value, is_called, cache, started = conn.execute(
            f"SELECT s.last_value, s.is_called, p.seqcache, pg_postmaster_start_time() "
            f"FROM {self._seq_name} s, pg_sequence p WHERE p.seqrelid = %s",
            (self._seq_oid,),
        ).fetchone()  # type: ignore[misc]
        if cache != 1:
            raise StoreError(
                f"PostgreSQL store {self._pool.label}: sequence {self._seq_name} has CACHE {cache}; the safe "
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

    def current(self) -> int:
        """Observe until the horizon is precise (or ``settle_seconds`` have passed) and return it."""

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

        with self._lock:
            horizon = self._pool.run(work)
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
            self._pool.run(work, retry_stale=False)
            self._persisted = horizon

    def holders(self) -> dict[str, int]:
        """Writer transactions in flight at the last observation and the lowest id each may commit."""
        with self._lock:
            return self._tracker.holders()
