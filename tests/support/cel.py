"""Evaluate a CRD's CEL validation rules (``x-kubernetes-validations``) offline, as the API server does.

The API server, on create and update, defaults the object from the schema, then evaluates every rule of
every schema node against the value at that node (``self``), and, for a rule that mentions ``oldSelf``,
against the old value too (only on update, and only where the old value exists at the same place).
Fields whose value is ``null`` count as absent (``has(self.x)`` is false). This module does the same with
the ``common-expression-language`` package (cel-rust, whose regular expressions are RE2-like, as
Kubernetes' are: no look-around).

The API::

    schema = crd_schema(yaml.safe_load(crd_text))           # openAPIV3Schema of the served version
    failures = rule_failures(schema["properties"]["spec"], spec)              # on create
    failures = rule_failures(schema["properties"]["spec"], spec, old=old)     # on update
    for failure in failures: failure.path, failure.rule, failure.message

``uncompilable_rules(schema)`` lists rules that do not even parse. What this does not do: the API
server's type check of each rule against the schema and its cost estimate; ``tests/apiserver`` runs the
rules on a real kube-apiserver for that.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import cel

__all__ = ["RuleFailure", "crd_schema", "rule_failures", "uncompilable_rules", "with_defaults"]

_OLD_SELF = re.compile(r"\boldSelf\b")
_ABSENT = object()


@dataclass(frozen=True)
class RuleFailure:
    path: str  # where the rule sits, e.g. "spec" or "spec.store"
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def crd_schema(crd: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` (default: the storage version) of a CRD."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version or (version is None and entry.get("storage")):
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"no version {version!r} in {crd['metadata']['name']}")


@cache
def _program(rule: str) -> Any:
    return cel.compile(rule)


def _rules(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(node.get("x-kubernetes-validations") or [])


def _children(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from (node.get("properties") or {}).values()
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), Mapping):
            yield node[key]


def uncompilable_rules(schema: Mapping[str, Any]) -> list[str]:
    """Every rule under ``schema`` that does not parse, with the parser's complaint."""
    broken = []
    pending = [schema]
    while pending:
        node = pending.pop()
        for entry in _rules(node):
            try:
                _program(entry["rule"])
            except (ValueError, RuntimeError) as exc:
                broken.append(f"{entry['rule']}: {exc}")
        pending.extend(_children(node))
    return broken


def with_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """``value`` defaulted from the schema as the API server defaults it, with null fields removed."""
    if isinstance(value, Mapping):
        properties = schema.get("properties") or {}
        out = {}
        for key, item in value.items():
            if item is None:
                continue  # null counts as absent (a nullable field), or is pruned
            sub = properties.get(key) or (schema.get("additionalProperties") if isinstance(
                schema.get("additionalProperties"), Mapping) else {})
            out[key] = with_defaults(sub, item)
        for key, sub in properties.items():
            if key not in out and "default" in sub:
                out[key] = with_defaults(sub, copy.deepcopy(sub["default"]))
        return out
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), Mapping) else {}
        return [with_defaults(items, item) for item in value]
    return value


def _evaluate(rule: str, self_value: Any, old_value: Any) -> tuple[bool, str | None]:
    context = {"self": self_value}
    if old_value is not _ABSENT:
        context["oldSelf"] = old_value
    try:
        result = _program(rule).execute(context)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        return False, f"evaluation failed: {exc}"
    return result is True, None


def _list_map_keys(node: Mapping[str, Any]) -> list[str] | None:
    if node.get("x-kubernetes-list-type") == "map":
        return list(node.get("x-kubernetes-list-map-keys") or [])
    return None


def _walk(node: Mapping[str, Any], value: Any, old: Any, path: str, failures: list[RuleFailure]) -> None:
    for entry in _rules(node):
        rule = entry["rule"]
        transition = bool(_OLD_SELF.search(rule))
        if transition and old is _ABSENT:
            continue  # transition rules run on update only, where the old value exists
        ok, error = _evaluate(rule, value, old if transition else _ABSENT)
        if not ok:
            where = path + entry.get("fieldPath", "")  # e.g. ".compression": the field the rule is about
            failures.append(RuleFailure(where, rule, error or entry.get("message") or f"failed rule: {rule}"))
    if isinstance(value, Mapping):
        properties = node.get("properties") or {}
        extra = node.get("additionalProperties") if isinstance(node.get("additionalProperties"), Mapping) else None
        for key, item in value.items():
            sub = properties.get(key, extra)
            if sub is None:
                continue
            old_item = old.get(key, _ABSENT) if isinstance(old, Mapping) else _ABSENT
            _walk(sub, item, old_item, f"{path}.{key}" if path else key, failures)
    elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
        keys = _list_map_keys(node)
        old_by_key = {}
        if keys and isinstance(old, list):
            old_by_key = {tuple(o.get(k) for k in keys): o for o in old if isinstance(o, Mapping)}
        for index, item in enumerate(value):
            old_item = _ABSENT
            if keys and isinstance(item, Mapping):
                old_item = old_by_key.get(tuple(item.get(k) for k in keys), _ABSENT)
            _walk(node["items"], item, old_item, f"{path}[{index}]", failures)


def rule_failures(schema: Mapping[str, Any], value: Any, old: Any = None, *, path: str = "spec") -> list[
        RuleFailure]:
    """The rules under ``schema`` that ``value`` breaks; ``old`` is the value before an update (None: a
    create, where transition rules do not run). ``path`` names the node ``schema`` describes."""
    failures: list[RuleFailure] = []
    old_value = _ABSENT if old is None else with_defaults(schema, old)
    _walk(schema, with_defaults(schema, value), old_value, path, failures)
    return failures
