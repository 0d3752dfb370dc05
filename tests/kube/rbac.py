"""The chart's RBAC on the real API server: render it with the Helm SDK, create its ServiceAccount and
(Cluster)Roles and bindings as they are, and hand out a ServiceAccount token (TokenRequest API), so that
the operator runs with exactly the permissions the chart grants."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import helm_python as helm
import kubernetes.client
import kubernetes.utils
from kubernetes.client.exceptions import ApiException

from capture_export.cli import build_parser
from tests.support.chart_rendering import Rendered, render

from .apiserver import TempApiServer

__all__ = ["RBAC_KINDS", "ChartRbac", "install_rbac", "without_verb"]

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@dataclass
class ChartRbac:
    """What one rendered release granted: its ServiceAccount's token and the operator's arguments."""

    rendered: Rendered
    release: str
    namespace: str
    token: str
    objects: list[dict[str, Any]]

    @property
    def watched_namespaces(self) -> tuple[str, ...]:
        """As the chart's Deployment runs the operator: ``--all-namespaces`` (empty) or each ``--namespace``."""
        container = self.rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
        args = build_parser().parse_args(container["args"])
        return tuple(args.namespace or ())


def without_verb(kind: str, resource: str, verb: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An edit for :func:`install_rbac`: drop ``verb`` on ``resource`` from every ``kind`` (Role/ClusterRole)."""

    def edit(obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] != kind:
            return obj
        obj = copy.deepcopy(obj)
        for rule in obj["rules"]:
            if resource in rule.get("resources", []) and verb in rule["verbs"]:
                rule["verbs"].remove(verb)
        obj["rules"] = [rule for rule in obj["rules"] if rule["verbs"]]
        return obj

    return edit


def install_rbac(server: TempApiServer, chart: helm.Chart, values: dict[str, Any], *, release: str,
                 namespace: str, edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> ChartRbac:
    rendered = render(chart, values, namespace=namespace, release=release)
    objects = [obj for obj in rendered if obj["kind"] in RBAC_KINDS]
    if edit is not None:
        objects = [edit(obj) for obj in objects]
    with kubernetes.client.ApiClient(server.configuration()) as client:
        core = kubernetes.client.CoreV1Api(client)
        wanted = {namespace} | {obj["metadata"]["namespace"] for obj in objects if obj["metadata"].get("namespace")}
        for name in sorted(wanted):
            try:
                core.create_namespace({"metadata": {"name": name}})
            except ApiException as exc:
                if exc.status != 409:
                    raise
        for obj in objects:
            kubernetes.utils.create_from_dict(client, obj, namespace=obj["metadata"].get("namespace", namespace))
        [account] = [obj for obj in objects if obj["kind"] == "ServiceAccount"]
        request = core.create_namespaced_service_account_token(
            account["metadata"]["name"], account["metadata"].get("namespace", namespace),
            {"spec": {"expirationSeconds": 3600}})
    return ChartRbac(rendered, release, namespace, request.status.token, objects)


def remove_cluster_rbac(server: TempApiServer, rbac: ChartRbac) -> None:
    """Cluster-wide grants outlive the test's namespaces: delete them."""
    with kubernetes.client.ApiClient(server.configuration()) as client:
        api = kubernetes.client.RbacAuthorizationV1Api(client)
        for obj in rbac.objects:
            try:
                if obj["kind"] == "ClusterRoleBinding":
                    api.delete_cluster_role_binding(obj["metadata"]["name"])
                elif obj["kind"] == "ClusterRole":
                    api.delete_cluster_role(obj["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise
