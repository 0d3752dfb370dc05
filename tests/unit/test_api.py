from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from capture_export.api import KINDS, S3ExporterSpec, render_crd_yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_committed_crds_match_the_models(info) -> None:
    path = ROOT / "crds" / f"{info.plural}.capture.dev.yaml"
    assert path.read_text() == render_crd_yaml(info), f"{path.name} drifted: run `capture-export crds`"


def test_crd_schema_is_structural_and_described() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "s3exporters.capture.dev.yaml").read_text())
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def walk(node: dict, path: str) -> None:
        assert "$ref" not in node and "anyOf" not in node and "additionalProperties" not in node, path
        assert "type" in node, path
        for name, child in node.get("properties", {}).items():
            assert child.get("description"), f"{path}.{name} has no description"
            walk(child, f"{path}.{name}")

    walk(spec, "spec")
    assert set(spec["required"]) == {"bucket", "region"}
    assert spec["properties"]["limit"]["maximum"] == 10000 and spec["properties"]["limit"]["default"] == 1000
    assert any("oldSelf" in rule["rule"] for rule in spec["x-kubernetes-validations"])
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:5] == ["Bucket", "Ready", "Exported", "Backlog", "Last Export"] and "Age" in columns


def test_defaults_follow_the_aperture_exporter() -> None:
    spec = S3ExporterSpec(bucket="exports", region="us-east-1")
    assert (spec.every, spec.limit, spec.prefix, spec.endpoint) == (3600, 1000, "", None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bucket": "192.168.1.1"}, "IP address"),
        ({"bucket": "a..b"}, "adjacent periods"),
        ({"bucket": "ab"}, "at least 3"),
        ({"prefix": "/abs"}, "must not start or end with ./."),
        ({"limit": 0}, "greater than or equal to 1"),
        ({"store": {"sqlite": {"path": "a"}, "postgres": {"secretRef": {"name": "pg"}}}}, "at most one"),
        ({"secretRef": {}}, "name"),
    ],
)
def test_invalid_specs_name_the_rule(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        S3ExporterSpec.model_validate({"bucket": "exports", "region": "us-east-1", **fields})
