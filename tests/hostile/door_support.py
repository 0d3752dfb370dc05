"""What the API server would say about a custom resource, offline: its CRD's OpenAPI schema (through
tests/support/crd_schema.py), the list types (``set`` and ``map`` refuse duplicates) and the CEL rules
(tests/support/cel.py). Each refusal is ``"<path>: <message>"`` with a dotted path (``spec.bucket``,
``spec.redactFields[0]``), as ``kubectl apply`` prints it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from capture_export.api import GROUP, VERSION
from tests.support.cel import crd_schema, rule_failures
from tests.support.crd_schema import CustomResourceValidator

__all__ = ["CRD_DIR", "ApiServerOffline", "refusal_fields"]

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def _dotted(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _list_type_failures(node: Mapping[str, Any], value: Any, path: str) -> list[str]:
    failures: list[str] = []
    if isinstance(value, list):
        kind = node.get("x-kubernetes-list-type")
        if kind == "set":
            seen: list[Any] = []
            for index, item in enumerate(value):
                if item in seen:
                    failures.append(f"{path}[{index}]: Duplicate value: {item!r}")
                seen.append(item)
        elif kind == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            seen_keys: set[tuple[Any, ...]] = set()
            for index, item in enumerate(value):
                key = tuple(item.get(k) for k in keys) if isinstance(item, Mapping) else (item,)
                if key in seen_keys:
                    failures.append(f"{path}[{index}]: Duplicate value: {dict(zip(keys, key, strict=True))}")
                seen_keys.add(key)
        if isinstance(node.get("items"), Mapping):
            for index, item in enumerate(value):
                failures += _list_type_failures(node["items"], item, f"{path}[{index}]")
    elif isinstance(value, Mapping):
        for key, sub in (node.get("properties") or {}).items():
            if key in value:
                failures += _list_type_failures(sub, value[key], f"{path}.{key}")
    return failures


class ApiServerOffline:
    """The verdict of an API server with our CRDs installed, on a create or an update."""

    def __init__(self, crd_dir: Path = CRD_DIR) -> None:
        self.structural = CustomResourceValidator(crd_dir)
        self.schemas: dict[str, dict[str, Any]] = {}
        for path in sorted(crd_dir.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            self.schemas[crd["spec"]["names"]["kind"]] = crd_schema(crd)

    def refusals(self, kind: str, spec: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[str]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "x", "namespace": "default"},
                "spec": dict(spec)}
        schema = self.structural.schemas[(body["apiVersion"], kind)]
        checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
        validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
        found = []
        for error in validator.iter_errors(body):
            path = _dotted(error.absolute_path)
            if error.validator == "required":
                found += [f"{path}.{name}: Required value" for name in re.findall(r"'([^']+)'", error.message)[:1]]
            elif error.validator == "additionalProperties":
                found += [f"{path}.{name}: Unknown field" for name in re.findall(r"'([^']+)'", error.message)]
            else:
                found.append(f"{path}: {error.message}")
        spec_schema = self.schemas[kind]["properties"]["spec"]
        found += _list_type_failures(spec_schema, dict(spec), "spec")
        found += [str(failure) for failure in rule_failures(spec_schema, dict(spec), old=old)]
        return found


def refusal_fields(refusals: list[str]) -> list[str]:
    """The paths the refusals name (the text before each ``": "``)."""
    return [refusal.split(": ", 1)[0] for refusal in refusals]


def names_field(refusals: list[str], field: str) -> bool:
    """Whether a refusal names ``field`` or a place inside it (``spec.redactFields[0]``, ``...redactFields.0``)."""
    return any(path == field or path.startswith((field + ".", field + "[")) for path in refusal_fields(refusals))
