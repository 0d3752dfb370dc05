"""The bucket read as the seeds' users read it: exported by ``capture-export run --once``, then audited by
``verify`` and queried with the recipes of docs/querying.md and docs/formats.md, exactly as written there.

DuckDB reads a copy of the bucket's objects (these machines are offline: DuckDB cannot download its httpfs
extension), keys and Hive folders intact, under the ``llm-usage/`` folder the recipes name.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest

from capture_export.audit import decode_object, to_json_line
from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.cli import run_cli
from tests.support.records import make_record

duckdb = pytest.importorskip("duckdb")

REPO = Path(__file__).resolve().parents[2]
HIVE_DAYS = "  pathTemplate: '{prefix}/{year}/{month}/{day}'\n  hivePartitioning: true\n"


def write_exporters(path: Path, s3: LocalS3, bucket: str, exporters: dict[str, str], limit: int = 200) -> Path:
    """One manifest: a Secret and one S3Exporter per entry (name -> extra spec lines), prefix ``name``."""
    documents = [f"""\
apiVersion: v1
kind: Secret
metadata: {{name: s3-creds, namespace: default}}
stringData: {{access_key_id: {s3.access_key_id}, access_secret: {s3.secret_access_key}}}
"""]
    for name, extra in exporters.items():
        documents.append(f"""\
apiVersion: capture.dev/v1alpha1
kind: S3Exporter
metadata: {{name: {name}, namespace: default}}
spec:
  bucket: {bucket}
  region: us-east-1
  endpoint: {s3.endpoint}
  secretRef: {{name: s3-creds}}
  prefix: {name}
  limit: {limit}
{extra}""")
    path.write_text("---\n".join(documents))
    return path


def copy_bucket(s3: LocalS3, bucket: str, prefix: str, target: Path) -> list[Path]:
    """The data objects under ``prefix/`` copied below ``target``, their key's folders kept (the prefix
    itself left out)."""
    client = s3.client()
    copied = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            if "/_capture-export/" in item["Key"]:
                continue
            local = target / item["Key"][len(prefix) + 1:]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            copied.append(local)
    return copied


# -- verify of records a foreign writer gave ids that JSON has no type for -------------------------------


def insert_foreign(store: Path, records: list[dict[str, Any]]) -> None:
    """Rows as a gateway writes them directly (docs/store-contract.md): ts_us and a CBOR body, no seal."""
    with sqlite3.connect(store) as connection:
        for record in records:
            moment = record["timestamp"]
            connection.execute("INSERT INTO captures (ts_us, body) VALUES (?, ?)",
                               (int(moment.timestamp() * 1_000_000), cbor2.dumps(record, timezone=UTC)))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "cbor-zstd"])
def test_verify_accepts_capture_ids_that_json_has_no_type_for(
    s3_server: LocalS3, bucket: str, tmp_path: Path, fmt: str
) -> None:
    """A gateway that writes its capture ids as bytes (a Go ``[16]byte``) or as a UUID (cbor2 writes
    ``uuid.UUID`` as tag 37) exports fine; ``verify`` must then find each record to be the store's record
    of its id in every format, not report the whole export as "content differs"."""
    store = tmp_path / "store.sqlite"
    assert run_cli("store", "init", "--store", store, cwd=tmp_path).returncode == 0
    insert_foreign(store, [
        make_record(1, capture_id=b"\x9f\x00\x10binary-capture-id"),
        make_record(2, capture_id=b"utf8-capture-id"),
        make_record(3, capture_id=uuid.UUID("12345678-1234-5678-1234-567812345678")),
        make_record(4),
    ])
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, {"usage": f"  format: {fmt}\n"})
    run = run_cli("run", "--once", "-f", manifest, "--store", store, "--state", tmp_path / "state.json",
                  cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    verify = run_cli("verify", "-f", manifest, "--store", store, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "records in bucket: 4" in verify.stdout and "differs" not in verify.stdout


# -- the recipes of the docs, as written ------------------------------------------------------------------


def documented_duckdb_queries() -> list[str]:
    """The SELECT statements of docs/querying.md's DuckDB section, in order."""
    text = (REPO / "docs" / "querying.md").read_text()
    section = text.split("## DuckDB", 1)[1].split("\n## ", 1)[0]
    statements = []
    for block in re.findall(r"```sql\n(.*?)```", section, re.S):
        statements += [s.strip() for s in block.split(";") if s.strip().upper().startswith("SELECT")]
    return statements


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("readers-store") / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, 600, seed=17, start=datetime(2026, 11, 24, 6, tzinfo=UTC), span=timedelta(days=2))
    store.close()
    return path


@pytest.mark.parametrize("privacy", [False, True], ids=["full", "privacy-mode"])
def test_every_documented_duckdb_query_runs_on_a_real_export(
    s3_server: LocalS3, bucket: str, tmp_path: Path, seeded_store: Path, privacy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each DuckDB query of docs/querying.md runs as written over the formats it reads (Parquet, JSON Lines
    plain and zstd, Hive-partitioned as the docs assume), with or without privacy mode, and counts every
    exported record once."""
    mode = "  privacyMode: true\n" if privacy else ""
    exporters = {"parquet": "  format: parquet\n", "jsonl": "  format: jsonl\n",
                 "jsonlzst": "  format: jsonl\n  compression: zstd\n"}
    manifest = write_exporters(tmp_path / "exporters.yaml", s3_server, bucket,
                               {name: extra + HIVE_DAYS + mode for name, extra in exporters.items()})
    run = run_cli("run", "--once", "-f", manifest, "--store", seeded_store, "--state", tmp_path / "state.json",
                  cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    root = tmp_path / "copy"
    for name in exporters:  # one folder holding every format, as the recipes' globs expect
        assert copy_bucket(s3_server, bucket, name, root / "llm-usage")
    monkeypatch.chdir(root)

    queries = documented_duckdb_queries()
    assert len(queries) >= 4
    con = duckdb.connect()
    raw_bodies = 0
    for query in queries:
        local = query.replace("s3://capture-exports/", "")
        try:
            rows = con.execute(local).fetchall()
        except duckdb.Error as error:
            pytest.fail(f"documented query fails ({type(error).__name__}: {error}):\n{query}")
        if "count(*) FROM" in query and "GROUP BY" not in query:
            assert rows == [(600,)], query
        elif "GROUP BY model" in query:
            assert sum(row[1] for row in rows) == 600, query
        elif "raw_body" in query:
            raw_bodies = len(rows)
            assert all(isinstance(body, bytes) and body for _, body in rows), query
    assert (raw_bodies == 0) if privacy else (raw_bodies > 0)


def test_the_documented_cbor_reader_reads_a_real_export(
    s3_server: LocalS3, bucket: str, tmp_path: Path, seeded_store: Path
) -> None:
    """The Python recipe of docs/formats.md, run as written on each object of a default export."""
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, {"usage": ""})
    run = run_cli("run", "--once", "-f", manifest, "--store", seeded_store, "--state", tmp_path / "state.json",
                  cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    recipe = re.search(r"```python\n(import cbor2.*?)```", (REPO / "docs" / "formats.md").read_text(), re.S)
    assert recipe is not None
    ids: list[int] = []
    for path in sorted(copy_bucket(s3_server, bucket, "usage", tmp_path / "copy")):
        scope: dict[str, Any] = {"data": path.read_bytes()}
        exec(recipe.group(1), scope)
        assert all(isinstance(r["timestamp"], datetime) and r["timestamp"].utcoffset() == timedelta(0)
                   for r in scope["records"])
        ids += [r["id"] for r in scope["records"]]
    assert ids == list(range(1, 601))


# -- privacy mode on records of a shape the schema does not have ---------------------------------------------

SECRET = "my secret prompt about the merger"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "cbor-zstd"])
def test_privacy_mode_ships_no_content_of_a_capture_that_is_not_a_map(
    s3_server: LocalS3, bucket: str, tmp_path: Path, fmt: str
) -> None:
    """OpenRouter's Privacy Mode promise, for a gateway that stored its capture as JSON text (or a request as
    raw text): no object in the bucket holds the prompt, in any format; the record itself is exported."""
    store = tmp_path / "store.sqlite"
    assert run_cli("store", "init", "--store", store, cwd=tmp_path).returncode == 0
    as_text = make_record(1, capture=f'{{"request": {{"body": {{"messages": [{{"content": "{SECRET}"}}]}}}}}}')
    raw_request = make_record(2)
    raw_request["capture"]["request"] = f"POST /v1/messages\n\n{SECRET}"  # type: ignore[index]
    insert_foreign(store, [as_text, raw_request, make_record(3)])
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               {"usage": f"  format: {fmt}\n  privacyMode: true\n"})
    run = run_cli("run", "--once", "-f", manifest, "--store", store, "--state", tmp_path / "state.json",
                  cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    objects = copy_bucket(s3_server, bucket, "usage", tmp_path / "copy")
    assert objects
    lines = [to_json_line(record) for path in objects for record in decode_object(path.read_bytes(), path.name)]
    assert len(lines) == 3 and not [line for line in lines if SECRET in line], lines
    assert ['"capture_id":"cap-1"' in lines[0], '"capture_id":"cap-2"' in lines[1]] == [True, True]
