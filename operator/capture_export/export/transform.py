"""What of each record leaves the store: ``filter``, ``privacyMode`` and ``redactFields``. Pure functions on
decoded records (dicts, as cbor2 decodes them); the engine only decodes when one of them is set.

Privacy mode (as OpenRouter's) drops the content of a conversation and keeps what describes it:

* kept: every top-level field (identity, model, api_type, usage, estimated_cost, duration_ms, ids, path,
  status_code, timestamp), the request and response headers (credential headers are stripped in every
  mode anyway), ``raw_content_type``, and of each JSON body only the keys of ``BODY_KEYS_KEPT``:
  request settings (model, max_tokens, temperature, stream, reasoning effort, …), ``metadata``, ids,
  ``usage``/``usageMetadata``, stop and finish reasons, ``error``; of ``choices``/``candidates`` only
  ``index`` and the finish reason;
* dropped: every other body key, which is where prompts, system prompts, messages, tool definitions,
  tool calls and results and completions live (``messages``, ``input``, ``instructions``, ``system``,
  ``contents``, ``content``, ``output``, ``tools``, …), so a provider field we do not know yet is dropped
  rather than leaked; the arguments and results of ``capture.tool_use`` (its ``id`` and ``name`` stay);
  ``raw_body`` of request and response; a ``capture``, request or response that is not a map (a foreign
  writer's JSON text, list or bytes), whole; of a request or response, any other key whose value is not a
  number, flag, date/time or null (a set, a tag no reader knows), and a ``raw_content_type`` that is not text.

``redactFields`` then drops more fields by dotted path; lists on the way are walked element by element and
``*`` matches every key of a map.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import cbor2

from ..store.records import SELF_DESCRIBED, HeadCutShort, read_head
from .formats import TimestampText

if TYPE_CHECKING:  # not imported at run time: the encode pool's workers load this module without the API
    from ..api.s3exporter import ExportFilter, S3ExporterSpec

__all__ = ["BODY_KEYS_KEPT", "RecordFilter", "RecordTransform", "peek_fields", "privacy_scrub", "redact"]

# Keys of a request or response body that describe a call without holding its content.
BODY_KEYS_KEPT = frozenset({
    # request settings
    "model", "max_tokens", "max_completion_tokens", "max_output_tokens", "temperature", "top_p", "top_k",
    "n", "seed", "stream", "stream_options", "reasoning", "reasoning_effort", "thinking", "store",
    "service_tier", "parallel_tool_calls", "tool_choice", "generationConfig", "metadata", "user",
    "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "truncation", "modalities",
    # response description
    "id", "object", "type", "role", "created", "created_at", "status", "stop_reason", "stop_sequence",
    "finish_reason", "system_fingerprint", "usage", "usageMetadata", "modelVersion", "responseId",
    "request_id", "incomplete_details", "error",
})  # fmt: skip
# Lists of per-choice results: only these keys of each item stay.
CHOICE_KEYS_KEPT = {"choices": ("index", "finish_reason"), "candidates": ("index", "finishReason")}
TOOL_USE_KEYS_KEPT = ("id", "name", "type")
# Values of any other key of a request or response that stay: numbers, flags and times (also one JSON Lines
# decodes as its stored text: a TimestampText). Anything else (text, lists, maps, bytes, a set, a tag no reader
# knows) may hold content and is dropped.
DESCRIBING_TYPES = (bool, int, float, Decimal, Fraction, datetime, date, TimestampText)
_DESCRIBING_EXACT = frozenset({bool, int, float, datetime, TimestampText})


# The maps of a decoded record are dicts (cbor2's): each map test below tries ``type(x) is dict`` before the
# ABC ``isinstance(x, Mapping)``, which costs ten times more (a quarter of privacy mode's own time).


def _scrub_body(body: Any) -> Any:
    if type(body) is not dict and not isinstance(body, Mapping):
        # A body that is not a JSON object (a string, a list of events) is content as a whole.
        return None
    if "choices" not in body and "candidates" not in body:
        return {key: value for key, value in body.items() if key in BODY_KEYS_KEPT}
    kept: dict[Any, Any] = {}
    for key, value in body.items():
        if key in BODY_KEYS_KEPT:
            kept[key] = value
        elif key in CHOICE_KEYS_KEPT and isinstance(value, list):
            keys = CHOICE_KEYS_KEPT[key]
            kept[key] = [{k: item[k] for k in keys if k in item} for item in value
                         if type(item) is dict or isinstance(item, Mapping)]
    return kept


def _describes(value: Any) -> bool:
    """Whether a value of a request or response (beside its headers, body and content type) describes the
    exchange: a number, a flag, null, or a date/time (also one decoded as its stored text: a tag-0
    ``CBORTag``, formats.CborZstdEncoder.decode_record, or a ``TimestampText``, JSON Lines' decode_record).
    Text, lists, maps, bytes, a set or a tag no reader knows may hold content."""
    return (value is None or type(value) in _DESCRIBING_EXACT or isinstance(value, DESCRIBING_TYPES)
            or (type(value) is cbor2.CBORTag and value.tag == 0))


def _scrub_exchange(part: Any) -> Any:
    """A request or response: headers and raw_content_type kept, body scrubbed, raw_body dropped. One that
    is not a map (a foreign writer's text or list) is content as a whole: None, dropped."""
    if type(part) is not dict and not isinstance(part, Mapping):
        return None
    out: dict[Any, Any] = {}
    for key, value in part.items():
        if key == "body":
            scrubbed = _scrub_body(value)
            if scrubbed is not None:
                out[key] = scrubbed
        elif key == "raw_body":
            continue
        elif key == "headers" or (key == "raw_content_type" and isinstance(value, str)) or _describes(value):
            out[key] = value  # headers, content types, numbers, flags and times describe the exchange
    return out


def privacy_scrub(record: dict[str, Any]) -> dict[str, Any]:
    """The record without prompt and completion content, tool payloads and raw bodies (a new dict;
    the top-level key order is kept)."""
    capture = record.get("capture")
    if capture is None:
        return record
    out = dict(record)
    if type(capture) is not dict and not isinstance(capture, Mapping):
        # Not the map the schema has (a foreign writer's JSON text, list or bytes): content as a whole.
        del out["capture"]
        return out
    scrubbed: dict[Any, Any] = {}
    for key, value in capture.items():
        if key == "request" or key == "response":
            exchange = _scrub_exchange(value)
            if exchange is not None:
                scrubbed[key] = exchange
        elif key == "tool_use" and isinstance(value, list):
            scrubbed[key] = [{k: call[k] for k in TOOL_USE_KEYS_KEPT if k in call}
                             for call in value if type(call) is dict or isinstance(call, Mapping)]
        elif key == "headers":
            scrubbed[key] = value
        # Anything else in capture is content we do not know to be safe: dropped.
    out["capture"] = scrubbed
    return out


def _drop(node: Any, path: Sequence[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _drop(item, path)
        return
    if not isinstance(node, dict) or not path:
        return
    head, rest = path[0], path[1:]
    keys = list(node) if head == "*" else [head] if head in node else []
    for key in keys:
        if rest:
            _drop(node[key], rest)
        else:
            del node[key]


def _copy_path(node: Any, path: Sequence[str]) -> Any:
    """Copy the containers along ``path`` so that dropping from the copy leaves shared values alone."""
    if isinstance(node, list):
        return [_copy_path(item, path) for item in node]
    if not isinstance(node, dict) or not path:
        return node
    out = dict(node)
    head, rest = path[0], path[1:]
    if rest:
        for key in (list(out) if head == "*" else [head] if head in out else []):
            out[key] = _copy_path(out[key], rest)
    return out


def redact(record: dict[str, Any], paths: Sequence[Sequence[str]]) -> dict[str, Any]:
    """The record without the fields at ``paths`` (each a list of keys; ``*`` matches any key)."""
    out = record
    for path in paths:
        out = _copy_path(out, path)
        _drop(out, path)
    return out


def peek_fields(raw: bytes | memoryview, wanted: frozenset[str], start: int = 0) -> dict[str, Any]:
    """The top-level fields ``wanted`` of a CBOR-encoded record, decoding as little as possible.

    A stored record keeps the schema's field order, with the bulky ``capture`` last, so a filter on model,
    api type, status code or identity stops before it; a timestamp (tag 0) is skipped undecoded. Anything
    unusual (an indefinite-length map, a record in another order) is simply decoded further or in full.
    Raises CborHeadError (HeadCutShort, ReservedHead) for a head it reads that is cut short or reserved (its
    position counted in ``raw``), and cbor2's errors for what cbor2 cannot decode. ``start``: where the record
    starts in ``raw``.
    """
    major, count, position = read_head(raw, start)
    if major != 5 or count is None:
        if raw[start:start + 3] == SELF_DESCRIBED:  # a map under tag 55799 (self-described CBOR) is that map
            return peek_fields(raw, wanted, start + 3)
        record = cbor2.loads(raw[start:] if start else raw)
        return {k: record[k] for k in wanted if k in record} if isinstance(record, dict) else record
    stream = io.BytesIO(raw)
    stream.seek(position)
    decoder = cbor2.CBORDecoder(stream)
    found: dict[str, Any] = {}
    try:
        for _ in range(count):
            key = decoder.decode()
            if key in wanted:
                found[key] = decoder.decode()
                if len(found) == len(wanted):
                    break
                continue
            position = stream.tell()
            if raw[position] == 0xC0:  # a date/time (tag 0): its text skipped, not parsed
                major, length, text = read_head(raw, position + 1)
                if major == 3 and length is not None:
                    stream.seek(text + length)
                    continue
            decoder.decode()
    except IndexError:  # raw[position]: the map ends before a value's head
        raise HeadCutShort(position, 1) from None
    return found


class RecordFilter:
    """``spec.filter`` as a predicate on decoded records (``fields``: the top-level fields it reads)."""

    def __init__(self, spec: ExportFilter | Any) -> None:
        self.models = tuple(spec.models) if spec.models else None
        self.model_patterns = self.models is not None and any(c in m for m in self.models for c in "*?[")
        self.api_types = frozenset(spec.api_types) if spec.api_types else None
        self.tags = frozenset(spec.tags) if spec.tags else None
        self.status_codes = frozenset(spec.status_codes) if spec.status_codes else None
        used = (("model", self.models), ("api_type", self.api_types), ("identity", self.tags),
                ("status_code", self.status_codes))
        self.fields = frozenset(name for name, given in used if given is not None)

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if self.models is not None:
            model = record.get("model")
            if not isinstance(model, str):
                return False
            if self.model_patterns:
                if not any(fnmatchcase(model, pattern) for pattern in self.models):
                    return False
            elif model not in self.models:
                return False
        if self.api_types is not None and record.get("api_type") not in self.api_types:
            return False
        if self.status_codes is not None and record.get("status_code") not in self.status_codes:
            return False
        if self.tags is not None:
            identity = record.get("identity")
            tags = identity.get("tags") if isinstance(identity, Mapping) else None
            if not isinstance(tags, list) or not any(isinstance(t, str) and t in self.tags for t in tags):
                return False
        return True


class RecordTransform:
    """The filter and the rewrites (privacy, redaction) an exporter applies, built from its spec (or
    anything with the spec's ``filter``, ``privacy_mode`` and ``redact_fields``, as batch.BatchRecipe)."""

    def __init__(self, spec: S3ExporterSpec | Any) -> None:
        self.filter = RecordFilter(spec.filter) if spec.filter is not None else None
        self.privacy = spec.privacy_mode
        self.redactions = [path.split(".") for path in spec.redact_fields]

    @property
    def rewrites(self) -> bool:
        return self.privacy or bool(self.redactions)

    @property
    def identity(self) -> bool:
        """Nothing to do: records go out as they are stored (the fast path, no decode)."""
        return self.filter is None and not self.rewrites

    def accepts(self, record: Mapping[str, Any]) -> bool:
        return self.filter is None or self.filter(record)

    def rewrite(self, record: dict[str, Any], *, scrubbed: bool = False) -> dict[str, Any]:
        """The record as exported: scrubbed for privacy mode (unless ``scrubbed``: export/batch.py's native
        scrub did it already), then redacted."""
        if self.privacy and not scrubbed:
            record = privacy_scrub(record)
        if self.redactions:
            record = redact(record, self.redactions)
        return record
