"""Whose object is this, and does it hold this store's records? The sweep and ``verify`` ask both.

Every data object an exporter writes carries S3 user metadata naming the exporter and the identity of
the store its records came from (``x-amz-meta-capture-export-exporter``, ``…-store``). The sweep deletes
an object only when that metadata names this exporter and this store; an object without it (written
before the metadata existed, or by someone else) counts as this exporter's only when every record in it is
the store's record of that id. "The same record" compares content, not ids alone: the timestamp and the
``capture_id`` (when the exported record has one: ``redactFields`` may drop it; compared in its JSON form,
as JSON Lines writes it), so a recreated store whose ids start again is told apart. A record whose bytes
are its sealed stored row's (the default export's, ``SealedRows``) is the store's record without more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..store import RecordReader
from ..store.seal import RecordSeal
from .formats import json_bytes
from .transform import peek_fields

__all__ = [
    "COMPARED_FIELDS",
    "METADATA_EXPORTER",
    "METADATA_STORE",
    "STORE_CHUNK",
    "ContentCheck",
    "SealedRows",
    "compare_with_store",
    "object_metadata",
    "timestamp_us",
]

METADATA_EXPORTER = "capture-export-exporter"
METADATA_STORE = "capture-export-store"
_COMPARED = frozenset({"timestamp", "capture_id"})
COMPARED_FIELDS = _COMPARED | {"id"}  # what compare_with_store reads of an exported record
# Store rows read at a time: a chunk of bodies (a few MB), whatever the size of the object compared.
STORE_CHUNK = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def object_metadata(exporter: str, store_id: str | None) -> dict[str, str]:
    """The user metadata of a data object this exporter writes."""
    metadata = {METADATA_EXPORTER: exporter}
    if store_id:
        metadata[METADATA_STORE] = store_id
    return metadata


def timestamp_us(value: Any) -> int | None:
    """A record's ``timestamp`` (a datetime, or the RFC 3339 string of the JSON formats) in microseconds."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class ContentCheck:
    """How the records of one object compare with the store: ids whose record is the store's
    (``same``), ids the store has with another record (``differing``), ids it no longer has (``absent``)."""

    same: list[int]
    differing: list[int]
    absent: list[int]

    @property
    def all_same(self) -> bool:
        return bool(self.same) and not self.differing and not self.absent


def compare_with_store(records: Iterable[Mapping[str, Any]], store: RecordReader) -> ContentCheck:
    """Compare exported records (decoded, with ``id``) with the store's records of the same ids. Raises
    StoreError when the store cannot be read; records without an integer ``id`` count as differing."""
    wanted: dict[int, Mapping[str, Any]] = {}
    check = ContentCheck([], [], [])
    for record in records:
        record_id = record.get("id")
        if isinstance(record_id, int) and not isinstance(record_id, bool):
            wanted[record_id] = record
        else:
            check.differing.append(-1)
    if not wanted:
        return check
    low, high = min(wanted), max(wanted)
    stored: dict[int, Mapping[str, Any]] = {}
    after = low - 1
    while after < high:
        rows = store.read_batch(after, min(STORE_CHUNK, high - after), high)
        if not rows:
            break
        for row in rows:
            if row.id in wanted:
                try:
                    fields = peek_fields(row.body, _COMPARED)
                except Exception:  # an undecodable stored row: not the record that was exported
                    fields = {}
                stored[row.id] = fields if isinstance(fields, dict) else {}
        after = rows[-1].id
    for record_id in sorted(wanted):
        exported, ours = wanted[record_id], stored.get(record_id)
        if ours is None:
            check.absent.append(record_id)
        elif _same(exported, ours):
            check.same.append(record_id)
        else:
            check.differing.append(record_id)
    return check


class SealedRows:
    """The stored body of a record id when its row is sealed (store/seal.py: written by our own append, so
    one well-formed record), else None. Rows are read ``STORE_CHUNK`` ids at a time from the first id
    asked for, so that the ascending ids of an object read each row once."""

    def __init__(self, store: RecordReader, seal: RecordSeal) -> None:
        self.store = store
        self.seal = seal
        self.low, self.high = 1, 0
        self.rows: dict[int, tuple[bytes, bytes | None]] = {}

    def __call__(self, record_id: int) -> bytes | None:
        if not self.low <= record_id <= self.high:
            self.low, self.high = record_id, record_id + STORE_CHUNK - 1
            self.rows = {row.id: (row.body, row.seal) for row in self.store.read_batch(record_id - 1, STORE_CHUNK,
                                                                                       self.high)}
        row = self.rows.get(record_id)
        return row[0] if row is not None and self.seal.valid(*row) else None


def _same(exported: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    if timestamp_us(exported.get("timestamp")) != timestamp_us(stored.get("timestamp")):
        return False
    if "capture_id" not in exported:
        return True
    theirs, ours = exported["capture_id"], stored.get("capture_id")
    # JSON Lines has no bytes and no UUIDs: a capture id a foreign writer stored as bytes comes back as
    # {"$base64": …}, a UUID (CBOR tag 37) as its text. The same id is the same JSON.
    if theirs == ours:
        return True
    try:
        return json_bytes(theirs) == json_bytes(ours)
    except (TypeError, ValueError):  # a value JSON cannot write at all: not the exported one
        return False

