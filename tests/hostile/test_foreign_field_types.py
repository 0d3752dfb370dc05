"""A gateway writes the store directly and gets a known field's type wrong, or its ``ts_us`` column.

Each row below is one well-formed CBOR map (it passes the structural check) whose known field has a type
the record schema (docs/store-contract.md) does not allow: a ``timestamp`` as plain text or an integer
instead of a CBOR date/time, ``usage`` as a list, token counts as text or floats, a ``model`` number, a
``ver`` other than 2, a ``status_code`` beyond any integer column, ``identity.tags`` that are not a list
of strings. Exported as they are, a reader of the bucket (DuckDB, Athena) would get a column of mixed
types or a failing query; nulled into Parquet's ``extra`` column, the typed column silently lacks the
value. Every format must treat such a row the same: as a corrupt record, quarantined or held per
``onCorruptRecord``, with a reason naming the field and the type it needs and never the value (a
gateway's value may be a secret). Fields the schema does not know, and nulls in optional fields, pass.

A row's ``ts_us`` (the store's column, which dates the object's folder and which retention ages by) must
be the body's ``timestamp``: a row whose two times differ by a millisecond or more is corrupt too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest

from capture_export.local_s3 import LocalS3
from tests.support.cli import run_cli
from tests.support.trust import (
    BASE_TIME,
    ExporterCase,
    Raw,
    SQLiteGateway,
    bucket_objects,
    bucket_records,
    build,
    find_leaks,
    good_record,
    head,
    run_export,
    state_of,
    timestamp_us,
    write_exporters,
)

FORMATS = {
    "cbor-zstd": {},
    "jsonl": {"format": "jsonl"},
    "jsonl.zst": {"format": "jsonl", "compression": "zstd"},
    "parquet": {"format": "parquet"},
}
CANARY = "cnryWrongType5e8d2a71c04b"
NUMBER_CANARY = 918_273_645_546_372  # a value of a wrong-typed number field, never to be printed


def _usage(n: int, **changes: Any) -> dict[str, Any]:
    return {**good_record(n)["usage"], **changes}


def _identity(n: int, **changes: Any) -> dict[str, Any]:
    return {**good_record(n)["identity"], **changes}


# Each builds the body of row n: one known field of the wrong type. The second item is the field path the
# reason must name, the third a word of the expected type it must name.
WRONG_TYPES: dict[str, tuple[Callable[[int], bytes], str, str]] = {
    "timestamp-text": (lambda n: build(good_record(n, timestamp=f"2026-11-24T12:00:0{n % 10}Z {CANARY}")),
                       "timestamp", "date/time"),
    "timestamp-integer": (lambda n: build(good_record(n, timestamp=NUMBER_CANARY)), "timestamp", "date/time"),
    "timestamp-missing": (lambda n: build({k: v for k, v in good_record(n).items() if k != "timestamp"}),
                          "timestamp", "date/time"),
    "usage-list": (lambda n: build(good_record(n, usage=[NUMBER_CANARY, 5, 0, 0])), "usage", "map"),
    "usage-input-tokens-text": (lambda n: build(good_record(n, usage=_usage(n, input_tokens=CANARY))),
                                "usage.input_tokens", "integer"),
    "usage-input-tokens-float": (lambda n: build(good_record(n, usage=_usage(n, input_tokens=12.5))),
                                 "usage.input_tokens", "integer"),
    "usage-input-tokens-negative": (lambda n: build(good_record(n, usage=_usage(n, input_tokens=-NUMBER_CANARY))),
                                    "usage.input_tokens", "non-negative"),
    "usage-input-tokens-beyond-int64": (lambda n: build(good_record(n, usage=_usage(n, input_tokens=2**64 + 7))),
                                        "usage.input_tokens", "integer"),
    "model-integer": (lambda n: build(good_record(n, model=NUMBER_CANARY)), "model", "string"),
    "ver-3": (lambda n: build(good_record(n, ver=3)), "ver", "2"),
    "ver-text": (lambda n: build(good_record(n, ver="2")), "ver", "2"),
    "status-code-huge": (lambda n: build(good_record(n, status_code=2**70 + NUMBER_CANARY)), "status_code",
                         "integer"),
    "status-code-bool": (lambda n: build(good_record(n, status_code=True)), "status_code", "integer"),
    "identity-tags-text": (lambda n: build(good_record(n, identity=_identity(n, tags=f"tag:{CANARY}"))),
                           "identity.tags", "list of strings"),
    "identity-tags-numbers": (lambda n: build(good_record(n, identity=_identity(n, tags=["tag:a", NUMBER_CANARY]))),
                              "identity.tags", "list of strings"),
    "identity-text": (lambda n: build(good_record(n, identity=CANARY)), "identity", "map"),
    "duration-ms-text": (lambda n: build(good_record(n, duration_ms=CANARY)), "duration_ms", "integer"),
    "session-id-bytes": (lambda n: build(good_record(n, session_id=CANARY.encode())), "session_id", "string"),
    "estimated-cost-total-text": (lambda n: build(good_record(n, estimated_cost={
        "input": 0.1, "output": 0.2, "total": CANARY, "currency": "USD"})), "estimated_cost.total", "number"),
    "path-map": (lambda n: build(good_record(n, path={"p": CANARY})), "path", "string"),
}


def _reasons(db: SQLiteGateway, tmp_path: Path) -> dict[int, str]:
    """``capture-export quarantine list``: each quarantined id and its line."""
    listing = run_cli("quarantine", "list", "--store", db.url, cwd=tmp_path)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"^\s*(\d+)\s.*$", listing.stdout, re.MULTILINE)}


def _no_values_in(text: str) -> None:
    assert CANARY not in text and str(NUMBER_CANARY) not in text, text


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_known_field_of_the_wrong_type_is_quarantined_in_every_format(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    cases = sorted(WRONG_TYPES)
    # A good row, then each wrong one followed by a good one: ids 1, then (2k, 2k+1) for case k.
    rows: list[tuple[int, bytes | str]] = [(timestamp_us(1), build(good_record(1)))]
    bad: dict[int, str] = {}
    for index, case in enumerate(cases):
        n = 2 * index + 2
        rows.append((timestamp_us(n), WRONG_TYPES[case][0](n)))
        rows.append((timestamp_us(n + 1), build(good_record(n + 1))))
        bad[n] = case
    assert db.insert(rows) == list(range(1, len(rows) + 1))

    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", {**FORMATS[fmt], "onCorruptRecord": "Quarantine"})])
    run = run_export(manifest, db, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Traceback" not in output, output
    _no_values_in(output)
    status = state_of(tmp_path, "usage")
    assert status["cursor"] == str(len(rows)), status
    assert status["quarantined"] == len(bad), status
    _no_values_in(json.dumps(status))

    reasons = _reasons(db, tmp_path)
    assert set(reasons) == set(bad), (reasons, bad)
    for record_id, case in bad.items():
        _, field, expected = WRONG_TYPES[case]
        line = reasons[record_id]
        assert re.search(rf"\b{re.escape(field)}\b", line) and expected in line, (case, line)
        _no_values_in(line)

    good = [n for n in range(1, len(rows) + 1) if n not in bad]
    records = bucket_records(s3_server, bucket, "llm")
    assert [record["id"] for record in records] == good
    assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY, str(NUMBER_CANARY)])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_known_field_of_the_wrong_type_holds_the_export_before_it_in_every_format(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    wrong = build(good_record(3, usage=_usage(3, input_tokens=CANARY)))
    db.insert([(timestamp_us(n), wrong if n == 3 else build(good_record(n))) for n in range(1, 6)])
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", FORMATS[fmt])])
    run = run_export(manifest, db, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "Traceback" not in output, output
    _no_values_in(output)
    status = state_of(tmp_path, "usage")
    assert status["cursor"] == "2", status
    assert status["lastRun"]["reason"] == "CorruptRecord", status["lastRun"]
    assert "record 3" in status["lastRun"]["error"] and "usage.input_tokens" in status["lastRun"]["error"], status
    _no_values_in(json.dumps(status))
    assert [record["id"] for record in bucket_records(s3_server, bucket, "llm")] == [1, 2]


def _ts_rows() -> tuple[list[tuple[int, bytes]], set[int]]:
    """Rows whose ``ts_us`` is not their body's timestamp (milliseconds, local time, a minute off), between
    good rows, and rows whose two times agree to within a millisecond (as a float's rounding gives)."""
    rows: list[tuple[int, bytes]] = []
    bad: set[int] = set()
    for n in range(1, 11):
        body = build(good_record(n))
        ts = timestamp_us(n)
        if n == 3:
            ts //= 1000  # milliseconds
        elif n == 5:
            ts += int(timedelta(hours=2).total_seconds() * 1_000_000)  # local time, UTC+2
        elif n == 7:
            ts -= 60_000_000
        elif n == 8:
            ts += 1  # one microsecond: the rounding of a float's seconds
        elif n == 9:
            body = build(good_record(n, timestamp=BASE_TIME + timedelta(seconds=n, microseconds=400)))  # 0.4 ms
        if n in (3, 5, 7):
            bad.add(n)
        rows.append((ts, body))
    return rows, bad


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_ts_us_that_is_not_the_bodys_timestamp_is_quarantined_in_every_format(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    rows, bad = _ts_rows()
    db.insert(rows)
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", {**FORMATS[fmt], "onCorruptRecord": "Quarantine",
                                                              "pathTemplate": "{prefix}/{date}"})])
    run = run_export(manifest, db, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert state_of(tmp_path, "usage")["quarantined"] == len(bad)
    reasons = _reasons(db, tmp_path)
    assert set(reasons) == bad, reasons
    for line in reasons.values():
        assert "ts_us" in line and "timestamp" in line, line
    records = bucket_records(s3_server, bucket, "llm")
    assert [record["id"] for record in records] == [n for n in range(1, 11) if n not in bad]
    # Every object lies in the folder of its records' own day.
    for key, _ in bucket_objects(s3_server, bucket, "llm"):
        assert key.startswith("llm/2026-11-24/"), key


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_fields_and_nulls_in_optional_fields_pass_in_every_format(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    bodies = {
        1: build(good_record(1, gateway_region="eu-west-1", retries=[1, 2])),
        2: build(good_record(2, usage={**_usage(2), "cache_write_tokens": "n/a"},
                             identity={**_identity(2), "team": 7})),
        3: build(good_record(3, estimated_cost=None, session_id=None, status_code=None)),
        4: build({k: v for k, v in good_record(4).items() if k not in ("usage", "identity", "ver")}),
        5: build(good_record(5, estimated_cost={"input": 1, "output": 0.5, "total": 1.5, "currency": "USD"})),
        # tag 0 text and tag 1 integer dates are CBOR date/times
        6: build(good_record(6, timestamp=Raw(b"\xc0" + cbor2.dumps("2026-11-24T12:00:06Z")))),
        7: build(good_record(7, timestamp=Raw(b"\xc1" + head(0, int(timestamp_us(7) // 1_000_000))))),
    }
    db.insert((timestamp_us(n), body) for n, body in bodies.items())
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", {**FORMATS[fmt], "onCorruptRecord": "Quarantine"})])
    run = run_export(manifest, db, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert state_of(tmp_path, "usage").get("quarantined", 0) == 0, output
    records = bucket_records(s3_server, bucket, "llm")
    assert [record["id"] for record in records] == list(bodies)
    if fmt == "cbor-zstd":
        assert records[0]["gateway_region"] == "eu-west-1" and records[1]["usage"]["cache_write_tokens"] == "n/a"


def test_a_row_quarantined_for_its_ts_us_is_released_as_it_is_under_its_records_own_time(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    db.insert([(timestamp_us(1), build(good_record(1))), (timestamp_us(2) // 1000, build(good_record(2))),
               (timestamp_us(3), build(good_record(3)))])
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", {"onCorruptRecord": "Quarantine",
                                                              "pathTemplate": "{prefix}/{date}"})])
    assert run_export(manifest, db, tmp_path).returncode == 0
    assert set(_reasons(db, tmp_path)) == {2}

    released = run_cli("quarantine", "release", "2", "--store", db.url, cwd=tmp_path)
    assert released.returncode == 0, released.stdout + released.stderr
    assert db.query("SELECT id, ts_us FROM captures WHERE id > 3") == [(4, timestamp_us(2))]
    again = run_export(manifest, db, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    records = bucket_records(s3_server, bucket, "llm")
    assert [record["id"] for record in records] == [1, 3, 4]
    assert {k: v for k, v in records[-1].items() if k != "id"} == cbor2.loads(build(good_record(2)))
    assert all(key.startswith("llm/2026-11-24/") for key, _ in bucket_objects(s3_server, bucket, "llm"))
