"""What an exporter writes of each record, and how: the object ``format`` and ``compression`` (from the
format names), the records it exports (``filter``), and what it leaves out of them (``privacyMode``,
``redactFields``, ``stripHeaders``). Patterns, CEL rules and the checks that mirror them."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from ..export.format_names import COMPRESSIONS, FORMAT_CHOICES, FORMAT_NAMES
from .common import ApiModel, cel_rule

__all__ = [
    "COMPRESSION_RULE",
    "HEADER_NAME_PATTERN",
    "REDACTABLE_FIELDS",
    "REDACT_PATH_PATTERN",
    "REDACT_RULES",
    "Compression",
    "ExportFilter",
    "Format",
    "check_redact_paths",
]

# The allowed values come from the format names (export/format_names.py).
Format = Literal[FORMAT_NAMES]  # type: ignore[valid-type]
Compression = Literal[COMPRESSIONS]  # type: ignore[valid-type]

# Top-level record fields that ``redactFields`` may name (``id``, ``ver`` and ``timestamp`` stay: the
# audit and the key layout need them).
REDACTABLE_FIELDS = (
    "identity", "model", "api_type", "usage", "estimated_cost", "duration_ms", "capture_id", "session_id",
    "path", "status_code", "capture",
)  # fmt: skip
REDACT_PATH_PATTERN = r"^[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*$"
_REDACT_PATH = re.compile(REDACT_PATH_PATTERN)
REDACT_RULES = [cel_rule(
    "self.all(p, p.matches('^(" + "|".join(REDACTABLE_FIELDS) + ")(\\\\.|$)'))",
    f"each path must start with one of {', '.join(REDACTABLE_FIELDS)} (id, ver and timestamp are always exported)",
)]

# An HTTP header name (RFC 9110 token).
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


def _compression_rule() -> dict[str, str]:
    """The CEL rule refusing a compression a format does not have (formats with a single compression)."""
    fixed = [info for info in FORMAT_CHOICES.values() if len(info.compressions) == 1]
    others = [info.name for info in FORMAT_CHOICES.values() if len(info.compressions) > 1]
    clauses = [f"self.format != '{info.name}' || self.compression == '{info.compressions[0]}'" for info in fixed]
    rule = " && ".join(clauses if len(clauses) == 1 else [f"({clause})" for clause in clauses])
    always = ", ".join(f"format {info.name} is always {info.compressions[0]}" for info in fixed)
    return cel_rule(f"!has(self.compression) || {rule}" if clauses else "true",
                    f"{always}; compression applies to {' and '.join(others)}", "compression")


COMPRESSION_RULE = _compression_rule()


def check_redact_paths(value: list[str]) -> list[str]:
    """Mirrors REDACT_PATH_PATTERN and REDACT_RULES, or raise ValueError naming the path."""
    for path in value:
        if not _REDACT_PATH.match(path):
            raise ValueError(f"redactFields: {path!r} is not a dotted path such as capture.request.body.metadata")
        head = path.split(".", 1)[0]
        if head not in REDACTABLE_FIELDS:
            raise ValueError(f"redactFields: {path!r} must start with one of {', '.join(REDACTABLE_FIELDS)} "
                             "(id, ver and timestamp are always exported)")
    return value


class ExportFilter(ApiModel):
    """Export only records matching every list given (within a list, any entry). Records filtered out
    still advance the cursor and count as handled for retention; status counts them as ``filtered``."""

    models: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]] | None,
        Field(min_length=1, max_length=256, description="Model names; shell-style patterns such as "
              "'claude-*' match too."),
    ] = None
    api_types: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64)]] | None,
        Field(min_length=1, max_length=64, description="API types, e.g. oai_completions, ant_messages."),
    ] = None
    tags: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]] | None,
        Field(min_length=1, max_length=256, description="Identity tags, e.g. tag:prod: a record passes if its "
              "identity has any of them."),
    ] = None
    status_codes: Annotated[
        list[Annotated[int, Field(ge=100, le=599)]] | None,
        Field(min_length=1, max_length=500, description="HTTP status codes of the LLM response, e.g. 200."),
    ] = None
