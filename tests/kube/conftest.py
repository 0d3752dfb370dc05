"""Fixtures of the real Kubernetes API tier: one etcd + kube-apiserver per session (tests/kube/apiserver.py),
the CRDs from ``crds/`` applied to it, a fresh namespace per test, the official client as the admin, and
the operator started as ``capture-export operator`` would start it (real SeaweedFS, real SQLite).

The binaries are built by ``scripts/build-apiserver.sh`` (``./test.sh`` runs it first). When they cannot be
built the tier fails in CI (``CI`` set) and is skipped elsewhere, naming the reason.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from capture_export.api import GROUP, VERSION
from capture_export.handlers import OperatorConfig
from capture_export.store import SQLiteStore
from tests.support.operator_fixtures import (  # noqa: F401 (fixtures)
    SECRET,
    exporter_spec_fixture,
    operators,
    s3_secret_fixture,
)
from tests.support.operator_harness import Kube, OperatorThread, Policies, operator_config, wait_for

from .apiserver import REPO_ROOT, ApiServerUnavailable, TempApiServer, build_binaries

PLURALS = ("s3exporters", "retentionpolicies")
_namespaces = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kube)


@pytest.fixture(scope="session")
def kube_binaries() -> Path:
    try:
        return build_binaries()
    except ApiServerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the real Kubernetes API tier cannot run in CI: {exc}", pytrace=False)
        pytest.skip(f"no kube-apiserver/etcd: {exc}")


@pytest.fixture(scope="session")
def apiserver(kube_binaries: Path) -> Iterator[TempApiServer]:
    with TempApiServer(kube_binaries) as server:
        yield server


def apply_crds(server: TempApiServer) -> list[dict[str, Any]]:
    """Create (or replace) the CRDs from ``crds/`` and wait until each is Established and its kind is served;
    the CRD objects as stored."""
    with kubernetes.client.ApiClient(server.configuration()) as client:
        extensions = kubernetes.client.ApiextensionsV1Api(client)
        names = []
        for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
            body = yaml.safe_load(path.read_text())
            names.append(body["metadata"]["name"])
            try:
                extensions.create_custom_resource_definition(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise AssertionError(f"the API server refused {path.name}: {exc.status} {exc.body}") from None
                current = extensions.read_custom_resource_definition(body["metadata"]["name"])
                body["metadata"]["resourceVersion"] = current.metadata.resource_version
                extensions.replace_custom_resource_definition(body["metadata"]["name"], body)

        def established() -> list[dict[str, Any]] | None:
            served = [client.sanitize_for_serialization(extensions.read_custom_resource_definition(name))
                      for name in names]
            for crd in served:
                conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
                if conditions.get("Established") != "True":
                    return None
            return served

        stored = wait_for(established, 60, 0.2, what="CRDs Established")
        # Established says the CRD's storage is ready, not that requests reach it: the API group's route is
        # registered apart (kube-aggregator's autoregister), and until then a request gets 404 page not found.
        wait_for(lambda: _served(client), 120, 0.2, what="our kinds served")
        return stored


def _served(client: kubernetes.client.ApiClient) -> bool:
    custom = kubernetes.client.CustomObjectsApi(client)
    for plural in PLURALS:
        try:
            custom.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
    return True


@pytest.fixture(scope="session")
def crds(apiserver: TempApiServer) -> list[dict[str, Any]]:
    return apply_crds(apiserver)


def clean_namespace(server: TempApiServer, namespace: str) -> None:
    """Our custom resources in ``namespace`` gone, finalizers dropped (no operator may be running): the next
    test's cluster-wide operator must not find them. The namespace itself stays (no namespace controller)."""
    with kubernetes.client.ApiClient(server.configuration()) as client:
        custom = kubernetes.client.CustomObjectsApi(client)
        for plural in PLURALS:
            try:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            for item in items:
                name = item["metadata"]["name"]
                try:
                    if item["metadata"].get("finalizers"):
                        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name,
                                                              {"metadata": {"finalizers": None}})
                    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise


def create_namespace(server: TempApiServer, name: str) -> None:
    with kubernetes.client.ApiClient(server.configuration()) as client:
        try:
            kubernetes.client.CoreV1Api(client).create_namespace({"metadata": {"name": name}})
        except ApiException as exc:
            if exc.status != 409:
                raise


@pytest.fixture
def namespace(apiserver: TempApiServer, crds: list[dict[str, Any]]) -> Iterator[str]:
    """A fresh namespace; its S3Exporters and RetentionPolicies are removed after the test."""
    name = f"t{next(_namespaces)}-{secrets.token_hex(3)}"
    create_namespace(apiserver, name)
    yield name
    clean_namespace(apiserver, name)


@pytest.fixture
def kube(apiserver: TempApiServer, namespace: str) -> Iterator[Kube]:
    client = Kube(apiserver, namespace)
    yield client
    client.close()


@pytest.fixture
def policies(apiserver: TempApiServer, namespace: str) -> Iterator[Policies]:
    client = Policies(apiserver, namespace)
    yield client
    client.close()


@pytest.fixture
def store_path(sqlite_store: SQLiteStore) -> Path:
    return sqlite_store.path


@pytest.fixture
def start_operator(apiserver: TempApiServer, namespace: str,
                   store_path: Path) -> Iterator[Callable[..., OperatorThread]]:
    """Start the operator (stopped at teardown), as the admin and watching the test's namespace only unless
    told otherwise; keyword arguments override its OperatorConfig."""
    def configure(**overrides: Any) -> OperatorConfig:
        overrides.setdefault("namespaces", (namespace,))
        return operator_config(apiserver, store_path, **overrides)

    with operators(configure) as start:
        yield start
