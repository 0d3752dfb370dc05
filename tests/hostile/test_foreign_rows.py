"""A buggy gateway writes the store directly: a malformed row must never reach the bucket or corrupt its
neighbours.

The gateway inserts rows as any writer may (``INSERT INTO captures (ts_us, body) VALUES (…)``): good ones,
then a malformed one, then good ones again. With the default ``onCorruptRecord`` (Hold) the export writes
the good records before the malformed one, stops before it with a condition naming its id and the reason
(never its bytes), and the bucket reads back, as users read it (zstd + a cbor2 sequence), as exactly the
good records before it. Well-formed rows in unusual encodings (indefinite lengths, non-minimal heads) are
exported intact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cbor2
import pytest

from capture_export.local_s3 import LocalS3
from tests.support.malformed_rows import CANARY, MALFORMED
from tests.support.trust import (
    AsText,
    ExporterCase,
    GatewayDB,
    PostgresGateway,
    Raw,
    SQLiteGateway,
    bucket_objects,
    bucket_records,
    build,
    find_leaks,
    good_record,
    run_export,
    state_of,
    text,
    text_chunks,
    timestamp_us,
    write_exporters,
)

BAD_ROW = 4  # rows 1-3 and 5-6 are good
POSTGRES_CASES = ["map-claims-more-pairs", "trailing-item", "stored-id-key", "invalid-utf8-value", "date-after-9999"]


def _gateway(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> GatewayDB:
    if kind == "sqlite":
        return SQLiteGateway(tmp_path / "store.sqlite")
    return PostgresGateway(request.getfixturevalue("pg_dsn"))


def _expected(record_id: int, body: bytes) -> dict[str, Any]:
    return {"id": record_id, **cbor2.loads(body)}


def _hold_case(kind: str, case: str, s3_server: LocalS3, bucket: str, tmp_path: Path,
               request: pytest.FixtureRequest) -> None:
    db = _gateway(kind, tmp_path, request)
    bad = MALFORMED[case](BAD_ROW)
    if kind == "postgres" and isinstance(bad, str | AsText):
        pytest.fail("TEXT rows are a SQLite case")
    rows: list[tuple[int, bytes | str]] = [
        (timestamp_us(n), bad if n == BAD_ROW else build(good_record(n))) for n in range(1, 7)
    ]
    ids = db.insert(rows)
    assert ids == [1, 2, 3, 4, 5, 6]

    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, [ExporterCase("usage", "llm", {})])
    run = run_export(manifest, db, tmp_path)
    output = run.stdout + run.stderr

    # Held: the run fails, naming the record and why, without a traceback and without the row's bytes.
    assert run.returncode == 1, output
    assert "Traceback" not in output, output
    assert CANARY not in output and CANARY not in (tmp_path / "state.json").read_text(), output
    status = state_of(tmp_path, "usage")
    assert status["cursor"] == "3", status
    assert status["lastRun"]["reason"] == "CorruptRecord", status["lastRun"]
    assert f"record {BAD_ROW}" in status["lastRun"]["error"], status["lastRun"]
    named = [c for c in status["conditions"] if c["reason"] == "CorruptRecord" and c["status"] == "False"]
    assert named and f"record {BAD_ROW}" in named[0]["message"], status["conditions"]

    # The bucket holds exactly the good records before it, each readable on its own, as users read it.
    records = bucket_records(s3_server, bucket, "llm")
    assert records == [_expected(n, build(good_record(n))) for n in (1, 2, 3)]
    assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY])


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_foreign_row_is_held_and_never_swallows_its_neighbours_sqlite(
    case: str, s3_server: LocalS3, bucket: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _hold_case("sqlite", case, s3_server, bucket, tmp_path, request)


@pytest.mark.postgres
@pytest.mark.parametrize("case", POSTGRES_CASES)
def test_a_malformed_foreign_row_is_held_and_never_swallows_its_neighbours_postgres(
    case: str, s3_server: LocalS3, bucket: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _hold_case("postgres", case, s3_server, bucket, tmp_path, request)


def _unusual_but_well_formed(n: int) -> bytes:
    """One well-formed record in encodings cbor2 never writes but RFC 8949 allows, each a different way."""
    record = good_record(n)
    headers = {Raw(text_chunks("content", "-type")): Raw(text_chunks("application/", "json")),
               "x-request-id": f"req-{n}"}
    capture = {"request": {"headers": headers, "body": Raw(build(record["capture"]["request"]["body"],
                                                                 indefinite=True))},
               "response": record["capture"]["response"]}
    if n % 3 == 0:  # indefinite-length map at the top
        return build({**record, "capture": capture}, indefinite=True)
    if n % 3 == 1:  # non-minimal heads: a 2-byte map count, a 2-byte text length, a 4-byte integer
        pairs = {**record, "model": Raw(b"\x79\x00\x06gpt-4o"),
                 "duration_ms": Raw(b"\x1a" + (100 + n).to_bytes(4, "big"))}
        body = b"".join(build(k) + build(v) for k, v in pairs.items())
        return b"\xb9" + len(pairs).to_bytes(2, "big") + body
    # A tag-0 date string and a half-precision float
    return build({**record, "timestamp": Raw(b"\xc0" + text(record["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ"))),
                  "estimated_cost": {"input": Raw(b"\xf9\x3c\x00"), "output": 0.5, "total": 1.5, "currency": "USD"}})


@pytest.mark.parametrize("fmt", [{}, {"format": "jsonl"}, {"format": "parquet"}], ids=["cbor-zstd", "jsonl", "parquet"])
def test_well_formed_foreign_rows_in_unusual_encodings_are_exported_intact(
    fmt: dict[str, str], s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    bodies = {n: _unusual_but_well_formed(n) for n in range(1, 10)}
    db.insert((timestamp_us(n), body) for n, body in bodies.items())
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, [ExporterCase("usage", "llm", fmt)])
    run = run_export(manifest, db, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    records = bucket_records(s3_server, bucket, "llm")
    assert [r["id"] for r in records] == list(bodies)
    for record in records:
        source = cbor2.loads(bodies[record["id"]])
        assert record["model"] == "gpt-4o" and record["duration_ms"] == 100 + record["id"]
        headers = (json.loads(record["capture"]) if isinstance(record["capture"], str) else record["capture"])[
            "request"]["headers"]
        assert headers == {"content-type": "application/json", "x-request-id": f"req-{record['id']}"}
        if not fmt:
            assert record == {"id": record["id"], **source}
            cost = record.get("estimated_cost")
            assert cost is None or math.isclose(cost["input"], 1.0)
