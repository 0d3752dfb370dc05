"""The operator tier's fixtures (tests/operator/conftest.py), for hostile tests that drive the operator:
an emulated API server per test, the official client against it, and the operator started as
``capture-export operator`` would start it. Import them by these names; pytest knows them by the short one
(``cluster``, ``kube``, ``start_operator``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capture_export.store import SQLiteStore
from tests.operator.harness import EmulatedCluster, Kube, OperatorThread, operator_config

__all__ = ["admit_invalid_specs", "cluster_fixture", "kube_fixture", "start_operator_fixture"]


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
    """Start the operator (stopped at teardown) on ``sqlite_store`` as its default store; keyword arguments
    override its OperatorConfig."""
    started: list[OperatorThread] = []

    def start(**overrides: Any) -> OperatorThread:
        operator = OperatorThread(operator_config(cluster, Path(sqlite_store.path), **overrides)).start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        if operator.error is None and not operator.stop_flag.is_set():
            operator.stop()


def admit_invalid_specs(cluster: EmulatedCluster) -> None:
    """Play a cluster whose CRDs carry no schema (an old or hand-made CRD): specs the API server would
    refuse then reach the operator, which must refuse them on its own. A no-op on an emulator that does not
    validate custom resources at all."""
    without_validation = getattr(cluster, "without_crd_validation", None)
    if without_validation is not None:
        without_validation()
