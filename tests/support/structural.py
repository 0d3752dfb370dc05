"""What the API server does to a custom resource before it stores it, from the CRD's structural schema.

On every create, update, patch and status write, kube-apiserver
1. prunes: drops fields the schema does not know (unless ``x-kubernetes-preserve-unknown-fields``), and
   ``null`` values of fields that are not ``nullable``; with ``?fieldValidation=Strict`` an unknown field
   is refused instead;
2. defaults: fills every absent field that has a ``default`` (inside objects that are present);
3. validates the result against the schema (types, enums, patterns, bounds, required, formats such as
   ``date-time``) and refuses it with 422 ``Invalid``, naming each field;
4. evaluates the ``x-kubernetes-validations`` CEL rules (the optional ``cel_failures`` hook).

:class:`CustomResourceSchema` does 1-3 for one kind, and 4 when given a rule evaluator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from .crd_schema import to_json_schema

__all__ = ["Admission", "CustomResourceSchema", "RuleEvaluator", "prune", "with_defaults"]

# (schema of the node, new value, old value or None) -> "path: message" failures of its CEL rules.
RuleEvaluator = Callable[[Mapping[str, Any], Any, Any], list[str]]

_ROOT_KEPT = ("apiVersion", "kind", "metadata")


def _sub_schema(node: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    properties = node.get("properties")
    if properties is not None and key in properties:
        sub: Mapping[str, Any] = properties[key]
        return sub
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):
        return extra
    return None


def prune(node: Mapping[str, Any], value: Any, path: str = "", unknown: list[str] | None = None) -> Any:
    """``value`` without the fields ``node`` does not declare and without non-nullable nulls; the paths of
    dropped unknown fields are appended to ``unknown``."""
    unknown = unknown if unknown is not None else []
    if isinstance(value, Mapping):
        open_fields = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource")
        out: dict[str, Any] = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if not path and key in _ROOT_KEPT:
                out[key] = item
                continue
            sub = _sub_schema(node, key)
            if sub is None:
                if open_fields:
                    out[key] = item
                else:
                    unknown.append(where)
                continue
            if item is None and not sub.get("nullable"):
                continue  # the API server drops it (and defaults it, if the field has a default)
            out[key] = prune(sub, item, where, unknown)
        return out
    if isinstance(value, list) and isinstance(node.get("items"), Mapping):
        return [prune(node["items"], item, f"{path}[{index}]", unknown) for index, item in enumerate(value)]
    return value


def with_defaults(node: Mapping[str, Any], value: Any) -> Any:
    """``value`` with every absent field that has a ``default`` filled in, at any depth."""
    if isinstance(value, Mapping):
        out = dict(value)
        for key, sub in (node.get("properties") or {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        for key, item in out.items():
            sub = _sub_schema(node, key)
            if sub is not None and item is not None:
                out[key] = with_defaults(sub, item)
        return out
    if isinstance(value, list) and isinstance(node.get("items"), Mapping):
        return [with_defaults(node["items"], item) for item in value]
    return value


@dataclass
class Admission:
    """The object as it would be stored, what was pruned from it, and why it is refused (if it is)."""

    obj: dict[str, Any]
    unknown_fields: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class CustomResourceSchema:
    """One served version of one kind: prune, default, validate (and CEL, given an evaluator)."""

    def __init__(self, open_api_schema: Mapping[str, Any], *, cel_failures: RuleEvaluator | None = None) -> None:
        self.schema = open_api_schema
        root = to_json_schema(open_api_schema)
        properties = root.setdefault("properties", {})
        for key in _ROOT_KEPT:
            properties.setdefault(key, {})
        properties["metadata"] = {"type": "object"}
        root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(root)
        self.validator = jsonschema.Draft202012Validator(root, format_checker=jsonschema.Draft202012Validator
                                                         .FORMAT_CHECKER)
        self.cel_failures = cel_failures

    def admit(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None, *,
              strict: bool = False) -> Admission:
        unknown: list[str] = []
        pruned = with_defaults(self.schema, prune(self.schema, obj, unknown=unknown))
        errors = [f"{path}: Invalid value: unknown field" for path in unknown] if strict else []
        for error in sorted(self.validator.iter_errors(pruned), key=lambda e: list(map(str, e.absolute_path))):
            where = ".".join(str(part) for part in error.absolute_path) or "<root>"
            errors.append(f"{where}: Invalid value: {error.message}")
        if not errors and self.cel_failures is not None:
            previous = None if old is None else with_defaults(self.schema, prune(self.schema, old))
            errors.extend(self.cel_failures(self.schema, pruned, previous))
        return Admission(pruned, unknown, errors)
