"""Native records round trip: a store exported to the bucket, the exported files posted back to
/v1/records into an empty store, exported again: the same records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.ingest import export_all, ingest_server

RECORDS = 1200


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    path = tmp_path / "original.sqlite"
    store = SQLiteStore(path)
    # Unstripped, as a careless gateway writes them: the export strips credentials, so the files carry none.
    seed_store(store, RECORDS, seed=5, start=datetime(2026, 11, 20, tzinfo=UTC), span=timedelta(days=1),
               strip=False)
    store.close()
    return path


@pytest.mark.parametrize(("fmt", "content_type", "encoding"), [
    ("jsonl", "application/x-ndjson", None),
    ("cbor-zstd", "application/cbor-seq", "zstd"),
])
def test_exported_files_posted_back_rebuild_the_same_records(
    fmt: str, content_type: str, encoding: str | None, seeded: Path, tmp_path: Path, s3_server: LocalS3, bucket: str
) -> None:
    first, objects = export_all(s3_server, bucket, seeded, tmp_path, fmt=fmt, prefix="first", limit=500)
    assert len(first) == RECORDS
    rebuilt = tmp_path / "rebuilt.sqlite"
    headers = {"Content-Encoding": encoding} if encoding else {}
    with ingest_server(rebuilt, tmp_path) as ingest:
        for key in sorted(objects):
            response = ingest.post("/v1/records", objects[key], content_type=content_type, headers=headers)
            assert response.status_code == 200, response.text
        # Posting the files again stores nothing new: every capture_id is there already.
        again = ingest.post("/v1/records", objects[sorted(objects)[0]], content_type=content_type, headers=headers)
        assert again.json() == {"received": 500, "new": 0, "duplicates": 500}
    second, _ = export_all(s3_server, bucket, rebuilt, tmp_path, fmt=fmt, prefix="second", limit=500)
    assert second == first


def test_a_json_array_of_exported_lines_is_accepted_too(seeded: Path, tmp_path: Path, s3_server: LocalS3,
                                                       bucket: str) -> None:
    first, objects = export_all(s3_server, bucket, seeded, tmp_path, fmt="jsonl", prefix="first", limit=500)
    lines = b"".join(objects[key] for key in sorted(objects)).decode().splitlines()
    rebuilt = tmp_path / "rebuilt.sqlite"
    with ingest_server(rebuilt, tmp_path) as ingest:
        response = ingest.post("/v1/records", "[" + ",".join(lines) + "]", content_type="application/json")
        assert response.json() == {"received": RECORDS, "new": RECORDS, "duplicates": 0}
    second, _ = export_all(s3_server, bucket, rebuilt, tmp_path, fmt="jsonl", prefix="second", limit=500)
    assert second == first


@pytest.mark.postgres
def test_posted_back_into_postgresql_the_same_records(seeded: Path, tmp_path: Path, s3_server: LocalS3, bucket: str,
                                                      pg_dsn: str) -> None:
    first, objects = export_all(s3_server, bucket, seeded, tmp_path, fmt="jsonl", prefix="first", limit=500)
    with ingest_server(pg_dsn, tmp_path) as ingest:
        for key in sorted(objects):
            response = ingest.post("/v1/records", objects[key], content_type="application/x-ndjson")
            assert response.status_code == 200, response.text
        again = ingest.post("/v1/records", objects[sorted(objects)[-1]], content_type="application/x-ndjson")
        assert again.json()["new"] == 0
    second, _ = export_all(s3_server, bucket, pg_dsn, tmp_path, fmt="jsonl", prefix="second", limit=500)
    assert second == first
