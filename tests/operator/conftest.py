"""Fixtures of the operator tier: a fresh emulated API server per test, the official client against it,
and the operator started as ``capture-export operator`` would start it (real SeaweedFS, real SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore

from .harness import EmulatedCluster, Kube, OperatorThread, operator_config

SECRET = "s3-credentials"


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    emulated = EmulatedCluster().start()
    yield emulated
    emulated.stop()


@pytest.fixture
def kube(cluster: EmulatedCluster) -> Iterator[Kube]:
    client = Kube(cluster)
    yield client
    client.close()


@pytest.fixture
def store_path(sqlite_store: SQLiteStore) -> Path:
    return sqlite_store.path


@pytest.fixture
def start_operator(cluster: EmulatedCluster, store_path: Path) -> Iterator[Callable[..., OperatorThread]]:
    """Start the operator (stopped at teardown); keyword arguments override its OperatorConfig."""
    started: list[OperatorThread] = []

    def start(**overrides: Any) -> OperatorThread:
        operator = OperatorThread(operator_config(cluster, store_path, **overrides)).start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        if operator.error is None and not operator.stop_flag.is_set():
            operator.stop()


@pytest.fixture
def exporter_spec(s3_server: LocalS3, bucket: str) -> Callable[..., dict[str, Any]]:
    def spec(**overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {"bucket": bucket, "region": "us-east-1", "endpoint": s3_server.endpoint,
                                  "secretRef": {"name": SECRET}, "prefix": "exports", "every": 3600,
                                  "limit": 100}
        values.update(overrides)
        return values

    return spec


@pytest.fixture
def s3_secret(kube: Kube, s3_server: LocalS3) -> str:
    kube.create_secret(SECRET, {"access_key_id": s3_server.access_key_id,
                                "access_secret": s3_server.secret_access_key})
    return SECRET
