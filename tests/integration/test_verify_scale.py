"""``verify`` must scale with the bucket: its memory is about one object (never the object's records
decoded at once, never a Python list of every id), and its progress line gives a rate that says
something (records per second, not a rounded-down "0/s" of objects).

Measured before the change: one object of 4,000 seeded records peaked at 78 MiB of Python memory in
cbor-zstd (13 MiB of records) and 85 MiB in JSON Lines (every record decoded, bodies included), 44 MiB
for the largest of four Parquet objects of 1 MiB; 60,000 ids peaked 82 B per id above 30,000 (a sorted
list of Python ints beside the array). After: 15-20 MiB, under 10 MiB for Parquet, and ~10-18 B per id.
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import zstandard

from capture_export.api import S3ExporterSpec
from capture_export.audit import verify_export
from capture_export.cli import main
from capture_export.export import Cursor, ExportEngine, ExporterId
from capture_export.export.formats import FORMATS, data_extension
from capture_export.export.layout import parse_range
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.records import make_record
from tests.support.seeded import SeededBatches

EXPORTER = ExporterId("default", "usage")


def _export(s3: LocalS3, bucket: str, store: SQLiteStore, objects: S3ObjectStore, *, limit: int,
            format: str = "cbor-zstd") -> None:
    spec = S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": s3.endpoint,
                                          "prefix": "llm", "limit": limit, "format": format,
                                          "secretRef": {"name": "s3-creds"}})
    result = ExportEngine(spec, EXPORTER, store, objects).run(Cursor())
    assert result.failure is None, result.failure


def _decoded_size(objects: S3ObjectStore, key: str) -> int:
    """The bytes of an object's records as its format holds them, uncompressed."""
    data = objects.get(key)
    assert data is not None
    extension = data_extension(key) or ""
    if extension.endswith((".zstd", ".zst")):
        return len(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return len(data)


def _peak_python_memory(store: SQLiteStore, objects: S3ObjectStore, up_to: int | None = None) -> tuple[int, Any]:
    tracemalloc.start()
    try:
        report = verify_export(store, objects, "llm", up_to=up_to)
        return tracemalloc.get_traced_memory()[1], report
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("format", ["cbor-zstd", "jsonl", "parquet"])
def test_verify_never_holds_an_objects_records_decoded(
    s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, sqlite_store: SQLiteStore, format: str,
    seeded_batches: SeededBatches
) -> None:
    seeded_batches.append(sqlite_store, 4000, seed=21)  # the same records for each format, generated once
    _export(s3_server, bucket, sqlite_store, object_store, limit=4000, format=format)
    keys = [info.key for info in object_store.list("llm/") if data_extension(info.key)]
    assert all(key.endswith(tuple(FORMATS[format].extensions.values())) for key in keys)
    size = max(_decoded_size(object_store, key) for key in keys)  # one object (Parquet: a few, size-bound)

    peak, report = _peak_python_memory(sqlite_store, object_store)

    assert report.ok and report.exported_records == 4000, report.summary()
    # The object's bytes (compressed and not), a few thousand store rows at a time, and small change per
    # record; decoding the records (~4.5x their CBOR size in Python objects) is far above this.
    assert peak < 2 * size + 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for {size / 2**20:.1f} MiB of records " \
        f"in the largest of {len(keys)} objects"


def test_verify_keeps_eight_bytes_per_id_of_the_bucket(
    s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, sqlite_store: SQLiteStore
) -> None:
    """What grows with the bucket is the ids, 8 bytes each in an array (no list of them, sorted or not):
    the same audit of twice the records in objects of the same size peaks that much higher."""
    records = 60_000
    sqlite_store.append(make_record(n) for n in range(records))
    _export(s3_server, bucket, sqlite_store, object_store, limit=500)
    peak_all, report = _peak_python_memory(sqlite_store, object_store)
    assert report.ok and report.exported_records == records, report.summary()
    for info in object_store.list("llm/"):
        bounds = parse_range(info.key)
        if bounds and bounds[0] > records // 2:
            object_store.delete(info.key)

    peak_half, report = _peak_python_memory(sqlite_store, object_store, up_to=records // 2)

    assert report.ok and report.exported_records == records // 2, report.summary()
    per_id = (peak_all - peak_half) / (records // 2)
    # 8 B per id, and whatever garbage of the S3 client waits for the collector at the peak (a few hundred
    # KB either way); the ids as Python ints in a list cost 40 B more each.
    assert per_id < 30, f"{per_id:.1f} B per exported id (peaks {peak_half:,} and {peak_all:,} B)"


class _SlowClock:
    """Each reading 0.5 s after the previous one: the progress line shows at every update."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def test_verify_progress_gives_records_per_second(
    s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, sqlite_store: SQLiteStore, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_store.append(make_record(n) for n in range(3000))
    _export(s3_server, bucket, sqlite_store, object_store, limit=1000)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.setattr("capture_export.progress.time.monotonic", _SlowClock())
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)

    code = main(["verify", "--bucket", bucket, "--prefix", "llm", "--endpoint", s3_server.endpoint,
                 "--store", str(tmp_path / "store.sqlite")])

    assert code == 0
    lines = [line for line in err.getvalue().splitlines() if line.startswith(f"verifying {bucket}:")]
    assert lines, err.getvalue()
    last = lines[-1]
    assert last.startswith(f"verifying {bucket}: 3/3 objects (100%), 3,000 records, "), last
    rate = last.split(", ")[2]
    assert rate.endswith(" records/s") and float(rate.split()[0].replace(",", "")) > 0, last
