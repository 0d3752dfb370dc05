"""RetentionPolicy API: the spec refuses what the CRD refuses (CEL rules mirrored), the CRD is generated."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from capture_export.api import KINDS, RETENTIONPOLICY, render_crd_yaml
from capture_export.api.manifests import InvalidManifest, load_manifests, parse_spec
from capture_export.api.retention import (
    EXPORTERS_XOR_SELECTOR,
    GATE_NAMED,
    LABEL_KEYS_VALID,
    MAX_AGE_POSITIVE,
    parse_duration,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "expected"), [
    ("720h", timedelta(hours=720)),
    ("30d", timedelta(days=30)),
    ("90m", timedelta(minutes=90)),
    ("45s", timedelta(seconds=45)),
    ("1d12h", timedelta(days=1, hours=12)),
    ("0s", timedelta(0)),
])
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "h", "30x", "1.5h", "-1h", "30 d", "1y", "1d2h3m4s5s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults() -> None:
    spec = parse_spec("RetentionPolicy", {"maxAge": "30d", "exporters": ["usage"]})
    assert (spec.require_export, spec.every, spec.batch_size, spec.dry_run, spec.soft_delete, spec.store) == (
        True, 3600, 5000, False, None, None)
    assert spec.max_age_delta == timedelta(days=30)


@pytest.mark.parametrize(("spec", "message"), [
    ({"maxAge": "30d"}, GATE_NAMED["message"]),
    ({"maxAge": "30d", "exporters": ["a"], "exporterSelector": {"matchLabels": {"a": "b"}}},
     EXPORTERS_XOR_SELECTOR["message"]),
    ({"maxAge": "0h", "exporters": ["a"]}, MAX_AGE_POSITIVE["message"]),
    ({"maxAge": "0d0h", "requireExport": False}, MAX_AGE_POSITIVE["message"]),
    ({"maxAge": "30d", "exporterSelector": {"matchLabels": {"-bad": "x"}}}, LABEL_KEYS_VALID["message"]),
    ({"maxAge": "30d", "exporters": ["a", "a"]}, "exporters: names must be unique"),
    ({"maxAge": "30d", "exporters": []}, "spec.exporters: List should have at least 1 item"),
    ({"maxAge": "30d", "exporters": ["Bad_Name"]}, "spec.exporters.0"),
    ({"maxAge": "30d", "exporterSelector": {"matchLabels": {}}}, "spec.exporterSelector.matchLabels"),
    ({"maxAge": "30 days", "exporters": ["a"]}, "spec.maxAge"),
    ({"maxAge": "30d", "exporters": ["a"], "batchSize": 0}, "spec.batchSize"),
    ({"maxAge": "30d", "exporters": ["a"], "batchSize": 100_001}, "spec.batchSize"),
    ({"maxAge": "30d", "exporters": ["a"], "every": 0}, "spec.every"),
    ({"maxAge": "30d", "exporters": ["a"], "softDelete": {}}, "spec.softDelete.gracePeriod"),
    ({"maxAge": "30d", "exporters": ["a"], "softDelete": {"gracePeriod": "a week"}}, "spec.softDelete.gracePeriod"),
    ({"maxAge": "30d", "exporters": ["a"], "maxage": "1d"}, "spec.maxage"),
    ({"maxAge": "30d", "exporters": ["a"], "store": {"sqlite": {"path": "/a"}, "postgres": {"secretRef": {
        "name": "pg"}}}}, "store: set at most one of sqlite and postgres"),
])
def test_refused_specs_name_the_field_and_rule(spec: dict, message: str) -> None:
    with pytest.raises(InvalidManifest) as caught:
        parse_spec("RetentionPolicy", spec)
    assert message in str(caught.value)


def test_accepted_specs() -> None:
    parse_spec("RetentionPolicy", {"maxAge": "1d12h", "requireExport": False})
    parse_spec("RetentionPolicy", {"maxAge": "90m", "exporterSelector": {"matchLabels": {
        "capture.dev/gate": "true", "tier": ""}}, "softDelete": {"gracePeriod": "0s"}, "dryRun": True})


def test_every_cel_rule_has_a_mirror_with_the_same_message() -> None:
    """Each CEL rule in the CRD is one of the constants the validators raise (tested above)."""
    crd = RETENTIONPOLICY
    text = render_crd_yaml(crd)
    for rule in (EXPORTERS_XOR_SELECTOR, GATE_NAMED, MAX_AGE_POSITIVE, LABEL_KEYS_VALID):
        assert rule["message"] in text
    assert text.count("x-kubernetes-validations") == 3  # spec, store, matchLabels


def test_crd_is_generated_and_committed() -> None:
    assert RETENTIONPOLICY in KINDS
    path = REPO / "crds" / "retentionpolicies.capture.dev.yaml"
    assert path.read_text() == render_crd_yaml(RETENTIONPOLICY), "run `capture-export crds`"


def test_crd_keeps_the_match_labels_value_schema() -> None:
    """A map must keep its additionalProperties schema, or the API server prunes every label."""
    import yaml

    crd = yaml.safe_load(render_crd_yaml(RETENTIONPOLICY))
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    labels = spec["properties"]["exporterSelector"]["properties"]["matchLabels"]
    assert labels["type"] == "object" and labels["additionalProperties"]["type"] == "string"
    columns = {c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Max Age", "Ready", "Gate", "Limited By", "Bound", "Purged", "Last Purge"} <= columns


def test_manifests_load_policies_beside_exporters(tmp_path: Path) -> None:
    manifest = tmp_path / "all.yaml"
    manifest.write_text((REPO / "examples" / "exporter.yaml").read_text() + "\n---\n"
                        + (REPO / "examples" / "retentionpolicy.yaml").read_text())
    loaded = load_manifests([manifest])
    (policy,) = loaded.of_kind("RetentionPolicy")
    assert policy.spec.exporters == ["usage"] and policy.spec.soft_delete.grace == timedelta(days=7)
    assert loaded.of_kind("S3Exporter")
