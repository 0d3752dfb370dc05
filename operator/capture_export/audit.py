"""Read exports back and audit a store against a bucket (``capture-export cat`` and ``verify``).

Every format is read by its extension (see export/formats.py); objects are found wherever the exporter's
``pathTemplate`` put them. An exporter with a ``filter`` is verified against the records its filter passes:
the records it excludes are reported, not counted missing.

``verify`` compares content, not ids alone (export/provenance.py): each exported record must be the
store's record of its id (timestamp and ``capture_id``), so a bucket exported from a store that was since
recreated fails. An object it cannot read is named and counted, and the audit goes on (and fails). Objects
that are not this exporter's are named and not counted: their metadata names another exporter, they lie
under another exporter's prefix (a nested ``_capture-export`` folder) or template folder (from that
exporter's checkpoint), or, without metadata, none of their records is the store's.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

import cbor2

from .api import S3ExporterSpec
from .export.checkpoint import Checkpoints, peek_layout
from .export.formats import data_extension, decode_object, record_fields, to_json_line
from .export.layout import CONTROL_DIR, ObjectLayout, parse_range
from .export.model import ExporterId, ExportFailure, RetryPolicy
from .export.provenance import (
    COMPARED_FIELDS,
    METADATA_EXPORTER,
    METADATA_STORE,
    STORE_CHUNK,
    SealedRows,
    compare_with_store,
)
from .export.skim import StoredCopy
from .export.transform import RecordFilter, peek_fields
from .objectstore import ObjectInfo, ObjectStore, ObjectStoreError
from .store import RecordReader

__all__ = ["AuditLimit", "VerifyReport", "committed_limit", "decode_object", "is_data_object", "lone_checkpoint",
           "to_json_line", "verify_export", "verify_options"]

RecordPredicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class AuditLimit:
    """The highest record id an audit checks (None: the store's safe horizon, all it holds), and why, in
    words for the report."""

    up_to: int | None
    why: str


def committed_limit(objects: ObjectStore, layout: ObjectLayout, exporter: ExporterId,
                    store: RecordReader) -> AuditLimit:
    """Up to the exporter's committed cursor, read from its checkpoint in the bucket as the retention gate
    reads it: records the store holds above it are not exported yet, not missing. Without a checkpoint it
    can trust (none, unreadable, or written from another store) the audit checks all the store holds, so a
    wiped bucket fails it rather than passing for want of a limit."""
    try:
        checkpoint = Checkpoints(objects, layout, exporter, retry=RetryPolicy(attempts=3)).read_full()
    except ExportFailure as exc:
        return AuditLimit(None, f"all the store holds (the checkpoint of {exporter} cannot be read: {exc.message})")
    if checkpoint is None:
        return AuditLimit(None, f"all the store holds (no committed checkpoint of {exporter} in the bucket)")
    if checkpoint.store_id and checkpoint.store_id != store.identity():
        return AuditLimit(None, f"all the store holds (the checkpoint of {exporter} was written from another "
                          f"store, {checkpoint.store_id})")
    return AuditLimit(checkpoint.cursor.position, f"the committed checkpoint of {exporter}")


def lone_checkpoint(objects: ObjectStore, prefix: str) -> tuple[ObjectLayout, ExporterId] | None:
    """The exporter whose checkpoint is the only one under ``prefix`` (``verify --bucket``, which has no
    manifest to name it), with its layout; None when there is none or there are several."""
    root = ObjectLayout(prefix.strip("/"), "_", "_")
    folder = root.checkpoints_folder()
    found = [info.key[len(folder):] for info in objects.list(folder) if info.key.endswith(".json")]
    if len(found) != 1 or found[0].count("/") != 1:
        return None
    namespace, _, file = found[0].partition("/")
    exporter = ExporterId(namespace, file.removesuffix(".json"))
    return ObjectLayout(root.prefix, exporter.namespace, exporter.name), exporter


@dataclass
class VerifyReport:
    objects: int = 0
    exported_records: int = 0
    store_records: int = 0
    missing: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    not_in_store: int = 0
    mislabelled: list[str] = field(default_factory=list)
    up_to: int = 0
    filtered: int | None = None  # store records the exporter's filter excludes (None: no filter)
    filtered_in_bucket: int = 0  # exported records the filter now excludes (the filter changed since)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    differing: list[int] = field(default_factory=list)  # ids whose exported record is not the store's
    other_store: list[str] = field(default_factory=list)  # objects this exporter wrote from another store
    not_ours: list[str] = field(default_factory=list)  # objects not of this exporter: named, not counted
    quarantined: int = 0  # rows moved to the store's quarantine: out of the store, not expected in the bucket
    limit: str = ""  # why the audit stops at ``up_to`` (AuditLimit.why)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.mislabelled or self.unreadable or self.differing
                    or self.other_store)

    def as_json(self) -> dict[str, Any]:
        """The report for ``verify -o json``: every count, and the ids and keys it names (at most 100 each)."""
        return {
            "ok": self.ok, "upTo": str(self.up_to), "limit": self.limit, "objects": self.objects,
            "recordsInBucket": self.exported_records, "recordsInStore": self.store_records,
            "missing": len(self.missing), "missingIds": [str(i) for i in self.missing[:100]],
            "duplicated": len(self.duplicated), "duplicatedIds": [str(i) for i in self.duplicated[:100]],
            "differing": len(self.differing), "differingIds": [str(i) for i in self.differing[:100]],
            "notInStore": self.not_in_store, "filtered": self.filtered, "filteredInBucket": self.filtered_in_bucket,
            "quarantined": self.quarantined, "mislabelled": self.mislabelled[:100],
            "otherStore": self.other_store[:100], "notOurs": self.not_ours[:100],
            "unreadable": [{"key": key, "why": why} for key, why in self.unreadable[:100]],
        }

    def summary(self) -> str:
        def sample(ids: list[int]) -> str:
            return ", ".join(map(str, ids[:10])) + (" …" if len(ids) > 10 else "")

        lines = [
            f"objects: {self.objects}, records in bucket: {self.exported_records}, "
            f"records in store up to id {self.up_to}: {self.store_records}",
            *([f"limit: up to id {self.up_to}, {self.limit}"] if self.limit else []),
            f"missing: {len(self.missing)}" + (f" ({sample(self.missing)})" if self.missing else ""),
            f"duplicated: {len(self.duplicated)}" + (f" ({sample(self.duplicated)})" if self.duplicated else ""),
        ]
        if self.filtered is not None:
            lines.append(f"excluded by the exporter's filter (not expected in the bucket): {self.filtered}")
        if self.filtered_in_bucket:
            lines.append(f"in bucket although the current filter excludes them: {self.filtered_in_bucket}")
        if self.quarantined:
            lines.append(f"in the store's quarantine (not expected in the bucket; capture-export quarantine list): "
                         f"{self.quarantined}")
        if self.not_in_store:
            lines.append(f"in bucket but no longer in store (purged by retention): {self.not_in_store}")
        if self.mislabelled:
            lines.append(f"objects whose key range does not match their records: {', '.join(self.mislabelled[:5])}")
        if self.differing:
            lines.append(f"records that are not the store's record of their id (content differs): "
                         f"{len(self.differing)} ({sample(self.differing)})")
        if self.other_store:
            lines.append(f"objects written from another store (recreated or replaced?): {len(self.other_store)} "
                         f"({', '.join(self.other_store[:5])}{' …' if len(self.other_store) > 5 else ''})")
        if self.unreadable:
            lines.append(f"unreadable: {len(self.unreadable)}")
            lines.extend(f"  {key}: {why}" for key, why in self.unreadable[:100])
        if self.not_ours:
            lines.append(f"not this exporter's objects (not counted): {len(self.not_ours)}")
            lines.extend(f"  {key}" for key in self.not_ours[:20])
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def is_data_object(key: str) -> bool:
    """An object in one of the data formats, outside the exporters' control folder."""
    return data_extension(key) is not None and f"/{CONTROL_DIR}/" not in f"/{key}"


def verify_options(spec: S3ExporterSpec, namespace: str, name: str) -> dict[str, Any]:
    """The ``layout``, ``accepts`` and ``exporter`` arguments of verify_export for one S3Exporter."""
    layout = ObjectLayout(spec.prefix, namespace, name, template=spec.path_template, hive=spec.hive_partitioning)
    return {"layout": layout, "accepts": RecordFilter(spec.filter) if spec.filter is not None else None,
            "exporter": f"{namespace}/{name}"}


def _others(objects: ObjectStore, listed: list[ObjectInfo], control_root: str,
            layout: ObjectLayout | None) -> tuple[list[str], list[ObjectLayout]]:
    """Where other exporters' objects lie under the audited prefix: the roots of nested destinations
    (their own ``_capture-export`` folder), and the layouts of the other exporters sharing this prefix
    (from their checkpoints; version 1 checkpoints do not record one)."""
    if layout is None:  # an audit of a whole prefix (verify --bucket): everything counts
        return [], []
    marker = f"{CONTROL_DIR}/"
    area = layout.data_prefix()
    roots = sorted(root for root in {info.key[: info.key.index(marker)] for info in listed
                                     if info.key.startswith(marker) or f"/{marker}" in info.key}
                   if root != control_root and not area.startswith(root))
    layouts: list[ObjectLayout] = []
    folder = layout.checkpoints_folder()
    for info in objects.list(folder):
        if info.key == layout.checkpoint_key() or not info.key.endswith(".json"):
            continue
        raw = objects.get(info.key)
        other = peek_layout(raw, layout.prefix, info.key[len(folder):])[1] if raw is not None else None
        if other is not None:
            layouts.append(other)
    return roots, layouts


def _read_object(data: bytes, key: str, stored: Callable[[int], bytes | None] | None
                 ) -> tuple[array[int], int, list[Mapping[str, Any]]]:
    """One object's record ids in its order, how many of its records are their sealed store row byte for byte
    (the store's records, nothing to compare), and the compared fields of the others (an id repeated in the
    object: its last record counts, as compare_with_store keeps it). Only those fields are decoded
    (formats.record_fields). ValueError saying why when the object is unreadable."""
    ids = array("q")
    latest: dict[int, Mapping[str, Any] | None] = {}  # id -> its fields, or None for a StoredCopy
    without_id = False
    try:
        for record in record_fields(data, key, COMPARED_FIELDS, stored):
            fields: Mapping[str, Any] | None = None
            if isinstance(record, StoredCopy):
                record_id: Any = record.id
            else:
                record_id = record.get("id") if isinstance(record, dict) else None
                if not isinstance(record_id, int) or isinstance(record_id, bool):
                    without_id = True  # said once the whole object has decoded (a decoder's error first)
                    continue
                fields = record
            ids.append(record_id)
            latest[record_id] = fields  # a repeated id: its last record counts
    except Exception as exc:  # any decoder's failure: a corrupt, truncated or foreign object
        raise ValueError(f"{exc.__class__.__name__}: {str(exc)[:200]}") from None
    if without_id:
        raise ValueError("a record without an integer id")
    copies = sum(1 for fields in latest.values() if fields is None)
    return ids, copies, [fields for fields in latest.values() if fields is not None]


def _store_ids(store: RecordReader, up_to: int, accepts: RecordPredicate | None) -> Iterator[tuple[int, bool]]:
    """Every store id up to ``up_to`` in order, with whether the exporter's filter passes its record (only
    the fields the filter reads are decoded, when it says which: RecordFilter.fields)."""
    if accepts is None:
        for record_id in store.ids():
            if record_id > up_to:
                return
            yield record_id, True
        return
    fields = getattr(accepts, "fields", None)
    after = 0
    while rows := store.read_batch(after, STORE_CHUNK, up_to):
        for row in rows:
            yield row.id, _passes(accepts, fields, row.body)
        after = rows[-1].id


def _passes(accepts: RecordPredicate, fields: frozenset[str] | None, body: Any) -> bool:
    """Whether the filter passes a stored row. A row it cannot read (a head cut short, no CBOR map) is one the
    export never filters out: it holds or quarantines it as a corrupt record, so the row is expected (and
    missing while it is held)."""
    try:
        record = peek_fields(body, fields) if fields is not None else cbor2.loads(body)
    except Exception:  # cbor2's errors, CborHeadError, RecursionError: the row is corrupt
        return True
    return accepts(record) if isinstance(record, Mapping) else True


class _SortedRuns:
    """The exported ids, 8 bytes each: each object's sorted, then chained into runs of objects whose ids
    follow one another (objects in the order of their ranges make one run), and the runs merged. Ids come
    out in order without a list of them ever being made."""

    def __init__(self) -> None:
        self.objects: list[array[int]] = []
        self.count = 0

    def add(self, ids: array[int]) -> None:
        if ids:
            self.objects.append(ids if _ascending(ids) else array("q", sorted(ids)))
            self.count += len(ids)

    def __iter__(self) -> Iterator[int]:
        runs: list[list[array[int]]] = []
        ends: list[tuple[int, int]] = []  # (last id of a run, its index): the run that ends lowest first
        for ids in sorted(self.objects, key=lambda ids: ids[0]):
            if ends and ends[0][0] < ids[0]:
                _, index = heapq.heappop(ends)
            else:
                index = len(runs)
                runs.append([])
            runs[index].append(ids)
            heapq.heappush(ends, (ids[-1], index))
        chains = [chain.from_iterable(run) for run in runs]
        return chains[0] if len(chains) == 1 else heapq.merge(*chains)


def _ascending(ids: array[int]) -> bool:
    return all(a <= b for a, b in zip(ids, islice(ids, 1, None), strict=False))


def verify_export(
    store: RecordReader,
    objects: ObjectStore,
    prefix: str,
    *,
    up_to: int | None = None,
    extension: str | None = None,
    layout: ObjectLayout | None = None,
    accepts: RecordPredicate | None = None,
    exporter: str | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> VerifyReport:
    """Every store record with id <= ``up_to`` (default: the safe horizon) that ``accepts`` passes (default:
    all) must be in exactly one object, as the store holds it. Every data object under ``prefix`` counts, in
    any folder and, unless ``extension`` is given, in any format, unless it is not this exporter's (see the
    module docstring; ``exporter`` is "namespace/name"); ``layout`` (the exporter's) narrows the listing to
    the folders its template can produce. ``progress(done, total, records)`` is called before each data object
    is read and once at the end, with the objects read of all and the records read so far.

    Memory: one object at a time (its bytes; of its records, only the compared fields), store rows
    ``STORE_CHUNK`` at a time, and 8 bytes per exported id."""
    report = VerifyReport()
    report.up_to = store.safe_horizon() if up_to is None else up_to
    store_id = store.identity()
    quarantined = getattr(store, "quarantined", None)
    report.quarantined = len(quarantined()) if callable(quarantined) else 0
    seal = store.record_seal()
    exported = _SortedRuns()
    control_root = layout.control_root() if layout is not None else (f"{prefix}/" if prefix else "")
    root = layout.data_prefix() if layout is not None else control_root
    listed = list(objects.list(root))
    nested, neighbours = _others(objects, listed, control_root, layout)
    # Any object in a data format counts, whatever its name: a stray copy is a duplicate.
    candidates = [info.key for info in listed
                  if is_data_object(info.key) and (extension is None or info.key.endswith(extension))]
    for read, key in enumerate(candidates):
        if progress is not None:
            progress(read, len(candidates), exported.count)  # before the object: the body may `continue`
        ours = layout is not None and layout.is_data_key(key)
        if any(key.startswith(other) for other in nested) or (
                not ours and any(other.is_data_key(key) for other in neighbours)):
            report.not_ours.append(key)
            continue
        try:
            found = objects.fetch(key)
        except ObjectStoreError as exc:  # named and counted; the audit goes on
            report.unreadable.append((key, f"{exc.reason}: {exc.message}"))
            continue
        if found is None:
            continue
        writer = found.metadata.get(METADATA_EXPORTER)
        written_from = found.metadata.get(METADATA_STORE, store_id)
        if exporter is not None and writer is not None and writer != exporter:
            report.not_ours.append(key)
            continue
        try:
            ids, copies, compared = _read_object(found.data, key, SealedRows(store, seal) if seal else None)
        except ValueError as exc:
            report.unreadable.append((key, str(exc)))
            continue
        del found
        content = compare_with_store(compared, store)
        if writer is None and content.differing and not (copies or content.same):
            report.not_ours.append(key)  # no metadata, and not one record of it is this store's
            continue
        if written_from != store_id:
            report.other_store.append(key)
        report.differing.extend(content.differing)
        report.objects += 1
        bounds = parse_range(key)
        if ids and bounds:
            # A filtered batch holds a subset of the range its name gives; never an id outside it.
            outside = min(ids) < bounds[0] or max(ids) > bounds[1]
            if outside or (accepts is None and (ids[0], ids[-1]) != bounds):
                report.mislabelled.append(key)
        exported.add(ids)
    if progress is not None:
        progress(len(candidates), len(candidates), exported.count)
    report.differing.sort()
    report.exported_records = exported.count
    _walk(report, _noting_duplicates(iter(exported), report.duplicated),
          _store_ids(store, report.up_to, accepts), accepts is not None)
    return report


def _noting_duplicates(ordered: Iterator[int], duplicated: list[int]) -> Iterator[int]:
    """The sorted ids as they are, each id found more than once noted (once) in ``duplicated``."""
    previous = None
    for record_id in ordered:
        if record_id == previous and (not duplicated or duplicated[-1] != record_id):
            duplicated.append(record_id)
        previous = record_id
        yield record_id


def _walk(report: VerifyReport, ordered: Iterator[int], store_ids: Iterator[tuple[int, bool]],
          filtered: bool) -> None:
    """Merge-walk the sorted exported ids against the store's ids."""
    end = object()
    current: Any = next(ordered, end)
    in_store = 0
    excluded = 0
    for record_id, expected in store_ids:
        in_store += 1
        while current is not end and current < record_id:
            report.not_in_store += 1
            current = next(ordered, end)
        found_count = 0
        while current is not end and current == record_id:
            found_count += 1
            current = next(ordered, end)
        if not expected:
            excluded += 1
            report.filtered_in_bucket += found_count
        elif not found_count:
            report.missing.append(record_id)
    report.store_records = in_store
    report.filtered = excluded if filtered else None
    while current is not end:
        if current <= report.up_to:
            report.not_in_store += 1
        current = next(ordered, end)
