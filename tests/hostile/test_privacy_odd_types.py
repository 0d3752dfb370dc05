"""A gateway writes the store directly and puts conversation content in privacy mode's blind spots.

Privacy mode keeps, of a request or response, its headers, its ``raw_content_type`` and the values that
describe the exchange (numbers, flags, dates), and drops every text, list, map and byte string it does not
know. A writer that keeps content in a type that is none of those (a CBOR set of prompts, text under a tag
no reader knows) or under ``raw_content_type`` as a map, must not get that content past privacy mode in
any format: the exported records keep the describing values and nothing of the canary.

The dates a request or response holds are kept alike by every format: JSON Lines once dropped a date/time
that capture-export's own append had stored (its JSON decoding reads such a timestamp as its text, which privacy
mode then took for content), where the default format kept it.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cbor2
import pytest

from capture_export.api import S3ExporterSpec
from capture_export.export import Cursor, ExportEngine, ExporterId, batch
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.trust import (
    BASE_TIME,
    EVERY_FORMAT,
    NATIVE_PATHS,
    ExporterCase,
    Raw,
    SQLiteGateway,
    bucket_objects,
    bucket_records,
    build,
    find_leaks,
    good_record,
    run_export,
    text,
    timestamp_us,
    write_exporters,
)

FORMATS = {
    "cbor-zstd": {},
    "jsonl.zst": {"format": "jsonl", "compression": "zstd"},
}
CANARY = "cnryOddPrivacy7f3c19d2ab60"


def _odd_capture(n: int) -> dict[str, Any]:
    capture = good_record(n)["capture"]
    request, response = dict(capture["request"]), dict(capture["response"])
    # What describes the exchange, and stays: a number, a flag, a date.
    request.update({"attempt": 2, "streamed": False, "sent_at": BASE_TIME + timedelta(seconds=n)})
    request["prompt_variants"] = {f"{CANARY} set {n}"}  # CBOR tag 258: decoded as a Python set
    response["transcript"] = cbor2.CBORTag(4242, f"{CANARY} tagged {n}")  # a tag no reader knows
    request["raw_content_type"] = {"messages": [f"{CANARY} raw content type {n}"]}
    return {**capture, "request": request, "response": response}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_privacy_mode_drops_content_in_odd_types(fmt: str, s3_server: LocalS3, bucket: str,
                                                 tmp_path: Path) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    rows: list[tuple[int, bytes | str]] = [(timestamp_us(n), build(good_record(n, capture=_odd_capture(n))))
                                           for n in range(1, 4)]
    db.insert(rows)
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("private", "llm", {**FORMATS[fmt], "privacyMode": True})])
    run = run_export(manifest, db, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY]) == []
    records = bucket_records(s3_server, bucket, "llm")
    assert [record["id"] for record in records] == [1, 2, 3]
    request = records[0]["capture"]["request"]
    assert request["attempt"] == 2 and request["streamed"] is False and "sent_at" in request, request
    assert not {"prompt_variants", "raw_content_type"} & set(request), request
    assert "transcript" not in records[0]["capture"]["response"], records[0]


# -- dates: the same in every format -------------------------------------------------------------------------

SENT = datetime(2026, 11, 24, 12, 0, 1, 250000, tzinfo=UTC)
# Dates as capture-export's own append stores them (the ingest server, seed), with the RFC 3339 text every
# format carries for each (formats.md: JSON's timestamps are UTC with microseconds; Parquet's capture column is
# that JSON).
OWN_DATES: dict[str, tuple[Any, str]] = {
    "aware": (SENT, "2026-11-24T12:00:01.250000Z"),  # tag 0 "…01.250000Z": what JSON Lines dropped
    "naive": (SENT.replace(tzinfo=None), "2026-11-24T12:00:01.250000Z"),  # written as UTC
    "offset": (SENT.astimezone(timezone(timedelta(hours=-5))), "2026-11-24T12:00:01.250000Z"),
    "whole-second": (SENT.replace(microsecond=0), "2026-11-24T12:00:01.000000Z"),  # no fraction stored
    "day": (date(2026, 11, 24), "2026-11-24"),  # tag 1004
}
# The other forms a date takes in CBOR, as a writer may store them.
RAW_DATES: dict[str, tuple[Any, str]] = {
    "tag0-zero-fraction": (Raw(b"\xc0" + text("2026-11-24T12:00:01.000000Z")), "2026-11-24T12:00:01.000000Z"),
    "tag0-short-fraction": (Raw(b"\xc0" + text("2026-11-24T12:00:01.5Z")), "2026-11-24T12:00:01.500000Z"),
    "tag0-offset": (Raw(b"\xc0" + text("2026-11-24T07:00:01.25-05:00")), "2026-11-24T12:00:01.250000Z"),
    "tag1-int": (Raw(b"\xc1" + cbor2.dumps(1_795_000_000)), "2026-11-18T11:06:40.000000Z"),
    "tag1-float": (Raw(b"\xc1" + cbor2.dumps(1_795_000_000.25)), "2026-11-18T11:06:40.250000Z"),
    "tag100-days": (Raw(b"\xd8\x64" + cbor2.dumps(20416)), "2025-11-24"),
}
DATE_CANARY = "cnryPrivacyDates5e81a7c03d"


def _dated(n: int, dates: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Record n with each date under the request's and the response's own keys, beside content."""
    record = good_record(n)
    record["capture"]["request"]["body"]["messages"] = [{"role": "user", "content": f"{DATE_CANARY} {n}"}]
    for side in ("request", "response"):
        record["capture"][side].update({f"at_{name}": value for name, (value, _) in dates.items()})
        record["capture"][side]["note"] = f"{DATE_CANARY} note {n}"  # text: content, dropped
    return record


def _as_text(value: Any) -> Any:
    """A date as its RFC 3339 text (what JSON carries); text as it is."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.isoformat() if isinstance(value, date) else value


def _python_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NATIVE_PATHS:
        monkeypatch.setattr(batch, name, None)


@pytest.mark.parametrize("paths", ["native", "python"])
def test_privacy_mode_keeps_the_same_dates_in_every_format(paths: str, s3_server: LocalS3, bucket: str,
                                                           object_store: S3ObjectStore, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows 1-2: records appended by capture-export's own store (sealed: they go out unchecked, through the
    native scrub where it is built); row 3: the other forms, sealed as by a writer holding the store's key;
    row 4: every form, written by the gateway (foreign: checked and decoded first). Exported with privacy mode
    in each format (``native``: by ``capture-export run --once``, its encode pool and native paths as users
    run it; ``python``: in this process with the native paths off, what a build without a compiler runs)."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        store.append([_dated(1, OWN_DATES), _dated(2, OWN_DATES)])
        store.append_encoded([(timestamp_us(3), build(_dated(3, RAW_DATES)))], sealed=True)
        store.append_encoded([(timestamp_us(4), build(_dated(4, {**OWN_DATES, **RAW_DATES})))])
        if paths == "python":
            _python_paths(monkeypatch)
            for fmt, options in EVERY_FORMAT.items():
                spec = S3ExporterSpec.model_validate({
                    "bucket": bucket, "region": "us-east-1", "endpoint": s3_server.endpoint, "prefix": fmt,
                    "privacyMode": True, **options})
                result = ExportEngine(spec, ExporterId("default", fmt.replace(".", "-")), store, object_store,
                                      pool=None).run(Cursor())
                assert result.outcome == "Succeeded" and result.rows == 4, result.failure
    finally:
        store.close()
    if paths == "native":
        manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, [
            ExporterCase(fmt.replace(".", "-"), fmt, {**options, "privacyMode": True})
            for fmt, options in EVERY_FORMAT.items()])
        run = run_export(manifest, tmp_path / "store.sqlite", tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
    expected = {1: OWN_DATES, 2: OWN_DATES, 3: RAW_DATES, 4: {**OWN_DATES, **RAW_DATES}}
    for fmt in EVERY_FORMAT:
        assert find_leaks(bucket_objects(s3_server, bucket, fmt), [DATE_CANARY]) == [], fmt
        records = bucket_records(s3_server, bucket, fmt)
        assert [record["id"] for record in records] == [1, 2, 3, 4], fmt
        for record in records:
            capture = record["capture"]
            if isinstance(capture, str):  # Parquet: the capture column is its JSON
                capture = json.loads(capture)
            assert "messages" not in capture["request"]["body"], (fmt, record["id"])
            for side in ("request", "response"):
                dates = {key: value for key, value in capture[side].items() if key.startswith("at_")}
                assert "note" not in capture[side], (fmt, record["id"], side)
                want = {f"at_{name}": text for name, (_, text) in expected[record["id"]].items()}
                assert {key: _as_text(value) for key, value in dates.items()} == want, (fmt, record["id"], side)
                # JSON has no dates: RFC 3339 text there (and in Parquet's capture JSON); CBOR keeps its dates.
                kinds = {type(value) for value in dates.values()}
                assert kinds <= ({datetime, date} if fmt == "cbor-zstd" else {str}), (fmt, kinds)
