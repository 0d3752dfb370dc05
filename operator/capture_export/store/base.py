"""The capture-store protocols: what the export and audit read (``RecordReader``), what retention needs
(``RetentionStore``), where malformed rows are moved aside (``QuarantineStore``), ``CaptureStore``, a
store that is all three, and what the ingest server writes through (``IngestStore``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .seal import RecordSeal

__all__ = ["RETENTION_METHODS", "CaptureStore", "ExpiredChunk", "IngestStore", "QuarantineStore",
           "QuarantinedRecord", "RecordReader", "RetentionStore", "StoreError", "StoreLock", "StoreNotFound",
           "StoredRecord", "new_store_id"]


class StoreError(RuntimeError):
    """The store could not be read or written (unreachable, locked, schema problem)."""


class StoreNotFound(StoreError):
    """There is no capture store where one was named (a SQLite file that does not exist or is a directory,
    a PostgreSQL database without the capture tables), and this caller may not create one: only ``seed``, the demo,
    ``capture-export store init``, the ingest server and the operator's own default store at start-up
    create stores; an exporter or a policy with a typo in its store never does."""


def new_store_id() -> str:
    """A fresh store identity (README: "What exactly-once assumes")."""
    return str(uuid.uuid4())


class StoreLock(Protocol):
    """An exclusive lock that dies with the process holding it (export/ownership.py, layer a)."""

    @property
    def scope(self) -> str:
        """What the lock covers (which server or file): two locks with the same scope exclude each other."""
        ...

    def alive(self) -> bool:
        """Still held (a PostgreSQL session may have ended under it)."""
        ...

    def release(self) -> None: ...


class StoredRecord(NamedTuple):
    id: int
    timestamp_us: int
    body: bytes  # CBOR map without ``id``; see records.with_id (a foreign row may hold anything, even TEXT)
    # The seal our own append stored beside the body (store/seal.py), None for other writers' rows. Only
    # a seal that matches the body under the store's key (``RecordReader.record_seal``) makes a row
    # trusted; anything else is checked in full at export (store/check.py).
    seal: bytes | None = None


class QuarantinedRecord(NamedTuple):
    """A row moved aside into the store's quarantine (``captures_quarantine``)."""

    id: int  # its id in ``captures`` before it was moved
    timestamp_us: int
    reason: str  # why it failed the check (never its bytes)
    exporter: str | None  # ``namespace/name`` of the exporter that moved it
    quarantined_at_us: int
    size: int  # bytes (or characters, for a TEXT row)
    body: bytes | str | None = None  # only from ``quarantined_row``


@dataclass(frozen=True)
class ExpiredChunk:
    """What one ``expire_chunk`` transaction did."""

    count: int  # records deleted (or soft-deleted) by this transaction
    # ``(ts_us, id)`` of the last record this chunk took, to pass as ``after`` to the next call; None when
    # fewer than ``limit`` records qualified, i.e. nothing is left to expire below the bound.
    resume_after: tuple[int, int] | None


class RecordReader(Protocol):
    """What exporting and auditing read from a capture store. Ids grow with insertion; reads are keyset
    reads below a safe horizon.

    Soft deletion (schema version 2; used by RetentionPolicy ``softDelete``): a record may carry a
    soft-delete mark, ``deleted_at_us`` (microseconds since the epoch, UTC; NULL when not deleted).
    A soft-deleted record is *hidden from the store's inventory*: ``count`` and ``ids`` leave it out (so
    ``verify`` counts it as purged), and stores offer a view of the live records for other readers
    (SQLite: ``captures_live``). It is NOT hidden from the export stream: ``read_batch`` and ``backlog``
    still return and count it, exactly as before. That is what keeps the retention gate safe: a committed
    cursor must mean "every record at or below it that exists is in this exporter's bucket". If exports
    skipped hidden records, an exporter created (or reset) during the grace period would pass over them,
    and after a restore they would sit below its cursor without being in its bucket, and the next purge
    would remove records that exporter never exported. ``max_id`` and ``safe_horizon`` count soft-deleted
    records too. A record stays restorable (``restore_chunk``) until ``purge_soft_deleted_chunk`` removes
    it. Since SQLite schema version 6 (PostgreSQL 5) the mark carries the end of the record's own grace
    period, ``purge_after_us``, set by the policy that hid it: another policy on the same store with a
    shorter grace period then cannot remove it early. Records marked before that have none (NULL).
    """

    def safe_horizon(self) -> int:
        """Highest id such that every id at or below it is committed and visible: no lower id can
        appear later. Readers never go past it."""
        ...

    def read_batch(self, after: int, limit: int, horizon: int | None = None) -> list[StoredRecord]:
        """Up to ``limit`` records with ``after < id <= horizon``, in id order."""
        ...

    def backlog(self, after: int, horizon: int | None = None) -> int:
        """How many records lie past ``after`` (up to the horizon)."""
        ...

    def max_id(self) -> int: ...

    def count(self) -> int: ...

    def ids(self) -> Iterable[int]:
        """Every record id, in order (for audits)."""
        ...

    def record_seal(self) -> RecordSeal | None:
        """Checks the seals of rows our own append wrote (None: no row of this store is trusted, every
        row is checked in full)."""
        ...

    def highest_assigned_id(self) -> int:
        """The highest id this store has ever assigned (0 if none), which deletes never lower (unlike
        ``max_id``, the highest id present). SQLite: ``sqlite_sequence``; PostgreSQL: the identity
        sequence's ``last_value`` (0 when ``is_called`` is false). A cursor above it is refused by the
        export (``CursorAheadOfStore``) and closes the retention gate."""
        ...

    def identity(self) -> str:
        """The store's identity (a UUID in its ``capture_export_meta`` table, made when the store was
        created, or on the first open of a store from before identities existed). A copy of the store (a
        restored backup) keeps it; a recreated store has another one. Checkpoints record it, so an
        exporter never resumes against a different store."""
        ...

    def lock_exporter(self, exporter: str) -> StoreLock | None:
        """Take this process's exclusive lock for exporting ``exporter`` ("namespace/name") from this store,
        without waiting; None when another process holds it."""
        ...

    def close(self) -> None: ...


class QuarantineStore(Protocol):
    """Where rows that fail the check go with ``onCorruptRecord: Quarantine``: a table beside ``captures``
    (``captures_quarantine``) that retention never touches. Moving a row is one transaction (copy, then
    delete from ``captures``), so a row is always in exactly one of the two tables; the export stream
    then simply no longer has it (the keyset and the safe horizon are unaffected: ids are never reused).
    """

    def quarantine(self, record_id: int, reason: str, exporter: str, at_us: int) -> bool:
        """Move one row aside; False when it is no longer in ``captures`` (another exporter moved it)."""
        ...

    def quarantined(self) -> list[QuarantinedRecord]:
        """Every quarantined row (without its body), by id."""
        ...

    def quarantined_row(self, record_id: int) -> QuarantinedRecord | None:
        """One quarantined row with its body."""
        ...

    def release(self, record_id: int, body: bytes, timestamp_us: int) -> int:
        """Put a quarantined row back as a new record (a new id, past every cursor, so it is exported) with
        ``body``, which the caller has checked (store/check.py) and which is sealed as our own, and
        ``timestamp_us`` (its body's timestamp) as its ``ts_us``; one transaction. Returns the new id;
        raises StoreError when no such row is quarantined."""
        ...


class RetentionStore(Protocol):
    """What the retention gate and purge need from a capture store (schema version 2).

    Each method below runs ONE short write transaction and returns, so the caller (the purge loop in
    retention/purge.py) decides how many to run, pauses between them so that the gateway's writers get
    the table, and can stop at any chunk boundary. Each is safe to retry after a failure. Timestamps are
    always passed in by the caller (its injected clock), never read from the server. Suggested indexes
    (what sqlite/schema.py does): one on ``(deleted_at_us, ts_us)`` (SQLite's index also carries the rowid
    ``id``), which serves every query below; PostgreSQL: a partial index ``(ts_us, id) WHERE
    deleted_at_us IS NULL`` and a partial index ``(deleted_at_us) WHERE deleted_at_us IS NOT NULL``. The
    ``deleted_at_us`` column must be nullable with no default, so the gateway's ``INSERT INTO captures
    (ts_us, body)`` is unaffected.
    """

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
        """One transaction of the purge. Candidates are the *visible* (not soft-deleted) records with
        ``id <= max_id`` and ``ts_us < older_than_us`` (strictly older), taken in ``(ts_us, id)`` order,
        strictly after the keyset position ``after`` when given (``(ts_us, id) > after``).

        Take the first ``limit`` candidates and, in the same transaction, either delete them for good
        (``mark_at_us`` None) or soft-delete them (set ``deleted_at_us = mark_at_us``, which hides them,
        and ``purge_after_us``, when their grace period ends).
        Return how many were taken and the ``(ts_us, id)`` of the last one taken as ``resume_after``;
        ``resume_after`` is None when fewer than ``limit`` were taken (no candidate remains).

        ``max_id`` is the retention gate's bound: nothing above it may be touched, whatever its age.
        The keyset lets a chunk skip candidates a previous chunk passed over, so a run costs O(old
        records), not O(records) per chunk. Records that became candidates behind the keyset during a
        run (inserted with an old timestamp) are taken by the next run.
        """
        ...

    def purge_soft_deleted_chunk(self, now_us: int, limit: int, *, max_id: int | None = None,
                                 undated_marked_before_us: int | None = None) -> int:
        """One transaction: delete for good up to ``limit`` soft-deleted records whose grace period is over
        and, when given, whose id is at most ``max_id`` (the retention gate's bound now), in any order. A
        record's grace period is over when its ``purge_after_us <= now_us``; for a record marked without
        one (before the schema recorded it), when ``deleted_at_us <= undated_marked_before_us`` (the
        caller's own grace period decides; never when None). Return how many were deleted; fewer than
        ``limit`` means none is left. Visible records are never touched."""
        ...

    def restore_chunk(self, limit: int, *, deleted_since_us: int | None = None) -> int:
        """One transaction: clear the soft-delete mark (and its ``purge_after_us``) of up to ``limit``
        soft-deleted records (only those with ``deleted_at_us >= deleted_since_us`` when given), making
        them visible again. Return how many were restored; fewer than ``limit`` means none is left to
        restore."""
        ...

    def count_expired(self, max_id: int, older_than_us: int) -> int:
        """How many records ``expire_chunk(max_id, older_than_us, ...)`` would take in a whole run
        (visible, ``id <= max_id``, ``ts_us < older_than_us``). Read-only (dry runs, status)."""
        ...

    def soft_deleted_count(self, deleted_before_us: int | None = None, *, max_id: int | None = None) -> int:
        """How many records are soft-deleted (only those with ``deleted_at_us <= deleted_before_us`` and
        ``id <= max_id`` when given). Read-only."""
        ...

    def soft_deleted_due_count(self, now_us: int, *, max_id: int | None = None,
                               undated_marked_before_us: int | None = None) -> int:
        """How many records ``purge_soft_deleted_chunk`` with the same arguments would take in a whole run.
        Read-only (dry runs, progress)."""
        ...


class CaptureStore(RecordReader, RetentionStore, QuarantineStore, Protocol):
    """A whole capture store: read by the export and the audit, purged by retention, appended to by
    ``seed`` and the tests (the gateway writes with its own ``INSERT``)."""

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Insert records (credentials stripped); return the last id assigned."""
        ...

    def append_encoded(self, rows: list[tuple[int, bytes]], *, sealed: bool = False) -> int:
        """Insert already-encoded ``(timestamp_us, body)`` rows in one transaction; return the last id.
        ``sealed``: the bodies came from ``encode_body`` (credentials stripped, no ``id``) and are sealed as our
        own; a body holding a top-level ``id`` is refused (ValueError, nothing written: store/records.py
        ``refuse_own_ids``)."""
        ...


@runtime_checkable
class IngestStore(Protocol):
    """What the ingest server writes through: insert-or-ignore by capture_id (a unique index), every group
    of ``(timestamp_us, CBOR body from encode_body, capture_id)`` rows in ONE transaction (a group commit
    of several requests), returning how many rows of each group were new. The rows are the store's own
    (credentials stripped by ``encode_body``), so they are sealed (store/seal.py); rows written any other
    way carry no capture_id."""

    def append_unique(self, groups: Sequence[Sequence[tuple[int, bytes, str]]]) -> list[int]: ...

    def close(self) -> None: ...


# The methods a store needs for retention (a store lacking any is refused by the retention cycle).
RETENTION_METHODS = tuple(name for name, value in vars(RetentionStore).items()
                          if callable(value) and not name.startswith("_"))
