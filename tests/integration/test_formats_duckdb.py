"""JSON Lines and Parquet exports read back by a real consumer: DuckDB, with SQL over the bucket's files.

The objects are exported to SeaweedFS; DuckDB reads them through its httpfs extension where it is
installed, otherwise (these machines are offline, and DuckDB downloads httpfs on first use) from a copy of
the bucket's objects in a temporary folder, keys and Hive folders intact. Either way the query must give
back the store's rows and totals.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest

from capture_export.api import S3ExporterSpec
from capture_export.audit import verify_export, verify_options
from capture_export.export import Cursor, ExportEngine, ExporterId
from capture_export.export.transform import RecordFilter
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import S3ObjectStore
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore

duckdb = pytest.importorskip("duckdb")

EXPORTER = ExporterId("default", "usage")
RECORDS = 3000
END = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
HIVE_DAYS = {"pathTemplate": "{prefix}/{year}/{month}/{day}", "hivePartitioning": True}

CASES = {
    "jsonl-dated": {"format": "jsonl", "pathTemplate": "{prefix}/{date}"},
    "jsonl-gzip-hive": {"format": "jsonl", "compression": "gzip", **HIVE_DAYS},
    "jsonl-zstd-hive": {"format": "jsonl", "compression": "zstd", **HIVE_DAYS},
    "parquet-hive": {"format": "parquet", **HIVE_DAYS},
    "parquet-privacy-filter": {"format": "parquet", "privacyMode": True, **HIVE_DAYS,
                               "filter": {"models": ["claude-*"], "statusCodes": [200]}},
    "jsonl-privacy-hourly": {"format": "jsonl", "privacyMode": True, "pathTemplate": "{prefix}/{date}/{hour}",
                             "redactFields": ["identity.login_name"]},
}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("duckdb-store") / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, RECORDS, seed=31, start=END, span=timedelta(days=3))  # four UTC days
    store.close()
    return path


def store_records(store: SQLiteStore) -> list[dict[str, Any]]:
    return [cbor2.loads(row.body) | {"id": row.id} for row in store.read_batch(0, RECORDS)]


def totals(records: list[dict[str, Any]]) -> dict[str, tuple[int, int, int, float]]:
    """Per model: records, input tokens, output tokens, estimated cost."""
    out: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for record in records:
        row = out[record["model"]]
        row[0] += 1
        row[1] += record["usage"]["input_tokens"]
        row[2] += record["usage"]["output_tokens"]
        row[3] += (record.get("estimated_cost") or {}).get("total", 0.0)
    return {model: tuple(row) for model, row in sorted(out.items())}  # type: ignore[misc]


def duckdb_over_bucket(s3: LocalS3, bucket: str, prefix: str, tmp: Path) -> tuple[Any, str]:
    """A DuckDB connection and the root to glob the exported files under."""
    con = duckdb.connect()
    try:
        con.execute("LOAD httpfs")
        con.execute(f"""CREATE SECRET seaweed (TYPE s3, KEY_ID '{s3.access_key_id}',
            SECRET '{s3.secret_access_key}', ENDPOINT '127.0.0.1:{s3.port}', URL_STYLE 'path', USE_SSL false,
            REGION 'us-east-1')""")
        return con, f"s3://{bucket}/{prefix}"
    except duckdb.Error:
        pass  # no httpfs here (offline): query a copy of the bucket's files
    client = s3.client()
    root = tmp / "bucket"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            if "/_capture-export/" in item["Key"]:
                continue
            target = root / item["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    return con, str(root / prefix)


@pytest.mark.parametrize("case", list(CASES))
def test_duckdb_reads_the_store_back(
    case: str, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, store_path: Path, tmp_path: Path
) -> None:
    fields = CASES[case]
    spec = S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": s3_server.endpoint,
                                          "prefix": "llm", "limit": 400, **fields})
    store = SQLiteStore(store_path)
    result = ExportEngine(spec, EXPORTER, store, object_store).run(Cursor())
    assert result.outcome == "Succeeded" and result.cursor.position == RECORDS, result.failure
    report = verify_export(store, object_store, "llm", **verify_options(spec, "default", "usage"))
    assert report.ok, report.summary()

    records = store_records(store)
    store.close()
    if spec.filter is not None:
        accepts = RecordFilter(spec.filter)
        records = [r for r in records if accepts(r)]
        assert result.filtered == RECORDS - len(records) > 0
    assert result.rows == len(records)

    con, root = duckdb_over_bucket(s3_server, bucket, "llm", tmp_path)
    if spec.format == "parquet":
        source = f"read_parquet('{root}/**/*.parquet', hive_partitioning = true, filename = true)"
    else:
        source = f"read_json('{root}/**/*.jsonl*', format = 'newline_delimited', hive_partitioning = true, " \
                 "filename = true)"

    # The rows: every id once, and the totals per model an analyst would compute.
    ids = con.execute(f"SELECT id FROM {source} ORDER BY id").fetchall()
    assert [i for (i,) in ids] == [r["id"] for r in records]
    by_model = con.execute(f"""
        SELECT model, count(*), sum(usage.input_tokens), sum(usage.output_tokens),
               coalesce(sum(estimated_cost.total), 0)
        FROM {source} GROUP BY model ORDER BY model""").fetchall()
    expected = totals(records)
    assert [row[0] for row in by_model] == list(expected)
    for model, count, tokens_in, tokens_out, cost in by_model:
        assert (count, tokens_in, tokens_out) == expected[model][:3], model
        assert cost == pytest.approx(expected[model][3], rel=1e-9, abs=1e-12), model
    grand = con.execute(f"SELECT count(*), sum(usage.input_tokens + usage.output_tokens) FROM {source}").fetchone()
    assert grand == (len(records), sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in records))

    # Folders: the records' own UTC dates (and hours), every file in the right one.
    placed = con.execute(f"SELECT epoch_us(timestamp), filename FROM {source}").fetchall()
    for micros, filename in placed:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
        if spec.hive_partitioning:
            assert f"/year={moment:%Y}/month={moment:%m}/day={moment:%d}/" in filename
        elif "{hour}" in spec.path_template:
            assert f"/{moment:%Y-%m-%d}/{moment:%H}/" in filename
        else:
            assert f"/{moment:%Y-%m-%d}/" in filename
    if spec.hive_partitioning:
        days = con.execute(f"SELECT year, month, day, count(*) FROM {source} GROUP BY ALL ORDER BY ALL").fetchall()
        assert len(days) == 4 and sum(n for *_, n in days) == len(records)

    # Raw bodies: binary columns in Parquet, {"$base64": …} in JSON Lines; gone in privacy mode.
    raw = {r["id"]: r["capture"]["request"]["raw_body"] for r in records if "raw_body" in r["capture"]["request"]}
    if spec.format == "parquet":
        column = "raw_request_body"
        content = "json_extract(capture, '$.request.body.messages')"
    else:
        column = "from_base64(json_extract_string(to_json(capture), '$.request.raw_body.\"$base64\"'))"
        content = "json_extract(to_json(capture), '$.request.body.messages')"
    found = dict(con.execute(f"SELECT id, {column} FROM {source} WHERE {column} IS NOT NULL").fetchall())
    if spec.privacy_mode:
        assert found == {}
        assert con.execute(f"SELECT count(*) FROM {source} WHERE {content} IS NOT NULL").fetchone() == (0,)
    else:
        assert raw and {i: bytes(b) for i, b in found.items()} == raw
    if "identity.login_name" in spec.redact_fields:
        logins = con.execute(f"SELECT count(*) FROM {source} WHERE json_extract(to_json(identity), '$.login_name') "
                         "IS NOT NULL").fetchone()
        assert logins == (0,)
