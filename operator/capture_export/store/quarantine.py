"""``capture-export quarantine list|show|release``: the rows ``onCorruptRecord: Quarantine`` moved aside.

A quarantined row sits in the store's ``captures_quarantine`` table (store/base.py ``QuarantineStore``),
out of every export's way and out of retention's reach, until an operator looks at it and puts it back:

* ``list``: id, when, which exporter, size and why, one line each;
* ``show ID``: the same, and an outline of the row (store/check.py ``outline``): its structure as far as
  it parses, with credentials, byte strings and the bytes that do not parse left out;
* ``release ID [--body FILE]``: the row (or the corrected record in FILE, one CBOR map without ``id``)
  goes back into ``captures`` as a new record, with a new id past every exporter's cursor, so that it is
  exported like any other. It must pass the full check first: releasing a row unchanged only works
  once the check accepts it (after an upgrade that fixed the check, say).
"""

from __future__ import annotations

from datetime import UTC, datetime

from .base import QuarantinedRecord, QuarantineStore, StoreError
from .check import check_foreign_record, outline
from .record_types import timestamp_micros

__all__ = ["list_lines", "release", "show_lines"]


def _when(micros: object) -> str:
    """The time, or the stored value as it is when it is none (a foreign writer's TEXT or far-off ts_us)."""
    try:
        return datetime.fromtimestamp(micros / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[operator]
    except (TypeError, ValueError, OverflowError, OSError):
        return f"{micros!r} (not a time)"


def list_lines(store: QuarantineStore) -> list[str]:
    rows = store.quarantined()
    if not rows:
        return ["no records in quarantine"]
    width = max(len(str(row.id)) for row in rows)
    lines = [f"{'ID':>{width}}  QUARANTINED (UTC)    EXPORTER              BYTES  REASON"]
    for row in rows:
        lines.append(f"{row.id:>{width}}  {_when(row.quarantined_at_us)}  {row.exporter or '-':<20}  "
                     f"{row.size or 0:>6}  {row.reason}")
    lines.append(f"records in quarantine: {len(rows)}")
    return lines


def _row(store: QuarantineStore, record_id: int) -> QuarantinedRecord:
    row = store.quarantined_row(record_id)
    if row is None:
        raise StoreError(f"record {record_id} is not in the quarantine")
    return row


def show_lines(store: QuarantineStore, record_id: int) -> list[str]:
    row = _row(store, record_id)
    lines = [
        f"record {row.id}: quarantined {_when(row.quarantined_at_us)} UTC by {row.exporter or '-'}",
        f"reason: {row.reason}",
        f"record time (ts_us): {_when(row.timestamp_us)} UTC",
        "outline (credentials, byte strings and the bytes that do not parse are not shown):",
    ]
    lines.extend(f"  {line}" for line in outline(row.body if isinstance(row.body, bytes | str) else b""))
    return lines


def release(store: QuarantineStore, record_id: int, body: bytes | None = None) -> int:
    """Put a quarantined row (or ``body``, its correction) back as a new record; its new id. Raises
    CorruptRecord when it still fails the check, StoreError when there is no such quarantined row. The new
    row's ``ts_us`` is its body's ``timestamp``: a row quarantined because the two disagreed goes back
    dated by its record's own time."""
    row = _row(store, record_id)
    record, checked = check_foreign_record(record_id, row.body if body is None else body)
    return store.release(record_id, checked, timestamp_micros(record["timestamp"]))
