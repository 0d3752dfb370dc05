"""The CRDs from ``crds/`` on a real API server: accepted (structural schema, every CEL rule compiled and
within the cost budget), described as ``kubectl explain`` shows them, printer columns as docs/ says."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from capture_export.api import GROUP, VERSION
from tests.support.operator_harness import wait_for

from .apiserver import REPO_ROOT, TempApiServer
from .helpers import get_json, table, table_rows

# Where `kubectl get` output is documented: the operator guide (S3Exporter) and the retention guide.
DOCS = "\n".join((REPO_ROOT / "docs" / name).read_text() for name in ("operations.md", "retention.md"))


def test_crds_are_established_with_structural_schemas(crds: list[dict[str, Any]]) -> None:
    assert sorted(crd["metadata"]["name"] for crd in crds) == [f"retentionpolicies.{GROUP}", f"s3exporters.{GROUP}"]
    for crd in crds:
        conditions = {c["type"]: (c["status"], c.get("message", "")) for c in crd["status"]["conditions"]}
        assert conditions["Established"][0] == "True", conditions
        assert conditions["NamesAccepted"][0] == "True", conditions
        # A non-structural schema is accepted by v1 only with this condition set (and pruning off).
        assert "NonStructuralSchema" not in conditions, conditions
        assert crd["status"]["acceptedNames"]["kind"] == crd["spec"]["names"]["kind"]


def _crd(plural: str) -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "crds" / f"{plural}.{GROUP}.yaml").read_text())


def _under_test_group(crd: dict[str, Any], group: str) -> dict[str, Any]:
    body = copy.deepcopy(crd)
    body["spec"]["group"] = group
    body["metadata"]["name"] = f"{body['spec']['names']['plural']}.{group}"
    return body


@pytest.mark.parametrize(("rule", "refusal"), [
    ("self.bucket == oldSelf.nosuchfield", "undefined field 'nosuchfield'"),
    ("self.bucket ==", "Syntax error"),
    # Quadratic over an unbounded list: the API server estimates the cost and refuses it at create time.
    ("self.redactFields.all(a, self.redactFields.all(b, a.matches(b) || b.matches(a)))", "cost"),
], ids=["unknown-field", "syntax", "over-cost-budget"])
def test_a_broken_rule_is_refused_when_the_crd_is_created(apiserver: TempApiServer, rule: str, refusal: str) -> None:
    """What the API server does to a bad rule in our CRDs (shown on a copy under another group)."""
    body = _under_test_group(_crd("s3exporters"), "broken.capture.dev")
    spec_schema = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    redact = spec_schema["properties"]["redactFields"]
    redact.pop("maxItems")
    redact["items"].pop("maxLength")
    spec_schema["x-kubernetes-validations"].append({"rule": rule, "message": "a broken rule"})
    with kubernetes.client.ApiClient(apiserver.configuration()) as client:
        extensions = kubernetes.client.ApiextensionsV1Api(client)
        with pytest.raises(ApiException) as refused:
            extensions.create_custom_resource_definition(body, dry_run="All")
    assert refused.value.status == 422
    assert refusal in refused.value.body and "x-kubernetes-validations" in refused.value.body


def _undescribed(schema: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, child in (schema.get("properties") or {}).items():
        where = f"{path}.{name}"
        if not child.get("description"):
            missing.append(where)
        missing += _undescribed(child, where)
        missing += _undescribed(child.get("items") or {}, f"{where}[]")
    return missing


@pytest.mark.parametrize("kind", ["S3Exporter", "RetentionPolicy"])
def test_every_field_is_described_in_the_served_openapi(apiserver: TempApiServer, crds: list, kind: str) -> None:
    """What ``kubectl explain`` reads: the API server's OpenAPI v3 document for our group."""
    name = f"dev.capture.{VERSION}.{kind}"

    def published() -> dict[str, Any] | None:  # the OpenAPI controller publishes a new CRD a moment later
        try:
            document = get_json(client, f"/openapi/v3/apis/{GROUP}/{VERSION}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        schemas: dict[str, Any] = document["components"]["schemas"]
        return schemas.get(name)

    with kubernetes.client.ApiClient(apiserver.configuration()) as client:
        schema = wait_for(published, 60, 0.5, what=f"{name} in the OpenAPI v3 document")
    assert schema.get("description")
    for part in ("spec", "status"):
        assert schema["properties"][part].get("description"), part
        assert _undescribed(schema["properties"][part], part) == []


def _documented_s3exporter_columns() -> list[str]:
    line = next(line for line in DOCS.splitlines() if line.startswith("kubectl get s3exporters ") and "#" in line)
    return [name.strip() for name in line.split("#", 1)[1].split(",")]


def _documented_retentionpolicy_columns() -> list[str]:
    header = next(line for line in DOCS.splitlines() if line.startswith("NAME ") and "MAX AGE" in line)
    return re.split(r"\s{2,}", header.strip())


def test_printer_columns_are_the_documented_ones(apiserver: TempApiServer, namespace: str) -> None:
    with kubernetes.client.ApiClient(apiserver.configuration()) as client:
        custom = kubernetes.client.CustomObjectsApi(client)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "s3exporters", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "S3Exporter", "metadata": {"name": "usage"},
            "spec": {"bucket": "capture-exports", "region": "us-east-1"}})
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "retentionpolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "RetentionPolicy", "metadata": {"name": "keep-30-days"},
            "spec": {"maxAge": "30d", "exporters": ["usage"]}})
        exporters = table(client, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/s3exporters")
        policies = table(client, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/retentionpolicies")

    columns = [c["name"] for c in exporters["columnDefinitions"] if c["priority"] == 0]
    assert columns == ["Name", *_documented_s3exporter_columns(), "Age"]
    assert [c["name"] for c in exporters["columnDefinitions"] if c["priority"] == 1] == ["Reason"]
    [row] = table_rows(exporters)
    # Nothing has run yet (no operator here): the status columns are empty, not made up.
    assert (row["Name"], row["Bucket"], row["Ready"], row["Exported"], row["Backlog"]) == (
        "usage", "capture-exports", None, None, None)

    assert [c["name"].upper() for c in policies["columnDefinitions"] if c["priority"] == 0] == (
        _documented_retentionpolicy_columns())
    [row] = table_rows(policies)
    assert (row["Name"], row["Max Age"]) == ("keep-30-days", "30d")
