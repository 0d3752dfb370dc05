"""The sweep: objects a killed or failed attempt, or an earlier epoch, left where a batch now writes.

A data object is named by the range of record ids it holds (export/layout.py), so an object in the bucket
whose range starts inside a batch's range and is not that batch's own object was written by an attempt
that died before its checkpoint, or by an earlier epoch with other batch bounds: its records are in the
new object, and it must go, or they would be exported twice. The sweep deletes only objects this exporter
wrote (their metadata names the exporter and the store, export/provenance.py; an object from before that
metadata must hold exactly the store's records) and reports any other object it meets. An object that holds
records the store no longer has (purged by retention, soft-deleted) is the only copy of them: a re-export
after a reset neither deletes nor overwrites it, and moves the cursor past it instead.
"""

from __future__ import annotations

from functools import partial

from ..api.vocabulary import Domain, Reason
from ..objectstore import ObjectStore
from ..store import RecordReader, StoredRecord, StoreError
from .formats import decode_object, record_ids
from .layout import ObjectLayout, parse_range
from .model import ExporterId, ExportFailure, PreparedBatch, Requests
from .provenance import METADATA_EXPORTER, METADATA_STORE, compare_with_store

__all__ = ["BucketSweep"]


class BucketSweep:
    """One exporter's sweep of its destination, with what it learnt about objects kept across batches:
    which keys are its own (``owned``), which hold records gone from the store (``preserved``), and the
    foreign objects found since the last run reported them (``foreign``)."""

    def __init__(self, objects: ObjectStore, layout: ObjectLayout, store: RecordReader, exporter: ExporterId,
                 store_id: str, call: Requests) -> None:
        self.objects = objects
        self.layout = layout
        self.store = store
        self.exporter = exporter
        self.store_id = store_id
        self.call = call
        self.owned: dict[str, bool] = {}
        self.foreign: list[str] = []
        self.reported: set[str] = set()
        # Keys of objects found to hold records the store no longer has: kept through re-exports.
        self.preserved: set[str] = set()

    def take_foreign(self) -> list[str]:
        """The foreign objects met since the last call (each reported once)."""
        found, self.foreign = self.foreign, []
        return found

    def find_high_water(self) -> int:
        """The highest record id in this exporter's data objects in the bucket (0 when there is none)."""

        def scan() -> int:
            top = 0
            for info in self.objects.list(self.layout.data_prefix()):
                bounds = parse_range(info.key)
                if bounds is not None and self.layout.is_data_key(info.key):
                    top = max(top, bounds[1])
            return top

        return self.call(scan)

    def sweep_overlapping(self, batch: PreparedBatch, high_water: int) -> None:
        """Delete data objects other than ``batch.key`` whose range starts inside this batch: written by
        an attempt that died before its checkpoint, or by an earlier epoch with other batch bounds."""
        marker = self.layout.batch_start_marker(batch.first_id, batch.first_timestamp_us)
        directory = self.layout.data_dir(batch.first_timestamp_us)

        def stale_keys() -> list[tuple[str, tuple[int, int]]]:
            found = []
            for info in self.objects.list(directory, start_after=marker):
                bounds = parse_range(info.key)
                if bounds is None or "/" in info.key[len(directory):]:
                    continue
                if bounds[0] > batch.last_id:
                    break
                if info.key != batch.key and self.layout.is_data_key(info.key):
                    found.append((info.key, bounds))
            return found

        for key, (first, last) in self.call(stale_keys):
            if not self.owns(key):
                continue  # not this exporter's: never deleted (reported)
            if first <= high_water and self.holds_records_gone_from_store(key, first, last):
                continue  # the only copy of records purged since: never delete it
            self.call(partial(self.objects.delete, key))
            self.owned.pop(key, None)

    def owns(self, key: str) -> bool:
        """Whether this exporter wrote ``key`` (export/provenance.py): its metadata names this exporter and
        this store; without such metadata (written before it existed, or by someone else), its records must
        be this store's records (and at least one of them still in the store). Anything else is reported as
        a foreign object and left alone."""
        known = self.owned.get(key)
        if known is not None:
            return known
        head = self.call(lambda: self.objects.head(key))
        if head is None:
            return False  # gone meanwhile: nothing to delete
        writer = head.metadata.get(METADATA_EXPORTER)
        if writer is not None:
            owned = writer == str(self.exporter) and head.metadata.get(METADATA_STORE) == self.store_id
        else:
            data = self.call(lambda: self.objects.get(key))
            try:
                records = list(decode_object(data, key)) if data is not None else []
            except Exception:
                records = []  # unreadable: not provably ours, keep it
            try:
                check = compare_with_store(records, self.store) if records else None
            except StoreError as exc:
                raise ExportFailure(Reason.STORE_UNAVAILABLE, str(exc), domain=Domain.STORE,
                                    transient=True) from None
            owned = check is not None and bool(check.same) and not check.differing
        self.owned[key] = owned
        if not owned and key not in self.reported:
            self.reported.add(key)
            self.foreign.append(key)
        return owned

    def holds_records_gone_from_store(self, key: str, first: int, last: int) -> bool:
        """Whether an object written earlier holds records the store no longer has (purged by retention
        since, or soft-deleted). Such an object is the only copy of them: a re-export after a reset must
        neither delete nor overwrite it. Cheap when the store still has every id of the range."""
        if key in self.preserved:
            return True
        try:
            if self.store.backlog(first - 1, last) == last - first + 1:
                return False
            data = self.call(lambda: self.objects.get(key))
            if data is None:
                return False
            live = {row.id for row in self.store.read_batch(first - 1, last - first + 1, last)}
        except StoreError as exc:
            raise ExportFailure(Reason.STORE_UNAVAILABLE, str(exc), domain=Domain.STORE, transient=True) from None
        try:
            ids = record_ids(data, key)
        except Exception:
            return True  # unreadable: keep it rather than guess
        if all(record_id in live for record_id in ids):
            return False
        self.preserved.add(key)
        return True

    def first_preserved_object(self, after: int, rows: list[StoredRecord]) -> tuple[int, int] | None:
        """In a re-export (ids at or below the high-water mark), the first object whose range starts in
        ``(after, last row]`` and that holds records gone from the store, as ``(first, last)``."""
        directory = self.layout.data_dir(rows[0].timestamp_us)
        marker = self.layout.batch_start_marker(after + 1, rows[0].timestamp_us)

        def overlapping() -> list[tuple[str, tuple[int, int]]]:
            found = []
            for info in self.objects.list(directory, start_after=marker):
                bounds = parse_range(info.key)
                if bounds is None or "/" in info.key[len(directory):]:
                    continue
                if bounds[0] > rows[-1].id:
                    break
                if self.layout.is_data_key(info.key):
                    found.append((info.key, bounds))
            return found

        for key, bounds in self.call(overlapping):
            if self.owns(key) and self.holds_records_gone_from_store(key, *bounds):
                return bounds
        return None
