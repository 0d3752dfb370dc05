"""``POST /v1/records``: native schema-v2 records, as CBOR sequences or as JSON.

* ``application/cbor-seq`` (or ``application/cbor``): an RFC 8742 CBOR sequence of record maps, exactly
  what an object of the default ``cbor-zstd`` format holds once decompressed (send the object as it is
  with ``Content-Encoding: zstd``).
* ``application/x-ndjson`` / ``application/jsonl`` (JSON Lines) or ``application/json`` (one array of
  records, or JSON Lines): records in the JSON conventions of the ``jsonl`` export format, so an exported
  ``.jsonl`` (``.jsonl.gz``, ``.jsonl.zst`` with the matching ``Content-Encoding``) can be posted back:
  ``timestamp`` an RFC 3339 string, bytes as ``{"$base64": …}``, other CBOR tags as
  ``{"$tag": n, "value": …}``.

An ``id`` in a posted record is ignored: the store assigns ids. ``timestamp`` and ``capture_id`` (the
idempotency key) are required; the other schema fields are checked for their types when present (the
rules of store/record_types.py, which the export applies to rows other writers put in the store), and
fields the schema does not know are kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import cbor2
import orjson

from ..store.record_types import type_problem
from ..store.records import FIELD_ORDER
from .errors import BadInput, TooLarge, UnsupportedMediaType

__all__ = ["CBOR_TYPES", "JSON_TYPES", "MAX_CAPTURE_ID", "TOO_DEEP", "check_record", "json_values",
           "loads_embedded_json", "loads_json", "parse_records", "parse_timestamp"]

CBOR_TYPES = frozenset({"application/cbor-seq", "application/cbor"})
JSON_TYPES = frozenset({"application/json", "application/x-ndjson", "application/jsonl", "application/x-jsonlines",
                        "application/jsonlines", "application/ndjson"})
MAX_CAPTURE_ID = 256
TOO_DEEP = "nested too deeply"



def parse_timestamp(value: Any) -> datetime:
    """A record timestamp: a timezone-aware datetime, or an RFC 3339 string with a zone (``Z`` or offset)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an RFC 3339 date-time, e.g. 2026-11-24T12:00:00.000000Z") from None
    else:
        raise ValueError("must be a date-time (CBOR tag 0/1, or an RFC 3339 string in JSON)")
    if moment.tzinfo is None:
        raise ValueError("must carry a time zone (Z or an offset)")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00: before year 1 in UTC
        raise ValueError("out of range once in UTC") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_record(record: Any, index: int) -> dict[str, Any]:
    """The record in its stored shape (``records.encode_ordered``: ``id`` dropped, ``ver`` set, timestamp a
    UTC datetime, an unknown ``estimated_cost`` left out, fields in schema order), or BadInput naming the
    record and field."""
    if not isinstance(record, dict):
        raise BadInput(f"must be a map of fields, not {type(record).__name__}", index=index)
    out = {k: v for k, v in record.items() if k != "id"}
    for key in out:
        if not isinstance(key, str):
            raise BadInput(f"field names must be strings, found {key!r}", index=index)
    try:
        out["timestamp"] = parse_timestamp(out.get("timestamp"))
    except ValueError as exc:
        raise BadInput("required; " + str(exc) if "timestamp" not in out else str(exc),
                       index=index, field="timestamp") from None
    capture_id = out.get("capture_id")
    if not isinstance(capture_id, str) or not capture_id.strip():
        raise BadInput("required: a non-empty string (the idempotency key: a record whose capture_id is "
                       "stored already is not stored again)", index=index, field="capture_id")
    if len(capture_id) > MAX_CAPTURE_ID:
        raise BadInput(f"longer than {MAX_CAPTURE_ID} characters", index=index, field="capture_id")
    if "\x00" in capture_id:  # PostgreSQL text cannot hold it: the whole group commit would fail
        raise BadInput("must not contain NUL characters", index=index, field="capture_id")
    if out.get("ver", 2) != 2:
        raise BadInput(f"schema version {out['ver']!r} is not supported (2 is)", index=index, field="ver")
    if (problem := type_problem(out)) is not None:  # the rules the export checks foreign rows by
        raise BadInput(f"must be {problem.expected}", index=index, field=problem.field)
    cost = out.get("estimated_cost")
    if out.get("capture") is not None and not isinstance(out["capture"], dict):
        raise BadInput("must be a map", index=index, field="capture")
    out.setdefault("ver", 2)
    if cost is None:
        out.pop("estimated_cost", None)
    ordered = {k: out[k] for k in FIELD_ORDER if k in out}
    if len(ordered) < len(out):
        ordered.update({k: v for k, v in out.items() if k not in ordered})
    return ordered


# -- JSON ----------------------------------------------------------------------------------------------

def _from_json(value: Any) -> Any:
    """The inverse of the jsonl format's conventions for what JSON lacks (bytes, CBOR tags)."""
    if isinstance(value, dict):
        if len(value) == 1 and "$base64" in value and isinstance(value["$base64"], str):
            try:
                return base64.b64decode(value["$base64"], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("a {\"$base64\": …} value is not valid base64") from None
        if len(value) == 2 and "$tag" in value and "value" in value and _is_int(value["$tag"]):
            return cbor2.CBORTag(value["$tag"], _from_json(value["value"]))
        if len(value) == 1 and "$simple" in value and _is_int(value["$simple"]):
            return cbor2.CBORSimpleValue(value["$simple"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def loads_json(text: str | bytes) -> Any:
    """One JSON value: orjson's speed, the standard library's reach (NaN, integers past 64 bits, UTF-16 bytes
    and whatever else orjson refuses, with the standard library's error). Every refusal is a ValueError:
    nesting past the interpreter's recursion limit and integers past its digit limit too."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except RecursionError:
            raise ValueError(TOO_DEEP) from None


def loads_embedded_json(text: str, max_depth: int = 128) -> Any:
    """JSON held in a string field (tool-call arguments, OTLP message attributes), for a record that
    keeps the text when this fails: ValueError also when it nests deeper than ``max_depth`` (stored
    inside a record, it could otherwise take the record past what CBOR readers decode)."""
    value = loads_json(text)
    if text.count("[") + text.count("{") < max_depth:  # cannot nest that deep: the common case
        return value
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(TOO_DEEP)
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return value


_DECODER = json.JSONDecoder()
_LINE = re.compile(rb"[^\r\n]+")  # what bytes.splitlines() gives, less its empty lines
_WHITESPACE = " \t\n\r"


def json_values(body: bytes, max_records: int) -> list[Any]:
    """A JSON array's items, or a stream of JSON values (JSON Lines, or values simply concatenated).

    The common shapes (one array, one value per line) are parsed with orjson; anything it refuses (a
    pretty-printed stream, NaN, a huge integer, a syntax error) goes through the standard library, which
    also finds the bad record's index and position for the 400."""
    stripped = body.lstrip()
    try:
        if stripped.startswith(b"["):
            values = orjson.loads(body)
            if not isinstance(values, list):
                raise orjson.JSONDecodeError("not an array", "", 0)
        else:
            values = []
            if body.count(b"\n") + body.count(b"\r") <= max_records:  # cannot hold too many lines
                values = [orjson.loads(line) for line in body.splitlines() if line.strip()]
            else:
                # Line by line, counting as it goes: parsing every line before the count was checked
                # made 64 MiB of '{}' lines (64 KiB gzipped) 21 million dicts.
                for match in _LINE.finditer(body):
                    line = match.group()
                    if line.strip():
                        if len(values) == max_records:
                            raise TooLarge(f"more than {max_records} records in one request")
                        values.append(orjson.loads(line))
    except orjson.JSONDecodeError:
        values = list(_slow_json_values(_decode_text(body), max_records))
    if len(values) > max_records:
        raise TooLarge(f"more than {max_records} records in one request")
    return values


def _slow_json_values(text: str, max_records: int) -> Iterator[Any]:
    position = len(text) - len(text.lstrip(_WHITESPACE))
    if text.startswith("[", position):
        try:
            values = json.loads(text)
        except RecursionError:
            raise BadInput(f"not valid JSON: {TOO_DEEP}") from None
        except ValueError as exc:  # JSONDecodeError, or an integer past the digit limit
            raise BadInput(f"not valid JSON: {exc}") from None
        if not isinstance(values, list):
            raise BadInput("not valid JSON")
        if len(values) > max_records:
            raise TooLarge(f"more than {max_records} records in one request")
        yield from values
        return
    index = 0
    end = len(text)
    while position < end:
        if index >= max_records:
            raise TooLarge(f"more than {max_records} records in one request")
        try:
            value, position = _DECODER.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise BadInput(f"not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})", index=index) from None
        except RecursionError:
            raise BadInput(f"not valid JSON: {TOO_DEEP}", index=index) from None
        except ValueError as exc:  # an integer past the digit limit
            raise BadInput(f"not valid JSON: {exc}", index=index) from None
        yield value
        index += 1
        while position < end and text[position] in _WHITESPACE:
            position += 1


def _decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"body is not UTF-8 (byte {exc.start})") from None


def _json_records(body: bytes, max_records: int) -> list[dict[str, Any]]:
    records = []
    for index, value in enumerate(json_values(body, max_records)):
        try:
            value = _from_json(value)
        except ValueError as exc:
            raise BadInput(str(exc), index=index) from None
        except RecursionError:
            raise BadInput(TOO_DEEP, index=index) from None
        records.append(check_record(value, index))
    return records


# -- CBOR ----------------------------------------------------------------------------------------------

def _no_sharing(*_: Any) -> Any:
    # Value sharing (tags 28/29) lets a few bytes reference one value any number of times, or itself:
    # written out again in the store, a 1 KiB body became 65 MB (30 levels: a terabyte), or a cycle.
    raise cbor2.CBORDecodeError("shared values (CBOR tags 28/29) are not accepted: write each value out")


def _cbor_records(body: bytes, max_records: int) -> list[dict[str, Any]]:
    import io

    stream = io.BytesIO(body)
    decoder = cbor2.CBORDecoder(stream, semantic_decoders={28: _no_sharing, 29: _no_sharing})
    records: list[dict[str, Any]] = []
    while stream.tell() < len(body):
        index = len(records)
        if index >= max_records:
            raise TooLarge(f"more than {max_records} records in one request")
        try:
            value = decoder.decode()
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, EOFError) as exc:
            raise BadInput(f"not valid CBOR at byte {stream.tell()}: {exc}", index=index) from None
        records.append(check_record(value, index))
    return records


def parse_records(body: bytes, content_type: str, max_records: int) -> list[dict[str, Any]]:
    """Checked records of a ``/v1/records`` body (already decompressed)."""
    if content_type in CBOR_TYPES:
        records = _cbor_records(body, max_records)
    elif content_type in JSON_TYPES or content_type.endswith("+json"):
        records = _json_records(body, max_records)
    else:
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'} is not accepted here: send application/cbor-seq, "
            "application/x-ndjson (JSON Lines) or application/json"
        )
    if not records:
        raise BadInput("no records in the body")
    return records
