"""Read exports back and audit a store against a bucket (``capture-export cat`` and ``verify``).

Every format is read by its extension (see export/formats.py); objects are found wherever the exporter's
``pathTemplate`` put them. An exporter with a ``filter`` is verified against the records its filter passes:
the records it excludes are reported, not counted missing.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

from .api import S3ExporterSpec
from .export.formats import data_extension, decode_object, record_ids, to_json_line
from .export.layout import CONTROL_DIR, ObjectLayout, parse_range
from .export.transform import RecordFilter
from .objectstore import ObjectStore
from .store import RecordReader

__all__ = ["VerifyReport", "decode_object", "is_data_object", "to_json_line", "verify_export", "verify_options"]

RecordPredicate = Callable[[Mapping[str, Any]], bool]


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
    quarantined: int = 0  # rows moved to the store's quarantine: out of the store, not expected in the bucket

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicated and not self.mislabelled

    def summary(self) -> str:
        def sample(ids: list[int]) -> str:
            return ", ".join(map(str, ids[:10])) + (" …" if len(ids) > 10 else "")

        lines = [
            f"objects: {self.objects}, records in bucket: {self.exported_records}, "
            f"records in store up to id {self.up_to}: {self.store_records}",
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
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def is_data_object(key: str) -> bool:
    """An object in one of the data formats, outside the exporters' control folder."""
    return data_extension(key) is not None and f"/{CONTROL_DIR}/" not in f"/{key}"


def verify_options(spec: S3ExporterSpec, namespace: str, name: str) -> dict[str, Any]:
    """The ``layout`` and ``accepts`` arguments of verify_export for one S3Exporter."""
    layout = ObjectLayout(spec.prefix, namespace, name, template=spec.path_template, hive=spec.hive_partitioning)
    return {"layout": layout, "accepts": RecordFilter(spec.filter) if spec.filter is not None else None}


def _store_ids(store: RecordReader, up_to: int, accepts: RecordPredicate | None) -> Iterator[tuple[int, bool]]:
    """Every store id up to ``up_to`` in order, with whether the exporter's filter passes its record."""
    if accepts is None:
        for record_id in store.ids():
            if record_id > up_to:
                return
            yield record_id, True
        return
    after = 0
    while rows := store.read_batch(after, 5000, up_to):
        for row in rows:
            yield row.id, accepts(cbor2.loads(row.body))
        after = rows[-1].id


def verify_export(
    store: RecordReader,
    objects: ObjectStore,
    prefix: str,
    *,
    up_to: int | None = None,
    extension: str | None = None,
    layout: ObjectLayout | None = None,
    accepts: RecordPredicate | None = None,
) -> VerifyReport:
    """Every store record with id <= ``up_to`` (default: the safe horizon) that ``accepts`` passes (default:
    all) must be in exactly one object. Every data object under ``prefix`` counts, in any folder and, unless
    ``extension`` is given, in any format; ``layout`` (the exporter's) narrows the listing to the folders
    its template can produce."""
    report = VerifyReport()
    report.up_to = store.safe_horizon() if up_to is None else up_to
    quarantined = getattr(store, "quarantined", None)
    report.quarantined = len(quarantined()) if callable(quarantined) else 0
    exported = array("q")
    root = layout.data_prefix() if layout is not None else (f"{prefix}/" if prefix else "")
    for info in objects.list(root):
        key = info.key
        # Any object in a data format counts, whatever its name: a stray copy is a duplicate.
        if not is_data_object(key) or (extension is not None and not key.endswith(extension)):
            continue
        data = objects.get(key)
        if data is None:
            continue
        report.objects += 1
        ids = record_ids(data, key)
        bounds = parse_range(key)
        if ids and bounds:
            # A filtered batch holds a subset of the range its name gives; never an id outside it.
            outside = min(ids) < bounds[0] or max(ids) > bounds[1]
            if outside or (accepts is None and (ids[0], ids[-1]) != bounds):
                report.mislabelled.append(key)
        exported.extend(ids)
    report.exported_records = len(exported)
    ordered = sorted(exported)
    previous = None
    for record_id in ordered:
        if record_id == previous and (not report.duplicated or report.duplicated[-1] != record_id):
            report.duplicated.append(record_id)
        previous = record_id
    # Merge-walk the sorted exported ids against the store's ids.
    position = 0
    total = len(ordered)
    in_store = 0
    excluded = 0
    for record_id, expected in _store_ids(store, report.up_to, accepts):
        in_store += 1
        while position < total and ordered[position] < record_id:
            report.not_in_store += 1
            position += 1
        found = 0
        while position < total and ordered[position] == record_id:
            position += 1
            found += 1
        if not expected:
            excluded += 1
            report.filtered_in_bucket += found
        elif not found:
            report.missing.append(record_id)
    report.store_records = in_store
    report.filtered = excluded if accepts is not None else None
    report.not_in_store += sum(1 for i in ordered[position:] if i <= report.up_to)
    return report
