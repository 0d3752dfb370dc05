"""values.yaml and values.schema.json: every key documented, bad values refused before they reach a cluster."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.support.chart_rendering import CHART_DIR, SCENARIOS, refused


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_schema_accepts_every_scenario(chart: helm.Chart, name: str) -> None:
    chart.validate_schema(chart.merge_values(SCENARIOS[name]))


# (values, a fragment the error message must contain: the path of the offending key)
BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": ({"replicaCount": 2}, "replicaCount"),
    "typo in a nested key": ({"image": {"tags": "1.0"}}, "tags"),
    "pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "tag with a space": ({"image": {"tag": "1.0 beta"}}, "/image/tag"),
    "malformed digest": ({"image": {"digest": "sha256:xyz"}}, "/image/digest"),
    "empty repository": ({"image": {"repository": ""}}, "/image/repository"),
    "pull secret without a name": ({"imagePullSecrets": [{}]}, "/imagePullSecrets/0"),
    "string for a boolean": ({"rbac": {"create": "yes"}}, "/rbac/create"),
    "existing service account without a name": ({"serviceAccount": {"create": False}}, "/serviceAccount/name"),
    "namespaces while watching all": ({"watch": {"namespaces": ["team-a"]}}, "/watch/namespaces"),
    "invalid namespace name": ({"watch": {"allNamespaces": False, "namespaces": ["Team_A"]}}, "/watch/namespaces/0"),
    "duplicate namespaces": ({"watch": {"allNamespaces": False, "namespaces": ["a", "a"]}}, "/watch/namespaces"),
    "unknown store type": ({"store": {"type": "mysql"}}, "/store/type"),
    "postgres without a DSN": ({"store": {"type": "postgres"}}, "/store/postgres"),
    "postgres DSN of another database": (
        {"store": {"type": "postgres", "postgres": {"dsn": "mysql://u:p@db/c"}}}, "/store/postgres/dsn"),
    "relative sqlite mount path": ({"store": {"sqlite": {"mountPath": "data"}}}, "/store/sqlite/mountPath"),
    "sqlite file name with a slash": ({"store": {"sqlite": {"fileName": "a/b.sqlite"}}}, "/store/sqlite/fileName"),
    "volume size": ({"store": {"sqlite": {"persistence": {"size": "big"}}}}, "/store/sqlite/persistence/size"),
    "access mode": ({"store": {"sqlite": {"persistence": {"accessModes": ["ReadWriteSometimes"]}}}},
                    "/store/sqlite/persistence/accessModes/0"),
    "service monitor without the service": (
        {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}, "/metrics/service/enabled"),
    "scrape interval": ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
                        "/metrics/serviceMonitor/interval"),
    "service port out of range": ({"metrics": {"service": {"port": 70000}}}, "/metrics/service/port"),
    "service type": ({"metrics": {"service": {"type": "Ingress"}}}, "/metrics/service/type"),
    "probe period": ({"livenessProbe": {"periodSeconds": 0}}, "/livenessProbe/periodSeconds"),
    "memory quantity": ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    "root user": ({"podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
    "runAsNonRoot false": ({"securityContext": {"runAsNonRoot": False}}, "/securityContext/runAsNonRoot"),
    "privileged": ({"securityContext": {"privileged": True}}, "/securityContext/privileged"),
    "privilege escalation": ({"securityContext": {"allowPrivilegeEscalation": True}},
                             "/securityContext/allowPrivilegeEscalation"),
    "added capability": ({"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
                         "/securityContext/capabilities/add/0"),
    "capabilities not all dropped": ({"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
                                     "/securityContext/capabilities/drop"),
    "unconfined seccomp": ({"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}},
                           "/podSecurityContext/seccompProfile/type"),
    "node selector value not a string": ({"nodeSelector": {"disk": 1}}, "/nodeSelector/disk"),
    "label value too long": ({"podLabels": {"team": "x" * 64}}, "/podLabels/team"),
    "extra env without a name": ({"extraEnv": [{"value": "x"}]}, "/extraEnv/0"),
    "extra env with value and valueFrom": (
        {"extraEnv": [{"name": "A", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]},
        "/extraEnv/0"),
    "extra arg not a string": ({"extraArgs": [1]}, "/extraArgs/0"),
    "extra mount without a path": ({"extraVolumeMounts": [{"name": "ca"}]}, "/extraVolumeMounts/0"),
    "negative grace period": ({"terminationGracePeriodSeconds": -1}, "/terminationGracePeriodSeconds"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_refuses_bad_values(chart: helm.Chart, case: str) -> None:
    values, fragment = BAD_VALUES[case]
    message = refused(chart, values)
    assert fragment in message, message


def test_schema_is_draft_07_and_strict() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"

    def walk(node: dict[str, Any], where: str) -> Iterator[str]:
        if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
            yield where
        for key, sub in node.get("properties", {}).items():
            yield from walk(sub, f"{where}/{key}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{where}[]")

    # Every object the chart defines refuses unknown keys (typos fail instead of being ignored), except
    # the open Kubernetes shapes: extraVolumes and extraVolumeMounts items are whole Volume/VolumeMount objects.
    assert list(walk(schema, "")) == ["/extraVolumes[]", "/extraVolumeMounts[]"]


def _keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            yield from _keys(value, f"{prefix}{key}.")


def test_schema_describes_every_value() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    # Maps of user-chosen keys (labels, annotations, resources) are described as a whole.
    free_form = ("podSecurityContext.", "securityContext.", "resources.", "annotations", "labels")
    missing = []
    for dotted in _keys(values):
        node: dict[str, Any] = schema
        for part in dotted.split("."):
            node = node.get("properties", {}).get(part) or {}
        if not node and not any(mark in dotted for mark in free_form):
            missing.append(dotted)
    assert missing == []


# Blocks whose inner keys are plain Kubernetes API fields, documented by the comment on the block itself.
KUBERNETES_BLOCKS = {"resources", "podSecurityContext", "securityContext"}
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")


def test_values_yaml_comments_every_key() -> None:
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented = []
    ancestors: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        inside_kubernetes_block = bool(ancestors) and ancestors[0][1] in KUBERNETES_BLOCKS
        ancestors.append((indent, match["key"]))
        if inside_kubernetes_block:
            continue
        previous = lines[number - 2].strip() if number > 1 else ""
        if not previous.startswith("#"):
            undocumented.append(f"line {number}: {'.'.join(key for _, key in ancestors)}")
    assert undocumented == []
