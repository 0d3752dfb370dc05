"""The types the record schema (version 2, docs/store-contract.md) allows in a record's known fields, and
the rule that a row's ``ts_us`` is its body's ``timestamp``.

``type_problem(record)`` names the first known field whose value the schema does not allow, the type it
needs and the type found, never the value (a gateway's value may be a secret): what a reader of the bucket gets as one
column per field (DuckDB or Athena over JSON Lines, the typed columns of Parquet) holds only if every
record has these types. Fields the schema does not know are not looked at, nor is ``capture`` (a
gateway's own map, which some store as JSON text or bytes: exported as stored, credentials stripped);
``capture_id`` may be bytes or a UUID as well as text (a gateway's binary ids, e.g. a Go ``[16]byte``,
which verify matches in every format).
``timestamp`` is required; every other known field may be left out or null (``estimated_cost`` is left
out when unknown).

Run on every foreign row at export (store/check.py), and on every record our own writers store
(records.encode_body, the ingest server's ingest/native.py), so that a sealed row, exported unchecked, has
these types too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

__all__ = ["COUNT_LIMIT", "FIELDS", "TIMESTAMP_TOLERANCE_US", "FieldProblem", "timestamp_micros", "timestamp_problem",
           "type_problem"]

# A row's ts_us and its body's timestamp may differ by less than this (a float's rounding, a clock read
# twice); more is a row that would be dated and aged by another time than its record says.
TIMESTAMP_TOLERANCE_US = 1000

_INT64 = 2**63
# Token counts and durations are below this: what a signed 64-bit column (Parquet, DuckDB, Athena) holds.
COUNT_LIMIT = _INT64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Rule = tuple[Callable[[Any], bool], str]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and 0 <= value < _INT64


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_timestamp(value: Any) -> bool:
    return isinstance(value, datetime) and value.tzinfo is not None


TEXT: Rule = (lambda value: isinstance(value, str), "a text string")
IDENTIFIER: Rule = (lambda value: isinstance(value, str | bytes | UUID), "a text string, a byte string or a UUID")
COUNT: Rule = (_is_count, "a non-negative integer below 2^63")
NUMBER: Rule = (_is_number, "a finite number")
TAGS: Rule = (lambda value: isinstance(value, list) and all(isinstance(tag, str) for tag in value),
              "a list of strings")
TIMESTAMP: Rule = (_is_timestamp, "a CBOR date/time (tag 0 or 1) with a time zone")

# Top-level fields in schema order: a rule, or the rules of a map's known keys.
FIELDS: dict[str, Rule | dict[str, Rule]] = {
    "ver": (lambda value: _is_int(value) and value == 2, "the integer 2 (schema version 2)"),
    "timestamp": TIMESTAMP,
    "identity": {"login_name": TEXT, "node_id": TEXT, "tags": TAGS},
    "model": TEXT,
    "api_type": TEXT,
    "usage": {name: COUNT for name in ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")},
    "estimated_cost": {"input": NUMBER, "output": NUMBER, "total": NUMBER, "currency": TEXT},
    "duration_ms": COUNT,
    "capture_id": IDENTIFIER,
    "session_id": TEXT,
    "path": TEXT,
    "status_code": (lambda value: _is_int(value) and 100 <= value <= 999, "an integer 100-999 (an HTTP status)"),
}
_NULLABLE = frozenset(FIELDS) - {"ver", "timestamp"}


def _kind(value: Any) -> str:
    """The CBOR type of a value, in words (never the value)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer" if -_INT64 <= value < _INT64 else "an integer beyond 64 bits"
    for kind, words in ((str, "a text string"), (bytes, "a byte string"), (float, "a float"), (list, "an array"),
                        (Mapping, "a map"), (datetime, "a date/time without a time zone")):
        if isinstance(value, kind):
            return words
    return "null" if value is None else f"a {type(value).__name__}"


class FieldProblem(NamedTuple):
    """A known field whose value has a type the schema does not allow: its path (``usage.input_tokens``),
    the type it needs and the type found, in words."""

    field: str
    expected: str
    found: str

    def __str__(self) -> str:
        if self.found == "nothing":
            return f"field '{self.field}' is missing: every record needs {self.expected}"
        return f"field '{self.field}' must be {self.expected}, found {self.found}"


def _problem(path: str, rule: Rule, value: Any) -> FieldProblem | None:
    check, expected = rule
    return None if check(value) else FieldProblem(path, expected, _kind(value))


def type_problem(record: Mapping[str, Any]) -> FieldProblem | None:
    """The first known field whose value the schema does not allow, or None."""
    if "timestamp" not in record:
        return FieldProblem("timestamp", TIMESTAMP[1], "nothing")
    for name, rule in FIELDS.items():
        if name not in record:
            continue
        value = record[name]
        if value is None and name in _NULLABLE:
            continue
        if isinstance(rule, dict):
            if not isinstance(value, Mapping):
                return FieldProblem(name, "a map", _kind(value))
            for key, inner in rule.items():
                item = value.get(key)
                if item is not None and (problem := _problem(f"{name}.{key}", inner, item)):
                    return problem
        elif problem := _problem(name, rule, value):
            return problem
    return None


def timestamp_micros(moment: datetime) -> int:
    """An aware datetime in whole microseconds since the epoch (a row's ``ts_us``), without a float's
    rounding: ``int(moment.timestamp() * 1e6)`` is a microsecond off for some times."""
    if moment.tzinfo is None:
        raise ValueError("record timestamp must be timezone-aware (UTC)")
    return (moment - _EPOCH) // _MICROSECOND


def timestamp_problem(record: Mapping[str, Any], timestamp_us: int) -> str | None:
    """Why the row's ``ts_us`` is not its record's ``timestamp`` (already checked by ``type_problem``)."""
    difference = abs(timestamp_micros(record["timestamp"]) - timestamp_us)
    if difference < TIMESTAMP_TOLERANCE_US:
        return None
    return (f"the row's ts_us is not the body's timestamp (they differ by {difference / 1e6:.3f} s; ts_us must be "
            "the timestamp in microseconds since the epoch, UTC)")
