"""The request and response bodies each provider's API exchanges: Anthropic Messages, Gemini
generateContent, OpenAI Responses and Chat Completions, with tool calls, usage and error bodies as the
providers write them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .catalogue import ERRORS
from .sessions import ToolCall

__all__ = ["Exchange", "provider_bodies"]

Body = dict[str, Any]


@dataclass(slots=True)
class Exchange:
    """One request and its outcome, in provider-neutral terms; `provider_bodies` writes it in the API's."""

    api: str
    model: str
    info: dict[str, Any]  # the model's entry in MODELS
    stream: bool
    system: str
    history: list[tuple[str, str]]  # (role, text) of earlier turns
    user_text: str  # the user's prompt, or the tool's output when ``tool_result`` is set
    tool_result: ToolCall | None  # the call whose result this request sends back
    tools: list[dict[str, Any]]
    status: int
    out_text: str
    tool_call: ToolCall | None  # the call the model makes in its answer
    usage: dict[str, int]
    ts: datetime


def provider_bodies(exchange: Exchange, rng: random.Random) -> tuple[Body, Body, str]:
    """``(request body, response body, URL path)`` of the exchange in its API's format."""
    rid = f"{rng.getrandbits(96):024x}"
    if exchange.api == "ant_messages":
        return _anthropic(exchange, rid)
    if exchange.api == "gemini_generate":
        return _gemini(exchange, rid)
    if exchange.api == "oai_responses":
        return _openai_responses(exchange, rid)
    return _openai_chat(exchange, rid)


def _json(args: dict[str, Any]) -> str:
    # Tool-call arguments are a JSON string in the OpenAI formats.
    return json.dumps(args, separators=(",", ":"))


def _anthropic(ex: Exchange, rid: str) -> tuple[Body, Body, str]:
    messages: list[Body] = [{"role": role, "content": t} for role, t in ex.history]
    if ex.tool_result is not None:
        call_id, name, args = ex.tool_result
        messages.append(
            {"role": "assistant", "content": [{"type": "tool_use", "id": call_id, "name": name, "input": dict(args)}]}
        )
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": ex.user_text}]}
        )
    else:
        messages.append({"role": "user", "content": ex.user_text})
    request: Body = {"model": ex.model, "max_tokens": 8192 if ex.stream else 4096}
    if ex.system:
        request["system"] = ex.system
    request["messages"] = messages
    if ex.tools:
        request["tools"] = [
            {"name": t["name"], "description": t["description"], "input_schema": t["parameters"]} for t in ex.tools
        ]
    if ex.stream:
        request["stream"] = True
    if ex.status != 200:
        kind, msg = ERRORS.get(ex.status, ERRORS[500])
        error = {"type": "error", "error": {"type": kind, "message": msg}, "request_id": "req_" + rid}
        return request, error, "/v1/messages"
    content: list[Body] = []
    if ex.out_text:
        content.append({"type": "text", "text": ex.out_text})
    if ex.tool_call is not None:
        call_id, name, args = ex.tool_call
        content.append({"type": "tool_use", "id": call_id, "name": name, "input": dict(args)})
    usage = ex.usage
    response = {
        "id": "msg_01" + rid,
        "type": "message",
        "role": "assistant",
        "model": ex.info["served"],
        "content": content,
        "stop_reason": "tool_use" if ex.tool_call else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage["input_tokens"] - usage["cached_tokens"],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage["cached_tokens"],
            "output_tokens": usage["output_tokens"],
            "service_tier": "standard",
        },
    }
    return request, response, "/v1/messages"


def _gemini(ex: Exchange, rid: str) -> tuple[Body, Body, str]:
    contents: list[Body] = [
        {"role": "model" if role == "assistant" else "user", "parts": [{"text": t}]} for role, t in ex.history
    ]
    if ex.tool_result is not None:
        _, name, args = ex.tool_result
        contents.append({"role": "model", "parts": [{"functionCall": {"name": name, "args": dict(args)}}]})
        contents.append(
            {"role": "user", "parts": [{"functionResponse": {"name": name, "response": {"content": ex.user_text}}}]}
        )
    else:
        contents.append({"role": "user", "parts": [{"text": ex.user_text}]})
    request: Body = {"contents": contents}
    if ex.system:
        request["systemInstruction"] = {"parts": [{"text": ex.system}]}
    if ex.tools:
        request["tools"] = [{"functionDeclarations": [dict(t) for t in ex.tools]}]
    request["generationConfig"] = {"temperature": 0.7, "maxOutputTokens": 8192}
    verb = "streamGenerateContent" if ex.stream else "generateContent"
    path = f"/v1beta/models/{ex.model}:{verb}"
    if ex.status != 200:
        _, msg = ERRORS.get(ex.status, ERRORS[500])
        gstatus = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED"}
        error = {"code": ex.status, "message": msg, "status": gstatus.get(ex.status, "INTERNAL")}
        return request, {"error": error}, path
    parts: list[Body] = []
    if ex.out_text:
        parts.append({"text": ex.out_text})
    if ex.tool_call is not None:
        parts.append({"functionCall": {"name": ex.tool_call[1], "args": dict(ex.tool_call[2])}})
    usage = ex.usage
    in_tok, out_tok = usage["input_tokens"], usage["output_tokens"]
    response = {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": in_tok,
            "candidatesTokenCount": out_tok - usage["reasoning_tokens"],
            "totalTokenCount": in_tok + out_tok,
            "cachedContentTokenCount": usage["cached_tokens"],
            "thoughtsTokenCount": usage["reasoning_tokens"],
        },
        "modelVersion": ex.info["served"],
        "responseId": rid,
    }
    return request, response, path


def _openai_error(status: int) -> Body:
    kind, msg = ERRORS.get(status, ERRORS[500])
    return {"error": {"message": msg, "type": kind, "param": None, "code": None}}


def _openai_responses(ex: Exchange, rid: str) -> tuple[Body, Body, str]:
    items: list[Body] = [{"role": role, "content": t} for role, t in ex.history]
    if ex.tool_result is not None:
        call_id, name, args = ex.tool_result
        items.append({"type": "function_call", "call_id": call_id, "name": name, "arguments": _json(args)})
        items.append({"type": "function_call_output", "call_id": call_id, "output": ex.user_text})
    else:
        items.append({"role": "user", "content": ex.user_text})
    request: Body = {"model": ex.model}
    if ex.system:
        request["instructions"] = ex.system
    request["input"] = items
    if ex.tools:
        request["tools"] = [{"type": "function", **t} for t in ex.tools]
    if ex.info["reasoning"]:
        request["reasoning"] = {"effort": "medium"}
    request["store"] = False
    if ex.stream:
        request["stream"] = True
    if ex.status != 200:
        return request, _openai_error(ex.status), "/v1/responses"
    usage = ex.usage
    output: list[Body] = []
    if usage["reasoning_tokens"]:
        output.append({"id": "rs_" + rid, "type": "reasoning", "summary": []})
    if ex.out_text:
        output.append(
            {
                "id": "msg_" + rid,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "annotations": [], "text": ex.out_text}],
            }
        )
    if ex.tool_call is not None:
        call_id, name, args = ex.tool_call
        output.append(
            {
                "id": "fc_" + rid,
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": name,
                "arguments": _json(args),
            }
        )
    in_tok, out_tok = usage["input_tokens"], usage["output_tokens"]
    response = {
        "id": "resp_" + rid,
        "object": "response",
        "created_at": int(ex.ts.timestamp()),
        "status": "completed",
        "model": ex.info["served"],
        "output": output,
        "usage": {
            "input_tokens": in_tok,
            "input_tokens_details": {"cached_tokens": usage["cached_tokens"]},
            "output_tokens": out_tok,
            "output_tokens_details": {"reasoning_tokens": usage["reasoning_tokens"]},
            "total_tokens": in_tok + out_tok,
        },
    }
    return request, response, "/v1/responses"


def _openai_chat(ex: Exchange, rid: str) -> tuple[Body, Body, str]:
    messages: list[Body] = [{"role": "system", "content": ex.system}] if ex.system else []
    messages.extend({"role": role, "content": t} for role, t in ex.history)
    if ex.tool_result is not None:
        call_id, name, args = ex.tool_result
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": _json(args)}}
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call_id, "content": ex.user_text})
    else:
        messages.append({"role": "user", "content": ex.user_text})
    request: Body = {"model": ex.model, "messages": messages}
    if ex.tools:
        request["tools"] = [{"type": "function", "function": dict(t)} for t in ex.tools]
    if not ex.info["reasoning"]:
        request["temperature"] = 0.2 if ex.tools else 0.7
    if ex.stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    if ex.status != 200:
        return request, _openai_error(ex.status), "/v1/chat/completions"
    message: Body = {"role": "assistant", "content": ex.out_text or None, "refusal": None}
    if ex.tool_call is not None:
        call_id, name, args = ex.tool_call
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": _json(args)}}
        ]
    usage = ex.usage
    in_tok, out_tok = usage["input_tokens"], usage["output_tokens"]
    response = {
        "id": "chatcmpl-" + rid,
        "object": "chat.completion",
        "created": int(ex.ts.timestamp()),
        "model": ex.info["served"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if ex.tool_call else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": in_tok,
            "completion_tokens": out_tok,
            "total_tokens": in_tok + out_tok,
            "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"]},
            "completion_tokens_details": {"reasoning_tokens": usage["reasoning_tokens"]},
        },
        "system_fingerprint": "fp_" + rid[:10],
    }
    return request, response, "/v1/chat/completions"
