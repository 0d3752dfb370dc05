"""Fixtures for tests that run the operator, shared by the emulated tier (tests/operator), the real API
server tier (tests/kube) and the hostile tier. A conftest (or a test module) imports the ones it wants;
pytest knows them by their short names (``cluster``, ``kube``, ``start_operator``, ``exporter_spec``,
``s3_secret``). ``cluster`` and ``kube`` are the emulated API server; tests/kube defines its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from capture_export.handlers import OperatorConfig
from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore
from tests.support.operator_harness import EmulatedCluster, Kube, OperatorThread, operator_config

__all__ = [
    "SECRET",
    "admit_invalid_specs",
    "cluster_fixture",
    "exporter_spec_fixture",
    "kube_fixture",
    "operators",
    "s3_secret_fixture",
    "start_operator_fixture",
]

SECRET = "s3-credentials"  # the Secret ``s3_secret`` creates and ``exporter_spec`` refers to


@contextmanager
def operators(configure: Callable[..., OperatorConfig]) -> Iterator[Callable[..., OperatorThread]]:
    """A function that starts an operator on ``configure(**overrides)``; every one it started that is still
    running is stopped at the end."""
    started: list[OperatorThread] = []

    def start(**overrides: Any) -> OperatorThread:
        operator = OperatorThread(configure(**overrides)).start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        if operator.error is None and not operator.stop_flag.is_set():
            operator.stop()


@pytest.fixture(name="cluster")
def cluster_fixture() -> Iterator[EmulatedCluster]:
    emulated = EmulatedCluster().start()
    yield emulated
    emulated.stop()


@pytest.fixture(name="kube")
def kube_fixture(cluster: EmulatedCluster) -> Iterator[Kube]:
    client = Kube(cluster)
    yield client
    client.close()


@pytest.fixture(name="start_operator")
def start_operator_fixture(cluster: EmulatedCluster, sqlite_store: SQLiteStore) -> Iterator[
        Callable[..., OperatorThread]]:
    """Start the operator (stopped at teardown) on the emulated cluster with ``sqlite_store`` as its default
    store; keyword arguments override its OperatorConfig."""
    with operators(lambda **overrides: operator_config(cluster, Path(sqlite_store.path), **overrides)) as start:
        yield start


@pytest.fixture(name="exporter_spec")
def exporter_spec_fixture(s3_server: LocalS3, bucket: str) -> Callable[..., dict[str, Any]]:
    """A spec for the test's bucket on the local S3 server, with ``s3_secret``'s credentials, prefix
    ``exports``; keyword arguments override its fields."""
    def spec(**overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {"bucket": bucket, "region": "us-east-1", "endpoint": s3_server.endpoint,
                                  "secretRef": {"name": SECRET}, "prefix": "exports", "every": 3600,
                                  "limit": 100}
        values.update(overrides)
        return values

    return spec


@pytest.fixture(name="s3_secret")
def s3_secret_fixture(kube: Kube, s3_server: LocalS3) -> str:
    kube.create_secret(SECRET, {"access_key_id": s3_server.access_key_id,
                                "access_secret": s3_server.secret_access_key})
    return SECRET


def admit_invalid_specs(cluster: EmulatedCluster) -> None:
    """Play a cluster whose CRDs carry no schema (an old or hand-made CRD): specs the API server would
    refuse then reach the operator, which must refuse them on its own. A no-op on an emulator that does not
    validate custom resources at all."""
    without_validation = getattr(cluster, "without_crd_validation", None)
    if without_validation is not None:
        without_validation()
