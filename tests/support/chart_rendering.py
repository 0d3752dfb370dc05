"""Render the Helm chart offline through helm-python-sdk (Helm's own Go SDK) and look at the objects.

``helm_python`` renders templates exactly as ``helm install`` would, validating values against
values.schema.json first; it leaves the chart's ``crds/`` out of the rendered output (read ``chart.crds``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

__all__ = [
    "CHART_DIR",
    "KUBE_VERSIONS",
    "NAMESPACE",
    "RELEASE",
    "REPO_ROOT",
    "SCENARIOS",
    "Rendered",
    "containers",
    "pod_spec",
    "refused",
    "render",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "capture-export"
RELEASE = "capture-export"
NAMESPACE = "capture-export"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())

# Values a user might really install with, from the defaults to every knob at once.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}},
    "namespaced-release-namespace": {"watch": {"allNamespaces": False}},
    "postgres-inline-dsn": {
        "store": {"type": "postgres", "postgres": {"dsn": "postgresql://capture:pw@postgres.db:5432/capture"}},
    },
    "postgres-existing-secret": {
        "store": {"type": "postgres", "postgres": {"existingSecret": "capture-store", "secretKey": "url"}},
    },
    "sqlite-existing-claim": {"store": {"sqlite": {"persistence": {"existingClaim": "gateway-captures"}}}},
    "sqlite-emptydir": {
        "store": {"sqlite": {"mountPath": "/var/lib/capture", "fileName": "captures.db",
                             "persistence": {"enabled": False}}},
    },
    "ingest-in-operator-pod": {"ingest": {"enabled": True, "token": {"existingSecret": "ingest-tokens"},
                                          "limits": {"maxRecords": 2000}}},
    "no-metrics-no-probe": {"metrics": {"service": {"enabled": False}}, "livenessProbe": {"enabled": False}},
    "external-rbac-and-service-account": {"rbac": {"create": False},
                                          "serviceAccount": {"create": False, "name": "platform-operator"}},
    "everything": {
        "fullnameOverride": "exports",
        "image": {"repository": "registry.example.com/platform/capture-export", "tag": "1.2.3",
                  "digest": "sha256:" + "ab" * 32, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/exports"}},
        "watch": {"allNamespaces": False, "namespaces": ["gateway"]},
        "store": {"sqlite": {"persistence": {"storageClassName": "fast-ssd", "size": "20Gi", "keep": False,
                                             "annotations": {"backup.example.com/enabled": "true"}}}},
        "metrics": {
            "service": {"port": 9100, "annotations": {"prometheus.io/scrape": "true"}},
            "serviceMonitor": {"enabled": True, "namespace": "monitoring", "interval": "15s", "scrapeTimeout": "10s",
                               "labels": {"release": "kube-prometheus-stack"},
                               "relabelings": [{"action": "replace", "targetLabel": "cluster",
                                                "replacement": "prod"}]},
        },
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "podAnnotations": {"example.com/team": "platform"},
        "podLabels": {"team": "platform"},
        "commonLabels": {"cost-center": "ml"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]},
        ]}}},
        "priorityClassName": "platform-critical",
        "terminationGracePeriodSeconds": 120,
        "extraEnv": [
            {"name": "AWS_REGION", "value": "eu-west-1"},
            {"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {"name": "proxy", "key": "url"}}},
        ],
        "extraEnvFrom": [{"configMapRef": {"name": "capture-export-tuning"}}],
        "extraArgs": ["--verbose"],
        "extraVolumes": [{"name": "ca-bundle", "configMap": {"name": "private-ca"}}],
        "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/private-ca", "readOnly": True}],
    },
}


@dataclass
class Rendered:
    """The objects one ``helm install`` would create (CRDs aside), and its NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str
    sources: dict[str, str]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected exactly one {kind}, got {len(found)}"
        return found[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.objects)


def render(chart: helm.Chart, values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE,
           release: str = RELEASE) -> Rendered:
    manifests = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for source, text in sorted(manifests.items()):
        if source.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document is not None:
                objects.append(document)
    return Rendered(objects, notes, manifests)


def pod_spec(rendered: Rendered) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]["spec"]
    return spec


def containers(rendered: Rendered) -> list[dict[str, Any]]:
    spec = pod_spec(rendered)
    return [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]


def refused(chart: helm.Chart, values: dict[str, Any]) -> str:
    """The error message when ``helm install`` with these values is refused (schema or template)."""
    with pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(caught.value)
