"""Validate custom resources offline against their CRD's ``openAPIV3Schema``, as the API server would.

The structural schema becomes a JSON Schema (draft 2020-12) that jsonschema can check:
- unknown fields are refused (``additionalProperties: false`` on every object with ``properties``,
  unless ``x-kubernetes-preserve-unknown-fields``), as kubectl's default strict field validation does;
- ``nullable: true`` lets the field be ``null``;
- ``x-kubernetes-int-or-string`` accepts an integer or a string;
- ``format: date-time`` is checked;
- the object's envelope (apiVersion, kind, metadata) is checked too.
CEL rules (``x-kubernetes-validations``) cannot be evaluated here: each is mirrored by a pydantic validator
in the API models, which the examples also go through.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = ["CustomResourceValidator", "to_json_schema"]

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": DNS_LABEL},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "generateName": {"type": "string"},
    },
    "additionalProperties": False,
}


def to_json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema node as a JSON Schema node."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in {"nullable", "description", "example", "externalDocs"}:
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in {"items", "additionalProperties", "not"} and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in {"allOf", "anyOf", "oneOf"}:
            out[key] = [to_json_schema(sub) for sub in value]
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


class CustomResourceValidator:
    """Validators for every kind and served version of the CRDs in a directory."""

    def __init__(self, crd_dir: Path) -> None:
        self.schemas: dict[tuple[str, str], dict[str, Any]] = {}
        for path in sorted(crd_dir.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                api_version = f"{group}/{version['name']}"
                root = to_json_schema(version["schema"]["openAPIV3Schema"])
                root.setdefault("properties", {})
                root["properties"]["apiVersion"] = {"const": api_version}
                root["properties"]["kind"] = {"const": kind}
                root["properties"]["metadata"] = METADATA
                root["required"] = sorted({*root.get("required", []), "apiVersion", "kind", "metadata"})
                root["additionalProperties"] = False
                root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
                jsonschema.Draft202012Validator.check_schema(root)
                self.schemas[(api_version, kind)] = root

    def handles(self, obj: dict[str, Any]) -> bool:
        return (obj.get("apiVersion"), obj.get("kind")) in self.schemas

    def errors(self, obj: dict[str, Any]) -> list[str]:
        schema = self.schemas[(obj["apiVersion"], obj["kind"])]
        checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
        validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
        return [
            f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ]
