"""Shared fixtures: a real SeaweedFS S3 server on a free loopback port (always stopped), SQLite stores."""

from __future__ import annotations

import faulthandler
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
from capture_export.store import SQLiteStore

# PostgreSQL: pg_cluster (a throwaway cluster per session) and pg_dsn (a fresh database per test).
from tests.support.pg import pg_cluster, pg_dsn  # noqa: F401

_bucket_numbers = itertools.count(1)

# Once every test has run, pytest must exit: a thread or child process that something left waiting would
# hold the interpreter's exit for ever (CI then ends in a timeout with every test passed). After this long,
# print where every thread waits and exit with a failure instead.
EXIT_DEADLINE_SECONDS = 180


def pytest_unconfigure(config: pytest.Config) -> None:
    faulthandler.dump_traceback_later(EXIT_DEADLINE_SECONDS, exit=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    # die_with_parent: a pytest killed by a timeout or kill -9 must not leave its SeaweedFS running.
    server = LocalS3(tmp_path_factory.mktemp("seaweedfs"), die_with_parent=True)
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
