"""Fixtures of the operator tier: a fresh emulated API server per test, the official client against it,
and the operator started as ``capture-export operator`` would start it (real SeaweedFS, real SQLite); all
from tests/support/operator_fixtures.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from capture_export.store import SQLiteStore
from tests.support.operator_fixtures import (  # noqa: F401 (fixtures)
    cluster_fixture,
    exporter_spec_fixture,
    kube_fixture,
    s3_secret_fixture,
    start_operator_fixture,
)


@pytest.fixture
def store_path(sqlite_store: SQLiteStore) -> Path:
    return sqlite_store.path
