"""The checkpoint object: an exporter's committed cursor, kept in its bucket beside its data.

The engine writes it only after the data object it covers is in the bucket, so it is the truth about
what was exported: a restarted exporter resumes from it (``recover``) and the retention gate reads it to
bound a purge. Reading or writing one needs only the bucket, the key layout, the exporter's name and a
clock — not an engine, not an encoder (a format this install cannot write must not hide a checkpoint).

The object is JSON: ``{"version": 1, "exporter": "ns/name", "epoch": 0, "cursor": "1000",
"highWater": "1000", "lastKey": "…", "updated": "2026-11-24T12:00:00+00:00"}`` (ids as strings: they may
pass 2^53).
"""

from __future__ import annotations

import json
from datetime import datetime

from ..api.vocabulary import Domain, Reason
from ..clock import Clock, SystemClock
from ..objectstore import ObjectStore
from .layout import ObjectLayout
from .model import Cursor, ExporterId, ExportFailure, Requests, RetryPolicy

__all__ = ["CHECKPOINT_CONTENT_TYPE", "Checkpoints", "decode_checkpoint", "encode_checkpoint"]

CHECKPOINT_CONTENT_TYPE = "application/json"


def encode_checkpoint(exporter: ExporterId, cursor: Cursor, last_key: str | None, updated: datetime) -> bytes:
    body = {
        "version": 1,
        "exporter": str(exporter),
        "epoch": cursor.epoch,
        "cursor": str(cursor.position),
        "highWater": str(cursor.high_water),
        "lastKey": last_key,
        "updated": updated.isoformat(),
    }
    return json.dumps(body, indent=1).encode()


def decode_checkpoint(raw: bytes) -> Cursor:
    """The cursor a checkpoint object holds; ValueError when it is not one."""
    try:
        data = json.loads(raw)
        return Cursor(int(data["epoch"]), int(data["cursor"]), int(data.get("highWater", data["cursor"])))
    except (ValueError, KeyError, TypeError):
        raise ValueError("not valid JSON with epoch and cursor") from None


class Checkpoints:
    """One exporter's checkpoint object: read, write, and recover the cursor to resume from.

    ``requests`` (optional) shares the engine's retrying request counter, so a run counts its checkpoint
    requests too; without it, requests are retried by ``retry``."""

    def __init__(
        self,
        objects: ObjectStore,
        layout: ObjectLayout,
        exporter: ExporterId,
        clock: Clock | None = None,
        *,
        retry: RetryPolicy | None = None,
        requests: Requests | None = None,
    ) -> None:
        self.objects = objects
        self.layout = layout
        self.exporter = exporter
        self.clock = clock or SystemClock()
        self.requests = requests or Requests(self.clock, retry or RetryPolicy())

    @property
    def key(self) -> str:
        return self.layout.checkpoint_key()

    def read(self) -> Cursor | None:
        """The committed cursor, or None when the exporter never committed a batch (no object)."""
        key = self.key
        raw = self.requests(lambda: self.objects.get(key))
        if raw is None:
            return None
        try:
            return decode_checkpoint(raw)
        except ValueError:
            raise ExportFailure(
                Reason.CHECKPOINT_CORRUPT,
                f"checkpoint object {key} is not valid JSON with epoch and cursor",
                domain=Domain.BUCKET,
                transient=False,
            ) from None

    def write(self, cursor: Cursor, last_key: str | None) -> None:
        data = encode_checkpoint(self.exporter, cursor, last_key, self.clock.now())
        key = self.key
        self.requests(lambda: self.objects.put(key, data, content_type=CHECKPOINT_CONTENT_TYPE))

    def recover(self, saved: Cursor | None) -> Cursor:
        """The cursor to resume from: the newest of the saved state and the bucket's checkpoint."""
        return (saved or Cursor()).newest(self.read())
