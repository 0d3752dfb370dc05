"""The kind e2e suite: a real cluster, the chart installed with Helm, MinIO as the bucket.

Every test here is marked ``e2e`` and skipped, with the reason, unless all of this holds:
- docker, kind, kubectl, helm and make are on PATH (the skip names the missing ones);
- the docker engine answers (``docker info``);
- the suite was asked for: ``make e2e``, ``pytest -m e2e tests/e2e`` or ``CAPTURE_EXPORT_E2E=1``
  (so a plain ``pytest`` on a laptop with docker never creates a cluster by surprise).

``make e2e`` sets the cluster up first (``make e2e-up``: kind, image, MinIO, bucket, helm install) and
says so with CAPTURE_EXPORT_E2E_READY=1; otherwise the session fixture runs ``make e2e-up`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.e2e_assets import CLUSTER, NAMESPACE, RELEASE

from .cluster import Kube, run, skip_reason


def _requested(config: pytest.Config) -> bool:
    expression = config.getoption("markexpr") or ""
    return os.environ.get("CAPTURE_EXPORT_E2E") == "1" or ("e2e" in expression and "not e2e" not in expression)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e_items:
        return
    reason = skip_reason(_requested(config))
    if reason:
        for item in e2e_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    if os.environ.get("CAPTURE_EXPORT_E2E_READY") != "1":
        # Not started by `make e2e`: set everything up (idempotent), leave the cluster for re-runs.
        run(["make", "e2e-up"], timeout=1800)
    cluster = Kube(f"kind-{CLUSTER}")
    cluster.kubectl("--namespace", NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s")
    yield cluster
