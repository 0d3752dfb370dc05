"""What cannot run here (no container engine, kind or helm binary) is still checked for what it can be:
the Dockerfile against the chart's assumptions, the e2e manifests offline, the workflows and kind config
parse, and the Makefile, the e2e helpers and the manifests agree on names."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from capture_export.api.manifests import parse_spec
from tests.support import e2e_assets as e2e
from tests.support.chart_rendering import CHART_DIR, REPO_ROOT, pod_spec, render
from tests.support.crd_schema import CustomResourceValidator
from tests.support.e2e_assets import example_exporter_documents, example_retention_policy
from tests.support.pod_security import restricted_violations

KUBE_VERSION = kubernetes_validate.utils.latest_version()


def _makefile_default(name: str) -> str:
    match = re.search(rf"^{name} \?= *(.*)$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile has no default for {name}"
    return match.group(1).strip()


# --------------------------------------------------------------------------------------------------
# Dockerfile


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split into build stages."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    stages = _stages()
    assert len(stages) >= 2, "build in one stage, run in another"
    text = (REPO_ROOT / "Dockerfile").read_text()
    base = re.search(r"ARG PYTHON_IMAGE=python:(\d+)\.(\d+)-slim", text)
    assert base and (int(base.group(1)), int(base.group(2))) >= (3, 11)
    final = "\n".join(stages[-1])
    assert "--from=build" in final
    for tool in ("gcc", "build-essential", "make ", "pip install", "apt-get install"):
        assert tool not in final, f"final stage must not install {tool.strip()}"
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
    assert "PYTHONDONTWRITEBYTECODE=1" in final
    assert 'ENTRYPOINT ["capture-export"]' in final
    assert re.search(r'^CMD \["operator"', final, re.MULTILINE)
    assert re.search(r"^EXPOSE 8080 8081 9090$", final, re.MULTILINE)


def test_image_matches_the_chart() -> None:
    final = "\n".join(_stages()[-1])
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = render(chart)
    spec = pod_spec(rendered)
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsGroup"] == 10001
    assert "useradd --system --uid 10001 --gid 10001 --home-dir /home/capture" in final
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert f"HOME={env['HOME']}" in final
    assert f"CAPTURE_EXPORT_STORE={env['CAPTURE_EXPORT_STORE']}" in final


def test_dockerignore_keeps_only_the_package() -> None:
    lines = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: exclude everything first"
    for needed in ("!pyproject.toml", "!README.md", "!operator/"):
        assert needed in lines
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    for sources in copied:
        for source in sources.split():
            assert f"!{source.rstrip('/')}" in lines or f"!{source.rstrip('/')}/" in lines, source


def test_image_installs_the_versions_the_tests_passed_with() -> None:
    """A dependency's release must not change the shipped image under the tests' feet, as moto 5.2.6 turned CI
    red overnight: the image's pip install takes scripts/constraints.txt, which pins every package the
    image installs (the runtime dependencies and the parquet extra)."""
    (install,) = [line for line in _stages()[0] if "pip install" in line]
    assert re.search(r"(?:-c|--constraint)[ =]\S*constraints\.txt", install), install
    assert re.search(r"^COPY scripts/constraints\.txt ", "\n".join(_stages()[0]), re.MULTILINE)
    pinned = {canonicalize_name(line.split("==")[0]) for line in
              (REPO_ROOT / "scripts" / "constraints.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    shipped = project["dependencies"] + project["optional-dependencies"]["parquet"]
    unpinned = sorted(name for name in (canonicalize_name(Requirement(spec).name) for spec in shipped)
                      if name not in pinned)
    assert not unpinned, f"not in scripts/constraints.txt (run scripts/freeze-constraints.sh): {unpinned}"


# --------------------------------------------------------------------------------------------------
# kind e2e assets


@pytest.mark.parametrize("name", ["minio.yaml", "minio-bucket.yaml", "postgres.yaml"])
def test_e2e_manifests_validate_offline(name: str) -> None:
    documents = [d for d in yaml.safe_load_all((REPO_ROOT / "tests" / "e2e" / name).read_text()) if d]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, KUBE_VERSION, strict=True)


def test_minio_manifests_agree_with_the_suite() -> None:
    documents = [d for d in yaml.safe_load_all((REPO_ROOT / "tests" / "e2e" / "minio.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in documents}
    credentials = by_kind["Secret"]["stringData"]
    assert credentials == {"MINIO_ROOT_USER": e2e.MINIO_ACCESS_KEY, "MINIO_ROOT_PASSWORD": e2e.MINIO_SECRET_KEY}
    service = by_kind["Service"]
    metadata, port = service["metadata"], service["spec"]["ports"][0]["port"]
    endpoint = f"http://{metadata['name']}.{metadata['namespace']}.svc.cluster.local:{port}"
    assert endpoint == e2e.MINIO_ENDPOINT
    (container,) = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("quay.io/minio/minio:RELEASE."), "pinned, from quay.io"
    job = yaml.safe_load((REPO_ROOT / "tests" / "e2e" / "minio-bucket.yaml").read_text())
    (creator,) = job["spec"]["template"]["spec"]["containers"]
    assert creator["image"] == _makefile_default("E2E_IMAGE"), "`make e2e-minio` substitutes this exact string"
    assert f'"{e2e.BUCKET}"' in creator["command"][-1]
    assert e2e.MINIO_ENDPOINT in creator["command"][-1]


def test_resources_the_e2e_suite_applies_are_valid() -> None:
    """The e2e suite derives its S3Exporter, Secret and RetentionPolicy from examples/: the results must be
    what the API server accepts, or the suite would fail in CI for a reason visible here."""
    validator = CustomResourceValidator(REPO_ROOT / "crds")
    documents = [*example_exporter_documents(), example_retention_policy()]
    for document in documents:
        if validator.handles(document):
            assert validator.errors(document) == []
            parse_spec(document["kind"], document["spec"])
        else:
            kubernetes_validate.validate(document, KUBE_VERSION, strict=True)
    assert {d["kind"] for d in documents} == {"Secret", "S3Exporter", "RetentionPolicy"}


def test_namespaced_e2e_release_renders_with_the_chart_defaults() -> None:
    """The namespaced e2e release: valid values, one namespace watched, PostgreSQL from the chart's Secret,
    and the chart's default resources (the memory case measures exactly those)."""
    values: dict[str, Any] = {}
    for setting in e2e.release_settings():
        values = _merge(values, helm.parse_set_string(setting))
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(chart.merge_values(values))
        rendered = render(chart, values, namespace=e2e.OPERATOR_NAMESPACE,
                          release=e2e.NS_RELEASE)
        defaults = chart.values
    (container,) = pod_spec(rendered)["containers"]
    assert container["args"][:3] == ["operator", "--namespace", e2e.OPERATOR_NAMESPACE]
    assert container["resources"] == defaults["resources"]
    assert container["image"] == e2e.IMAGE and container["imagePullPolicy"] == "Never"
    assert rendered.one("Secret")["stringData"]["dsn"] == e2e.DSN
    assert not rendered.of_kind("ClusterRole")


def test_namespaced_e2e_resources_are_admitted() -> None:
    """What the namespaced e2e module applies: valid custom resources, and a seeding Job the namespace's
    restricted Pod Security profile admits."""
    validator = CustomResourceValidator(REPO_ROOT / "crds")
    for fmt in ("cbor", "parquet"):
        document = e2e.exporter_document("usage", "e2e/x", fmt=fmt)
        assert validator.errors(document) == []
        parse_spec(document["kind"], document["spec"])
    kubernetes_validate.validate(e2e.secret_document(), KUBE_VERSION, strict=True)
    job = e2e.seed_job_manifest("seed", 10, seed=1)
    kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod, pod["containers"]) == []
    host, port = re.search(r"@([^:/]+):(\d+)/", e2e.DSN).groups()  # type: ignore[union-attr]
    documents = {d["kind"]: d for d in yaml.safe_load_all((REPO_ROOT / "tests" / "e2e" / "postgres.yaml").read_text())}
    service = documents["Service"]
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert int(port) == service["spec"]["ports"][0]["port"]
    credentials = documents["Secret"]["stringData"]
    assert f"{credentials['POSTGRES_USER']}:{credentials['POSTGRES_PASSWORD']}@" in e2e.DSN
    assert e2e.DSN.endswith(f"/{credentials['POSTGRES_DB']}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def test_kind_config() -> None:
    config = yaml.safe_load((REPO_ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == _makefile_default("E2E_CLUSTER") == e2e.CLUSTER
    assert [node["role"] for node in config["nodes"]] == ["control-plane"]


def test_makefile_and_suite_agree() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in ("e2e", "e2e-up", "e2e-down", "e2e-cluster", "e2e-load", "e2e-minio", "e2e-install", "image",
                   "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"Makefile lacks target {target}"
    assert _makefile_default("E2E_NAMESPACE") == e2e.NAMESPACE
    assert _makefile_default("E2E_RELEASE") == e2e.RELEASE
    assert _makefile_default("E2E_IMAGE") == e2e.IMAGE
    assert "kind-config.yaml" in makefile and "tests/e2e/minio.yaml" in makefile
    assert "-m e2e tests/e2e" in makefile
    # Recipes are indented with tabs, or make refuses the file: a line may start with spaces only when it
    # continues the previous one.
    lines = makefile.splitlines()
    for number, line in enumerate(lines[1:], 2):
        if line.startswith(" ") and line.strip():
            assert lines[number - 2].endswith("\\"), f"Makefile line {number} is indented with spaces"


def test_e2e_values_are_valid_chart_values() -> None:
    values: dict[str, Any] = yaml.safe_load((REPO_ROOT / "tests" / "e2e" / "values.yaml").read_text())
    image = _makefile_default("E2E_IMAGE")
    overrides = {"image": {"repository": image.rsplit(":", 1)[0], "tag": image.rsplit(":", 1)[1]},
                 "podAnnotations": {"e2e/image-id": "sha256:" + "0" * 64}}
    with helm.Chart.load(CHART_DIR) as chart:
        merged = chart.merge_values({**values, **overrides, "image": {**values["image"], **overrides["image"]}})
        chart.validate_schema(merged)
        rendered = render(chart, merged)
    (container,) = pod_spec(rendered)["containers"]
    assert container["image"] == image and container["imagePullPolicy"] == "Never"
    claim = rendered.one("PersistentVolumeClaim")
    assert "annotations" not in claim["metadata"], "the e2e suite checks that uninstall removes the claim"


# --------------------------------------------------------------------------------------------------
# GitHub Actions


def _workflow(name: str) -> dict[Any, Any]:
    workflow: dict[Any, Any] = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    assert "on" in workflow or True in workflow
    return workflow


def _steps(workflow: dict[Any, Any]) -> list[str]:
    return [json.dumps(step) for job in workflow["jobs"].values() for step in job["steps"]]


def test_ci_workflow_runs_the_normal_test_command() -> None:
    workflow = _workflow("ci.yaml")
    assert all(job["runs-on"] == "ubuntu-latest" for job in workflow["jobs"].values())
    assert any('".ci/run"' in step for step in _steps(workflow))
    assert (REPO_ROOT / ".ci" / "run").exists()


def test_e2e_workflow_runs_make_e2e_with_docker() -> None:
    workflow = _workflow("e2e.yaml")
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    steps = _steps(workflow)
    for tool in ("kind", "helm", "kubectl"):
        assert any(tool in step for step in steps)
    assert any("make e2e" in step for step in steps)
    assert any("scripts/bootstrap.sh test" in step for step in steps)
