"""The retention contract every capture store keeps (SQLite and PostgreSQL alike): chunked expiry at or
below the export bound in (timestamp, id) keyset order, soft deletion with a grace period and restore, and
ids never reused after a purge. Each check takes a fresh, empty store; the store tests parametrise over
``RETENTION_CONTRACT``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from capture_export.store.base import ExpiredChunk
from tests.support.retention import body_at

__all__ = ["HOUR", "RETENTION_CONTRACT", "filled"]

HOUR = 3_600_000_000
if TYPE_CHECKING:
    from capture_export.store import SQLiteStore
    from capture_export.store.postgres import PostgresStore

    RetentionStore = SQLiteStore | PostgresStore


def filled(store: RetentionStore, stamps: list[int]) -> list[int]:
    last = store.append_encoded([(ts, body_at(ts)) for ts in stamps])
    return list(range(last - len(stamps) + 1, last + 1))


def expire_takes_old_records_at_or_below_the_bound_in_chunks(store: RetentionStore) -> None:
    filled(store, [1 * HOUR, 9 * HOUR, 2 * HOUR, 3 * HOUR, 8 * HOUR, 1 * HOUR, 4 * HOUR])  # ids 1..7
    # Old: ts < 5h -> ids 1, 3, 4, 6, 7; at or below bound 6 -> 1, 3, 4, 6.
    assert store.count_expired(6, 5 * HOUR) == 4
    first = store.expire_chunk(6, 5 * HOUR, 3)
    assert first == ExpiredChunk(3, (2 * HOUR, 3))  # (ts, id) order: 1@1h, 6@1h, 3@2h
    second = store.expire_chunk(6, 5 * HOUR, 3, after=first.resume_after)
    assert second == ExpiredChunk(1, None)
    assert list(store.ids()) == [2, 5, 7]
    assert store.expire_chunk(6, 5 * HOUR, 3) == ExpiredChunk(0, None)


def expire_keyset_skips_what_earlier_chunks_passed(store: RetentionStore) -> None:
    filled(store, [HOUR] * 4)
    # The keyset is honoured: nothing at or before (HOUR, 2) is taken.
    chunk = store.expire_chunk(10, 2 * HOUR, 10, after=(HOUR, 2))
    assert chunk == ExpiredChunk(2, None)
    assert list(store.ids()) == [1, 2]


def strictly_older_and_exact_limit(store: RetentionStore) -> None:
    filled(store, [HOUR, 2 * HOUR])
    assert store.count_expired(10, 2 * HOUR) == 1  # ts == cutoff is not older
    assert store.expire_chunk(10, 3 * HOUR, 2) == ExpiredChunk(2, (2 * HOUR, 2))  # full chunk: maybe more


def purge_soft_deleted_when_their_own_grace_is_over_and_restore(store: RetentionStore) -> None:
    filled(store, [HOUR] * 5)
    store.expire_chunk(2, 5 * HOUR, 10, mark_at_us=100, purge_after_us=1000)  # ids 1, 2: a long grace period
    store.expire_chunk(10, 5 * HOUR, 10, mark_at_us=200, purge_after_us=300)  # ids 3..5: a short one, over first
    assert store.soft_deleted_due_count(299) == 0 and store.purge_soft_deleted_chunk(299, 10) == 0
    assert store.soft_deleted_due_count(300) == 3
    assert store.purge_soft_deleted_chunk(300, 2) == 2
    # Another caller's own (shorter) grace period only judges marks without a recorded end: none here.
    assert store.purge_soft_deleted_chunk(999, 10, undated_marked_before_us=999) == 1
    assert store.soft_deleted_count() == 2 and list(store.ids()) == []
    assert store.restore_chunk(10, deleted_since_us=101) == 0
    assert store.restore_chunk(1, deleted_since_us=100) == 1
    assert store.restore_chunk(10) == 1
    assert list(store.ids()) == [1, 2] and store.soft_deleted_count() == 0
    # A restore forgets the old end: hidden again without one, they are not due at 1000.
    store.expire_chunk(10, 5 * HOUR, 10, mark_at_us=500)
    assert store.purge_soft_deleted_chunk(2000, 10) == 0 and store.soft_deleted_count() == 2


def marks_without_a_recorded_end_follow_the_callers_grace(store: RetentionStore) -> None:
    """Marks from before the schema recorded the end of a grace period, beside marks that have one."""
    filled(store, [HOUR] * 5)
    store.expire_chunk(2, 5 * HOUR, 10, mark_at_us=100)  # ids 1, 2: no recorded end
    store.expire_chunk(10, 5 * HOUR, 10, mark_at_us=200, purge_after_us=300)  # ids 3..5
    assert store.soft_deleted_due_count(10**9) == 3  # without a caller's grace, undated marks never go
    assert store.soft_deleted_due_count(300, undated_marked_before_us=99) == 3
    assert store.soft_deleted_due_count(300, undated_marked_before_us=100) == 5
    assert store.purge_soft_deleted_chunk(300, 4, undated_marked_before_us=100) == 4  # one chunk over both kinds
    assert store.purge_soft_deleted_chunk(300, 4, undated_marked_before_us=100) == 1
    assert store.soft_deleted_count() == 0 and store.max_id() == 0


def purge_soft_deleted_never_above_the_bound(store: RetentionStore) -> None:
    filled(store, [HOUR] * 5)
    store.expire_chunk(10, 5 * HOUR, 10, mark_at_us=100, purge_after_us=150)  # ids 1..5 marked at 100
    assert store.soft_deleted_due_count(200, max_id=0) == 0 and store.soft_deleted_due_count(200, max_id=3) == 3
    assert store.soft_deleted_count(200, max_id=3) == 3
    assert store.purge_soft_deleted_chunk(200, 10, max_id=0) == 0  # the gate closed since they were marked
    assert store.purge_soft_deleted_chunk(200, 10, max_id=3) == 3
    assert store.soft_deleted_count() == 2 and store.restore_chunk(10) == 2
    assert list(store.ids()) == [4, 5]


def never_above_the_bound_whatever_the_age(store: RetentionStore) -> None:
    filled(store, [HOUR] * 5)
    assert store.expire_chunk(0, 100 * HOUR, 100) == ExpiredChunk(0, None)
    assert store.expire_chunk(3, 100 * HOUR, 100).count == 3
    assert list(store.ids()) == [4, 5]


def highest_assigned_id_survives_deletes(store: RetentionStore) -> None:
    filled(store, [HOUR] * 3)
    store.expire_chunk(3, 2 * HOUR, 10)
    assert store.max_id() == 0 and store.highest_assigned_id() == 3
    assert filled(store, [HOUR]) == [4]


RETENTION_CONTRACT: list[Callable[[RetentionStore], None]] = [
    expire_takes_old_records_at_or_below_the_bound_in_chunks,
    expire_keyset_skips_what_earlier_chunks_passed,
    strictly_older_and_exact_limit,
    purge_soft_deleted_when_their_own_grace_is_over_and_restore,
    marks_without_a_recorded_end_follow_the_callers_grace,
    purge_soft_deleted_never_above_the_bound,
    never_above_the_bound_whatever_the_age,
    highest_assigned_id_survives_deletes,
]
