"""``kubectl get``-style views of resources outside a cluster (``capture-export status``).

The columns are the CRDs' own printer columns (api/__init__.py), evaluated on objects shaped as the API
server holds them (``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``), so that the standalone
runner's state file reads exactly like ``kubectl get s3exporters,retentionpolicies``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..api import GROUP, KINDS, VERSION, KindInfo

__all__ = ["evaluate_column", "format_age", "render_tables", "resource_object", "state_objects"]

_FILTER = re.compile(r'^\[\?\(@\.(\w+)==[\'"]([^\'"]*)[\'"]\)\]')
_FIELD = re.compile(r"^\.(\w+)")
NONE = "<none>"


def resource_object(kind: str, namespace: str, name: str, status: Mapping[str, Any] | None,
                    spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An object as the API server would return it (without spec when it is not known)."""
    obj: dict[str, Any] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                           "metadata": {"name": name, "namespace": namespace}}
    if spec is not None:
        obj["spec"] = dict(spec)
    obj["status"] = dict(status or {})
    return obj


def state_objects(
    state: Mapping[str, Any], specs: Mapping[str, Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The objects of a standalone state file (keys ``Kind/namespace/name``), kinds in the operator's
    order, then by namespace and name. ``specs`` (same keys) adds each resource's spec."""
    order = {info.kind: index for index, info in enumerate(KINDS)}
    objects = []
    for key, status in state.items():
        kind, _, ref = key.partition("/")
        namespace, _, name = ref.partition("/")
        if kind not in order or not name or not isinstance(status, Mapping):
            continue  # not a resource's status (another tool's bookkeeping)
        objects.append(resource_object(kind, namespace, name, status, (specs or {}).get(key)))
    return sorted(objects, key=lambda o: (order[o["kind"]], o["metadata"]["namespace"], o["metadata"]["name"]))


def evaluate_column(json_path: str, obj: Any) -> Any:
    """The value of a printer column's JSONPath (the forms the CRDs use: ``.a.b`` and
    ``.a[?(@.type=="Ready")].b``), or None when absent."""
    rest = json_path
    node = obj
    while rest:
        if match := _FIELD.match(rest):
            node = node.get(match.group(1)) if isinstance(node, Mapping) else None
        elif match := _FILTER.match(rest):
            key, wanted = match.groups()
            found = [item for item in node if isinstance(item, Mapping) and str(item.get(key)) == wanted] \
                if isinstance(node, list) else []
            node = found[0] if found else None
        else:
            raise ValueError(f"unsupported JSONPath {json_path!r}")
        if node is None:
            return None
        rest = rest[match.end():]
    return node


def format_age(value: Any, now: datetime) -> str:
    """A timestamp as kubectl shows it: ``45s``, ``12m``, ``5h``, ``3d``."""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    seconds = max(0, int((now - (moment if moment.tzinfo else moment.replace(tzinfo=UTC))).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cell(column: Mapping[str, Any], obj: Mapping[str, Any], now: datetime) -> str:
    value = evaluate_column(column["jsonPath"], obj)
    if value is None or value == "":
        return NONE
    if column["type"] == "date":
        return format_age(value, now)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _columns(info: KindInfo, *, wide: bool, with_spec: bool) -> list[Mapping[str, Any]]:
    columns: list[Mapping[str, Any]] = []
    for column in info.printer_columns:
        if column.get("priority", 0) > 0 and not wide:
            continue
        path = column["jsonPath"]
        if path.startswith(".metadata.creationTimestamp") or (path.startswith(".spec.") and not with_spec):
            continue  # the state file knows no creation time; the spec only comes with -f
        columns.append(column)
    return columns


def render_tables(objects: Sequence[Mapping[str, Any]], *, wide: bool = False, now: datetime | None = None) -> str:
    """One table per kind, as ``kubectl get -A kind1,kind2`` prints them, separated by a blank line."""
    now = now or datetime.now(UTC)
    tables = []
    for info in KINDS:
        mine = [o for o in objects if o["kind"] == info.kind]
        if not mine:
            continue
        columns = _columns(info, wide=wide, with_spec=all("spec" in o for o in mine))
        header = ["NAMESPACE", "NAME", *(c["name"].upper() for c in columns)]
        rows = [[o["metadata"]["namespace"], f"{info.singular}/{o['metadata']['name']}",
                 *(_cell(c, o, now) for c in columns)] for o in mine]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                 for row in [header, *rows]]
        tables.append("\n".join(lines))
    return "\n\n".join(tables)
