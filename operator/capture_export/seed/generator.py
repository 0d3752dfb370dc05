"""Synthetic capture records, one request at a time: a dozen sessions in flight, each turn a status, a
user's prompt (or a tool's result), the model's answer (text or a tool call), token usage, cost and
duration consistent with the model, the provider's bodies and headers, and now and then credential
headers or a raw binary body."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ..store.records import SCHEMA_VERSION
from .catalogue import ANTHROPIC_ORG, BINARY_KINDS, CALL_ID_PREFIX, CREDENTIAL_CASES, MODELS, TOOL_ARGS
from .providers import Exchange, provider_bodies
from .sessions import Session, SessionMaker, ToolCall, rand_id, uuid
from .text import TextSource, text_pools

__all__ = ["generate_records"]

_ACTIVE_SESSIONS = 12


def generate_records(
    count: int,
    *,
    seed: int = 0,
    start: datetime | None = None,
    span: timedelta = timedelta(days=30),
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` synthetic capture records (without ``id``), timestamps non-decreasing.

    The timestamps are spread over ``span`` ending at ``start`` (default: now; a naive ``start`` is taken
    as UTC). Everything is deterministic for a given ``seed``; the timestamps also depend on ``start``.
    Each record has its own headers, bodies and message lists, so mutating one (as ``encode_body`` does when
    it strips credential headers) never affects another; only immutable values, the tool schemas in
    request bodies and the values inside tool-call arguments are shared.
    """
    if span < timedelta(0):
        raise ValueError("span must not be negative")
    if count <= 0:
        return
    end = datetime.now(UTC) if start is None else start
    end = end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)
    begin = end - span
    step_us = span / timedelta(microseconds=1) / count

    pools = text_pools()
    rng = random.Random(seed)
    rand = rng.random
    texts = TextSource(pools, rng)
    sessions = SessionMaker(rng, texts, pools.system_prompts)
    active = [sessions.new() for _ in range(_ACTIVE_SESSIONS)]
    for i in range(count):
        slot = int(rand() * _ACTIVE_SESSIONS)
        sess = active[slot]
        sess.remaining -= 1
        if sess.remaining <= 0:
            active[slot] = sessions.new()
        ts = begin + timedelta(microseconds=int((i + rand()) * step_us))
        yield _record(sess, ts, rng, texts)
        sess.turn += 1


def _record(sess: Session, ts: datetime, rng: random.Random, texts: TextSource) -> dict[str, Any]:
    """The session's next request. The order of the random draws is part of the output: keep it."""
    rand = rng.random
    info = MODELS[sess.model]
    api = sess.api_type
    status = _status(rand(), api)

    # The user's turn: either a new prompt or the result of the tool the model called last time.
    tool_result = sess.pending_tool
    sess.pending_tool = None
    lognorm = texts.lognorm
    user_text = (
        texts.text(int(lognorm(5.5, 0.9)) + 40) if tool_result else texts.prompt(int(lognorm(5.1, 1.25)) + 20)
    )
    history = sess.history[-2:]
    if history and history[0][0] == "assistant":
        del history[0]

    out_text, tool_call = _answer(sess, rng, texts) if status == 200 else ("", None)
    usage = _usage(sess, status, info, history, user_text, out_text, tool_call, rng, texts)
    input_tokens, output_tokens, cached_tokens = usage["input_tokens"], usage["output_tokens"], usage["cached_tokens"]
    price_in, price_cached, price_out = info["price"]
    cost_in = round(((input_tokens - cached_tokens) * price_in + cached_tokens * price_cached) / 1e6, 8)
    cost_out = round(output_tokens * price_out / 1e6, 8)
    if status == 200:
        duration = int(lognorm(6.3, 0.5)) + output_tokens * info["ms_per_token"] // (3 if sess.stream else 1)
    else:
        duration = int(lognorm(4.5, 1.0)) + 5

    exchange = Exchange(
        api=api, model=sess.model, info=info, stream=sess.stream, system=sess.system, history=history,
        user_text=user_text, tool_result=tool_result, tools=sess.tools, status=status, out_text=out_text,
        tool_call=tool_call, usage=usage, ts=ts,
    )  # fmt: skip
    request_body, response_body, path = provider_bodies(exchange, rng)
    req_headers, resp_headers = _headers(sess, status, duration, ts, rng)
    if rand() < 0.1:
        _add_credentials(req_headers, resp_headers, api, rng)

    capture: dict[str, Any] = {
        "request": {"headers": req_headers, "body": request_body},
        "response": {"headers": resp_headers, "body": response_body},
    }
    if tool_call is not None:
        call_id, name, args = tool_call
        capture["tool_use"] = [{"id": call_id, "name": name, "input": args}]
        sess.pending_tool = tool_call
    if rand() < 0.03:
        _add_raw_bodies(capture, status, rng, texts)
    _remember(sess, status, user_text, out_text)

    login, node_id, tags = sess.identity
    record: dict[str, Any] = {
        "ver": SCHEMA_VERSION,
        "timestamp": ts,
        "identity": {"login_name": login, "node_id": node_id, "tags": list(tags)},
        "model": sess.model,
        "api_type": api,
        "usage": usage,
    }
    if rand() >= 0.05:
        record["estimated_cost"] = {
            "input": cost_in,
            "output": cost_out,
            "total": round(cost_in + cost_out, 8),
            "currency": "USD",
        }
    record["duration_ms"] = duration
    record["capture_id"] = uuid(rng.getrandbits(128))
    record["session_id"] = sess.session_id
    record["path"] = path
    record["status_code"] = status
    record["capture"] = capture
    return record


def _status(r: float, api: str) -> int:
    """Mostly 200; some rate-limited, malformed, unauthorised or failed requests."""
    if r < 0.93:
        return 200
    if r < 0.96:
        return 429
    if r < 0.975:
        return 400
    if r < 0.98:
        return 401
    if r < 0.99:
        return 500
    return 529 if api == "ant_messages" else 503


def _answer(sess: Session, rng: random.Random, texts: TextSource) -> tuple[str, ToolCall | None]:
    """The model's answer to a successful request: text, or a call of one of the session's tools (with
    some text, half the time)."""
    rand = rng.random
    tools = sess.tools
    if tools and rand() < 0.4:
        tool = tools[int(rand() * len(tools))]
        args = TOOL_ARGS[tool["name"]]
        call_id = CALL_ID_PREFIX[sess.api_type] + f"{rng.getrandbits(96):024x}"
        tool_call = (call_id, tool["name"], dict(args[int(rand() * len(args))]))
        out_text = texts.text(int(texts.lognorm(4.5, 0.6))) if rand() < 0.5 else ""
        return out_text, tool_call
    return texts.text(int(texts.lognorm(5.5, 0.9)) + 10), None


def _usage(
    sess: Session,
    status: int,
    info: dict[str, Any],
    history: list[tuple[str, str]],
    user_text: str,
    out_text: str,
    tool_call: ToolCall | None,
    rng: random.Random,
    texts: TextSource,
) -> dict[str, int]:
    """Tokens from the text's length (about four characters a token), cached prompt tokens on later
    turns, reasoning tokens for reasoning models; a failed request mostly counts nothing."""
    rand = rng.random
    history_chars = sum([len(t) for _, t in history])
    system, tools = sess.system, sess.tools
    input_tokens = (len(system) + len(user_text) + history_chars + 180 * len(tools)) // 4 + 8
    cached_tokens = 0
    if sess.turn > 0 and status == 200 and rand() < 0.7:
        cached_tokens = min(input_tokens, (len(system) + history_chars) // 256 * 64)
    reasoning_tokens = int(texts.lognorm(6.0, 1.0)) if info["reasoning"] and status == 200 else 0
    output_tokens = (len(out_text) // 4 + (40 if tool_call else 1)) + reasoning_tokens if status == 200 else 0
    if status != 200:
        input_tokens = input_tokens if status in (500, 529, 503) and rand() < 0.3 else 0
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_tokens": cached_tokens,
        "reasoning_tokens": reasoning_tokens,
    }


def _headers(
    sess: Session, status: int, duration: int, ts: datetime, rng: random.Random
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request headers (the session's client's) and the provider's response headers."""
    rand, getrandbits = rng.random, rng.getrandbits
    req_id = f"{getrandbits(96):024x}"
    req_headers: dict[str, Any] = sess.req_headers.copy()
    if status == 429 and "x-stainless-retry-count" in req_headers:
        req_headers["x-stainless-retry-count"] = str(int(rand() * 3))
    resp_headers: dict[str, Any] = {
        "content-type": "text/event-stream" if sess.stream and status == 200 else "application/json",
        "date": _http_date(ts),
    }
    if sess.api_type == "ant_messages":
        resp_headers["request-id"] = "req_" + req_id
        resp_headers["anthropic-ratelimit-requests-remaining"] = str(getrandbits(12))
        resp_headers["anthropic-ratelimit-tokens-remaining"] = str(getrandbits(18))
        resp_headers["anthropic-organization-id"] = ANTHROPIC_ORG
    elif sess.api_type == "gemini_generate":
        resp_headers["x-goog-request-id"] = req_id
        resp_headers["server-timing"] = f"gfet4t7; dur={duration}"
        resp_headers["vary"] = "Origin, X-Origin, Referer"
    else:
        resp_headers["x-request-id"] = "req_" + req_id
        resp_headers["openai-processing-ms"] = str(max(1, duration - 40))
        resp_headers["openai-version"] = "2020-10-01"
        resp_headers["x-ratelimit-remaining-requests"] = str(getrandbits(13))
        resp_headers["x-ratelimit-remaining-tokens"] = str(getrandbits(21))
        resp_headers["cf-ray"] = f"{getrandbits(64):016x}-SJC"
    if status == 429:
        resp_headers["retry-after"] = str(1 + int(rand() * 30))
    return req_headers, resp_headers


def _add_raw_bodies(capture: dict[str, Any], status: int, rng: random.Random, texts: TextSource) -> None:
    """A raw binary request body (image, audio, PDF) and, for some audio, a raw binary answer."""
    rand = rng.random
    mime, magic = BINARY_KINDS[int(rand() * len(BINARY_KINDS))]
    capture["request"]["raw_body"] = magic + rng.randbytes(int(texts.lognorm(8.0, 0.6)) + 256)
    capture["request"]["raw_content_type"] = mime
    if mime == "audio/wav" and status == 200 and rand() < 0.5:
        capture["response"]["raw_body"] = b"ID3\x04\x00\x00\x00\x00" + rng.randbytes(int(texts.lognorm(8.0, 0.5)))
        capture["response"]["raw_content_type"] = "audio/mpeg"


def _remember(sess: Session, status: int, user_text: str, out_text: str) -> None:
    """The conversation goes on: a successful turn joins the history (short, and only the last few)."""
    if status != 200:
        return
    if user_text:
        sess.history.append(("user", user_text[:300]))
    if out_text:
        sess.history.append(("assistant", out_text[:300]))
    if len(sess.history) > 8:
        del sess.history[:-4]


_DAY_CACHE: dict[int, str] = {}


def _http_date(ts: datetime) -> str:
    day = _DAY_CACHE.get(ordinal := ts.toordinal())
    if day is None:
        day = _DAY_CACHE[ordinal] = ts.strftime("%a, %d %b %Y")
    return f"{day} {ts.hour:02}:{ts.minute:02}:{ts.second:02} GMT"


def _add_credentials(req: dict[str, Any], resp: dict[str, Any], api: str, rng: random.Random) -> None:
    """Credential headers as a gateway that does not strip them captures them (about 10% of records)."""
    rand = rng.random

    def name(canonical: str) -> str:
        cases = CREDENTIAL_CASES[canonical]
        return cases[int(rand() * len(cases))]

    if api == "ant_messages":
        req[name("x-api-key")] = "sk-ant-api03-" + rand_id(rng, 86) + "-" + rand_id(rng, 8) + "AA"
    elif api == "gemini_generate" or rand() < 0.15:
        req[name("api-key")] = rand_id(rng, 32)
    else:
        req[name("authorization")] = "Bearer sk-proj-" + rand_id(rng, 48)
    if rand() < 0.35:
        ga = f"GA1.1.{rng.getrandbits(30)}.{rng.getrandbits(30)}"
        req[name("cookie")] = f"_ga={ga}; session={rand_id(rng, 40)}"
    if rand() < 0.1:
        req[name("proxy-authorization")] = "Basic " + rand_id(rng, 28) + "=="
    if rand() < 0.45:
        resp[name("set-cookie")] = (
            f"__cf_bm={rand_id(rng, 43)}-{rng.getrandbits(31)}-1.0.1.1-{rand_id(rng, 60)}; path=/; "
            "expires=Thu, 01-Jan-2026 00:30:00 GMT; domain=.api.example.com; HttpOnly; Secure; SameSite=None"
        )
