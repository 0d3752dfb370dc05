"""Read exports back and audit a store against a bucket (``capture-export cat`` and ``verify``)."""

from __future__ import annotations

import base64
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import zstandard

from .export.layout import CONTROL_DIR, parse_range
from .objectstore import ObjectStore
from .store import CaptureStore, decode_sequence

__all__ = ["VerifyReport", "decode_object", "to_json_line", "verify_export"]


def decode_object(data: bytes) -> Iterator[dict[str, Any]]:
    """Records of one ``.cbor.zstd`` object, read exactly as the Aperture docs tell their users."""
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    yield from decode_sequence(raw)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def to_json_line(record: dict[str, Any]) -> str:
    """One record as a JSON line; raw bytes become ``{"$base64": …}``."""
    return json.dumps(_jsonable(record), ensure_ascii=False, separators=(",", ":"))


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
        if self.not_in_store:
            lines.append(f"in bucket but no longer in store (purged by retention): {self.not_in_store}")
        if self.mislabelled:
            lines.append(f"objects whose key range does not match their records: {', '.join(self.mislabelled[:5])}")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def verify_export(
    store: CaptureStore, objects: ObjectStore, prefix: str, *, up_to: int | None = None, extension: str = ".cbor.zstd"
) -> VerifyReport:
    """Every store record with id <= ``up_to`` (default: the safe horizon) must be in exactly one object."""
    report = VerifyReport()
    report.up_to = store.safe_horizon() if up_to is None else up_to
    exported = array("q")
    root = f"{prefix}/" if prefix else ""
    for info in objects.list(root):
        if not info.key.endswith(extension) or f"/{CONTROL_DIR}/" in f"/{info.key}":
            continue
        data = objects.get(info.key)
        if data is None:
            continue
        report.objects += 1
        ids = [int(record["id"]) for record in decode_object(data)]
        bounds = parse_range(info.key)
        if ids and bounds and (ids[0], ids[-1]) != bounds:
            report.mislabelled.append(info.key)
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
    for record_id in store.ids():
        if record_id > report.up_to:
            break
        in_store += 1
        while position < total and ordered[position] < record_id:
            report.not_in_store += 1
            position += 1
        if position < total and ordered[position] == record_id:
            while position < total and ordered[position] == record_id:
                position += 1
        else:
            report.missing.append(record_id)
    report.store_records = in_store
    report.not_in_store += sum(1 for i in ordered[position:] if i <= report.up_to)
    return report
