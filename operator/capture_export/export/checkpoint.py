"""The checkpoint object: an exporter's committed cursor, kept in its bucket beside its data.

The engine writes it only after the data object it covers is in the bucket, so it is the truth about
what was exported: a restarted exporter resumes from it (``recover``) and the retention gate reads it to
bound a purge. Reading or writing one needs only the bucket, the key layout, the exporter's name and a
clock — not an engine, not an encoder (a format this install cannot write must not hide a checkpoint).

The object is JSON (ids as strings: they may pass 2^53)::

    {"version": 2, "exporter": "ns/name", "epoch": 0, "cursor": "1000", "highWater": "1000",
     "lastKey": "…", "updated": "2026-11-24T12:00:00+00:00",
     "storeId": "6f0c…",                      # the identity of the store the records came from
     "instance": "host:pid:tag",               # the writer instance that wrote it
     "layout": {"pathTemplate": "{prefix}", "hivePartitioning": false},
     "cursorTimestampUs": "1764000000000000"}  # the stored timestamp (ts_us) of record ``cursor``

``cursorTimestampUs`` (absent from older checkpoints, and after a reset) tells whether the store's record
with the cursor's id is still the one exported: ids restarted under the same store identity (``TRUNCATE
... RESTART IDENTITY``, the table emptied and its sequence reset) would otherwise let the exporter resume
past new records, and the retention gate purge them, as soon as the new ids passed the old cursor
(``reused_ids``).

Version 1 (before store identities) had no ``storeId``, ``instance`` or ``layout``; it is read as before
and the exporter adopts its store's identity into it on its next write. A cursor that is not a whole
number in ``[0, 2^63)``, an epoch that is not one, or a body that is not such an object is
``CheckpointCorrupt``, never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..api.vocabulary import Domain, Reason
from ..clock import Clock, SystemClock
from ..objectstore import ObjectStore
from ..store import RecordReader
from .layout import ObjectLayout
from .model import Cursor, ExporterId, ExportFailure, Requests, RetryPolicy

__all__ = [
    "CHECKPOINT_CONTENT_TYPE",
    "CHECKPOINT_VERSION",
    "MAX_ID",
    "Checkpoint",
    "Checkpoints",
    "decode_checkpoint",
    "encode_checkpoint",
    "parse_id",
    "peek_layout",
    "reused_ids",
]

CHECKPOINT_CONTENT_TYPE = "application/json"
CHECKPOINT_VERSION = 2
MAX_ID = 2**63 - 1  # ids are signed 64-bit integers in every store


@dataclass(frozen=True)
class Checkpoint:
    """A decoded checkpoint. ``store_id`` and ``instance`` are None in a version 1 checkpoint; ``layout``
    is ``(pathTemplate, hivePartitioning)`` when recorded."""

    cursor: Cursor
    exporter: str | None = None
    store_id: str | None = None
    instance: str | None = None
    layout: tuple[str, bool] | None = None
    version: int = 1
    cursor_timestamp_us: int | None = None


def parse_id(value: Any) -> int:
    """A record id (or cursor) as the JSON of a checkpoint or a status holds it: a whole number in
    ``[0, 2^63)``, as a string of digits or an integer. ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an id")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise ValueError(f"{value!r} is not a whole number")
    if not 0 <= number <= MAX_ID:
        raise ValueError(f"{value!r} is not an id (0 to 2^63-1)")
    return number


def encode_checkpoint(exporter: ExporterId, cursor: Cursor, last_key: str | None, updated: datetime, *,
                      store_id: str | None = None, instance: str | None = None,
                      layout: ObjectLayout | None = None, cursor_timestamp_us: int | None = None) -> bytes:
    body: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "exporter": str(exporter),
        "epoch": cursor.epoch,
        "cursor": str(cursor.position),
        "highWater": str(cursor.high_water),
        "lastKey": last_key,
        "updated": updated.isoformat(),
        "storeId": store_id,
        "instance": instance,
    }
    if layout is not None:
        body["layout"] = {"pathTemplate": layout.template, "hivePartitioning": layout.hive}
    if cursor_timestamp_us is not None and cursor.position > 0:
        body["cursorTimestampUs"] = str(cursor_timestamp_us)
    return json.dumps(body, indent=1).encode()


def decode_checkpoint(raw: bytes) -> Checkpoint:
    """The checkpoint a checkpoint object holds; ValueError (saying what is wrong) when it is not one."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        epoch = parse_id(data["epoch"])
        position = parse_id(data["cursor"])
        high_water = parse_id(data.get("highWater", data["cursor"]))
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]!r}") from None
    except ValueError as exc:
        raise ValueError(f"epoch, cursor and highWater must be whole numbers from 0 to 2^63-1: {exc}") from None
    texts = {key: data.get(key) for key in ("exporter", "storeId", "instance")}
    if any(value is not None and not isinstance(value, str) for value in texts.values()):
        raise ValueError("exporter, storeId and instance must be strings")
    layout = data.get("layout")
    recorded = None
    if isinstance(layout, dict) and isinstance(layout.get("pathTemplate"), str):
        recorded = (layout["pathTemplate"], bool(layout.get("hivePartitioning", False)))
    version = data.get("version", 1)
    stamp = data.get("cursorTimestampUs")
    try:  # a timestamp may be negative (a record dated before 1970); anything else is not one, and unused
        cursor_timestamp_us = int(stamp) if isinstance(stamp, str) and stamp.lstrip("-").isdigit() else None
    except ValueError:
        cursor_timestamp_us = None
    return Checkpoint(Cursor(epoch, position, max(high_water, position)), texts["exporter"], texts["storeId"],
                      texts["instance"], recorded, version if isinstance(version, int) else 1, cursor_timestamp_us)


def reused_ids(checkpoint: Checkpoint, store: RecordReader) -> str | None:
    """Why the store's ids no longer mean what the checkpoint says (a message), or None. The store's
    record with the cursor's id must be the one exported: the same stored timestamp. A record that is
    gone (purged, quarantined) or a checkpoint that did not record the timestamp proves nothing either
    way."""
    position, expected = checkpoint.cursor.position, checkpoint.cursor_timestamp_us
    if expected is None or position <= 0:
        return None
    rows = store.read_batch(position - 1, 1, horizon=position)
    if not rows or rows[0].id != position or rows[0].timestamp_us == expected:
        return None
    return (f"the store's record {position} is not the one exported up to it (stored timestamp "
            f"{rows[0].timestamp_us}, exported {expected}): its ids were restarted (the table emptied and its "
            "sequence reset) under the same store identity")


def peek_layout(raw: bytes, prefix: str, relative_key: str) -> tuple[str, ObjectLayout | None]:
    """Another exporter's name (``ns/name``) and layout from its checkpoint object (``relative_key``: its
    key below the checkpoints folder, ``ns/name.json``). The layout is None when the checkpoint does not
    record it (version 1) or cannot be read."""
    namespace, _, file = relative_key.partition("/")
    name = file.removesuffix(".json")
    try:
        checkpoint = decode_checkpoint(raw)
    except ValueError:
        return f"{namespace}/{name}", None
    if checkpoint.layout is None:
        return checkpoint.exporter or f"{namespace}/{name}", None
    template, hive = checkpoint.layout
    try:
        return checkpoint.exporter or f"{namespace}/{name}", ObjectLayout(prefix, namespace, name, template=template,
                                                                          hive=hive)
    except ValueError:
        return checkpoint.exporter or f"{namespace}/{name}", None


class Checkpoints:
    """One exporter's checkpoint object: read, write, and recover the cursor to resume from.

    ``store_id`` and ``instance`` (the store the records come from, the writer instance) go into every
    checkpoint written. ``requests`` (optional) shares the engine's retrying request counter, so a run
    counts its checkpoint requests too; without it, requests are retried by ``retry``."""

    def __init__(
        self,
        objects: ObjectStore,
        layout: ObjectLayout,
        exporter: ExporterId,
        clock: Clock | None = None,
        *,
        retry: RetryPolicy | None = None,
        requests: Requests | None = None,
        store_id: str | None = None,
        instance: str | None = None,
    ) -> None:
        self.objects = objects
        self.layout = layout
        self.exporter = exporter
        self.clock = clock or SystemClock()
        self.requests = requests or Requests(self.clock, retry or RetryPolicy())
        self.store_id = store_id
        self.instance = instance

    @property
    def key(self) -> str:
        return self.layout.checkpoint_key()

    def read_full(self) -> Checkpoint | None:
        """The checkpoint, or None when the exporter never committed a batch (no object)."""
        key = self.key
        raw = self.requests(lambda: self.objects.get(key))
        if raw is None:
            return None
        try:
            return decode_checkpoint(raw)
        except ValueError as exc:
            raise ExportFailure(
                Reason.CHECKPOINT_CORRUPT,
                f"checkpoint object {key} is not a valid checkpoint ({exc}); a reset (annotation "
                "capture.dev/reset-cursor) re-exports from the beginning",
                domain=Domain.BUCKET,
                transient=False,
            ) from None

    def read(self) -> Cursor | None:
        """The committed cursor, or None when the exporter never committed a batch (no object)."""
        checkpoint = self.read_full()
        return None if checkpoint is None else checkpoint.cursor

    def write(self, cursor: Cursor, last_key: str | None, *, cursor_timestamp_us: int | None = None) -> None:
        data = encode_checkpoint(self.exporter, cursor, last_key, self.clock.now(), store_id=self.store_id,
                                 instance=self.instance, layout=self.layout, cursor_timestamp_us=cursor_timestamp_us)
        key = self.key
        self.requests(lambda: self.objects.put(key, data, content_type=CHECKPOINT_CONTENT_TYPE))

    def recover(self, saved: Cursor | None) -> Cursor:
        """The cursor to resume from: the bucket's checkpoint, or the saved state when there is none. A saved
        state ahead of the checkpoint was edited (it is written after it): it only raises the high-water mark."""
        saved = saved or Cursor()
        checkpoint = self.read()
        if checkpoint is None:
            return saved
        newest = saved.newest(checkpoint)
        return Cursor(checkpoint.epoch, checkpoint.position, newest.high_water)
