"""Rows whose seal is valid but whose body is odd CBOR: a buggy writer that holds our key.

A sealed row goes out unchecked (export/batch.py, ``check_rows``), and the native paths of _cbor_json.c
(``json_line``, ``parquet_row``, ``privacy_scrubbed``, ``privacy_prefilter``, ``spliced_records``) see exactly
such rows. The unit tests compare them with the Python path one body at a time; here a real SQLite store holds
the odd rows between ordinary ones, sealed by the store's own append (``append_encoded(sealed=True)``: what a
writer with a bug in its encoder would store), and every format is exported to the real S3 server, with and
without privacy mode, once with the native paths and once without them (the five ``batch._native_*`` set to
None, as the unit tests switch them off). What a user would notice:

* an odd row CBOR readers can decode (indefinite lengths, duplicate and non-text keys, tags, floats of every
  width, NaN and infinities, integers past 64 bits, undefined and simple values, deep nesting, known fields
  of the wrong type or missing, unknown fields) is exported exactly once, each row's id once, and the objects
  are the very bytes the Python path writes;
* a row no CBOR reader decodes (invalid UTF-8, nesting past cbor2's limit, a string reference outside its
  namespace, a length past the end) is a corrupt record in every format that decodes, as a malformed unsealed
  row is: ``onCorruptRecord: Hold`` exports the rows before it and stops with a message that names the row and
  why, ``Quarantine`` moves it (alone) into the store's quarantine and exports the rest; the same with or
  without the native paths. In the default format, which never decodes a sealed row, so is a row whose top
  level is no map the id can be spliced into;
* a map under tag 55799 (self-described CBOR: a marker that changes nothing), sealed or not, once or twice,
  is exported in every format as the same record without the marker, filtered and stripped as that record.

A sealed row holding its own ``id`` key (a body not from ``encode_body``, which leaves ``id`` out): the sealed
append refuses it, on SQLite and PostgreSQL alike, and writes nothing of its batch; unsealed, the same body is
a foreign row, checked and held at export. One sealed before that refusal (or by a writer that computes the
seal itself) exports the row's id, once, first, in every format that decodes it (JSON Lines, Parquet, privacy
mode); the default format ships its bytes undecoded (no per-row key scan on that path), which is why the
refusal is at the append.
"""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zstandard

from capture_export.api import S3ExporterSpec
from capture_export.export import Cursor, ExportEngine, ExporterId, batch
from capture_export.export.model import RunResult
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore
from capture_export.store.postgres import PostgresStore
from tests.support.trust import (
    EVERY_FORMAT,
    NATIVE_PATHS,
    Raw,
    bstr,
    bucket_objects,
    bucket_records,
    build,
    cbor_sequence,
    good_record,
    head,
    text,
    text_chunks,
    timestamp_us,
)


def _with(n: int, **fields: Any) -> dict[Any, Any]:
    return {**good_record(n), **fields}


def _part(n: int, side: str, **fields: Any) -> dict[Any, Any]:
    record = good_record(n)
    record["capture"][side] = {**record["capture"][side], **fields}
    return record


def _without(n: int, *names: str) -> dict[Any, Any]:
    return {key: value for key, value in good_record(n).items() if key not in names}


def _nested(levels: int) -> Raw:
    return Raw(b"\x81" * levels + text("deep"))


def _cost(item: bytes) -> dict[Any, Any]:
    return {"total": Raw(item)}


# Each builds the body of row n: odd, but one CBOR map that cbor2 (every reader the formats document) decodes.
ODD: dict[str, Callable[[int], bytes]] = {
    "indefinite-capture-map": lambda n: build(_with(n, capture=Raw(build(good_record(n)["capture"], indefinite=True)))),
    "indefinite-text": lambda n: build(_with(n, model=Raw(text_chunks("gpt-", "4o")))),
    "indefinite-raw-body": lambda n: build(_part(n, "request",
                                                 raw_body=Raw(b"\x5f" + bstr(b"a\0") + bstr(b"\xff") + b"\xff"))),
    "indefinite-array": lambda n: build(_with(n, identity={"login_name": "u", "node_id": "n",
                                                           "tags": Raw(b"\x9f" + text("tag:a") + b"\xff")})),
    "duplicate-top-level-key": lambda n: build({**good_record(n), Raw(text("model")): "second-model"}),
    "duplicate-capture": lambda n: build({**good_record(n), Raw(text("capture")): {"request": {"body": {"x": 1}}}}),
    "duplicate-header": lambda n: build(_part(n, "request", headers={"a": "1", Raw(text("a")): "2"})),
    "duplicate-among-100-keys": lambda n: build(_part(n, "request", headers={
        **{f"h{i}": str(i) for i in range(100)}, Raw(text("h50")): "again"})),
    "duplicate-raw-body": lambda n: build(_with(n, capture={"request": {"raw_body": b"one",
                                                                        Raw(text("raw_body")): b"two"}})),
    "integer-key": lambda n: build({**good_record(n), 7: "seven"}),
    "null-key": lambda n: build({**good_record(n), None: 1}),
    "float-key": lambda n: build({**good_record(n), Raw(b"\xf9\x3c\x00"): "one"}),
    "byte-string-header-name": lambda n: build(_part(n, "request", headers={Raw(bstr(b"k")): "v"})),
    "timestamp-tag0-with-offset": lambda n: build(_with(n, timestamp=Raw(b"\xc0" + text("2026-11-24T14:00:01+02:00")))),
    "timestamp-tag0-fraction": lambda n: build(_with(n, timestamp=Raw(b"\xc0" + text("2026-11-24T12:00:01.5Z")))),
    "timestamp-tag1-int": lambda n: build(_with(n, timestamp=Raw(b"\xc1" + cbor2.dumps(1_795_000_000 + n)))),
    "timestamp-tag1-float": lambda n: build(_with(n, timestamp=Raw(b"\xc1" + cbor2.dumps(1_795_000_000.25)))),
    "timestamp-untagged-text": lambda n: build(_with(n, timestamp="2026-11-24T12:00:00Z")),
    "timestamp-null": lambda n: build(_with(n, timestamp=None)),
    "bignum-tokens": lambda n: build(_with(n, usage={"input_tokens": Raw(b"\xc2" + bstr(b"\x01" + bytes(9))),
                                                     "output_tokens": 5})),
    "small-bignum": lambda n: build(_with(n, duration_ms=Raw(b"\xc2" + bstr(b"\x05")))),
    "negative-bignum": lambda n: build(_with(n, duration_ms=Raw(b"\xc3" + bstr(b"\x01" + bytes(9))))),
    "decimal-fraction-cost": lambda n: build(_with(n, estimated_cost=Raw(b"\xc4\x82\x21\x19\x30\x39"))),
    "decimal-fraction-total": lambda n: build(_with(n, estimated_cost=_cost(b"\xc4\x82\x21\x19\x30\x39"))),
    "set-tag": lambda n: build(_with(n, labels=Raw(b"\xd9\x01\x02\x82" + text("a") + text("b")))),
    "uuid-capture-id": lambda n: build(_with(n, capture_id=Raw(b"\xd8\x25" + bstr(bytes(range(16)))))),
    "unknown-tag": lambda n: build(_with(n, model=Raw(b"\xd9\x10\x92" + text("gpt")))),
    "shared-value-tags": lambda n: build(_with(n, model=Raw(b"\xd8\x1c" + text("gpt")), path=Raw(b"\xd8\x1d\x00"))),
    "half-float": lambda n: build(_with(n, estimated_cost=_cost(b"\xf9\x3e\x00"))),
    "single-float": lambda n: build(_with(n, estimated_cost=_cost(b"\xfa\x3f\xc0\x00\x00"))),
    "double-of-a-small-float": lambda n: build(_with(n, duration_ms=Raw(b"\xfb\x3f\xf8" + bytes(6)))),
    "nan-half": lambda n: build(_with(n, estimated_cost=_cost(b"\xf9\x7e\x00"))),
    "nan-double": lambda n: build(_with(n, estimated_cost={"total": float("nan")})),
    "infinity": lambda n: build(_with(n, estimated_cost={"total": float("inf")})),
    "minus-infinity-single": lambda n: build(_with(n, estimated_cost=_cost(b"\xfa\xff\x80\x00\x00"))),
    "minus-zero": lambda n: build(_with(n, estimated_cost={"total": -0.0})),
    "u64-max": lambda n: build(_with(n, duration_ms=2**64 - 1)),
    "two-to-the-63": lambda n: build(_with(n, duration_ms=2**63)),
    "i64-min": lambda n: build(_with(n, duration_ms=-(2**63))),
    "below-i64-min": lambda n: build(_with(n, duration_ms=-(2**63) - 1)),
    "minus-two-to-the-64": lambda n: build(_with(n, duration_ms=-(2**64))),
    "wide-integer-head": lambda n: build(_with(n, duration_ms=Raw(b"\x1b" + (100).to_bytes(8, "big")))),
    "wide-map-head": lambda n: b"\xb9" + len(good_record(n)).to_bytes(2, "big") + build(good_record(n))[1:],
    "eight-byte-map-head": lambda n: b"\xbb" + len(good_record(n)).to_bytes(8, "big") + build(good_record(n))[1:],
    "indefinite-top-level-map": lambda n: b"\xbf" + build(good_record(n))[1:] + b"\xff",
    "undefined": lambda n: build(_with(n, status_code=Raw(b"\xf7"))),
    "simple-0": lambda n: build(_with(n, status_code=Raw(b"\xe0"))),
    "simple-255": lambda n: build(_with(n, status_code=Raw(b"\xf8\xff"))),
    "undefined-response-body": lambda n: build(_part(n, "response", body=Raw(b"\xf7"))),
    "control-characters-and-separators": lambda n: build(_with(n, model="a\0b\u2028\x7f/\\ud800\"")),
    "nested-70": lambda n: build(_part(n, "request", body=_nested(70))),
    "nested-300": lambda n: build(_part(n, "request", body=_nested(300))),
    "tokens-as-text": lambda n: build(_with(n, usage={"input_tokens": "12", "output_tokens": "x"})),
    "usage-a-list": lambda n: build(_with(n, usage=[1, 2])),
    "cost-a-bool": lambda n: build(_with(n, estimated_cost=True)),
    "cost-as-text": lambda n: build(_with(n, estimated_cost="0.1")),
    "status-as-text": lambda n: build(_with(n, status_code="200")),
    "duration-a-float": lambda n: build(_with(n, duration_ms=1.5)),
    "model-an-integer": lambda n: build(_with(n, model=4)),
    "identity-as-text": lambda n: build(_with(n, identity="someone")),
    "capture-as-text": lambda n: build(_with(n, capture="text capture")),
    "capture-a-list": lambda n: build(_with(n, capture=[1, {"a": 2}])),
    "capture-null": lambda n: build(_with(n, capture=None)),
    "capture-bytes": lambda n: build(_with(n, capture=b"\0\1")),
    "request-as-text": lambda n: build(_with(n, capture={"request": "req", "response": None})),
    "raw-body-as-text": lambda n: build(_part(n, "request", raw_body="text raw")),
    "raw-bodies-as-bytes": lambda n: build(_with(n, capture={"request": {"raw_body": b"\0req\xff"},
                                                             "response": {"raw_body": b"resp",
                                                                          "raw_content_type": "a/b"}})),
    "request-body-bytes": lambda n: build(_part(n, "request", body=b"\1\2")),
    "headers-a-list": lambda n: build(_part(n, "request", headers=[["a", "b"]])),
    "no-timestamp": lambda n: build(_without(n, "timestamp")),
    "no-usage-or-model": lambda n: build(_without(n, "usage", "model")),
    "empty-map": lambda n: build({}),
    "only-ver": lambda n: build({"ver": 2}),
    "ver-3": lambda n: build(_with(n, ver=3)),
    "unknown-fields": lambda n: build(_with(n, zzz_extra={"nested": [1, 2.5, None]}, aaa=b"bytes")),
}

# Each builds the body of row n: no CBOR reader decodes it as one record.
UNDECODABLE: dict[str, Callable[[int], bytes]] = {
    "invalid-utf8-value": lambda n: build(_with(n, model=Raw(head(3, 4) + b"g\xffpt"))),
    "invalid-utf8-key": lambda n: build({**good_record(n), Raw(head(3, 2) + b"\xc3("): 1}),
    "invalid-utf8-in-capture": lambda n: build(_part(n, "request",
                                                     body={"messages": [Raw(head(3, 3) + b"\xed\xa0\x80")]})),
    "nested-past-cbor2s-limit": lambda n: build(_part(n, "request", body=_nested(600))),
    "string-reference-outside-namespace": lambda n: build(_with(n, model=Raw(b"\xd8\x19\x00"))),
    "length-past-the-end": lambda n: build(_with(n, model=Raw(b"\x7b" + (2**62).to_bytes(8, "big")))),
}


def _spec(s3: LocalS3, bucket: str, prefix: str, fmt: str, privacy: bool, **more: Any) -> S3ExporterSpec:
    return S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": s3.endpoint,
                                          "prefix": prefix, "limit": 1000, **EVERY_FORMAT[fmt], "privacyMode": privacy,
                                          **more})


def _export(store: SQLiteStore, objects: S3ObjectStore, spec: S3ExporterSpec, name: str) -> RunResult:
    # In this process (no encode pool), so that the native paths are on or off as this test sets them.
    return ExportEngine(spec, ExporterId("default", name), store, objects, pool=None).run(Cursor())


def _plain(key: str, data: bytes) -> bytes:
    if key.endswith((".zstd", ".zst")):
        return zstandard.ZstdDecompressor().decompress(data)
    return gzip.decompress(data) if key.endswith(".gz") else data


def _objects(s3: LocalS3, bucket: str, prefix: str) -> list[tuple[str, bytes]]:
    """The data objects under the prefix, keys without it, contents decompressed (Parquet: the file)."""
    return [(key[len(prefix):], _plain(key, data)) for key, data in bucket_objects(s3, bucket, prefix)]


def _ids(s3: LocalS3, bucket: str, prefix: str) -> list[Any]:
    """Every exported record's id, read as users read the objects. JSON Lines are split at newlines only, as a
    file is read line by line (``str.splitlines`` would also split at the U+2028 that JSON text may hold)."""
    if not any(".jsonl" in key for key, _ in bucket_objects(s3, bucket, prefix)):
        return [record["id"] for record in bucket_records(s3, bucket, prefix)]
    return [json.loads(line)["id"] for _, plain in _objects(s3, bucket, prefix) for line in plain.split(b"\n") if line]


@pytest.fixture
def native_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The native paths, each counted where it wrote something (not None); fails where they are not built."""
    if any(getattr(batch, name) is None for name in NATIVE_PATHS):
        pytest.skip("the native extension is not built here (no C compiler?): nothing to compare")
    calls = dict.fromkeys(NATIVE_PATHS, 0)

    def counted(name: str) -> Callable[..., Any]:
        function = getattr(batch, name)

        def call(*args: Any) -> Any:
            out = function(*args)
            calls[name] += out is not None
            return out
        return call

    for name in NATIVE_PATHS:
        monkeypatch.setattr(batch, name, counted(name))
    return calls


@contextmanager
def _python_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The native paths off (what a build without a compiler runs), then back as they were."""
    with monkeypatch.context() as patch:
        for name in NATIVE_PATHS:
            patch.setattr(batch, name, None)
        yield


def _export_both_ways(store: SQLiteStore, objects: S3ObjectStore, s3: LocalS3, bucket: str, fmt: str, privacy: bool,
                      monkeypatch: pytest.MonkeyPatch, total: int) -> None:
    """Export the store twice, with the native paths (prefix ``native``) and without them (``python``); each
    run exports all ``total`` rows and quarantines none."""
    native = _export(store, objects, _spec(s3, bucket, "native", fmt, privacy), "native")
    with _python_only(monkeypatch):
        python = _export(store, objects, _spec(s3, bucket, "python", fmt, privacy), "python")
    for result in (native, python):
        assert result.outcome == "Succeeded" and result.failure is None, result.failure
        assert result.rows == total and result.cursor.position == total and not result.quarantined


def _seal_odd_rows(store: SQLiteStore, odd: dict[str, Callable[[int], bytes]]) -> dict[int, str]:
    """An ordinary row, then each odd one, all sealed by the store's own append; the odd rows' ids."""
    rows, names = [], {}
    for n, (name, make) in enumerate(odd.items()):
        rows.append((timestamp_us(2 * n + 1), build(good_record(2 * n + 1))))
        rows.append((timestamp_us(2 * n + 2), make(2 * n + 2)))
        names[2 * n + 2] = name
    rows.append((timestamp_us(2 * len(odd) + 1), build(good_record(2 * len(odd) + 1))))
    assert store.append_encoded(rows, sealed=True) == len(rows)
    seal = store.record_seal()
    assert all(seal.valid(row.body, row.seal) for row in store.read_batch(0, len(rows) + 1))
    return names


@pytest.mark.parametrize("privacy", [False, True], ids=["plain", "privacy"])
@pytest.mark.parametrize("fmt", list(EVERY_FORMAT))
def test_odd_sealed_rows_export_once_and_as_the_python_path_writes_them(
    fmt: str, privacy: bool, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
    native_calls: dict[str, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        names = _seal_odd_rows(store, ODD)
        total = 2 * len(ODD) + 1
        _export_both_ways(store, object_store, s3_server, bucket, fmt, privacy, monkeypatch, total)
    finally:
        store.close()
    # Each row's id once: the odd rows neither lost, nor duplicated, nor holding up their neighbours.
    ids = _ids(s3_server, bucket, "native")
    assert sorted(ids) == list(range(1, total + 1)), [names.get(i, i) for i in ids if ids.count(i) != 1]
    # The very objects the Python path writes: same keys, same bytes (decompressed; Parquet's file itself).
    written, expected = _objects(s3_server, bucket, "native"), _objects(s3_server, bucket, "python")
    assert [key for key, _ in written] == [key for key, _ in expected]
    for (key, got), (_, want) in zip(written, expected, strict=True):
        if got != want and fmt.startswith("jsonl"):
            differ = [names.get(n + 1, n + 1) for n, (a, b) in enumerate(zip(got.splitlines(), want.splitlines(),
                                                                            strict=True)) if a != b]
            pytest.fail(f"{key}: the native path wrote other lines for rows {differ}")
        assert got == want, key
    # The native paths did take part (the ordinary rows at least), in the formats that have them.
    # (The default format's native splice takes a batch only when all its rows are small maps: not this one.)
    if fmt.startswith("jsonl") and not privacy:
        assert native_calls["_native_json_line"] >= len(ODD) + 1
    elif fmt == "parquet" and not privacy:
        assert native_calls["_native_parquet_row"] >= len(ODD) + 1
    elif privacy:
        assert native_calls["_native_privacy_scrubbed"] + native_calls["_native_privacy_prefilter"] >= len(ODD) + 1
        if fmt == "parquet":  # the scrubbed bytes' rows
            assert native_calls["_native_parquet_row"] >= len(ODD) + 1


def test_odd_sealed_small_maps_are_spliced_natively_as_python_splices_them(
    s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path, native_calls: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default format splices a batch's ids natively (``spliced_records``) when every row is a map of at most
    22 pairs, the shape our append writes: odd rows of that shape, odd inside, take it, and the objects are the
    Python path's, byte for byte."""
    small = {name: make for name, make in ODD.items() if len(body := make(2)) > 22 and 0xA0 <= body[0] <= 0xB6}
    assert len(small) > len(ODD) // 2
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        names = _seal_odd_rows(store, small)
        total = 2 * len(small) + 1
        _export_both_ways(store, object_store, s3_server, bucket, "cbor-zstd", False, monkeypatch, total)
    finally:
        store.close()
    assert native_calls["_native_spliced_records"] >= 1
    ids = _ids(s3_server, bucket, "native")
    assert sorted(ids) == list(range(1, total + 1)), [names.get(i, i) for i in ids if ids.count(i) != 1]
    assert _objects(s3_server, bucket, "native") == _objects(s3_server, bucket, "python")


DECODING = [(fmt, privacy) for fmt in EVERY_FORMAT for privacy in (False, True) if fmt != "cbor-zstd" or privacy]
DECODING_IDS = [f"{fmt}-{'privacy' if privacy else 'plain'}" for fmt, privacy in DECODING]


@pytest.mark.parametrize(("fmt", "privacy"), DECODING, ids=DECODING_IDS)
def test_a_sealed_row_no_reader_decodes_holds_the_export_at_that_row_alike_on_both_paths(
    fmt: str, privacy: bool, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
    native_calls: dict[str, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """onCorruptRecord Hold (the default), as for a malformed unsealed row: the rows before it are exported,
    the export holds before it, and the failure names the row and why (not the batch's range)."""
    for number, (name, make) in enumerate(UNDECODABLE.items()):
        store = SQLiteStore(tmp_path / f"store-{number}.sqlite")
        try:
            rows = [(timestamp_us(n), build(good_record(n))) for n in (1, 2)]
            rows += [(timestamp_us(3), make(3)), (timestamp_us(4), build(good_record(4)))]
            store.append_encoded(rows, sealed=True)
            native = _export(store, object_store, _spec(s3_server, bucket, f"native-{number}", fmt, privacy),
                             f"native-{number}")
            with _python_only(monkeypatch):
                python = _export(store, object_store, _spec(s3_server, bucket, f"python-{number}", fmt, privacy),
                                 f"python-{number}")
            assert [row.id for row in store.read_batch(0, 10)] == [1, 2, 3, 4], name  # nothing moved aside
        finally:
            store.close()
        for result in (native, python):
            assert result.outcome == "Failed" and result.failure is not None, (name, result)
            assert result.rows == 2 and result.cursor.position == 2 and not result.quarantined, (name, result)
            assert result.failure.reason == "CorruptRecord", (name, result.failure)
            assert result.failure.message.startswith("record 3 is corrupt: "), (name, result.failure.message)
            assert "records 1-" not in result.failure.message and "Quarantine" in result.failure.message, name
        assert native.failure is not None and python.failure is not None
        assert (native.failure.reason, native.failure.message) == (python.failure.reason, python.failure.message), name
        assert "Traceback" not in native.failure.message
        assert sorted(_ids(s3_server, bucket, f"native-{number}")) == [1, 2], name
        assert _objects(s3_server, bucket, f"native-{number}") == _objects(s3_server, bucket, f"python-{number}")


@pytest.mark.parametrize(("fmt", "privacy"), DECODING, ids=DECODING_IDS)
def test_with_quarantine_a_sealed_row_no_reader_decodes_is_quarantined_like_an_unsealed_one(
    fmt: str, privacy: bool, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
    native_calls: dict[str, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """onCorruptRecord Quarantine: each such row is moved to the store's quarantine with its reason and
    reported in the run's result, every other row exported once, the cursor past them all; the same on
    both paths. An unsealed malformed row in the same batch is quarantined beside them."""
    exported: dict[str, list[Any]] = {}
    for path in ("native", "python"):
        store = SQLiteStore(tmp_path / f"store-{path}.sqlite")
        try:
            names = _seal_odd_rows(store, UNDECODABLE)
            total = 2 * len(UNDECODABLE) + 1
            store.append_encoded([(timestamp_us(total + 1), build(good_record(total + 1))[:-3])])  # unsealed, cut
            spec = _spec(s3_server, bucket, path, fmt, privacy, onCorruptRecord="Quarantine")
            if path == "native":
                result = _export(store, object_store, spec, path)
            else:
                with _python_only(monkeypatch):
                    result = _export(store, object_store, spec, path)
            in_quarantine = [record.id for record in store.quarantined()]
            left = [row.id for row in store.read_batch(0, total + 10)]
        finally:
            store.close()
        assert result.outcome == "Succeeded" and result.failure is None, (path, result.failure)
        bad = [*sorted(names), total + 1]
        assert [record_id for record_id, _ in result.quarantined] == bad, result.quarantined
        reasons = dict(result.quarantined)
        assert all(reasons[record_id] for record_id in names), reasons
        assert reasons[names_of(names, "invalid-utf8-value")] == "invalid UTF-8 in a text string"
        assert in_quarantine == bad and sorted(set(left) | set(bad)) == list(range(1, total + 2))
        assert result.rows == total - len(UNDECODABLE) and result.cursor.position == total + 1, result
        ids = _ids(s3_server, bucket, path)
        assert sorted(ids) == [n for n in range(1, total + 1) if n not in names], [names.get(i, i) for i in ids]
        exported[path] = _objects(s3_server, bucket, path)
    assert exported["native"] == exported["python"]


def names_of(names: dict[int, str], name: str) -> int:
    return next(record_id for record_id, each in names.items() if each == name)


def _tagged(body: bytes, times: int = 1) -> bytes:
    """``body`` under the self-described CBOR tag (55799, RFC 8949 3.4.6): a marker that changes nothing."""
    return b"\xd9\xd9\xf7" * times + body


@pytest.mark.parametrize("foreign", [True, False], ids=["with-a-foreign-row", "all-sealed"])
@pytest.mark.parametrize("privacy", [False, True], ids=["plain", "privacy"])
@pytest.mark.parametrize("fmt", list(EVERY_FORMAT))
def test_a_self_described_map_exports_as_the_same_record_without_the_tag(
    fmt: str, privacy: bool, foreign: bool, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore,
    tmp_path: Path, native_calls: dict[str, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A map under tag 55799, sealed (once or twice tagged) or foreign, exports in every format, with and
    without the native paths, as the very bytes of the same record stored without the tag (all sealed: the
    default format's batch of rows that all go out as stored)."""
    def fill(store: SQLiteStore, tag: Callable[[bytes], bytes], twice: Callable[[bytes], bytes]) -> None:
        store.append_encoded([(timestamp_us(1), build(good_record(1))),
                              (timestamp_us(2), tag(build(good_record(2)))),
                              (timestamp_us(3), twice(build(good_record(3))))], sealed=True)
        store.append_encoded([(timestamp_us(4), tag(build(good_record(4))))], sealed=not foreign)
        store.append_encoded([(timestamp_us(5), build(good_record(5)))], sealed=True)

    plain = SQLiteStore(tmp_path / "plain.sqlite")
    tagged = SQLiteStore(tmp_path / "tagged.sqlite")
    try:
        fill(plain, lambda body: body, lambda body: body)
        fill(tagged, _tagged, lambda body: _tagged(body, 2))
        results = {"plain": _export(plain, object_store, _spec(s3_server, bucket, "plain", fmt, privacy), "plain"),
                   "tagged": _export(tagged, object_store, _spec(s3_server, bucket, "tagged", fmt, privacy), "tagged")}
        with _python_only(monkeypatch):
            results["python"] = _export(tagged, object_store, _spec(s3_server, bucket, "python", fmt, privacy),
                                        "python")
    finally:
        plain.close()
        tagged.close()
    for name, result in results.items():
        assert result.outcome == "Succeeded" and result.failure is None, (name, result.failure)
        assert result.rows == 5 and result.cursor.position == 5 and not result.quarantined, (name, result)
    expected = _objects(s3_server, bucket, "plain")
    assert _objects(s3_server, bucket, "tagged") == expected
    assert _objects(s3_server, bucket, "python") == expected


@pytest.mark.parametrize("fmt", list(EVERY_FORMAT))
def test_a_self_described_map_is_filtered_and_stripped_as_the_map_itself(
    fmt: str, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
) -> None:
    """A filter reads the map under the tag, and ``stripHeaders`` strips its headers (cbor2 decodes a map under
    tag 55799 as an immutable one, which nothing could strip): the same objects as for the untagged rows, and
    no stripped header in them."""
    more = {"stripHeaders": ["x-request-id"], "filter": {"models": ["gpt-4o"]}}
    written = {}
    for name, tag in (("plain", lambda body: body), ("tagged", _tagged)):
        store = SQLiteStore(tmp_path / f"{name}.sqlite")
        try:
            store.append_encoded([(timestamp_us(n), tag(build(good_record(n, model="gpt-4o" if n % 2 else "o3"))))
                                  for n in range(1, 7)], sealed=True)
            result = _export(store, object_store, _spec(s3_server, bucket, name, fmt, False, **more), name)
        finally:
            store.close()
        assert result.outcome == "Succeeded" and result.failure is None, (name, result.failure)
        assert result.rows == 3 and result.cursor.position == 6 and not result.quarantined, (name, result)
        written[name] = _objects(s3_server, bucket, name)
        assert sorted(_ids(s3_server, bucket, name)) == [1, 3, 5], name
    assert written["tagged"] == written["plain"]
    assert all(b"req-" not in data for _, data in written["tagged"])


def _nested_tags(n: int, tag: Callable[[bytes], bytes]) -> bytes:
    """Row n with a credential header, its request and its response body each under ``tag``."""
    record = good_record(n)
    request = record["capture"]["request"]
    request["headers"] = {**request["headers"], "authorization": "Bearer SECRET-TOKEN", "x-custom": "custom-secret"}
    record["capture"]["request"] = Raw(tag(cbor2.dumps(request)))
    record["capture"]["response"]["body"] = Raw(tag(cbor2.dumps(record["capture"]["response"]["body"])))
    return build(record)


@pytest.mark.parametrize("redact", [False, True], ids=["as-is", "redacted"])
@pytest.mark.parametrize("fmt", list(EVERY_FORMAT))
def test_a_self_described_map_inside_a_record_is_that_map(
    fmt: str, redact: bool, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
) -> None:
    """Tag 55799 inside a foreign record, and inside a sealed one wherever the export decodes it (any format
    but the default's pass-through), is the map it tags: credential headers stripped from it (they reached
    the bucket: cbor2 decodes a tagged map as an immutable one, which the strip passed by), the exporter's
    ``stripHeaders`` and ``redactFields`` applied to it, JSON written as JSON (not ``frozendict(...)`` text):
    the same objects as for the same rows without the tag."""
    more: dict[str, Any] = {"stripHeaders": ["x-custom"]}
    if redact:
        more["redactFields"] = ["capture.response.body.choices"]
    written = {}
    for name, tag in (("plain", lambda body: body), ("tagged", _tagged)):
        store = SQLiteStore(tmp_path / f"{name}.sqlite")
        try:
            store.append_encoded([(timestamp_us(1), _nested_tags(1, tag))])  # foreign: checked in full
            if fmt != "cbor-zstd" or redact:  # the default format ships a sealed row's bytes as stored
                store.append_encoded([(timestamp_us(2), _nested_tags(2, tag))], sealed=True)
            result = _export(store, object_store, _spec(s3_server, bucket, name, fmt, False, **more), name)
        finally:
            store.close()
        assert result.outcome == "Succeeded" and result.failure is None, (name, result.failure)
        assert not result.quarantined, (name, result)
        written[name] = _objects(s3_server, bucket, name)
    assert written["tagged"] == written["plain"]
    for key, data in written["tagged"]:
        if key.endswith(".parquet"):  # compressed columns: the same file as the plain rows' says enough
            continue
        assert b"SECRET-TOKEN" not in data and b"custom-secret" not in data and b"frozendict" not in data
        assert (b"finish_reason" in data) is not redact


@pytest.mark.parametrize("policy", ["Hold", "Quarantine"])
def test_a_sealed_row_the_default_format_cannot_splice_is_held_or_quarantined_by_itself(
    policy: str, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
) -> None:
    """The default format splices ids into sealed rows undecoded; a sealed top-level item that is no map (or
    a map whose head is malformed CBOR) cannot take one: Hold exports the rows before it and names it,
    Quarantine moves it aside and exports the rest, as for an unsealed row."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        store.append_encoded([(timestamp_us(1), build(good_record(1))), (timestamp_us(2), cbor2.dumps([1, 2])),
                              (timestamp_us(3), build(good_record(3))),
                              (timestamp_us(4), b"\xbc" + build(good_record(4))[1:]),  # reserved length
                              (timestamp_us(5), build(good_record(5))),
                              (timestamp_us(6), b"\xba\x00\x01"),  # a four-byte count cut short
                              (timestamp_us(7), build(good_record(7)))], sealed=True)
        result = _export(store, object_store, _spec(s3_server, bucket, policy, "cbor-zstd", False,
                                                    onCorruptRecord=policy), policy)
        quarantined = [record.id for record in store.quarantined()]
    finally:
        store.close()
    if policy == "Hold":
        assert result.outcome == "Failed" and result.failure is not None
        assert result.failure.message.startswith("record 2 is corrupt: not a CBOR map"), result.failure.message
        assert result.rows == 1 and result.cursor.position == 1 and quarantined == []
        assert _ids(s3_server, bucket, policy) == [1]
    else:
        assert result.outcome == "Succeeded" and result.failure is None, result.failure
        assert result.quarantined == [(2, "not a CBOR map"), (4, "unsupported map header"),
                                      (6, "a map head cut short")], result.quarantined
        assert result.rows == 4 and result.cursor.position == 7 and quarantined == [2, 4, 6]
        assert _ids(s3_server, bucket, policy) == [1, 3, 5, 7]


@pytest.mark.parametrize("filtered", [False, True], ids=["all", "filtered"])
def test_a_batch_of_rows_the_default_format_cannot_splice_is_quarantined_at_once(
    filtered: bool, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
) -> None:
    """A whole batch of such rows (a writer with our key and a bug writes many) is quarantined in one go: the
    batch is encoded again once with all of them left out, not once per row (a thousand nested retries)."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        bad = [(timestamp_us(n), cbor2.dumps(["not", "a", "map", n])) for n in range(2, 1000)]
        store.append_encoded([(timestamp_us(1), build(good_record(1))), *bad,
                              (timestamp_us(1000), build(good_record(1000)))], sealed=True)
        more: dict[str, Any] = {"filter": {"models": ["gpt-4o"]}} if filtered else {}
        result = _export(store, object_store, _spec(s3_server, bucket, "many", "cbor-zstd", False,
                                                    onCorruptRecord="Quarantine", **more), "many")
        quarantined = [record.id for record in store.quarantined()]
    finally:
        store.close()
    assert result.outcome == "Succeeded" and result.failure is None, result.failure
    assert quarantined == list(range(2, 1000)) and result.rows == 2 and result.cursor.position == 1000
    assert _ids(s3_server, bucket, "many") == [1, 1000]


def test_every_odd_row_is_one_map_cbor2_decodes_and_no_undecodable_one_is() -> None:
    """The two lists say what they claim (else a test above would prove less than it says)."""
    for name, make in ODD.items():
        assert isinstance(cbor2.load(io.BytesIO(make(2))), dict), name
    for name, make in UNDECODABLE.items():
        with pytest.raises(cbor2.CBORDecodeError):
            assert cbor2.loads(make(3)) is None, name


@pytest.mark.parametrize("record_id", [50, 300, 70_000], ids=["one-byte-id", "two-byte-id", "four-byte-id"])
def test_a_sealed_lone_map_head_is_quarantined_whatever_the_rows_id(
    record_id: int, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
) -> None:
    """A sealed ``0xa5`` (a map of five pairs with nothing after it) was quarantined at id 50 but spliced and
    shipped at id 300: every CBOR reader of that object then took the next record for its five pairs."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    prefix = f"lone-{record_id}"
    try:
        store.append_encoded([(timestamp_us(1), build(good_record(1)))], sealed=True)
        store._conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'captures'", (record_id - 1,))
        store.append_encoded([(timestamp_us(2), b"\xa5"), (timestamp_us(3), build(good_record(3)))], sealed=True)
        result = _export(store, object_store, _spec(s3_server, bucket, prefix, "cbor-zstd", False,
                                                    onCorruptRecord="Quarantine"), prefix)
        quarantined = [record.id for record in store.quarantined()]
    finally:
        store.close()
    assert result.outcome == "Succeeded" and result.failure is None, result.failure
    assert result.quarantined == [(record_id, "a map longer than its body")], result.quarantined
    assert quarantined == [record_id]
    records = bucket_records(s3_server, bucket, prefix)  # every record decodes, as users read the object
    assert [record["id"] for record in records] == [1, record_id + 1]
    assert all(record["capture_id"] for record in records)


# Each builds the body of row n holding a top-level "id" of its own, in the ways a buggy encoder writes one.
OWN_ID: dict[str, Callable[[int], bytes]] = {
    "id-first": lambda n: build({"id": 10_000 + n, **good_record(n)}),
    "id-last": lambda n: build({**good_record(n), "id": 10_000 + n}),
    "id-as-text": lambda n: build({**good_record(n), "id": "row-one"}),
    "id-null": lambda n: build({"id": None, **good_record(n)}),
    "id-twice": lambda n: build({"id": 10_000 + n, **good_record(n), Raw(text("id")): 20_000 + n}),
    "id-key-in-chunks": lambda n: build({**good_record(n), Raw(text_chunks("i", "d")): 10_000 + n}),
    "id-in-an-indefinite-map": lambda n: build({**good_record(n), "id": 10_000 + n}, indefinite=True),
    "id-under-tag-55799": lambda n: b"\xd9\xd9\xf7" + build({"id": 10_000 + n, **good_record(n)}),
}


def _open(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> SQLiteStore | PostgresStore:
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "store.sqlite")
    return PostgresStore(request.getfixturevalue("pg_dsn"))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_sealed_append_refuses_a_body_that_holds_its_own_id(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    """The sealed append's bodies come from ``encode_body``, which leaves ``id`` out: the store assigns ids. A
    body that holds one anyway (at the top level, however encoded) is refused with the batch it came in, nothing
    written; an ``id`` deeper in the record (a response's, a tool call's) is any other field; unsealed, the same
    body is accepted as a foreign row (the export's check holds it: ids are the store's)."""
    store = _open(kind, tmp_path, request)
    try:
        store.append_encoded([(timestamp_us(1), build(good_record(1)))], sealed=True)
        for name, make in OWN_ID.items():
            with pytest.raises(ValueError, match=r"row 2 of 3 holds an 'id' key"):
                store.append_encoded([(timestamp_us(2), build(good_record(2))), (timestamp_us(3), make(3)),
                                      (timestamp_us(4), build(good_record(4)))], sealed=True)
            assert store.max_id() == 1, name
        nested = good_record(2)
        nested["capture"]["response"]["body"]["id"] = "chatcmpl-123"
        nested["identity"]["id"] = 7
        assert store.append_encoded([(timestamp_us(2), build(nested))], sealed=True) == 2
        assert store.append_encoded([(timestamp_us(3), OWN_ID["id-first"](3))]) == 3  # unsealed: foreign
        bodies = {row.id: row for row in store.read_batch(0, 10)}
        seal = store.record_seal()
        assert seal is not None and seal.valid(bodies[2].body, bodies[2].seal)
        assert bodies[3].seal is None
    finally:
        store.close()


OWN_ID_DECODED = [(fmt, privacy) for fmt in EVERY_FORMAT for privacy in (False, True)
                  if fmt != "cbor-zstd" or privacy]


def _top_level_ids(s3: LocalS3, bucket: str, prefix: str) -> list[list[Any]]:
    """Each exported record's top-level ``id`` values, every one of them (a repeated key too), as read from the
    objects: JSON Lines by pairs, CBOR by pairs (cbor2 keeps the last), Parquet's column."""
    found: list[list[Any]] = []
    for key, plain in _objects(s3, bucket, prefix):
        if ".jsonl" in key:
            for line in plain.split(b"\n"):
                if line:
                    pairs = json.loads(line, object_pairs_hook=lambda items: items)
                    found.append([value for name, value in pairs if name == "id"])
        elif key.endswith(".parquet"):
            import pyarrow.parquet as pq

            found.extend([value] for value in pq.read_table(io.BytesIO(plain)).column("id").to_pylist())
        else:
            stream = io.BytesIO(plain)
            decoder = cbor2.CBORDecoder(stream)
            while stream.tell() < len(plain):
                start = stream.tell()
                record = decoder.decode()
                raw = plain[start:stream.tell()]
                found.append([record["id"]] * (1 + (raw.count(b"\x62id") > 1)))
    return found


@pytest.mark.parametrize(("fmt", "privacy"), OWN_ID_DECODED,
                         ids=[f"{fmt}-{'privacy' if privacy else 'plain'}" for fmt, privacy in OWN_ID_DECODED])
def test_a_row_sealed_with_its_own_id_exports_the_rows_id_in_every_format_that_decodes_it(
    fmt: str, privacy: bool, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path: Path,
    native_calls: dict[str, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows sealed before the append refused such bodies (or by a writer that computes the seal itself: with
    SQLite anyone who opens the file can): each record carries its row's id, exactly once and first, as the
    Parquet path always wrote it (JSON Lines and privacy mode wrote the body's own), on both paths alike, so
    the bucket's ids are the store's and ``verify`` counts each row once."""
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    try:
        store.append_encoded([(timestamp_us(1), build(good_record(1)))], sealed=True)
        seal = store.record_seal()
        rows = [(timestamp_us(n), make(n)) for n, make in enumerate(OWN_ID.values(), start=2)]
        rows.append((timestamp_us(len(rows) + 2), build(good_record(len(rows) + 2))))
        with sqlite3.connect(path) as gateway:  # a writer that holds the store's key
            gateway.executemany("INSERT INTO captures (ts_us, body, seal) VALUES (?, ?, ?)",
                                [(ts, body, seal.seal(body)) for ts, body in rows])
        gateway.close()
        total = len(rows) + 1
        _export_both_ways(store, object_store, s3_server, bucket, fmt, privacy, monkeypatch, total)
    finally:
        store.close()
    for prefix in ("native", "python"):
        assert _top_level_ids(s3_server, bucket, prefix) == [[n] for n in range(1, total + 1)], prefix
        assert [record["id"] for record in bucket_records(s3_server, bucket, prefix)] == list(range(1, total + 1))
    if fmt != "parquet":  # JSON Lines and CBOR: the id first, as in every other record
        for _, plain in _objects(s3_server, bucket, "native"):
            assert all(line.startswith(b'{"id":') for line in plain.split(b"\n") if line) if "jsonl" in fmt \
                else all(isinstance(r, dict) and next(iter(r)) == "id" for r in cbor_sequence(plain))
    assert _objects(s3_server, bucket, "native") == _objects(s3_server, bucket, "python")

