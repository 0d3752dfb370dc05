"""``POST /v1/litellm``: what LiteLLM's ``generic_api`` logging callback sends, mapped to schema-v2 records.

The callback posts StandardLoggingPayload objects in one of its ``log_format``s: ``json_array`` (its
default: one JSON array per batch), ``ndjson`` (one object per line) or ``single`` (one object per
request). The mapping (README, "LiteLLM"):

==========================  =====================================================================
record field                from the StandardLoggingPayload
==========================  =====================================================================
timestamp                   ``startTime`` (Unix seconds) as UTC
duration_ms                 ``endTime - startTime`` (else ``response_time``), in milliseconds
model                       ``model`` (what the client asked for)
api_type                    ``call_type`` (``completion`` -> ``oai_completions``, ``responses`` ->
                            ``oai_responses``, ``anthropic_messages`` -> ``ant_messages``, …; a
                            pass-through by its route, else ``litellm_<call_type>``)
usage                       ``prompt_tokens``, ``completion_tokens``, cached and reasoning tokens from the
                            usage object (``prompt_tokens_details.cached_tokens``,
                            ``completion_tokens_details.reasoning_tokens``)
estimated_cost              ``response_cost`` as ``total`` (USD), ``input``/``output`` from
                            ``cost_breakdown``; left out when LiteLLM could not price the call
identity                    login_name: the key's user e-mail, else user id, else ``end_user``, else the
                            request's ``user`` parameter;
                            node_id: ``user_api_key_hash`` (the virtual key); tags: ``request_tags`` and
                            ``team:…``, ``key:…``, ``org:…`` from the key alias, team and organisation
capture_id                  ``id`` (a cache hit's ``id`` is the cached response's: then ``litellm_call_id``)
session_id                  ``session_id``, else ``trace_id``
path                        the proxy route (``metadata.user_api_key_request_route``), else the route of
                            the call type
status_code                 200 for ``status: success``; else ``error_information.error_code``, else 500
capture.request             ``headers``: ``metadata.requester_custom_headers``; ``body``: ``{model,
                            messages}`` plus ``model_parameters``
capture.response            ``headers``: ``hidden_params.additional_headers``; ``body``: ``response``
capture.tool_use            the tool calls of the response's choices (``id``, ``name``, ``input``)
capture.litellm             the rest of the payload, everything but ``messages`` and ``response`` and
                            the two header maps above, exactly as LiteLLM sent it
==========================  =====================================================================

Nothing of the payload is dropped: what is not moved into the record's own fields stays in
``capture.litellm``. Credential headers are stripped from every ``headers`` map as always.
"""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime
from typing import Any

from ..store.record_types import COUNT_LIMIT
from .errors import BadInput
from .native import MAX_CAPTURE_ID, json_values, loads_embedded_json, parse_timestamp

__all__ = ["API_TYPES", "litellm_record", "parse_litellm"]

# call_type (without the async "a" prefix) -> (api_type, default path)
API_TYPES: dict[str, tuple[str, str]] = {
    "completion": ("oai_completions", "/v1/chat/completions"),
    "responses": ("oai_responses", "/v1/responses"),
    "anthropic_messages": ("ant_messages", "/v1/messages"),
    "generate_content": ("gemini_generate", "/v1beta/models:generateContent"),
    "text_completion": ("oai_text_completions", "/v1/completions"),
    "embedding": ("oai_embeddings", "/v1/embeddings"),
    "image_generation": ("oai_images", "/v1/images/generations"),
    "image_edit": ("oai_images", "/v1/images/edits"),
    "transcription": ("oai_transcriptions", "/v1/audio/transcriptions"),
    "speech": ("oai_speech", "/v1/audio/speech"),
    "moderation": ("oai_moderations", "/v1/moderations"),
    "rerank": ("rerank", "/v1/rerank"),
}
# A pass-through call's API type follows its route.
_ROUTE_API_TYPES = (
    ("/chat/completions", "oai_completions"),
    ("/responses", "oai_responses"),
    ("/messages", "ant_messages"),
    (":generateContent", "gemini_generate"),
    (":streamGenerateContent", "gemini_generate"),
    ("/embeddings", "oai_embeddings"),
)
_BODIES = ("messages", "response")


def _api_type_and_path(call_type: Any, route: str | None) -> tuple[str | None, str | None]:
    if not isinstance(call_type, str) or not call_type:
        return None, route
    name = call_type
    if name not in API_TYPES and name.startswith("a") and name[1:] in API_TYPES:
        name = name[1:]
    if name in API_TYPES:
        api_type, path = API_TYPES[name]
        return api_type, route or path
    if route:
        for suffix, api_type in _ROUTE_API_TYPES:
            if suffix in route:
                return api_type, route
    return f"litellm_{call_type.lstrip('_')}", route


def _number(value: Any) -> float | None:
    """A finite number as float; None for anything else (an integer past float's range included)."""
    if type(value) is float:  # the common case first: LiteLLM's times and costs
        return value if math.isfinite(value) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _count(value: Any) -> int:
    """A token count a 64-bit column holds; 0 (unknown) for anything else: a negative, 1e30."""
    if type(value) is int:
        return value if 0 <= value < COUNT_LIMIT else 0
    number = _number(value)
    return int(number) if number is not None and 0 <= number < COUNT_LIMIT else 0


def _milliseconds(seconds: float) -> int | None:
    """A duration in whole milliseconds, or None when it is past any real duration (endTime 1e308)."""
    millis = seconds * 1000
    return max(0, round(millis)) if math.isfinite(millis) and millis < COUNT_LIMIT else None


def _get(mapping: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _usage(payload: dict[str, Any], metadata: Any, hidden: Any, response: Any) -> dict[str, int]:
    usage_object = ((metadata.get("usage_object") if isinstance(metadata, dict) else None)
                    or (hidden.get("usage_object") if isinstance(hidden, dict) else None)
                    or (response.get("usage") if isinstance(response, dict) else None) or {})
    cached = _get(usage_object, "prompt_tokens_details", "cached_tokens")
    if cached is None:
        cached = _get(usage_object, "cache_read_input_tokens")
    return {
        "input_tokens": _count(payload.get("prompt_tokens")),
        "output_tokens": _count(payload.get("completion_tokens")),
        "cached_tokens": _count(cached),
        "reasoning_tokens": _count(_get(usage_object, "completion_tokens_details", "reasoning_tokens")),
    }


def _cost(payload: dict[str, Any]) -> dict[str, Any] | None:
    total = _number(payload.get("response_cost"))
    if total is None or payload.get("response_cost_failure_debug_info"):
        return None
    cost: dict[str, Any] = {}
    breakdown = payload.get("cost_breakdown")
    if isinstance(breakdown, dict):
        parts = [_number(breakdown.get(k)) for k in ("input_cost", "cache_read_cost", "cache_creation_cost")]
        if parts[0] is not None and math.isfinite(total_input := sum(p for p in parts if p is not None)):
            cost["input"] = round(total_input, 12)
        output = _number(breakdown.get("output_cost"))
        if output is not None:
            cost["output"] = output
    cost["total"] = total
    cost["currency"] = "USD"
    return cost


def _first_text(source: Any, *keys: str) -> str | None:
    if not isinstance(source, dict):
        return None
    for key in keys:
        value = source.get(key)
        if isinstance(value, str) and value:
            return value
    return None


_TAG_SOURCES = (("team", ("user_api_key_team_alias", "team_alias", "user_api_key_team_id", "team_id")),
                ("key", ("user_api_key_alias",)),
                ("org", ("user_api_key_org_alias", "user_api_key_org_id")))


def _identity(payload: dict[str, Any], metadata: Any) -> dict[str, Any]:
    identity: dict[str, Any] = {}
    login = (_first_text(metadata, "user_api_key_user_email", "user_api_key_user_id")
             or _first_text(payload, "end_user") or _first_text(payload.get("model_parameters"), "user"))
    if login:
        identity["login_name"] = login
    node = _first_text(metadata, "user_api_key_hash")
    if node:
        identity["node_id"] = node
    request_tags = payload.get("request_tags")
    tags = [t for t in request_tags if isinstance(t, str)] if isinstance(request_tags, list) else []
    for prefix, keys in _TAG_SOURCES:
        value = _first_text(metadata, *keys)
        if value:
            tags.append(f"{prefix}:{value}")
    identity["tags"] = tags
    return identity


def _status_code(payload: dict[str, Any]) -> int:
    if payload.get("status", "success") == "success":
        return 200
    code = _get(payload, "error_information", "error_code")
    try:
        number = int(code)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an error_code of Infinity
        return 500
    return number if 100 <= number <= 999 else 500


def _tool_use(response: Any) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for choice in _get(response, "choices") or ():
        for call in _get(choice, "message", "tool_calls") or ():
            function = _get(call, "function") or {}
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(arguments, str):
                with contextlib.suppress(ValueError):
                    arguments = loads_embedded_json(arguments)
            calls.append({"id": _get(call, "id"), "name": _get(function, "name"), "input": arguments})
    return calls


def litellm_record(payload: Any, index: int) -> dict[str, Any]:
    """One StandardLoggingPayload as a schema-v2 record in its stored shape (``records.encode_ordered``).

    The payload is taken apart, not copied: what is not moved into the record's own fields stays in it,
    and it becomes ``capture.litellm``. The caller must not use it afterwards."""
    if not isinstance(payload, dict):
        raise BadInput(f"must be a StandardLoggingPayload object, not {type(payload).__name__}", index=index)
    capture_id = payload.get("id")
    if not isinstance(capture_id, str) or not capture_id.strip():
        raise BadInput("required: a non-empty string (the payload's id is the record's capture_id)",
                       index=index, field="id")
    call_id = payload.get("litellm_call_id")
    if payload.get("cache_hit") is True and isinstance(call_id, str) and call_id:
        capture_id = call_id
    if len(capture_id) > MAX_CAPTURE_ID:
        raise BadInput(f"longer than {MAX_CAPTURE_ID} characters", index=index, field="id")
    if "\x00" in capture_id:  # PostgreSQL text cannot hold it: the whole group commit would fail
        raise BadInput("must not contain NUL characters", index=index, field="id")
    start = payload.get("startTime")
    try:
        start_seconds = _number(start)
        timestamp = (datetime.fromtimestamp(start_seconds, UTC) if start_seconds is not None
                     else parse_timestamp(start))
    except (ValueError, OverflowError, OSError) as exc:
        detail = "required" if start is None else str(exc)
        raise BadInput(f"{detail} (Unix seconds, as LiteLLM sends it)", index=index, field="startTime") from None
    end = _number(payload.get("endTime"))
    response_time = _number(payload.get("response_time"))
    if end is not None and start_seconds is not None:
        duration = _milliseconds(end - start_seconds)
    elif response_time is not None:
        duration = _milliseconds(response_time)
    else:
        duration = None
    metadata = payload.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadInput("must be an object", index=index, field="metadata")
    hidden = payload.get("hidden_params")
    if hidden is not None and not isinstance(hidden, dict):
        raise BadInput("must be an object", index=index, field="hidden_params")
    route = metadata.get("user_api_key_request_route") if metadata is not None else None
    api_type, path = _api_type_and_path(payload.get("call_type"), route if isinstance(route, str) else None)
    model = payload.get("model")

    # What becomes the bodies and the header maps leaves the payload; the rest of it, as sent, stays.
    messages = payload.pop("messages", None)
    response_body = payload.pop("response", None)
    request_headers = response_headers = None
    if metadata is not None and isinstance(metadata.get("requester_custom_headers"), dict):
        request_headers = metadata.pop("requester_custom_headers")
    if hidden is not None and isinstance(hidden.get("additional_headers"), dict):
        response_headers = hidden.pop("additional_headers")

    request_body: dict[str, Any] = {"model": model, "messages": messages}
    parameters = payload.get("model_parameters")
    if isinstance(parameters, dict):
        for key, value in parameters.items():
            if key != "model" and key != "messages":
                request_body[key] = value
    request: dict[str, Any] = {"body": request_body}
    if request_headers is not None:
        request["headers"] = request_headers
    response: dict[str, Any] = {"body": response_body}
    if response_headers is not None:
        response["headers"] = response_headers
    capture: dict[str, Any] = {"request": request, "response": response}
    tool_use = _tool_use(response_body)
    if tool_use:
        capture["tool_use"] = tool_use
    capture["litellm"] = payload

    # Built in the stored field order (records.FIELD_ORDER), leaving out what is unknown.
    record: dict[str, Any] = {"ver": 2, "timestamp": timestamp, "identity": _identity(payload, metadata)}
    if isinstance(model, str):
        record["model"] = model
    if api_type is not None:
        record["api_type"] = api_type
    record["usage"] = _usage(payload, metadata, hidden, response_body)
    cost = _cost(payload)
    if cost is not None:
        record["estimated_cost"] = cost
    if duration is not None:
        record["duration_ms"] = duration
    record["capture_id"] = capture_id
    session = payload.get("session_id") or payload.get("trace_id")
    if isinstance(session, str) and session:
        record["session_id"] = session
    if path is not None:
        record["path"] = path
    record["status_code"] = _status_code(payload)
    record["capture"] = capture
    return record


def parse_litellm(body: bytes, max_records: int) -> list[dict[str, Any]]:
    """Records of a ``/v1/litellm`` body in any of the callback's ``log_format``s."""
    records = [litellm_record(payload, index) for index, payload in enumerate(json_values(body, max_records))]
    if not records:
        raise BadInput("no payloads in the body")
    return records
