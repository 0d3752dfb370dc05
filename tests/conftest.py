"""Shared fixtures: a real SeaweedFS S3 server on a free loopback port (always stopped), SQLite stores."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
from capture_export.store import SQLiteStore

_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    server = LocalS3(tmp_path_factory.mktemp("seaweedfs"))
    with server:
        yield server


@pytest.fixture
def bucket(s3_server: LocalS3) -> str:
    """A fresh, empty bucket for each test."""
    name = f"test-bucket-{next(_bucket_numbers)}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def credentials(s3_server: LocalS3) -> Credentials:
    return Credentials(s3_server.access_key_id, s3_server.secret_access_key)


@pytest.fixture
def object_store(s3_server: LocalS3, bucket: str, credentials: Credentials) -> S3ObjectStore:
    return S3ObjectStore(S3Location(bucket, "us-east-1", s3_server.endpoint), credentials)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "store.sqlite")
    yield store
    store.close()


def make_record(n: int, **overrides: object) -> dict[str, object]:
    """A small, complete v2 record (tests that need realistic volume use capture_export.seed)."""
    from datetime import UTC, datetime, timedelta

    record: dict[str, object] = {
        "ver": 2,
        "timestamp": datetime(2026, 11, 24, 12, 0, tzinfo=UTC) + timedelta(seconds=n),
        "identity": {"login_name": f"user{n % 3}@example.com", "node_id": f"n{n % 5:04d}", "tags": ["tag:prod"]},
        "model": "gpt-4o",
        "api_type": "oai_completions",
        "usage": {"input_tokens": 10 + n, "output_tokens": 5, "cached_tokens": 0, "reasoning_tokens": 0},
        "estimated_cost": {"input": 0.001, "output": 0.002, "total": 0.003, "currency": "USD"},
        "duration_ms": 100 + n,
        "capture_id": f"cap-{n}",
        "session_id": f"sess-{n // 4}",
        "path": "/v1/chat/completions",
        "status_code": 200,
        "capture": {
            "request": {"headers": {"content-type": "application/json", "Authorization": "Bearer sk-secret"},
                        "body": {"messages": [{"role": "user", "content": f"hello {n}"}]}},
            "response": {"headers": {"Set-Cookie": "session=abc"}, "body": {"choices": [{"text": "hi"}]},
                         "raw_body": bytes([n % 256]) * 8},
        },
    }
    record.update(overrides)
    return record


# PostgreSQL: pg_cluster (a throwaway cluster per session) and pg_dsn (a fresh database per test); tests/pg.py.
from tests.pg import pg_cluster, pg_dsn  # noqa: E402, F401
