"""Invalid specs are refused by the API server itself (OpenAPI schema, patterns, CEL, transition rules), and
the pydantic models agree with it case by case (tests/support/spec_cases.py, ``API_SERVER_CASES``), so the CRD
and the models cannot drift."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from capture_export.api import GROUP, VERSION
from capture_export.api.manifests import InvalidManifest, parse_spec
from tests.support.spec_cases import API_SERVER_CASES, TRANSITION_CASES, ApiServerCase, TransitionCase

from .apiserver import REPO_ROOT, TempApiServer

PLURALS = {"S3Exporter": "s3exporters", "RetentionPolicy": "retentionpolicies"}


@pytest.fixture
def custom(apiserver: TempApiServer) -> Iterator[kubernetes.client.CustomObjectsApi]:
    with kubernetes.client.ApiClient(apiserver.configuration()) as client:
        yield kubernetes.client.CustomObjectsApi(client)


def _body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize("case", API_SERVER_CASES, ids=lambda c: c.id)
def test_the_api_server_refuses_exactly_the_bad_specs(custom: kubernetes.client.CustomObjectsApi, namespace: str,
                                                       case: ApiServerCase) -> None:
    create = custom.create_namespaced_custom_object
    body = _body(case.kind, "case", case.full_spec)
    if case.refused_by != "both":
        # As `kubectl apply` sends it: unknown fields are an error, not silently pruned.
        create(GROUP, VERSION, namespace, PLURALS[case.kind], body, dry_run="All", field_validation="Strict")
        return
    with pytest.raises(ApiException) as refused:
        create(GROUP, VERSION, namespace, PLURALS[case.kind], body, dry_run="All", field_validation="Strict")
    # 422 Invalid for the schema and CEL; 400 for a field the schema does not know (strict decoding).
    assert refused.value.status in (400, 422), refused.value.body
    assert case.message in json.loads(refused.value.body)["message"]


@pytest.mark.parametrize("case", API_SERVER_CASES, ids=lambda c: c.id)
def test_the_models_refuse_what_the_api_server_refuses(case: ApiServerCase) -> None:
    if case.refused_by == "none":
        parse_spec(case.kind, case.full_spec)
    else:
        with pytest.raises(InvalidManifest):
            parse_spec(case.kind, case.full_spec)


def _rules_and_patterns(schema: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """("rule", message) for every CEL rule that needs no old object, ("pattern", path) for every pattern."""
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" not in rule["rule"]:
            yield "rule", rule["message"]
    if "pattern" in schema:
        yield "pattern", path
    for name, child in (schema.get("properties") or {}).items():
        yield from _rules_and_patterns(child, f"{path}.{name}")
    if schema.get("items"):
        yield from _rules_and_patterns(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _rules_and_patterns(schema["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("kind", sorted(PLURALS))
def test_every_cel_rule_and_pattern_has_a_refused_case(kind: str) -> None:
    crd = yaml.safe_load((REPO_ROOT / "crds" / f"{PLURALS[kind]}.{GROUP}.yaml").read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    messages = [case.message for case in API_SERVER_CASES if case.kind == kind and case.refused_by == "both"]
    uncovered = []
    for what, detail in _rules_and_patterns(spec_schema, "spec"):
        if what == "rule":
            covered = any(message and message in detail for message in messages)
        else:
            as_regex = re.escape(detail).replace(r"\[\]", r"\[\d+\]").replace(r"\.\*", r"\.[^:\s]+")
            covered = any(re.match(as_regex, message) for message in messages)
        if not covered:
            uncovered.append(f"{what}: {detail}")
    assert uncovered == [], "add a refused case to API_SERVER_CASES (tests/support/spec_cases.py) for each"


@pytest.mark.parametrize("case", TRANSITION_CASES, ids=lambda c: c.id)
def test_transition_rules_keep_the_destination_fixed(custom: kubernetes.client.CustomObjectsApi, namespace: str,
                                                     case: TransitionCase) -> None:
    name = f"move-{case.id}"
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "s3exporters",
                                           _body("S3Exporter", name, case.base))
    patch = custom.patch_namespaced_custom_object
    if not case.message:
        patch(GROUP, VERSION, namespace, "s3exporters", name, {"spec": case.change}, dry_run="All")
        return
    with pytest.raises(ApiException) as refused:
        patch(GROUP, VERSION, namespace, "s3exporters", name, {"spec": case.change})
    assert refused.value.status == 422 and case.message in json.loads(refused.value.body)["message"]
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "s3exporters", name)
    assert stored["metadata"]["generation"] == 1
    assert {key: stored["spec"].get(key) for key in case.base} == case.base
