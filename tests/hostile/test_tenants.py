"""Tenants stay apart.

In cluster-wide mode anyone allowed to create an S3Exporter in any namespace could export the operator's
shared default store (every tenant's prompts) to their own bucket, or purge it with a RetentionPolicy
(``requireExport: false``), and ``spec.store.sqlite.path`` reached any file in the pod. Now the default
store serves only the namespaces the operator is configured to allow, SQLite paths are confined to
configured directories, and each refusal is a condition naming why, with nothing exported or purged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capture_export.api import GROUP, VERSION
from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore
from tests.support.operator_fixtures import cluster_fixture, kube_fixture, start_operator_fixture  # noqa: F401
from tests.support.operator_harness import EmulatedCluster, Kube, OperatorThread, wait_for
from tests.support.records import make_record

from .canary_support import assert_no_traceback
from .runs_support import exporter_document, exporter_spec, policy_document, run_cli, s3_secret, write_manifest

ALLOWED = "capture"
TENANT = "team-b"


@pytest.fixture
def tenant(cluster: EmulatedCluster) -> Iterator[Kube]:
    client = Kube(cluster, namespace=TENANT)
    yield client
    client.close()


@pytest.fixture
def home(cluster: EmulatedCluster) -> Iterator[Kube]:
    client = Kube(cluster, namespace=ALLOWED)
    yield client
    client.close()


def with_credentials(kube: Kube, s3: LocalS3) -> None:
    kube.create_secret("s3-creds", {"access_key_id": s3.access_key_id, "access_secret": s3.secret_access_key})


def bucket_keys(s3: LocalS3, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def apply_policy(kube: Kube, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RetentionPolicy", "metadata": {"name": name},
            "spec": spec}
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, kube.namespace, "retentionpolicies", body)


def policy_ready(kube: Kube, name: str) -> dict[str, Any]:
    obj = kube.custom.get_namespaced_custom_object(GROUP, VERSION, kube.namespace, "retentionpolicies", name)
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), {})


def test_default_store_serves_only_the_allowed_namespaces(
    home: Kube, tenant: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3, bucket: str,
    sqlite_store: SQLiteStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(25))
    for kube in (home, tenant):
        with_credentials(kube, s3_server)
    start_operator(default_store_namespaces=(ALLOWED,))
    tenant.apply_exporter("steal", exporter_spec(s3_server, bucket, prefix="stolen"))
    home.apply_exporter("usage", exporter_spec(s3_server, bucket, prefix="usage"))

    home.wait_status("usage", lambda s: s.get("cursor") == "25", what="the allowed namespace exports")
    ready = tenant.wait_condition("steal", "Ready", "False", "DefaultStoreNotAllowed")
    assert TENANT in ready["message"] and "default store" in ready["message"], ready
    store = tenant.condition("steal", "StoreReachable")
    assert (store["status"], store["reason"]) == ("False", "DefaultStoreNotAllowed")
    assert tenant.status("steal")["cursor"] == "0"
    assert bucket_keys(s3_server, bucket, "stolen") == []
    assert any(e[:2] == ("Warning", "DefaultStoreNotAllowed") for e in tenant.events("steal"))


def test_a_tenant_cannot_purge_the_default_store(
    home: Kube, tenant: Kube, start_operator: Callable[..., OperatorThread], sqlite_store: SQLiteStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(25))  # timestamps of 2026-11-24: older than 1s
    start_operator(default_store_namespaces=(ALLOWED,))
    apply_policy(tenant, "wipe", {"maxAge": "1s", "requireExport": False, "every": 1})
    ready = wait_for(lambda: (c := policy_ready(tenant, "wipe")).get("status") == "False" and c, what="refused")
    assert ready["reason"] == "DefaultStoreNotAllowed" and TENANT in ready["message"], ready
    assert sqlite_store.count() == 25


@pytest.mark.parametrize("where", ["the default store's own file", "outside the directories", "a dot-dot escape",
                                   "a symlink out"])
def test_sqlite_paths_are_confined_to_the_configured_directories(
    tenant: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3, bucket: str,
    sqlite_store: SQLiteStore, tmp_path: Path, where: str,
) -> None:
    allowed = tmp_path / "tenant-stores"
    allowed.mkdir()
    outside = tmp_path / "private"
    outside.mkdir()
    secret_store = SQLiteStore(outside / "store.sqlite")
    secret_store.append(make_record(i) for i in range(5))
    secret_store.close()
    sqlite_store.append(make_record(i) for i in range(5))
    paths = {
        "the default store's own file": str(sqlite_store.path),
        "outside the directories": str(outside / "store.sqlite"),
        "a dot-dot escape": f"{allowed}/../private/store.sqlite",
        "a symlink out": str(allowed / "link.sqlite"),
    }
    os.symlink(outside / "store.sqlite", allowed / "link.sqlite")
    with_credentials(tenant, s3_server)
    start_operator(default_store_namespaces=("capture",), sqlite_directories=(str(allowed),))
    tenant.apply_exporter("steal", exporter_spec(s3_server, bucket, store={"sqlite": {"path": paths[where]}}))

    ready = tenant.wait_condition("steal", "Ready", "False")
    expected = "DefaultStoreNotAllowed" if where == "the default store's own file" else "StorePathNotAllowed"
    assert ready["reason"] == expected and "spec.store.sqlite.path" in ready["message"], ready
    assert bucket_keys(s3_server, bucket) == []


def test_a_tenant_store_inside_the_configured_directories_is_exported(
    tenant: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3, bucket: str, tmp_path: Path,
) -> None:
    allowed = tmp_path / "tenant-stores"
    own = SQLiteStore(allowed / TENANT / "store.sqlite")
    own.append(make_record(i) for i in range(12))
    own.close()
    with_credentials(tenant, s3_server)
    start_operator(default_store_namespaces=("capture",), sqlite_directories=(str(allowed),))
    tenant.apply_exporter("usage", exporter_spec(s3_server, bucket, store={"sqlite": {"path": str(own.path)}}))
    tenant.wait_status("usage", lambda s: s.get("cursor") == "12", what="the tenant's own store exported")
    tenant.wait_condition("usage", "Ready", "True")


def test_sqlite_directories_default_to_the_default_store_directory(
    tenant: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3, bucket: str,
    sqlite_store: SQLiteStore, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Without ``--sqlite-dir`` only the default store's own directory holds stores a spec may name."""
    beside = SQLiteStore(Path(sqlite_store.path).parent / "beside.sqlite")
    beside.append(make_record(i) for i in range(3))
    beside.close()
    elsewhere = SQLiteStore(tmp_path_factory.mktemp("elsewhere") / "store.sqlite")
    elsewhere.close()
    with_credentials(tenant, s3_server)
    start_operator()
    tenant.apply_exporter("beside", exporter_spec(s3_server, bucket, prefix="beside",
                                                  store={"sqlite": {"path": str(beside.path)}}))
    tenant.apply_exporter("elsewhere", exporter_spec(s3_server, bucket, prefix="elsewhere",
                                                     store={"sqlite": {"path": str(elsewhere.path)}}))
    tenant.wait_status("beside", lambda s: s.get("cursor") == "3", what="beside the default store")
    tenant.wait_condition("elsewhere", "Ready", "False", "StorePathNotAllowed")


# -- standalone, where it applies ------------------------------------------------------------------------


def test_standalone_refuses_the_default_store_and_foreign_paths_when_confined(
    s3_server: LocalS3, bucket: str, tmp_path: Path,
) -> None:
    default = SQLiteStore(tmp_path / "default.sqlite")
    default.append(make_record(i) for i in range(5))
    default.close()
    outside = SQLiteStore(tmp_path / "private" / "store.sqlite")
    outside.append(make_record(i) for i in range(5))
    outside.close()
    (tmp_path / "stores").mkdir()
    manifest = write_manifest(
        tmp_path / "m.yaml",
        s3_secret(s3_server, name="s3-creds") | {"metadata": {"name": "s3-creds", "namespace": TENANT}},
        exporter_document("steal", exporter_spec(s3_server, bucket, prefix="steal"), namespace=TENANT),
        exporter_document("private", exporter_spec(s3_server, bucket, prefix="private",
                                                   store={"sqlite": {"path": str(outside.path)}}), namespace=TENANT),
        policy_document("wipe", {"maxAge": "1s", "requireExport": False}, namespace=TENANT),
    )
    result = run_cli("run", "--once", "-f", manifest, "--state", "state.json", "--store", default.path,
                     "--default-store-namespace", ALLOWED, "--sqlite-dir", tmp_path / "stores", cwd=tmp_path)
    assert_no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{TENANT}/steal" in result.stdout and "DefaultStoreNotAllowed" in result.stdout
    assert f"{TENANT}/private" in result.stdout and "StorePathNotAllowed" in result.stdout
    assert f"{TENANT}/wipe: retention Failed" in result.stdout
    assert bucket_keys(s3_server, bucket) == []
    check = SQLiteStore(default.path)
    assert check.count() == 5
    check.close()


# -- the chart: the release namespace by default -----------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    import helm_python as helm

    from tests.support.chart_rendering import CHART_DIR

    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def _operator_env(chart: Any, values: dict[str, Any]) -> dict[str, Any]:
    from tests.support.chart_rendering import render

    container = render(chart, values).one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value") for item in container["env"]}


def test_chart_allows_only_the_release_namespace_the_default_store_by_default(chart: Any) -> None:
    env = _operator_env(chart, {})
    assert env["CAPTURE_EXPORT_DEFAULT_STORE_NAMESPACES"] == "capture-export"
    assert "CAPTURE_EXPORT_SQLITE_DIRS" not in env  # the operator takes the default store's directory
    env = _operator_env(chart, {"store": {"allowedNamespaces": ["team-a", "team-b"],
                                          "sqliteDirectories": ["/data", "/stores"]}})
    assert env["CAPTURE_EXPORT_DEFAULT_STORE_NAMESPACES"] == "team-a,team-b"
    assert env["CAPTURE_EXPORT_SQLITE_DIRS"] == "/data:/stores"


def test_operator_configured_from_the_chart_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from capture_export.handlers.settings import OperatorConfig

    monkeypatch.setenv("CAPTURE_EXPORT_STORE", "/data/store.sqlite")
    monkeypatch.setenv("CAPTURE_EXPORT_DEFAULT_STORE_NAMESPACES", "capture,team-a")
    monkeypatch.delenv("CAPTURE_EXPORT_SQLITE_DIRS", raising=False)
    config = OperatorConfig.from_env()
    assert config.default_store_namespaces == ("capture", "team-a")
    assert config.allowed_sqlite_directories() == ("/data",)
    monkeypatch.setenv("CAPTURE_EXPORT_SQLITE_DIRS", "/data:/stores")
    assert OperatorConfig.from_env().allowed_sqlite_directories() == ("/data", "/stores")
