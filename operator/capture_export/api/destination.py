"""An S3Exporter's destination: the spec fields that decide where its objects land, immutable once it has
exported (the CRD's CEL rules refuse a change at ``kubectl apply``; the operator and the standalone runner
refuse it again against what they recorded, reason ``DestinationImmutable``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["IMMUTABLE_FIELDS", "changed_fields", "destination_of"]

# Fields a spec model does not have are skipped, and only the fields recorded are compared.
IMMUTABLE_FIELDS = ("bucket", "endpoint", "prefix", "path_template", "hive_partitioning")


def destination_of(spec: BaseModel) -> dict[str, Any]:
    """The immutable fields, by their names in the manifest (``pathTemplate``, not ``path_template``)."""
    fields = type(spec).model_fields
    values = {fields[name].alias or name: getattr(spec, name) for name in IMMUTABLE_FIELDS if name in fields}
    values["endpoint"] = values.get("endpoint") or ""
    return values


def changed_fields(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """The fields of ``current`` whose value differs from the one ``recorded`` (none when nothing is)."""
    if not isinstance(recorded, Mapping):
        return []
    return [name for name in current if name in recorded and recorded[name] != current[name]]
