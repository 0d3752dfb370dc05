"""Sealed rows cut short inside a CBOR item's head, exported with a filter: a writer that holds the store's key
and dies (or has a bug) mid-write, its rows between ordinary ones in a real SQLite store, exported to the real
S3 server.

A filter on the default format reads each row's top-level heads itself (export/transform.py ``peek_fields``),
and the id splice reads the map's head (store/records.py ``id_head``); the other formats decode with cbor2. A
head cut short (a map's count, a key's or a tag-0 timestamp's length missing a byte or more) or reserved
(additional information 28-30) must never raise past the batch (``capture-export run`` would then retry the
same batch with backoff for ever): each such row is a corrupt record like any other, held (``Hold``: the rows
before it exported, the message naming it) or moved aside alone (``Quarantine``: the rest exported once),
with a reason in words, the same kind of reason the decoding formats give (``truncated: …``, ``invalid CBOR
(…)``), not the name of a Python exception (``undecodable CBOR (error)``, what ``struct.error`` gave).

tests/hostile/test_sealed_odd_rows.py covers rows whose top-level map head the default format cannot splice,
without a filter; here the cuts are also further in, where only the filter's peek reads.
"""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest

from capture_export.api import S3ExporterSpec
from capture_export.export import Cursor, ExportEngine, ExporterId
from capture_export.export.model import RunResult
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.cli import run_cli
from tests.support.trust import EVERY_FORMAT, bucket_records, build, good_record, head, text, timestamp_us

from .identity_support import HostileExporter, assert_no_traceback

_VER = text("ver") + b"\x02"
_TIMESTAMP = text("timestamp") + b"\xc0"  # the key, then tag 0: a date/time text follows
_DATE = text("2026-11-24T12:00:02Z")

# Each a sealed row's whole body: a head cut short (or reserved) where the export reads it. The maps claim
# fewer pairs than they have bytes, so that the id splice takes them and only the filter's peek finds the cut.
CUT: dict[str, bytes] = {
    "map-count-of-two-bytes-cut": b"\xb9\x00",
    "map-count-of-four-bytes-cut": b"\xba\x00\x00",
    "map-count-of-eight-bytes-missing": b"\xbb",
    "map-count-of-one-byte-missing": b"\xb8",
    "self-described-map-count-cut": b"\xd9\xd9\xf7\xb9\x00",
    "self-described-marker-cut": b"\xd9\xd9",
    "timestamp-length-of-two-bytes-cut": head(5, 13) + _VER + _TIMESTAMP + b"\x79\x01",
    "timestamp-length-of-eight-bytes-cut": head(5, 13) + _VER + _TIMESTAMP + b"\x7b\x00\x00\x00",
    "timestamp-text-head-missing": head(5, 13) + _VER + text("identity") + text("x" * 30) + _TIMESTAMP,
    "key-length-cut": head(5, 3) + _VER + _TIMESTAMP + _DATE + b"\x79\x01",
    "timestamp-length-reserved": head(5, 3) + _VER + _TIMESTAMP + b"\x7c" + text("model") + text("gpt-4o"),
}
# The reason each is quarantined with when the filter's peek finds it (the default format); None: the id splice
# finds it first (its reasons, as tests/hostile/test_sealed_odd_rows.py has them).
PEEK_REASON: dict[str, str | None] = {
    "map-count-of-two-bytes-cut": None,
    "map-count-of-four-bytes-cut": None,
    "map-count-of-eight-bytes-missing": None,
    "map-count-of-one-byte-missing": None,
    "self-described-map-count-cut": None,
    "self-described-marker-cut": None,
    "timestamp-length-of-two-bytes-cut": "truncated: a CBOR head at byte 17 cut short by 1 byte",
    "timestamp-length-of-eight-bytes-cut": "truncated: a CBOR head at byte 17 cut short by 5 bytes",
    "timestamp-text-head-missing": "truncated: a CBOR head at byte 58 cut short by 1 byte",
    "key-length-cut": "truncated: a length or count claims more than the row holds",
    "timestamp-length-reserved": "invalid CBOR (reserved additional information 28 at byte 17)",
}
SPLICE_REASON = {"self-described-marker-cut": "not a CBOR map"}  # the rest: "a map head cut short"
FILTER = {"filter": {"models": ["gpt-4o"]}}  # model comes after the timestamp: the peek reads every cut
FORMATS = ["cbor-zstd", "jsonl", "parquet"]


def _spec(s3: LocalS3, bucket: str, prefix: str, fmt: str, policy: str) -> S3ExporterSpec:
    return S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": s3.endpoint,
                                          "prefix": prefix, "limit": 1000, **EVERY_FORMAT[fmt], **FILTER,
                                          "onCorruptRecord": policy})


def _export(store: SQLiteStore, objects: S3ObjectStore, spec: S3ExporterSpec, name: str) -> RunResult:
    # In this process, as `run` runs the default format's batches; a batch that raised would raise here.
    return ExportEngine(spec, ExporterId("default", name), store, objects, pool=None).run(Cursor())


def _fill(store: SQLiteStore, cut: dict[str, bytes]) -> dict[int, str]:
    """An ordinary row, then each cut one, ..., an ordinary row: all sealed by the store's own append."""
    rows, names = [], {}
    for n, (name, body) in enumerate(cut.items()):
        rows.append((timestamp_us(2 * n + 1), build(good_record(2 * n + 1))))
        rows.append((timestamp_us(2 * n + 2), body))
        names[2 * n + 2] = name
    rows.append((timestamp_us(2 * len(cut) + 1), build(good_record(2 * len(cut) + 1))))
    assert store.append_encoded(rows, sealed=True) == len(rows)
    return names


def test_every_row_is_cut_short_or_reserved_for_cbor2_too() -> None:
    """The rows are what they claim: no CBOR reader decodes one (else a test below would prove less)."""
    for name, body in CUT.items():
        with pytest.raises(cbor2.CBORDecodeError):
            assert cbor2.loads(body) is None, name


@pytest.mark.parametrize("fmt", FORMATS)
def test_with_quarantine_each_row_cut_short_is_moved_aside_alone_and_the_rest_exported_once(
    fmt: str, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        names = _fill(store, CUT)
        result = _export(store, object_store, _spec(s3_server, bucket, fmt, fmt, "Quarantine"), fmt)
        in_quarantine = [record.id for record in store.quarantined()]
    finally:
        store.close()
    total = 2 * len(CUT) + 1
    assert result.outcome == "Succeeded" and result.failure is None, result.failure
    assert [record_id for record_id, _ in result.quarantined] == sorted(names) == in_quarantine
    assert result.cursor.position == total and result.rows == total - len(CUT), result
    assert sorted(record["id"] for record in bucket_records(s3_server, bucket, fmt)) == [
        n for n in range(1, total + 1) if n not in names]
    reasons = {names[record_id]: reason for record_id, reason in result.quarantined}
    for name, reason in reasons.items():  # words, as for any other corrupt row: never an exception's name
        assert reason.startswith(("truncated: ", "invalid CBOR (", "a map head cut short", "not a CBOR map")), (
            name, reason)
        assert "undecodable" not in reason and "(error)" not in reason and "Error)" not in reason, (name, reason)
    if fmt == "cbor-zstd":
        assert reasons == {name: PEEK_REASON[name] or SPLICE_REASON.get(name, "a map head cut short")
                           for name in CUT}


@pytest.mark.parametrize("name", list(CUT))
def test_with_hold_the_rows_before_it_are_exported_and_the_row_named(
    name: str, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        store.append_encoded([(timestamp_us(1), build(good_record(1))), (timestamp_us(2), CUT[name]),
                              (timestamp_us(3), build(good_record(3)))], sealed=True)
        result = _export(store, object_store, _spec(s3_server, bucket, "hold", "cbor-zstd", "Hold"), "hold")
        left = [row.id for row in store.read_batch(0, 10)]
    finally:
        store.close()
    reason = PEEK_REASON[name] or SPLICE_REASON.get(name, "a map head cut short")
    assert result.outcome == "Failed" and result.failure is not None, result
    assert result.failure.reason == "CorruptRecord", result.failure
    assert result.failure.message.startswith(f"record 2 is corrupt: {reason}; "), result.failure.message
    assert result.rows == 1 and result.cursor.position == 1 and not result.quarantined and left == [1, 2, 3]
    assert [record["id"] for record in bucket_records(s3_server, bucket, "hold")] == [1]


def test_run_holds_at_the_row_and_verify_with_the_filter_counts_it_missing(
    s3_server: LocalS3, bucket: str, tmp_path: Path,
) -> None:
    """Through the commands: ``run --once`` with the filter stops at the row cut short with its reason (no
    "unexpected error", which the runner retries with backoff for ever), and ``verify -f`` of that exporter,
    asked to audit past the row (``--up-to``), reports it missing (the export neither filtered it out nor
    exported it) instead of failing on it."""
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    try:
        store.append_encoded([(timestamp_us(1), build(good_record(1))),
                              (timestamp_us(2), CUT["timestamp-length-of-two-bytes-cut"]),
                              (timestamp_us(3), build(good_record(3)))], sealed=True)
    finally:
        store.close()
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(path),
                               extra_spec="  filter: {models: [gpt-4o]}\n")
    ran = exporter.run_once()
    assert_no_traceback(ran)
    assert "unexpected" not in ran.stdout + ran.stderr, ran.stdout + ran.stderr
    assert "CorruptRecord: record 2 is corrupt: " in ran.stdout, ran.stdout + ran.stderr
    assert [record["id"] for record in bucket_records(s3_server, bucket, exporter.prefix)] == [1]
    audit = run_cli("verify", "-f", exporter.manifest, "--store", path, "--up-to", "3", cwd=tmp_path)
    assert_no_traceback(audit)
    assert audit.returncode == 1 and "unexpected" not in audit.stderr, audit.stdout + audit.stderr
    assert "missing: 2 (2, 3)" in audit.stdout, audit.stdout  # the row cut short, and the one held behind it
