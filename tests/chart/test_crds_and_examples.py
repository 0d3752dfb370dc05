"""The chart ships the generated CRDs unchanged, and every example manifest is valid for them.

Examples are what users ``kubectl apply`` first: each document must pass the API server's checks. Custom
resources are validated against their CRD's openAPIV3Schema (unknown fields refused, nullable handled)
and through the pydantic models (which mirror the CEL rules); built-in kinds such as Secrets with
kubernetes-validate (strict).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from capture_export.api.manifests import SPEC_MODELS, parse_spec
from tests.support.chart_rendering import CHART_DIR, REPO_ROOT
from tests.support.crd_schema import CustomResourceValidator

REPO_CRDS = REPO_ROOT / "crds"
CHART_CRDS = CHART_DIR / "crds"
EXAMPLES = REPO_ROOT / "examples"
KUBE_VERSION = kubernetes_validate.utils.latest_version()


def _yaml_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*.y*ml"))}


def test_chart_crds_are_the_generated_crds() -> None:
    repo = _yaml_files(REPO_CRDS)
    assert "s3exporters.capture.dev.yaml" in repo
    chart = _yaml_files(CHART_CRDS)
    assert sorted(chart) == sorted(repo), "copy crds/*.yaml into charts/capture-export/crds/ (cp crds/*.yaml ...)"
    for name in repo:
        assert chart[name] == repo[name], f"charts/capture-export/crds/{name} differs from crds/{name}"


def test_helm_installs_the_crds() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        shipped = {Path(crd["filename"]).name for crd in chart.crds}
    assert shipped == set(_yaml_files(REPO_CRDS))


@pytest.mark.parametrize("name", sorted(_yaml_files(REPO_CRDS)))
def test_crds_are_valid_custom_resource_definitions(name: str) -> None:
    crd = yaml.safe_load((REPO_CRDS / name).read_text())
    kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)
    assert crd["metadata"]["name"] == name.removesuffix(".yaml")
    assert crd["spec"]["scope"] == "Namespaced"


# --------------------------------------------------------------------------------------------------
# Examples


@pytest.fixture(scope="module")
def validator() -> CustomResourceValidator:
    return CustomResourceValidator(REPO_CRDS)


def _example_documents() -> list[tuple[str, int, dict[str, Any]]]:
    documents = []
    for path in sorted(EXAMPLES.rglob("*.y*ml")):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document is not None:
                documents.append((str(path.relative_to(REPO_ROOT)), index, document))
    return documents


EXAMPLE_DOCUMENTS = _example_documents()


def test_there_are_examples() -> None:
    kinds = {document["kind"] for _, _, document in EXAMPLE_DOCUMENTS}
    assert "S3Exporter" in kinds


@pytest.mark.parametrize(("source", "index", "document"), EXAMPLE_DOCUMENTS,
                         ids=[f"{source}#{index}" for source, index, _ in EXAMPLE_DOCUMENTS])
def test_example_is_valid(validator: CustomResourceValidator, source: str, index: int,
                          document: dict[str, Any]) -> None:
    if validator.handles(document):
        assert validator.errors(document) == [], f"{source} document {index}"
        if document["kind"] in SPEC_MODELS:  # the models also carry the CEL rules' mirrors
            parse_spec(document["kind"], document["spec"])
        assert "status" not in document, "examples must not set status"
    else:
        assert document["apiVersion"].split("/")[0] != "capture.dev", f"no CRD in crds/ for {document['kind']}"
        # Built-in kinds (Secrets...) against the Kubernetes OpenAPI schema; an unknown kind fails here.
        kubernetes_validate.validate(document, KUBE_VERSION, strict=True)


def test_example_secrets_hold_what_exporters_need() -> None:
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for _, _, d in EXAMPLE_DOCUMENTS
               if d["kind"] == "Secret"}
    for source, _, document in EXAMPLE_DOCUMENTS:
        if document["kind"] != "S3Exporter" or not document["spec"].get("secretRef"):
            continue
        key = (document["metadata"].get("namespace", "default"), document["spec"]["secretRef"]["name"])
        if key in secrets:
            data = {**secrets[key].get("stringData", {}), **secrets[key].get("data", {})}
            assert {"access_key_id", "access_secret"} <= set(data), f"{source}: Secret {key} lacks keys"


# --------------------------------------------------------------------------------------------------
# The validator itself refuses what the API server refuses


def _exporter() -> dict[str, Any]:
    return copy.deepcopy(next(d for _, _, d in EXAMPLE_DOCUMENTS if d["kind"] == "S3Exporter"))


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda o: o["spec"].update(bukcet="typo"), "spec"),
    (lambda o: o.update(extra=1), "<root>"),
    (lambda o: o["metadata"].update(colour="red"), "metadata"),
    (lambda o: o["spec"].update(limit=10001), "spec/limit"),
    (lambda o: o["spec"].update(every="hourly"), "spec/every"),
    (lambda o: o["spec"].update(prefix="ends/with/slash/"), "spec/prefix"),
    (lambda o: o["spec"].update(bucket="Not_A_Bucket"), "spec/bucket"),
    (lambda o: o["spec"].pop("region"), "spec"),
    (lambda o: o["spec"].update(secretRef={"name": "s", "namespace": "x"}), "spec/secretRef"),
    (lambda o: o.update(kind="S3Exporters"), "kind"),
    (lambda o: o.update(apiVersion="capture.dev/v1"), "apiVersion"),
    (lambda o: o["metadata"].update(name="Bad_Name"), "metadata/name"),
])
def test_validator_refuses_invalid_resources(validator: CustomResourceValidator, mutate: Any, where: str) -> None:
    resource = _exporter()
    mutate(resource)
    if not validator.handles(resource):
        assert where in {"kind", "apiVersion"}
        return
    errors = validator.errors(resource)
    assert errors, f"accepted {resource}"
    assert any(error.startswith(f"{where}:") for error in errors), errors


def test_validator_accepts_null_for_nullable_fields(validator: CustomResourceValidator) -> None:
    resource = _exporter()
    resource["spec"].update(endpoint=None, secretRef=None, store=None)
    assert validator.errors(resource) == []
    resource["spec"].update(bucket=None)  # not nullable
    assert any(error.startswith("spec/bucket:") for error in validator.errors(resource))


def test_validator_accepts_a_status_written_by_the_operator(validator: CustomResourceValidator) -> None:
    resource = _exporter()
    resource["status"] = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "UpToDate", "message": "",
                        "lastTransitionTime": "2026-11-24T12:00:00Z", "observedGeneration": 1}],
        "cursor": "5000", "backlog": 0, "lastRun": None,
    }
    assert validator.errors(resource) == []
    resource["status"]["conditions"][0]["status"] = "Maybe"
    assert validator.errors(resource) != []


@pytest.mark.parametrize("stamp", ["yesterday", "2026-11-24 12:00", "2026-13-01T00:00:00Z", "2026-11-24T12:00:00"])
def test_validator_checks_date_time_formats(validator: CustomResourceValidator, stamp: str) -> None:
    """jsonschema skips `format: date-time` silently unless its RFC 3339 checker is installed (the
    `format-nongpl` extra of jsonschema, in the test extra): the API server does check it."""
    resource = _exporter()
    resource["status"] = {"conditions": [{"type": "Ready", "status": "True", "reason": "UpToDate",
                                          "lastTransitionTime": "2026-11-24T12:00:00Z"}]}
    assert validator.errors(resource) == []
    resource["status"]["conditions"][0]["lastTransitionTime"] = stamp
    errors = validator.errors(resource)
    assert any("date-time" in error for error in errors), errors
