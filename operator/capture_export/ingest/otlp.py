"""``POST /v1/traces``: OpenTelemetry GenAI spans over OTLP/HTTP, one schema-v2 record per GenAI span.

Both OTLP/HTTP encodings: ``application/x-protobuf`` (the official definitions of the
``opentelemetry-proto`` package) and ``application/json`` (OTLP's JSON mapping: hex trace and span ids,
integers as strings or numbers, enums as numbers); ``Content-Encoding: gzip`` as with every route.
Answers follow the OTLP spec: ``200`` with an ``ExportTraceServiceResponse`` in the request's encoding
(``partial_success`` counts the GenAI spans rejected as malformed, which are not stored while the rest
of the request is), ``400`` for a body that does not decode, retryable ``429``/``503`` with
``Retry-After``; failures carry a ``google.rpc.Status``.

A GenAI span is one with ``gen_ai.operation.name``, ``gen_ai.provider.name`` or ``gen_ai.system``; other
spans are ignored (counted in ``capture_export_ingest_ignored_total``). The mapping follows the
OpenTelemetry semantic conventions for generative AI, version 1.37.0, and reads the older forms too
(``gen_ai.system``, ``gen_ai.usage.prompt_tokens``/``completion_tokens``, ``gen_ai.prompt``/
``gen_ai.completion`` and their events, the per-message events ``gen_ai.*.message``/``gen_ai.choice``,
OpenLLMetry's indexed ``gen_ai.prompt.N.*``/``gen_ai.completion.N.*``). See README, "OpenTelemetry".
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import operator
import re
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1 import trace_pb2

from ..store.record_types import COUNT_LIMIT
from .errors import BadInput, TooLarge, UnsupportedMediaType
from .litellm import API_TYPES as LITELLM_API_TYPES
from .native import loads_embedded_json, loads_json
from .parsing import Parsed

__all__ = ["JSON_TYPES", "SEMCONV_VERSION", "export_response", "parse_otlp", "span_record", "status_body"]

SEMCONV_VERSION = "1.37.0"
PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
JSON_TYPES = frozenset({"application/json"})

_GENAI_MARKERS = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system")
_FAMILIES = {
    "openai": "oai", "azure.ai.openai": "oai", "azure_openai": "oai", "az.ai.openai": "oai",
    "anthropic": "ant",
    "gcp.gemini": "gemini", "gcp.vertex_ai": "gemini", "gcp.gen_ai": "gemini", "gemini": "gemini",
    "vertex_ai": "gemini", "google": "gemini",
}  # fmt: skip
_API_TYPES = {
    ("chat", "oai"): "oai_completions", ("chat", "ant"): "ant_messages", ("chat", "gemini"): "gemini_generate",
    ("generate_content", "gemini"): "gemini_generate", ("text_completion", "oai"): "oai_text_completions",
    ("embeddings", "oai"): "oai_embeddings",
}  # fmt: skip
_INPUT_KEYS = ("gen_ai.input.messages", "gen_ai.prompt")
_OUTPUT_KEYS = ("gen_ai.output.messages", "gen_ai.completion")
_INDEXED = re.compile(r"^gen_ai\.(prompt|completion)\.(\d+)\.(.+)$")
_MESSAGE_EVENTS = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
                   "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}


class SpanRejected(ValueError):
    """A GenAI span that cannot become a record (reported in partial_success, not stored)."""


# -- values --------------------------------------------------------------------------------------------

_SCALARS = {kind: operator.attrgetter(kind)
            for kind in ("string_value", "bool_value", "int_value", "double_value", "bytes_value")}


def _any(value: Any) -> Any:
    kind = value.WhichOneof("value")
    scalar = _SCALARS.get(kind)
    if scalar is not None:
        return scalar(value)
    if kind is None:
        return None
    if kind == "array_value":
        return [_any(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _any(kv.value) for kv in pairs}


def _hex(raw: bytes) -> str:
    return raw.hex()


def _maybe_json(value: Any) -> Any:
    """Message contents often arrive as JSON text in a string attribute."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return loads_embedded_json(value)
        except ValueError:
            return value
    return value


def _enum_names(enum: Any) -> dict[int, str]:
    return {value.number: value.name for value in enum.DESCRIPTOR.values}


_SPAN_KINDS = _enum_names(trace_pb2.Span.SpanKind)
_STATUS_CODES = _enum_names(trace_pb2.Status.StatusCode)


def _enum_name(names: dict[int, str], number: int) -> str:
    # A number newer than these definitions (OTLP enums are open) is kept as the number.
    return names.get(number) or str(number)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        try:
            return int(value)
        except ValueError:  # "²" is a digit int() cannot read; past 4300 digits int() refuses too
            return None
    return None


# -- messages ------------------------------------------------------------------------------------------

def _take_messages(attrs: dict[str, Any], events: list[dict[str, Any]], side: str) -> Any:
    """The input (``prompt``) or output (``completion``) messages, removed from ``attrs``/``events``."""
    keys = _INPUT_KEYS if side == "prompt" else _OUTPUT_KEYS
    for key in keys:
        if key in attrs:
            return _maybe_json(attrs.pop(key))
    indexed: dict[int, dict[str, Any]] = {}
    for key in [k for k in attrs if k.startswith(f"gen_ai.{side}.")]:
        match = _INDEXED.match(key)
        if match and match.group(1) == side:
            indexed.setdefault(int(match.group(2)), {})[match.group(3)] = _maybe_json(attrs.pop(key))
    if indexed:
        return [indexed[i] for i in sorted(indexed)]
    content_event = "gen_ai.content.prompt" if side == "prompt" else "gen_ai.content.completion"
    messages: list[Any] = []
    kept: list[dict[str, Any]] = []
    for event in events:
        name, event_attrs = event["name"], event["attributes"]
        if name == content_event:
            messages.append(_maybe_json(event_attrs.get(keys[1], event_attrs)))
        elif side == "prompt" and name in _MESSAGE_EVENTS:
            message = {"role": _MESSAGE_EVENTS[name]}
            message.update({k: _maybe_json(v) for k, v in event_attrs.items() if k not in _GENAI_MARKERS})
            messages.append(message)
        elif side == "completion" and name == "gen_ai.choice":
            messages.append({k: _maybe_json(v) for k, v in event_attrs.items() if k not in _GENAI_MARKERS})
        else:
            kept.append(event)
    events[:] = kept
    if len(messages) == 1 and isinstance(messages[0], list):
        return messages[0]
    return messages or None


# -- one span ------------------------------------------------------------------------------------------

def _api_type(operation: str | None, provider: str | None) -> str:
    family = _FAMILIES.get((provider or "").lower(), "")
    if operation and (operation, family) in _API_TYPES:
        return _API_TYPES[(operation, family)]
    if operation:  # LiteLLM's otel callback names the operation by its call type (``acompletion``)
        call_type = operation[1:] if operation not in LITELLM_API_TYPES and operation.startswith("a") else operation
        if call_type in LITELLM_API_TYPES:
            return LITELLM_API_TYPES[call_type][0]
    return f"genai_{operation}" if operation else "genai"


def _status_code(span: Any, attrs: dict[str, Any]) -> int:
    code = _int(attrs.get("http.response.status_code"))
    if code is not None and 100 <= code <= 999:
        return code
    if span.status.code == trace_pb2.Status.STATUS_CODE_ERROR:
        error = _int(attrs.get("error.type"))
        return error if error is not None and 100 <= error <= 999 else 500
    return 200


def _first(attrs: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if attrs.get(key) not in (None, ""):
            return attrs[key]
    return None


def _usage(attrs: dict[str, Any]) -> dict[str, int]:
    def count(*keys: str) -> int:
        value = _int(_first(attrs, *keys))
        return value if value is not None and 0 <= value < COUNT_LIMIT else 0  # 0: unknown (1e30, -1)

    return {
        "input_tokens": count("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
        "output_tokens": count("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
        "cached_tokens": count("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
                               "gen_ai.usage.cached_tokens"),
        "reasoning_tokens": count("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens"),
    }


def _number(value: Any) -> float | None:
    """A finite number as float (a cost of Infinity is unknown), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _cost(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """Not in the conventions: LiteLLM's ``gen_ai.cost.*`` and OpenLIT's ``gen_ai.usage.cost`` (USD)."""
    total = _number(_first(attrs, "gen_ai.cost.total_cost", "gen_ai.usage.cost"))
    if total is None:
        return None
    cost: dict[str, Any] = {}
    for field, key in (("input", "gen_ai.cost.input_cost"), ("output", "gen_ai.cost.output_cost")):
        part = _number(attrs.get(key))
        if part is not None:
            cost[field] = part
    cost.update(total=total, currency="USD")
    return cost


def _identity(attrs: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    identity: dict[str, Any] = {}
    login = _first(attrs, "user.id", "enduser.id", "llm.user") or _first(resource, "user.id", "enduser.id")
    if login is not None:
        identity["login_name"] = str(login)
    node = _first(resource, "service.instance.id", "host.id", "host.name")
    if node is not None:
        identity["node_id"] = str(node)
    tags = []
    for prefix, keys in (("service", ("service.name",)),
                         ("env", ("deployment.environment.name", "deployment.environment"))):
        value = _first(resource, *keys)
        if value is not None:
            tags.append(f"{prefix}:{value}")
    identity["tags"] = tags
    return identity


def is_genai(attrs: dict[str, Any]) -> bool:
    return any(key in attrs for key in _GENAI_MARKERS)


def span_record(span: Any, attrs: dict[str, Any], resource: dict[str, Any], scope: Any) -> dict[str, Any]:
    """One GenAI span (``attrs`` its decoded attributes, consumed) as a schema-v2 record in its stored
    shape (``records.encode_ordered``)."""
    if len(span.trace_id) != 16 or not any(span.trace_id):
        raise SpanRejected("a span without a valid 16-byte trace id")
    if len(span.span_id) != 8 or not any(span.span_id):
        raise SpanRejected("a span without a valid 8-byte span id")
    if not span.start_time_unix_nano:
        raise SpanRejected("a span without a start time")
    start = span.start_time_unix_nano
    try:
        timestamp = datetime.fromtimestamp(start // 1_000_000_000, UTC).replace(microsecond=start // 1000 % 1_000_000)
    except (OverflowError, OSError, ValueError):
        raise SpanRejected("a span start time out of range") from None
    end = span.end_time_unix_nano
    events = [{"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": _attributes(e.attributes)}
              for e in span.events]
    inputs = _take_messages(attrs, events, "prompt")
    outputs = _take_messages(attrs, events, "completion")
    system_instructions = attrs.pop("gen_ai.system_instructions", None)
    operation = _first(attrs, "gen_ai.operation.name")
    provider = _first(attrs, "gen_ai.provider.name", "gen_ai.system")
    request_model = _first(attrs, "gen_ai.request.model")
    model = _first(attrs, "gen_ai.response.model", "gen_ai.request.model")

    request_body: dict[str, Any] = {"model": request_model, "messages": inputs}
    if system_instructions is not None:
        request_body["system_instructions"] = _maybe_json(system_instructions)
    response_body: dict[str, Any] = {"id": _first(attrs, "gen_ai.response.id"), "model": model,
                                     "finish_reasons": _maybe_json(attrs.get("gen_ai.response.finish_reasons")),
                                     "messages": outputs}
    otel: dict[str, Any] = {
        "trace_id": _hex(span.trace_id), "span_id": _hex(span.span_id),
        "parent_span_id": _hex(span.parent_span_id) or None, "name": span.name,
        "kind": _enum_name(_SPAN_KINDS, span.kind), "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "status": {"code": _enum_name(_STATUS_CODES, span.status.code),
                   "message": span.status.message},
        "attributes": attrs, "events": events,
        "links": [{"trace_id": _hex(link.trace_id), "span_id": _hex(link.span_id),
                   "attributes": _attributes(link.attributes)} for link in span.links],
        "resource": resource,
        "scope": {"name": scope.name, "version": scope.version, "attributes": _attributes(scope.attributes)},
    }
    if span.trace_state:
        otel["trace_state"] = span.trace_state
    session = _first(attrs, "gen_ai.conversation.id", "session.id")
    path = _first(attrs, "url.path", "http.route")
    # Built in the stored field order (records.FIELD_ORDER), leaving out what is unknown.
    record: dict[str, Any] = {"ver": 2, "timestamp": timestamp, "identity": _identity(attrs, resource)}
    if model is not None:
        record["model"] = str(model)
    record["api_type"] = _api_type(str(operation) if operation else None, str(provider) if provider else None)
    record["usage"] = _usage(attrs)
    cost = _cost(attrs)
    if cost is not None:
        record["estimated_cost"] = cost
    if end:
        record["duration_ms"] = max(0, round((end - start) / 1_000_000))
    record["capture_id"] = f"{otel['trace_id']}-{otel['span_id']}"
    if session is not None:
        record["session_id"] = str(session)
    if path is not None:
        record["path"] = str(path)
    record["status_code"] = _status_code(span, attrs)
    record["capture"] = {"request": {"body": {k: v for k, v in request_body.items() if v is not None}},
                         "response": {"body": {k: v for k, v in response_body.items() if v is not None}},
                         "otel": {k: v for k, v in otel.items() if v is not None}}
    return record


# -- requests ------------------------------------------------------------------------------------------

def _fix_json_ids(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex; protobuf's JSON mapping wants base64 for bytes."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id") and \
                    isinstance(value, str):
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise BadInput(f"{key} {value[:40]!r} is not hex") from None
            else:
                value = _fix_json_ids(value)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_fix_json_ids(v) for v in node]
    return node


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if content_type in PROTOBUF_TYPES:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise BadInput(f"not a valid OTLP ExportTraceServiceRequest (protobuf): {exc}") from None
    elif content_type in JSON_TYPES:
        try:
            data = loads_json(body)
            json_format.ParseDict(_fix_json_ids(data), request, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError, binascii.Error) as exc:
            raise BadInput(f"not a valid OTLP ExportTraceServiceRequest (JSON): {exc}") from None
    else:
        raise UnsupportedMediaType(f"Content-Type {content_type or '(none)'} is not OTLP/HTTP: send "
                                   "application/x-protobuf or application/json")
    return request


def parse_otlp(body: bytes, content_type: str, max_records: int) -> Parsed:
    request = decode_request(body, content_type)
    records: list[dict[str, Any]] = []
    ignored = rejected = total = 0
    first_error = ""
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                total += 1
                if total > max_records:
                    raise TooLarge(f"more than {max_records} spans in one request")
                attrs = _attributes(span.attributes)
                if not is_genai(attrs):
                    ignored += 1
                    continue
                try:
                    records.append(span_record(span, attrs, resource, scope_spans.scope))
                except SpanRejected as exc:
                    rejected += 1
                    first_error = first_error or f"span {total - 1}: {exc}"
                except (ValueError, TypeError, LookupError, OverflowError, RecursionError) as exc:
                    # A value the mapping did not foresee: this span is rejected, not its whole batch.
                    rejected += 1
                    first_error = first_error or f"span {total - 1}: cannot be read ({exc.__class__.__name__})"
    return Parsed(records, ignored, {"rejected": rejected, "error": first_error})


# -- answers -------------------------------------------------------------------------------------------

def _status_message(code: int, message: str) -> bytes:
    """A google.rpc.Status (code = 1, message = 2) in protobuf, encoded by hand: three fields."""
    text = message.encode("utf-8", "replace")  # a quoted header may hold undecodable bytes
    out = bytearray()
    if code:
        out += b"\x08" + _varint(code)
    out += b"\x12" + _varint(len(text)) + text
    return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# gRPC codes for the HTTP statuses we answer with (google.rpc.Code)
_GRPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 429: 8, 503: 14}


def export_response(rejected: int, error: str, *, as_json: bool) -> bytes:
    """An ExportTraceServiceResponse: empty, or a partial success with the rejected spans' count."""
    if as_json:
        body: dict[str, Any] = {}
        if rejected:
            body["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": error}
        return json.dumps(body).encode()
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = error
    return response.SerializeToString()


def status_body(http_status: int, message: str, *, as_json: bool) -> bytes:
    """A google.rpc.Status for a refused export."""
    code = _GRPC_CODES.get(http_status, 2)
    if as_json:
        return json.dumps({"code": code, "message": message}).encode()
    return _status_message(code, message)
