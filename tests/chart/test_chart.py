"""The Helm chart, linted and rendered offline with Helm's own SDK, and its manifests validated offline.

What a cluster would refuse or what would weaken the operator's guarantees fails here: manifests invalid
for the Kubernetes API (strict, unknown fields included), RBAC beyond least privilege, a pod that the
"restricted" Pod Security admission would reject, more than one operator replica.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.support.chart_rendering import (
    CHART_DIR,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    REPO_ROOT,
    SCENARIOS,
    Rendered,
    containers,
    pod_spec,
    render,
)
from tests.support.pod_security import restricted_violations


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest, chart: helm.Chart) -> tuple[str, Rendered]:
    return request.param, render(chart, SCENARIOS[request.param])


# --------------------------------------------------------------------------------------------------
# Lint and offline validation


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART_DIR, SCENARIOS[name], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings and errors fail.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_chart_metadata(chart: helm.Chart) -> None:
    metadata = chart.metadata
    assert metadata["name"] == "capture-export"
    assert metadata["apiVersion"] == "v2"
    assert metadata["type"] == "application"
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert f'version = "{metadata["appVersion"]}"' in pyproject, "appVersion must follow the package version"


def test_rendered_manifests_validate_offline_strict(scenario: tuple[str, Rendered]) -> None:
    name, rendered = scenario
    assert rendered.objects, name
    for obj in rendered:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # not a built-in kind: checked field by field in test_service_monitor_scrapes_the_service
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(map(str, exc.path))
                pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} invalid for {version} at {where}: "
                            f"{exc.message}")


def test_objects_are_named_labelled_and_unique(scenario: tuple[str, Rendered]) -> None:
    name, rendered = scenario
    seen = set()
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in rendered:
        metadata = obj["metadata"]
        key = (obj["kind"], metadata.get("namespace"), metadata["name"])
        assert key not in seen, f"{name}: duplicate {key}"
        seen.add(key)
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in metadata
        else:
            assert metadata.get("namespace"), f"{name}: {key} has no namespace"
        labels = metadata["labels"]
        assert labels["app.kubernetes.io/name"] == "capture-export"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_notes_render(scenario: tuple[str, Rendered]) -> None:
    _, rendered = scenario
    assert "examples/exporter.yaml | kubectl apply -f -" in rendered.notes
    assert "<no value>" not in rendered.notes
    for text in rendered.sources.values():
        assert "<no value>" not in text


# --------------------------------------------------------------------------------------------------
# The Deployment


def test_one_operator_replica_recreated_on_upgrade(scenario: tuple[str, Rendered]) -> None:
    _, rendered = scenario
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


def test_operator_container(chart: helm.Chart) -> None:
    rendered = render(chart)
    (container,) = pod_spec(rendered)["containers"]
    assert container["image"] == f"ghcr.io/capture-dev/capture-export:{chart.metadata['appVersion']}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"] == ["operator", "--all-namespaces", "--stop-timeout", "50"]
    assert "command" not in container, "the image's entrypoint is capture-export"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090, "ready": 8081}
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert probe["periodSeconds"] > 0 and probe["failureThreshold"] >= 1
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    env = {item["name"]: item for item in container["env"]}
    assert env["CAPTURE_EXPORT_STORE"]["value"] == "/data/store.sqlite"
    assert pod_spec(rendered)["serviceAccountName"] == RELEASE


def test_namespaced_mode_passes_each_namespace(chart: helm.Chart) -> None:
    rendered = render(chart, SCENARIOS["namespaced"])
    (container,) = pod_spec(rendered)["containers"]
    assert container["args"][:5] == ["operator", "--namespace", "team-a", "--namespace", "team-b"]
    rendered = render(chart, SCENARIOS["namespaced-release-namespace"])
    (container,) = pod_spec(rendered)["containers"]
    assert container["args"][:3] == ["operator", "--namespace", NAMESPACE]


@pytest.mark.parametrize("name", ["defaults", "namespaced", "namespaced-release-namespace", "postgres-inline-dsn"])
def test_chart_arguments_parse_with_the_real_cli(chart: helm.Chart, name: str) -> None:
    from capture_export.cli import build_parser

    parser = build_parser()
    commands = next(action.choices for action in parser._subparsers._group_actions)  # type: ignore[union-attr]
    if "operator" not in commands:
        pytest.skip("`capture-export operator` is not in the CLI yet (the operator issue adds it)")
    (container,) = pod_spec(render(chart, SCENARIOS[name]))["containers"]
    parser.parse_args(container["args"])  # exits (fails the test) on an unknown flag


def test_everything_knob_reaches_the_pod(chart: helm.Chart) -> None:
    values = SCENARIOS["everything"]
    rendered = render(chart, values)
    deployment = rendered.one("Deployment")
    assert deployment["metadata"]["name"] == "exports"
    spec = pod_spec(rendered)
    (container,) = spec["containers"]
    assert container["image"] == "registry.example.com/platform/capture-export@sha256:" + "ab" * 32
    assert container["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == values["affinity"]
    assert spec["priorityClassName"] == "platform-critical"
    assert spec["terminationGracePeriodSeconds"] == 120
    assert container["resources"] == values["resources"]
    assert container["args"] == ["operator", "--namespace", "gateway", "--stop-timeout", "110", "--verbose"]
    for item in values["extraEnv"]:
        assert item in container["env"]
    assert container["envFrom"] == values["extraEnvFrom"]
    assert values["extraVolumes"][0] in spec["volumes"]
    assert values["extraVolumeMounts"][0] in container["volumeMounts"]
    template = deployment["spec"]["template"]["metadata"]
    assert template["annotations"]["example.com/team"] == "platform"
    assert template["labels"]["team"] == "platform"
    assert all(obj["metadata"]["labels"]["cost-center"] == "ml" for obj in rendered)
    account = rendered.one("ServiceAccount")
    assert account["metadata"]["annotations"] == values["serviceAccount"]["annotations"]


def test_external_service_account_and_rbac(chart: helm.Chart) -> None:
    rendered = render(chart, SCENARIOS["external-rbac-and-service-account"])
    assert pod_spec(rendered)["serviceAccountName"] == "platform-operator"
    kinds = {obj["kind"] for obj in rendered}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


# --------------------------------------------------------------------------------------------------
# Pod Security: the "restricted" profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/)

def test_pod_meets_the_restricted_profile(scenario: tuple[str, Rendered]) -> None:
    name, rendered = scenario
    assert restricted_violations(pod_spec(rendered), containers(rendered)) == [], name


def test_the_restricted_checker_catches_violations() -> None:
    pod = {"hostNetwork": True, "securityContext": {"runAsUser": 0},
           "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}
    container = {"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                 "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]},
                                     "seccompProfile": {"type": "Unconfined"}}}
    problems = "\n".join(restricted_violations(pod, [container]))
    for expected in ("hostNetwork", "runAsUser 0", "disallowed type", "privileged", "allowPrivilegeEscalation",
                     "drop ALL", "SYS_ADMIN", "runAsNonRoot", "seccomp Unconfined", "hostPort"):
        assert expected in problems


def test_read_only_root_with_writable_tmp_and_home(scenario: tuple[str, Rendered]) -> None:
    name, rendered = scenario
    spec = pod_spec(rendered)
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsUser"] == 10001, "the image's user"
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    for path in ("/tmp", "/home/capture"):
        assert "emptyDir" in volumes[mounts[path]], f"{name}: {path} must be a writable emptyDir"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["HOME"] == "/home/capture" and env["TMPDIR"] == "/tmp"


# --------------------------------------------------------------------------------------------------
# The default capture store


def _store_env(rendered: Rendered) -> dict[str, Any]:
    (container,) = pod_spec(rendered)["containers"]
    (store,) = [item for item in container["env"] if item["name"] == "CAPTURE_EXPORT_STORE"]
    return store


def test_sqlite_store_on_a_kept_pvc(chart: helm.Chart) -> None:
    rendered = render(chart)
    claim = rendered.one("PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"], "empty means the cluster default class"
    spec = pod_spec(rendered)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (container,) = spec["containers"]
    assert {"name": "store", "mountPath": "/data"} in container["volumeMounts"]
    assert _store_env(rendered) == {"name": "CAPTURE_EXPORT_STORE", "value": "/data/store.sqlite"}
    assert not rendered.of_kind("Secret")


def test_sqlite_store_knobs(chart: helm.Chart) -> None:
    rendered = render(chart, SCENARIOS["sqlite-existing-claim"])
    assert not rendered.of_kind("PersistentVolumeClaim")
    volumes = {volume["name"]: volume for volume in pod_spec(rendered)["volumes"]}
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "gateway-captures"

    rendered = render(chart, SCENARIOS["sqlite-emptydir"])
    assert not rendered.of_kind("PersistentVolumeClaim")
    volumes = {volume["name"]: volume for volume in pod_spec(rendered)["volumes"]}
    assert volumes["store"] == {"name": "store", "emptyDir": {}}
    assert _store_env(rendered)["value"] == "/var/lib/capture/captures.db"

    claim = render(chart, SCENARIOS["everything"]).one("PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["metadata"]["annotations"] == {"backup.example.com/enabled": "true"}


def test_postgres_store_from_a_chart_secret(chart: helm.Chart) -> None:
    rendered = render(chart, SCENARIOS["postgres-inline-dsn"])
    secret = rendered.one("Secret")
    assert secret["stringData"] == {"dsn": "postgresql://capture:pw@postgres.db:5432/capture"}
    assert _store_env(rendered)["valueFrom"] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "dsn"}}
    assert not rendered.of_kind("PersistentVolumeClaim")
    assert "store" not in {volume["name"] for volume in pod_spec(rendered)["volumes"]}
    # The DSN appears nowhere but in the Secret (not in the Deployment or NOTES).
    for source, text in rendered.sources.items():
        if not source.endswith("secret.yaml"):
            assert "capture:pw@" not in text, source


def test_postgres_store_from_an_existing_secret(chart: helm.Chart) -> None:
    rendered = render(chart, SCENARIOS["postgres-existing-secret"])
    assert not rendered.of_kind("Secret")
    assert _store_env(rendered)["valueFrom"] == {"secretKeyRef": {"name": "capture-store", "key": "url"}}


# --------------------------------------------------------------------------------------------------
# RBAC: least privilege, no wildcards

# (apiGroup, resource) -> verbs, in the namespace(s) the operator watches.
NAMESPACED_PERMISSIONS = {
    ("capture.dev", "s3exporters"): {"get", "list", "watch", "patch"},
    ("capture.dev", "retentionpolicies"): {"get", "list", "watch", "patch"},
    ("capture.dev", "s3exporters/status"): {"patch"},
    ("capture.dev", "retentionpolicies/status"): {"patch"},
    ("", "secrets"): {"get"},
    ("", "configmaps"): {"get"},  # spec.caBundleRef.configMapKeyRef
    ("", "events"): {"create"},
}
CRD_DISCOVERY = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}


def permissions(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def assert_no_wildcards(rendered: Rendered) -> None:
    for obj in rendered.of_kind("ClusterRole") + rendered.of_kind("Role"):
        for rule in obj["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(field, [])), f"wildcard in {obj['kind']}: {rule}"


def assert_bound(rendered: Rendered, binding: dict[str, Any], role: dict[str, Any]) -> None:
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role["kind"],
                                  "name": role["metadata"]["name"]}
    account = rendered.one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                    "namespace": account["namespace"]}]
    assert binding["metadata"].get("namespace") == role["metadata"].get("namespace")


def test_cluster_wide_rbac_is_least_privilege(chart: helm.Chart) -> None:
    rendered = render(chart)
    assert_no_wildcards(rendered)
    assert not rendered.of_kind("Role") and not rendered.of_kind("RoleBinding")
    role = rendered.one("ClusterRole")
    # Exactly these verbs: cluster-wide mode never lists namespaces (kopf watches all at once).
    assert permissions(role) == {**NAMESPACED_PERMISSIONS, **CRD_DISCOVERY}
    assert_bound(rendered, rendered.one("ClusterRoleBinding"), role)


@pytest.mark.parametrize(("name", "namespaces"), [("namespaced", ["team-a", "team-b"]),
                                                  ("namespaced-release-namespace", [NAMESPACE]),
                                                  ("everything", ["gateway"])])
def test_namespaced_rbac_is_least_privilege(chart: helm.Chart, name: str, namespaces: list[str]) -> None:
    rendered = render(chart, SCENARIOS[name])
    assert_no_wildcards(rendered)
    # Nothing cluster-wide: with exact namespace names the operator turns kopf's scanning off, so it
    # neither lists/watches Namespaces nor watches CRDs.
    assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")
    roles = {role["metadata"]["namespace"]: role for role in rendered.of_kind("Role")}
    bindings = {binding["metadata"]["namespace"]: binding for binding in rendered.of_kind("RoleBinding")}
    assert sorted(roles) == sorted(bindings) == sorted(namespaces)
    for namespace in namespaces:
        assert permissions(roles[namespace]) == NAMESPACED_PERMISSIONS
        assert_bound(rendered, bindings[namespace], roles[namespace])


def test_namespaced_mode_disables_kopf_scanning() -> None:
    """The namespaced RBAC above relies on it: kopf scans namespaces and CRDs unless scanning is off."""
    import kopf

    from capture_export.handlers.settings import OperatorConfig, apply_settings

    settings = kopf.OperatorSettings()
    apply_settings(settings, OperatorConfig(namespaces=("team-a", "team-b")))
    assert settings.scanning.disabled is True
    assert settings.peering.standalone is True, "peering would need kopfpeerings RBAC"
    settings = kopf.OperatorSettings()
    apply_settings(settings, OperatorConfig())
    assert settings.peering.standalone is True


def test_rbac_covers_every_kind_in_the_crds() -> None:
    """A new CRD in crds/ (e.g. a new kind) must get its watch/patch/status permissions in the chart."""
    plurals = set()
    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert crd["spec"]["group"] == "capture.dev"
        plurals.add(crd["spec"]["names"]["plural"])
        assert "status" in crd["spec"]["versions"][0].get("subresources", {})
    assert "s3exporters" in plurals
    served = {resource for group, resource in NAMESPACED_PERMISSIONS if group == "capture.dev" and "/" not in resource}
    assert plurals <= served, f"kinds without RBAC in the chart: {sorted(plurals - served)}"
    from capture_export.handlers.settings import SERVED_PLURALS

    assert set(SERVED_PLURALS) == plurals, "readiness lists every kind the operator serves"


# --------------------------------------------------------------------------------------------------
# Metrics


def test_metrics_service(chart: helm.Chart) -> None:
    rendered = render(chart)
    service = rendered.one("Service")
    (port,) = service["spec"]["ports"]
    assert port == {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not rendered.of_kind("ServiceMonitor"), "off by default: needs prometheus-operator's CRDs"
    assert not render(chart, SCENARIOS["no-metrics-no-probe"]).of_kind("Service")


def test_service_monitor_scrapes_the_service(chart: helm.Chart) -> None:
    rendered = render(chart, SCENARIOS["everything"])
    service = rendered.one("Service")
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(monitor["spec"]) == {"jobLabel", "selector", "namespaceSelector", "endpoints"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s",
                        "relabelings": SCENARIOS["everything"]["metrics"]["serviceMonitor"]["relabelings"]}
    assert service["spec"]["ports"][0]["port"] == 9100
    assert service["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}


def test_liveness_probe_can_be_disabled(chart: helm.Chart) -> None:
    (container,) = pod_spec(render(chart, SCENARIOS["no-metrics-no-probe"]))["containers"]
    assert "livenessProbe" not in container
