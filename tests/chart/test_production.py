"""What a first production install off kind would meet: an image that exists, a pod that starts under
OpenShift's restricted-v2 SCC, chart edges the API server refuses, and NOTES that lead somewhere.

The release workflow cannot publish from here, but it is validated against GitHub's workflow schema and
its guard (tag, chart appVersion, package version and the chart's image repository must agree) is run
as the runner would run it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.support.chart_rendering import CHART_DIR, REPO_ROOT, Rendered, containers, pod_spec, render

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yaml"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def _workflow(path: Path) -> dict[Any, Any]:
    workflow: dict[Any, Any] = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def _steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def _uses(workflow: dict[Any, Any], action: str) -> dict[str, Any]:
    found = [step for step in _steps(workflow) if step.get("uses", "").startswith(action + "@")]
    assert found, f"the workflow does not use {action}"
    return found[0]


# --------------------------------------------------------------------------------------------------
# 1. The image exists: a release workflow publishes what the chart runs by default


@pytest.fixture(scope="module")
def workflow_schema_errors() -> dict[str, list[dict[str, Any]]]:
    """check-jsonschema run once over every workflow (it spends its ~2 s loading the schema, not checking):
    the errors and parse errors it reports, by file."""
    paths = sorted(WORKFLOWS.glob("*.y*ml"))
    result = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows", "-o", "json",
                             *map(str, paths)], capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report = json.loads(result.stdout)
    errors: dict[str, list[dict[str, Any]]] = {str(path): [] for path in paths}
    for error in [*report.get("errors", []), *report.get("parse_errors", [])]:
        errors[error["filename"]].append(error)  # a KeyError: it names a file under another name
    return errors


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.y*ml")), ids=lambda path: path.name)
def test_workflows_are_valid_github_actions(path: Path, workflow_schema_errors: dict[str, list[Any]]) -> None:
    """GitHub's own workflow schema (vendored by check-jsonschema): a typo'd key fails here, not on a tag."""
    assert workflow_schema_errors[str(path)] == []


def test_release_workflow_builds_multi_arch_with_sbom_and_provenance() -> None:
    workflow = _workflow(RELEASE)
    assert workflow["on"]["push"] == {"tags": ["v*.*.*"]}
    (job,) = workflow["jobs"].values()
    assert job["permissions"]["packages"] == "write", "pushing to ghcr.io needs packages: write"
    _uses(workflow, "docker/setup-qemu-action")
    _uses(workflow, "docker/setup-buildx-action")
    login = _uses(workflow, "docker/login-action")
    assert login["with"]["registry"] == "ghcr.io"
    build = _uses(workflow, "docker/build-push-action")["with"]
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["push"] is True
    assert build["sbom"] is True
    assert str(build["provenance"]).startswith("mode=")
    assert build["context"] == "."
    meta = _uses(workflow, "docker/metadata-action")["with"]
    assert "{{version}}" in meta["tags"], "the image tag is the version without its v: the chart's appVersion"


def _guard_step() -> str:
    (step,) = [step for step in _steps(_workflow(RELEASE)) if step.get("id") == "version"]
    return str(step["run"])


def _run_guard(tmp_path: Path, tag: str, owner: str) -> subprocess.CompletedProcess[str]:
    output = tmp_path / "github-output"
    output.write_text("")
    return subprocess.run(["bash", "-e", "-c", _guard_step()], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "TAG": tag, "GITHUB_REPOSITORY_OWNER": owner,
                               "GITHUB_OUTPUT": str(output)})


def _owner(chart: helm.Chart) -> str:
    repository = chart.values["image"]["repository"]
    match = re.fullmatch(r"ghcr\.io/([a-z0-9-]+)/capture-export", repository)
    assert match, f"the chart's default image must be the published ghcr.io/<owner>/capture-export: {repository}"
    return match.group(1)


def test_chart_default_image_is_the_one_the_release_publishes(chart: helm.Chart, tmp_path: Path) -> None:
    app_version = chart.metadata["appVersion"]
    (container,) = pod_spec(render(chart))["containers"]
    owner = _owner(chart)
    assert container["image"] == f"ghcr.io/{owner}/capture-export:{app_version}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    # The guard the release runs before pushing: this tag, this owner (GitHub spells owners in any case).
    result = _run_guard(tmp_path, f"v{app_version}", owner.upper())
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"image=ghcr.io/{owner}/capture-export" in (tmp_path / "github-output").read_text()


@pytest.mark.parametrize(("tag", "owner", "complaint"), [
    ("v99.0.0", None, "appVersion is"),
    ("v99.0.0", None, "pyproject.toml::version is"),
    (None, "a-fork", "image.repository is"),
])
def test_release_refuses_a_tag_the_chart_would_not_run(chart: helm.Chart, tmp_path: Path, tag: str | None,
                                                        owner: str | None, complaint: str) -> None:
    result = _run_guard(tmp_path, tag or f"v{chart.metadata['appVersion']}", owner or _owner(chart))
    assert result.returncode != 0
    assert complaint in result.stdout


def test_notes_say_which_image_runs_and_how_to_override(chart: helm.Chart) -> None:
    rendered = render(chart)
    (container,) = pod_spec(rendered)["containers"]
    assert f"Image: {container['image']}" in rendered.notes
    for word in ("image.repository", "image.tag", "kind load image-archive"):
        assert word in rendered.notes
    custom = render(chart, {"image": {"repository": "registry.example.com/capture-export", "tag": "7.0"}})
    assert "Image: registry.example.com/capture-export:7.0." in custom.notes


def test_e2e_workflow_loads_the_image_as_an_archive() -> None:
    """`kind load docker-image` fails with Docker's containerd image store; an archive loads either way."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("\ne2e-load:", 1)[1].split("\n\n", 1)[0]
    assert "kind load docker-image" not in recipe.replace("$(KIND)", "kind")
    assert "image save" in recipe and "load image-archive" in recipe


# --------------------------------------------------------------------------------------------------
# 3. Any uid: OpenShift's restricted-v2 SCC

OPENSHIFT_UID_RANGE = range(1000680000, 1000690000)  # what a namespace's openshift.io/sa.scc.uid-range gives
RESTRICTED_V2_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                         "projected", "secret"}


def restricted_v2_violations(spec: dict[str, Any], all_containers: list[dict[str, Any]]) -> list[str]:
    """What OpenShift's restricted-v2 SCC refuses: ids outside the namespace's range (MustRunAsRange /
    MustRunAs), privilege escalation, capabilities beyond NET_BIND_SERVICE, seccomp other than the
    runtime default, host namespaces or ports, and volume types outside its list."""
    problems: list[str] = []
    pod = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is set")
    for volume in spec.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_V2_VOLUMES:
            problems.append(f"volume {volume['name']}: type not allowed")
    for field in ("runAsUser", "fsGroup", "runAsGroup"):
        if field in pod and pod[field] not in OPENSHIFT_UID_RANGE:
            problems.append(f"pod {field} {pod[field]} is outside the namespace's range")
    for group in pod.get("supplementalGroups", []):
        if group not in OPENSHIFT_UID_RANGE:
            problems.append(f"pod supplementalGroups {group} is outside the namespace's range")
    for container in all_containers:
        where = f"container {container['name']}"
        context = container.get("securityContext", {})
        for field in ("runAsUser", "runAsGroup"):
            if field in context and context[field] not in OPENSHIFT_UID_RANGE:
                problems.append(f"{where}: {field} {context[field]} is outside the namespace's range")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{where}: must drop ALL capabilities")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds {capabilities['add']}")
        seccomp = context.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{where}: seccomp {seccomp}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort")
    return problems


def openshift_values() -> dict[str, Any]:
    """The values the OpenShift note in values.yaml tells users to install with."""
    text = (CHART_DIR / "values.yaml").read_text()
    note = text.split("\npodSecurityContext:", 1)[0].rsplit("\n\n", 1)[1]
    assert "OpenShift" in note, "values.yaml has no OpenShift note above podSecurityContext"
    match = re.search(r"--values (\S+?)`", note)
    assert match, f"the OpenShift note names no values file: {note}"
    values: dict[str, Any] = yaml.safe_load((REPO_ROOT / match.group(1)).read_text())
    # The note's --set form must say the same thing as the file.
    sets = re.findall(r"--set ([\w.]+)=null", note.replace("\n# ", " "))
    flattened = {f"{top}.{key}" for top, block in values.items() for key, value in block.items() if value is None}
    assert set(sets) == flattened
    return values


def test_openshift_values_start_under_restricted_v2(chart: helm.Chart) -> None:
    rendered = render(chart, openshift_values())
    assert restricted_v2_violations(pod_spec(rendered), containers(rendered)) == []
    # The defaults, with their fixed uid 10001, would be refused there: the checker is not a rubber stamp.
    assert restricted_v2_violations(pod_spec(render(chart)), containers(render(chart)))


def test_operator_names_itself_after_the_pod(chart: helm.Chart) -> None:
    """kopf calls getpass.getuser() unless POD_ID is set, which fails for a uid with no passwd entry."""
    for values in ({}, openshift_values()):
        (container,) = pod_spec(render(chart, values))["containers"]
        env = {item["name"]: item for item in container["env"]}
        assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


# --------------------------------------------------------------------------------------------------
# 4. Probes and shutdown


def _operator_config(container: dict[str, Any]) -> Any:
    """The OperatorConfig `capture-export <args>` builds, parsed with the real CLI."""
    from capture_export.cli import build_parser, operator_config

    return operator_config(build_parser().parse_args(container["args"]))


def test_readiness_probe_asks_the_operator_whether_it_serves(chart: helm.Chart) -> None:
    (container,) = pod_spec(render(chart))["containers"]
    probe = container["readinessProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "ready"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    config = _operator_config(container)
    assert ports["ready"] == config.readiness_port, "the probe must reach the port the operator serves /readyz on"
    assert ports["health"] == config.liveness_port
    assert probe["httpGet"]["path"] != container["livenessProbe"]["httpGet"]["path"], (
        "kopf's /healthz answers 200 before the operator ever reached the API: it cannot mean Ready")
    (container,) = pod_spec(render(chart, {"readinessProbe": {"enabled": False}}))["containers"]
    assert "readinessProbe" not in container


@pytest.mark.parametrize("grace", [None, 15, 120, 600])
def test_grace_period_covers_the_operator_own_stop(chart: helm.Chart, grace: int | None) -> None:
    """Kubernetes kills the pod terminationGracePeriodSeconds after SIGTERM: the operator's own stop (the
    batches in flight, then its last status writes and exit) must fit in it, or the kill wastes them."""
    values = {} if grace is None else {"terminationGracePeriodSeconds": grace}
    spec = pod_spec(render(chart, values))
    config = _operator_config(spec["containers"][0])
    assert config.shutdown_seconds <= spec["terminationGracePeriodSeconds"]
    assert config.stop_timeout >= spec["terminationGracePeriodSeconds"] - 10, "and it uses the time it has"


def test_grace_period_too_short_for_a_batch_is_refused(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError) as caught:
        chart.render({"terminationGracePeriodSeconds": 5}, name="capture-export", namespace="capture-export",
                     is_install=True)
    assert "/terminationGracePeriodSeconds" in str(caught.value)


# --------------------------------------------------------------------------------------------------
# 5. Chart edges


@pytest.mark.parametrize("path", ["/tmp", "/home/capture"])
def test_store_mount_path_cannot_shadow_the_chart_emptydirs(chart: helm.Chart, path: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        chart.render({"store": {"sqlite": {"mountPath": path}}}, name="capture-export", namespace="capture-export",
                     is_install=True)
    assert "/store/sqlite/mountPath" in str(caught.value)
    with pytest.raises(helm.HelmError) as caught:
        chart.render({"extraVolumeMounts": [{"name": "x", "mountPath": path}]}, name="capture-export",
                     namespace="capture-export", is_install=True)
    assert "/extraVolumeMounts/0" in str(caught.value)


def test_every_accepted_mount_path_is_unique(chart: helm.Chart) -> None:
    for mount_path in ("/data", "/var/lib/capture", "/tmp/store", "/home"):
        rendered = render(chart, {"store": {"sqlite": {"mountPath": mount_path}}})
        paths = [mount["mountPath"] for mount in pod_spec(rendered)["containers"][0]["volumeMounts"]]
        assert len(paths) == len(set(paths)), paths


def _rbac_groups(rendered: Rendered) -> set[str]:
    return {group for role in rendered.of_kind("ClusterRole") + rendered.of_kind("Role")
            for rule in role["rules"] for group in rule["apiGroups"]}


def test_no_events_k8s_io_grant(chart: helm.Chart) -> None:
    """kopf posts core/v1 Events (and so do we, through it): nothing writes events.k8s.io."""
    for values in ({}, {"watch": {"allNamespaces": False}}):
        assert "events.k8s.io" not in _rbac_groups(render(chart, values))


def test_notes_show_the_in_cluster_endpoint_edit(chart: helm.Chart) -> None:
    notes = render(chart).notes
    seds = [line.strip() for line in notes.splitlines() if line.strip().startswith("sed ")]
    assert seds, "NOTES must show how to point examples/exporter.yaml at an in-cluster endpoint"
    for command in seds:
        expression = command.split("'")[1]
        path = command.split("'")[2].split()[0]
        _, old, new, _ = expression.split("|")
        assert path == "examples/exporter.yaml"
        assert old in (REPO_ROOT / path).read_text(), f"`{command}` would change nothing"
        assert ".svc.cluster.local" in new
        assert "kubectl apply -f -" in command
