"""The columns of a row another writer stored, as the export can use them.

SQLite keeps whatever storage class a writer puts into a column (type affinity, not enforcement): a
careless gateway's ``ts_us`` may be TEXT or a BLOB, its ``body`` an INTEGER. Each reader hands the export
such a row as one that cannot pass the check (``UnreadableRow``: an empty body carrying the reason, which
names the column), so that the export holds or quarantines it like any corrupt record instead of failing
on its type wherever the value is first used (the folder a batch goes to, the memory budget, the check).
A ``ts_us`` outside the years 1-9999 is treated so too: no dated folder can name it, and no record's
``timestamp`` can match it.

A soft-delete mark (``deleted_at_us``, ``purge_after_us``) written by hand may be TEXT or a BLOB too
(``SET deleted_at_us = CURRENT_TIMESTAMP``): TEXT sorts after every number in SQLite, so the purge's
comparisons never match it. ``mark_micros`` reads such a mark as the time it names, for the SQLite store to
write it back as a number (store/sqlite/store.py, ``_settle_marks``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from .base import StoredRecord

__all__ = ["MAX_TIMESTAMP_US", "MIN_TIMESTAMP_US", "UnreadableRow", "mark_micros", "plain", "readable_rows"]

MIN_TIMESTAMP_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_US = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z, excluded

_SQL_TYPES = {str: "TEXT", bytes: "BLOB", float: "REAL", int: "INTEGER", type(None): "NULL"}


class UnreadableRow(bytes):
    """The body the export sees for a row whose ``ts_us`` or ``body`` it cannot use: empty (so that sizes
    and joins of a batch's bodies still work), with the reason the check reports (store/check.py)."""

    reason: str

    def __new__(cls, reason: str = "") -> UnreadableRow:
        row = super().__new__(cls)
        row.reason = reason
        return row


def _sql_type(value: Any) -> str:
    return _SQL_TYPES.get(type(value), type(value).__name__)


def _problem(timestamp_us: Any, body: Any) -> str | None:
    if type(timestamp_us) is not int:
        return f"its ts_us is stored as {_sql_type(timestamp_us)}, not as an INTEGER of microseconds since the epoch"
    elif not MIN_TIMESTAMP_US <= timestamp_us < MAX_TIMESTAMP_US:
        return f"its ts_us ({timestamp_us}) is outside the years 1-9999 (microseconds since the epoch, UTC)"
    if not isinstance(body, bytes | str):  # TEXT is the check's own case (store/check.py)
        return f"its body is stored as {_sql_type(body)}, not as a BLOB of CBOR"
    return None


def readable_rows(rows: Sequence[tuple[Any, Any, Any, Any]]) -> list[StoredRecord]:
    """``(id, ts_us, body, seal)`` rows as StoredRecords, each unusable one as an ``UnreadableRow`` (its
    ``ts_us`` 0, unsealed). The caller has already found that some row is not plain (an INTEGER ``ts_us``
    in range and a BLOB ``body``): this is the slow path. A finite REAL ``ts_us`` in range is rounded to
    an integer."""
    records = []
    for record_id, timestamp_us, body, seal in rows:
        if type(timestamp_us) is float and MIN_TIMESTAMP_US <= timestamp_us < MAX_TIMESTAMP_US:
            # A finite REAL in range is used as the nearest integer (within the check's 1 ms tolerance of
            # the body's timestamp, or not), so that the batch's timestamps stay integers.
            timestamp_us = round(timestamp_us)
        problem = _problem(timestamp_us, body)
        records.append(StoredRecord(record_id, timestamp_us, body, seal) if problem is None
                       else StoredRecord(record_id, 0, UnreadableRow(problem), None))
    return records


def plain(rows: Sequence[tuple[Any, Any, Any, Any]]) -> bool:
    """Whether every row has an INTEGER ``ts_us`` in the years 1-9999 and a BLOB ``body``: the readers'
    fast path (a type check on values in hand)."""
    low, high = MIN_TIMESTAMP_US, MAX_TIMESTAMP_US
    return all(type(ts) is int and low <= ts < high and type(body) is bytes for _, ts, body, _ in rows)


_DIGITS = re.compile(r"[+-]?[0-9]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def mark_micros(value: Any) -> int | None:
    """The microseconds since the epoch a soft-delete mark stands for, or None when it names no time: an
    integer as it is; a text of digits (spaces around it allowed) as that integer, the column's unit; a text
    date/time in ISO 8601 or as SQLite writes one (``CURRENT_TIMESTAMP``, ``datetime('now')``: UTC unless it
    gives an offset) as that time; anything else (other text, a BLOB, a time outside the years 1-9999) None."""
    if type(value) is int:
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _DIGITS.fullmatch(text):
        micros = int(text)
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
        aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        micros = (aware - _EPOCH) // _MICROSECOND
    return micros if MIN_TIMESTAMP_US <= micros < MAX_TIMESTAMP_US else None
