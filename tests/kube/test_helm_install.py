"""``helm install`` through the Helm SDK into the real API server: the chart's CRDs, RBAC, Deployment,
Service and PVC pass validation and admission and are stored as rendered. (No kubelet here: the pod
itself never runs; the kind e2e suite does that.)"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes.client
import pytest
import yaml

from capture_export.api import GROUP
from tests.support.chart_rendering import CHART_DIR

from .apiserver import TempApiServer
from .conftest import create_namespace

_releases = itertools.count(1)
CRD_NAMES = [f"retentionpolicies.{GROUP}", f"s3exporters.{GROUP}"]


def _read(client: kubernetes.client.ApiClient, obj: dict[str, Any]) -> Any:
    """The stored object for a rendered one (the kinds this chart renders)."""
    name, namespace = obj["metadata"]["name"], obj["metadata"].get("namespace")
    core, apps = kubernetes.client.CoreV1Api(client), kubernetes.client.AppsV1Api(client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(client)
    readers = {
        "ServiceAccount": lambda: core.read_namespaced_service_account(name, namespace),
        "Service": lambda: core.read_namespaced_service(name, namespace),
        "PersistentVolumeClaim": lambda: core.read_namespaced_persistent_volume_claim(name, namespace),
        "Secret": lambda: core.read_namespaced_secret(name, namespace),
        "Deployment": lambda: apps.read_namespaced_deployment(name, namespace),
        "ClusterRole": lambda: rbac.read_cluster_role(name),
        "ClusterRoleBinding": lambda: rbac.read_cluster_role_binding(name),
        "Role": lambda: rbac.read_namespaced_role(name, namespace),
        "RoleBinding": lambda: rbac.read_namespaced_role_binding(name, namespace),
    }
    return readers[obj["kind"]]()


@pytest.fixture
def new_cluster(kube_binaries: Path) -> Iterator[TempApiServer]:
    """An API server of its own, without our CRDs, so that Helm's go in as in a user's new cluster. (Taking the
    shared server's CRDs away and making them again left their API group unrouted, 404 page not found, for
    the rest of a CI run: every later test of the tier failed.)"""
    with TempApiServer(kube_binaries) as server:
        yield server


@pytest.mark.parametrize(("values", "kinds"), [
    ({}, ["ClusterRole", "ClusterRoleBinding", "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"]),
    ({"watch": {"allNamespaces": False, "namespaces": ["helm-team-a", "helm-team-b"]},
      "store": {"type": "postgres", "postgres": {"dsn": "postgresql://capture:pw@postgres.db:5432/capture"}}},
     ["Deployment", "Role", "Role", "RoleBinding", "RoleBinding", "Secret", "Service", "ServiceAccount"]),
], ids=["defaults", "namespaced-postgres"])
def test_helm_install_is_accepted_by_the_real_api_server(
    new_cluster: TempApiServer, values: dict[str, Any], kinds: list[str],
) -> None:
    apiserver = new_cluster
    for namespace in (values.get("watch") or {}).get("namespaces", []):
        create_namespace(apiserver, namespace)
    release = f"capture-export-{next(_releases)}"
    namespace = f"{release}-system"
    helm_config = helm.Config(kubeconfig_path=str(apiserver.kubeconfig), namespace=namespace)
    try:
        installed = helm_config.install(str(CHART_DIR), release, values, namespace=namespace, create_namespace=True,
                                        timeout=120)
        check_installed(apiserver, release, namespace, installed, kinds)
        uninstalled = helm_config.uninstall(release, timeout=120)
        assert uninstalled["release"]["name"] == release
    finally:
        helm_config.close()


def check_installed(apiserver: TempApiServer, release: str, namespace: str, installed: dict[str, Any],
                    kinds: list[str]) -> None:
    assert installed["status"] == "deployed", installed
    objects = [doc for doc in yaml.safe_load_all(installed["manifest"]) if doc]
    assert sorted(obj["kind"] for obj in objects) == kinds
    with kubernetes.client.ApiClient(apiserver.configuration()) as client:  # Helm's, from the chart's crds/
        made = kubernetes.client.ApiextensionsV1Api(client).list_custom_resource_definition().items
        assert sorted(crd.metadata.name for crd in made if crd.spec.group == GROUP) == CRD_NAMES

    with kubernetes.client.ApiClient(apiserver.configuration()) as client:
        for obj in objects:
            obj["metadata"].setdefault("namespace", namespace if obj["kind"] not in (
                "ClusterRole", "ClusterRoleBinding") else None)
            stored = _read(client, obj)
            assert stored.metadata.labels.get("app.kubernetes.io/instance") == release, obj["kind"]
        deployment = kubernetes.client.AppsV1Api(client).read_namespaced_deployment(
            next(o for o in objects if o["kind"] == "Deployment")["metadata"]["name"], namespace)
        assert deployment.spec.template.spec.containers[0].security_context.read_only_root_filesystem is True
        assert deployment.status.ready_replicas is None  # stored and admitted; nothing runs pods here
