"""Synthetic LLM gateway capture records, for ``capture-export seed`` and the benchmarks.

The records follow the capture record schema v2 (see ``store/records.py``) and look like what a gateway
in front of OpenAI, Anthropic and Gemini captures: requests grouped into sessions per identity, the
provider-specific request and response bodies, tool calls, token usage and an estimated cost consistent
with the model's price, mostly successful but some rate-limited or failed requests, and:

* about 10% of records carry credential headers (``authorization``, ``x-api-key``, ``api-key``,
  ``cookie``, ``proxy-authorization`` in the request, ``set-cookie`` in the response) with varying
  capitalisation, so tests can prove they are stripped; the other records contain none of the marker
  strings at all;
* about 3% carry a raw binary request body (a fake PNG, JPEG, WAV or PDF of a few KB), and some of those
  a raw binary response body too;
* about 5% have no ``estimated_cost`` (cost unknown).

Text is drawn from a fixed pool of sentences built from an English-ish vocabulary, so the encoded records
compress like real traffic (zstd level 3: about 5x) and average about 3.5 KB of CBOR each. Generation is
deterministic for a given ``seed`` and ``start``; the sentence pool is built once per process.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from math import exp
from typing import Any, Protocol

import cbor2

from .store.records import SCHEMA_VERSION, encode_body, timestamp_micros

__all__ = ["MODELS", "SeedTarget", "generate_records", "seed_store"]


class SeedTarget(Protocol):
    def append_encoded(self, rows: list[tuple[int, bytes]], *, sealed: bool = False) -> int: ...


# --------------------------------------------------------------------------------------------------
# Models: name -> (api types with weights, provider, USD per million tokens: input, cached input,
# output), the model id the provider echoes back, whether it reasons, and its speed (ms per output token).

MODELS: dict[str, dict[str, Any]] = {
    "gpt-4o": {
        "weight": 14, "api": (("oai_completions", 4), ("oai_responses", 1)), "price": (2.50, 1.25, 10.00),
        "served": "gpt-4o-2024-08-06", "reasoning": False, "ms_per_token": 12,
    },
    "gpt-4o-mini": {
        "weight": 16, "api": (("oai_completions", 5), ("oai_responses", 1)), "price": (0.15, 0.075, 0.60),
        "served": "gpt-4o-mini-2024-07-18", "reasoning": False, "ms_per_token": 8,
    },
    "gpt-4.1": {
        "weight": 6, "api": (("oai_completions", 2), ("oai_responses", 1)), "price": (2.00, 0.50, 8.00),
        "served": "gpt-4.1-2025-04-14", "reasoning": False, "ms_per_token": 11,
    },
    "gpt-4.1-mini": {
        "weight": 5, "api": (("oai_completions", 2), ("oai_responses", 1)), "price": (0.40, 0.10, 1.60),
        "served": "gpt-4.1-mini-2025-04-14", "reasoning": False, "ms_per_token": 7,
    },
    "o3": {
        "weight": 5, "api": (("oai_responses", 3), ("oai_completions", 1)), "price": (2.00, 0.50, 8.00),
        "served": "o3-2025-04-16", "reasoning": True, "ms_per_token": 14,
    },
    "o4-mini": {
        "weight": 4, "api": (("oai_responses", 2), ("oai_completions", 1)), "price": (1.10, 0.275, 4.40),
        "served": "o4-mini-2025-04-16", "reasoning": True, "ms_per_token": 9,
    },
    "gpt-5": {
        "weight": 6, "api": (("oai_responses", 3), ("oai_completions", 1)), "price": (1.25, 0.125, 10.00),
        "served": "gpt-5-2025-08-07", "reasoning": True, "ms_per_token": 13,
    },
    "claude-sonnet-4-5": {
        "weight": 18, "api": (("ant_messages", 1),), "price": (3.00, 0.30, 15.00),
        "served": "claude-sonnet-4-5-20250929", "reasoning": False, "ms_per_token": 14,
    },
    "claude-haiku-4-5": {
        "weight": 9, "api": (("ant_messages", 1),), "price": (1.00, 0.10, 5.00),
        "served": "claude-haiku-4-5-20251001", "reasoning": False, "ms_per_token": 6,
    },
    "claude-opus-4-1": {
        "weight": 3, "api": (("ant_messages", 1),), "price": (15.00, 1.50, 75.00),
        "served": "claude-opus-4-1-20250805", "reasoning": False, "ms_per_token": 25,
    },
    "gemini-2.5-pro": {
        "weight": 7, "api": (("gemini_generate", 1),), "price": (1.25, 0.31, 10.00),
        "served": "gemini-2.5-pro", "reasoning": True, "ms_per_token": 10,
    },
    "gemini-2.5-flash": {
        "weight": 7, "api": (("gemini_generate", 1),), "price": (0.30, 0.075, 2.50),
        "served": "gemini-2.5-flash", "reasoning": True, "ms_per_token": 5,
    },
}  # fmt: skip


def _words(text: str) -> list[str]:
    return text.split()


# --------------------------------------------------------------------------------------------------
# Text. The vocabulary deliberately contains none of the credential marker strings ("authorization",
# "api-key", "cookie"), so records without credential headers never trip the exporter's slow path.

_VOCAB = _words(
    """
the of and to a in is that for it as with on be this by are you or from at not can we your an have will
if more which all was do but has use when so one their they what these also other how each new data code
function should need file some any time make than like only into then its them may our would there used
value first using example user list set test error case type class call return first output input model
request response system service server client message string number result object field method change
update create read write run build check value line start end state name key table query index cache log
event version support service node cluster config option default path directory module package import
function variable parameter argument loop condition branch commit review merge issue bug fix feature
release deploy container image pod network storage bucket record batch export store retry timeout limit
rate window token prompt completion context answer question summary report document section paragraph
analysis plan step task goal problem solution approach detail reason because however therefore although
while before after during between under over through without within across around against among toward
please could would might must shall here where why who whom whose because quite very just still even
well good better best simple clear quick small large long short high low main important possible
different similar specific general common current previous next last same own real true false open close
private public local remote static dynamic async sync parallel serial internal external initial final
total customer account invoice payment order product price discount shipping address email phone contact
team project meeting schedule calendar week month year today tomorrow morning evening note draft comment
idea describe explain compare translate rewrite improve refactor optimize validate parse format convert
generate extract classify summarize list show find search filter sort group count measure estimate
python rust golang typescript javascript kubernetes docker postgres sqlite redis kafka terraform helm
api endpoint schema payload header body json yaml csv parquet s3 http grpc tcp dns tls ssh git linux
thread process memory disk cpu latency throughput bandwidth queue worker scheduler controller operator
policy rule permission role group tenant region zone replica shard partition snapshot backup restore
"""
)

_CONNECTORS = ["and", "but", "so", "because", "while", "which", "although", "then", "or"]
_ENDS = [".", ".", ".", ".", ".", ".", "?", "!", ":", "."]

_IDENTS = _words(
    """
items records batch cursor client store bucket result payload config options retries timeout limit
offset total count index value key name path prefix start end window user session request response
"""
)
_FUNCS = _words(
    """
load_config parse_records fetch_batch write_object compute_total validate_spec retry_with_backoff
encode_body decode_sequence export_once read_cursor build_key purge_expired list_objects upload_part
"""
)


def _build_pools() -> _Pools:
    rng = random.Random(0x5EED)
    vocab = _VOCAB
    # A Zipf-ish word stream: each word repeated in proportion to its weight, then drawn uniformly.
    population = [w for rank, w in enumerate(vocab) for _ in range(max(1, int(400 / (rank + 2.7) ** 1.07)))]
    stream = rng.choices(population, k=_POOL_WORDS)
    sentences: list[str] = []
    pos = 0
    randint, random_ = rng.randint, rng.random
    while pos < len(stream) - 40:
        length = randint(5, 24)
        words = stream[pos : pos + length]
        pos += length
        if length > 10 and random_() < 0.45:
            cut = randint(3, length - 3)
            words[cut - 1] += ","
            if random_() < 0.5:
                words.insert(cut, _CONNECTORS[randint(0, len(_CONNECTORS) - 1)])
        text = " ".join(words)
        text = text[0].upper() + text[1:] + _ENDS[randint(0, len(_ENDS) - 1)]
        if random_() < 0.08:
            text += "\n\n"
        elif random_() < 0.03:
            text = "- " + text + "\n"
        sentences.append(text)
    avg = sum(len(s) + 1 for s in sentences) // len(sentences)
    normals = [rng.gauss(0.0, 1.0) for _ in range(1 << _NORMAL_BITS)]

    code_lines: list[str] = []
    for _ in range(20_000):
        f = _FUNCS[randint(0, len(_FUNCS) - 1)]
        a = _IDENTS[randint(0, len(_IDENTS) - 1)]
        b = _IDENTS[randint(0, len(_IDENTS) - 1)]
        indent = "    " * randint(0, 3)
        kind = randint(0, 7)
        if kind == 0:
            line = f"def {f}({a}, {b}=None):"
        elif kind == 1:
            line = f"{indent}for {a[:-1] or a} in {b}:"
        elif kind == 2:
            line = f"{indent}if {a} is None or len({b}) > {randint(1, 10_000)}:"
        elif kind == 3:
            line = f"{indent}return {f}({a}, {b})"
        elif kind == 4:
            line = f'{indent}log.info("{f} %s", {a})'
        else:
            line = f"{indent}{a} = {f}({b}, limit={randint(1, 5000)})"
        code_lines.append(line)

    # System prompts: a few dozen per deployment, reused across sessions (so they compress).
    system_prompts = []
    for _ in range(48):
        size = int(rng.lognormvariate(5.6, 0.7))
        k = max(2, size // avg)
        system_prompts.append(
            "You are a helpful assistant for the platform team. " + " ".join(rng.choices(sentences, k=k))
        )
    return sentences, avg, code_lines, system_prompts, normals


_Pools = tuple[list[str], int, list[str], list[str], list[float]]
_POOLS: _Pools | None = None
_POOL_WORDS = 800_000
_NORMAL_BITS = 13
_IDENTITIES = 160
_MAX_STRIDE = 61


def _pools() -> _Pools:
    global _POOLS
    if _POOLS is None:
        _POOLS = _build_pools()
    return _POOLS


# --------------------------------------------------------------------------------------------------
# Tools, identities, clients.

_TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_weather",
        "description": "Get the current weather for a city. Returns temperature in Celsius and conditions.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Toronto"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
    {
        "name": "search_docs",
        "description": "Search the internal documentation and return the most relevant passages.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "Search terms"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50},
            },
            "required": ["query"],
        },
    },
    {
        "name": "run_sql",
        "description": "Run a read-only SQL query against the analytics warehouse and return rows as JSON.",
        "parameters": {
            "type": "object",
            "properties": {"sql": {"type": "string"}, "timeout_s": {"type": "number"}},
            "required": ["sql"],
        },
    },
    {
        "name": "read_file",
        "description": "Read a file from the repository checkout. Paths are relative to the repository root.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "start_line": {"type": "integer"},
                "end_line": {"type": "integer"},
            },
            "required": ["path"],
        },
    },
    {
        "name": "create_ticket",
        "description": "Open a ticket in the issue tracker with a title, a body and optional labels.",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "body": {"type": "string"},
                "labels": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["title", "body"],
        },
    },
    {
        "name": "kubectl_get",
        "description": "List Kubernetes resources of a kind in a namespace, as kubectl get would.",
        "parameters": {
            "type": "object",
            "properties": {"kind": {"type": "string"}, "namespace": {"type": "string"}},
            "required": ["kind"],
        },
    },
]

_TOOL_ARGS: dict[str, list[dict[str, Any]]] = {
    "get_weather": [{"city": c, "unit": "celsius"} for c in ("Toronto", "Berlin", "Osaka", "Lisbon")],
    "search_docs": [{"query": q, "limit": 5} for q in ("retention policy", "export cursor", "rate limits")],
    "run_sql": [{"sql": "SELECT model, count(*) FROM captures GROUP BY model ORDER BY 2 DESC LIMIT 20"}],
    "read_file": [{"path": p, "start_line": 1, "end_line": 120} for p in ("src/main.py", "values.yaml")],
    "create_ticket": [{"title": "Export lag above threshold", "body": "Backlog grew.", "labels": ["ops"]}],
    "kubectl_get": [{"kind": k, "namespace": "gateway"} for k in ("pods", "s3exporters", "events")],
}

_FIRST = _words(
    """
alice bob carol dave erin frank grace heidi ivan judy mallory nia oscar peggy quentin rupert sybil trent
uma victor wendy xavier yara zoe amir bea chen dario elif farah goran hana
"""
)
_LAST = _words(
    """
smith jones garcia kim patel nguyen muller rossi silva tanaka novak berg cohen diaz okafor
"""
)
_DOMAINS = ["example.com", "corp.example.com", "example.org", "github"]
_TAGS = ["tag:prod", "tag:staging", "tag:dev", "tag:ci", "tag:ml", "tag:agents", "tag:batch", "tag:gateway"]
_ALNUM = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

_CLIENTS = {
    "oai": [
        ("OpenAI/Python 1.109.1", "python", "1.109.1"),
        ("OpenAI/Python 1.99.9", "python", "1.99.9"),
        ("OpenAI/JS 5.23.1", "js", "5.23.1"),
        ("langchain-openai/0.3.33", "python", "1.108.0"),
        ("curl/8.5.0", "", ""),
    ],
    "ant": [
        ("Anthropic/Python 0.69.0", "python", "0.69.0"),
        ("Anthropic/JS 0.65.0", "js", "0.65.0"),
        ("claude-cli/2.0.14 (external, cli)", "js", "0.60.0"),
        ("curl/8.5.0", "", ""),
    ],
    "gem": [
        ("google-genai-sdk/1.38.0 gl-python/3.12.3", "python", "1.38.0"),
        ("google-genai-sdk/1.20.0 gl-node/v22.11.0", "js", "1.20.0"),
        ("curl/8.5.0", "", ""),
    ],
}

_CRED_CASES = {
    "authorization": ("authorization", "Authorization", "AUTHORIZATION", "authorization"),
    "x-api-key": ("x-api-key", "X-Api-Key", "X-API-KEY", "x-api-key"),
    "api-key": ("api-key", "Api-Key", "API-KEY"),
    "cookie": ("cookie", "Cookie", "COOKIE"),
    "set-cookie": ("set-cookie", "Set-Cookie", "SET-COOKIE"),
    "proxy-authorization": ("proxy-authorization", "Proxy-Authorization", "PROXY-AUTHORIZATION"),
}

_ANT_ORG = "2f9c6a1e-8a4b-4a51-9d6e-0c7b1f0e3a55"
_FAMILY = {"oai_completions": "oai", "oai_responses": "oai", "ant_messages": "ant", "gemini_generate": "gem"}
_CALL_PREFIX = {
    "oai_completions": "call_",
    "oai_responses": "call_",
    "ant_messages": "toolu_",
    "gemini_generate": "",
}

_ERRORS = {
    400: ("invalid_request_error", "The request was malformed: messages must alternate user and assistant."),
    401: ("authentication_error", "Invalid credentials were supplied for this request."),
    429: ("rate_limit_error", "Rate limit reached for requests per minute. Please retry after a short wait."),
    500: ("api_error", "The server had an error while processing your request. Sorry about that!"),
    529: ("overloaded_error", "The service is temporarily overloaded. Please try again later."),
}

_BINARY_KINDS = (
    ("image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ("image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"),
    ("audio/wav", b"RIFF\x00\x00\x00\x00WAVEfmt "),
    ("application/pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
)


def _rand_id(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(_ALNUM, k=n))


def _make_identities(rng: random.Random, count: int) -> list[tuple[str, str, tuple[str, ...]]]:
    identities = []
    for i in range(count):
        node_id = "n" + _rand_id(rng, 10) + "CNTRL"
        if rng.random() < 0.3:
            tags = tuple(sorted(set(rng.sample(_TAGS, rng.randint(1, 3)))))
            identities.append(("tagged-devices", node_id, tags))
        else:
            first, last = _FIRST[i % len(_FIRST)], rng.choice(_LAST)
            domain = rng.choice(_DOMAINS)
            login = f"{first}.{last}@{domain}"
            if domain == "github":
                login = f"{first}{i // len(_FIRST) or ''}@github"
            tags = ("tag:prod",) if rng.random() < 0.15 else ()
            identities.append((login, node_id, tags))
    return identities


def _uuid(bits: int) -> str:
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


class _Session:
    __slots__ = (
        "api_type",
        "client",
        "history",
        "identity",
        "model",
        "pending_tool",
        "remaining",
        "req_headers",
        "session_id",
        "stream",
        "system",
        "tools",
        "turn",
    )

    identity: tuple[str, str, tuple[str, ...]]
    model: str
    api_type: str
    session_id: str
    system: str
    tools: list[dict[str, Any]]
    history: list[tuple[str, str]]
    remaining: int
    turn: int
    client: tuple[str, str, str]
    stream: bool
    pending_tool: tuple[str, str, dict[str, Any]] | None
    req_headers: dict[str, str]


def _request_headers(sess: _Session, rng: random.Random) -> dict[str, str]:
    """The request headers a session's client sends every time (copied per record)."""
    ua, lang, pkg = sess.client
    headers = {"content-type": "application/json", "accept": "application/json", "user-agent": ua}
    if lang:
        headers["x-stainless-lang"] = lang
        headers["x-stainless-package-version"] = pkg
        headers["x-stainless-retry-count"] = "0"
    if sess.api_type == "ant_messages":
        headers["anthropic-version"] = "2023-06-01"
        if sess.tools:
            headers["anthropic-beta"] = "fine-grained-tool-streaming-2025-05-14"
    node_id = sess.identity[1]
    headers["x-forwarded-for"] = (
        f"100.{64 + (ord(node_id[1]) & 63)}.{rng.getrandbits(8)}.{rng.getrandbits(8)}"
    )
    headers["x-tailscale-node"] = node_id
    return headers


# --------------------------------------------------------------------------------------------------


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

    sentences, avg_sentence, code_lines, system_prompts, normals = _pools()
    rng = random.Random(seed)
    rand = rng.random
    randint = rng.randint
    choices = rng.choices
    getrandbits = rng.getrandbits
    n_sent = len(sentences)
    n_code = len(code_lines)
    max_k = (n_sent - 1) // _MAX_STRIDE

    def lognorm(mu: float, sigma: float) -> float:
        return exp(mu + sigma * normals[getrandbits(_NORMAL_BITS)])

    def text(nbytes: int) -> str:
        # A strided slice of the sentence pool: two random draws, however long the text.
        k = min(max_k, nbytes // avg_sentence + 1)
        stride = 1 + int(rand() * _MAX_STRIDE)
        first = int(rand() * (n_sent - k * stride))
        return " ".join(sentences[first : first + k * stride : stride])

    def prompt(nbytes: int) -> str:
        body = text(nbytes)
        if rand() < 0.2:
            k = randint(4, 40)
            first = int(rand() * (n_code - k * 7))
            code = "\n".join(code_lines[first : first + k * 7 : 7])
            return f"{body}\n\n```python\n{code}\n```\n\n{sentences[int(rand() * n_sent)]}"
        return body

    identities = _make_identities(rng, _IDENTITIES)
    # Heavier users: a Zipf-ish weighting over identities.
    id_weights = [1.0 / (i + 1) ** 0.9 for i in range(len(identities))]
    model_names = list(MODELS)
    model_weights = [MODELS[m]["weight"] for m in model_names]

    def new_session() -> _Session:
        s = _Session()
        s.identity = choices(identities, weights=id_weights)[0]
        s.model = choices(model_names, weights=model_weights)[0]
        apis = MODELS[s.model]["api"]
        s.api_type = choices([a for a, _ in apis], weights=[w for _, w in apis])[0]
        s.session_id = _uuid(getrandbits(128))
        s.system = system_prompts[int(rand() * len(system_prompts))] if rand() < 0.85 else ""
        s.tools = rng.sample(_TOOLS, randint(1, 4)) if rand() < 0.3 else []
        s.history = []
        s.remaining = min(40, int(lognorm(1.4, 0.9)) + 1)
        s.turn = 0
        s.client = rng.choice(_CLIENTS[_FAMILY[s.api_type]])
        s.stream = rand() < 0.4
        s.pending_tool = None
        s.req_headers = _request_headers(s, rng)
        return s

    active = [new_session() for _ in range(12)]
    n_active = len(active)

    for i in range(count):
        slot = int(rand() * n_active)
        sess = active[slot]
        sess.remaining -= 1
        if sess.remaining <= 0:
            active[slot] = new_session()
        ts = begin + timedelta(microseconds=int((i + rand()) * step_us))
        yield _record(sess, ts, rng, lognorm, text, prompt)
        sess.turn += 1


def _record(
    sess: _Session,
    ts: datetime,
    rng: random.Random,
    lognorm: Callable[[float, float], float],
    text: Callable[[int], str],
    prompt: Callable[[int], str],
) -> dict[str, Any]:
    rand = rng.random
    getrandbits = rng.getrandbits
    model = sess.model
    info = MODELS[model]
    api = sess.api_type

    # Status: mostly 200.
    r = rand()
    if r < 0.93:
        status = 200
    elif r < 0.96:
        status = 429
    elif r < 0.975:
        status = 400
    elif r < 0.98:
        status = 401
    elif r < 0.99:
        status = 500
    else:
        status = 529 if api == "ant_messages" else 503

    # The user's turn: either a new prompt or the result of the tool the model called last time.
    tool_result = sess.pending_tool
    sess.pending_tool = None
    user_text = text(int(lognorm(5.5, 0.9)) + 40) if tool_result else prompt(int(lognorm(5.1, 1.25)) + 20)
    history = sess.history[-2:]
    if history and history[0][0] == "assistant":
        del history[0]
    system = sess.system
    tools = sess.tools

    # The response.
    tool_call: tuple[str, str, dict[str, Any]] | None = None
    out_text = ""
    if status == 200:
        if tools and rand() < 0.4:
            tool = tools[int(rand() * len(tools))]
            args = _TOOL_ARGS[tool["name"]]
            call_id = _CALL_PREFIX[api] + f"{getrandbits(96):024x}"
            tool_call = (call_id, tool["name"], dict(args[int(rand() * len(args))]))
            if rand() < 0.5:
                out_text = text(int(lognorm(4.5, 0.6)))
        else:
            out_text = text(int(lognorm(5.5, 0.9)) + 10)

    # Usage, cost, duration.
    history_chars = sum([len(t) for _, t in history])
    input_tokens = (len(system) + len(user_text) + history_chars + 180 * len(tools)) // 4 + 8
    cached_tokens = 0
    if sess.turn > 0 and status == 200 and rand() < 0.7:
        cached_tokens = min(input_tokens, (len(system) + history_chars) // 256 * 64)
    reasoning_tokens = int(lognorm(6.0, 1.0)) if info["reasoning"] and status == 200 else 0
    output_tokens = (len(out_text) // 4 + (40 if tool_call else 1)) + reasoning_tokens if status == 200 else 0
    if status != 200:
        input_tokens = input_tokens if status in (500, 529, 503) and rand() < 0.3 else 0
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_tokens": cached_tokens,
        "reasoning_tokens": reasoning_tokens,
    }
    price_in, price_cached, price_out = info["price"]
    cost_in = round(((input_tokens - cached_tokens) * price_in + cached_tokens * price_cached) / 1e6, 8)
    cost_out = round(output_tokens * price_out / 1e6, 8)
    if status == 200:
        duration = int(lognorm(6.3, 0.5)) + output_tokens * info["ms_per_token"] // (3 if sess.stream else 1)
    else:
        duration = int(lognorm(4.5, 1.0)) + 5

    # Bodies.
    request_body, response_body, path = _bodies(
        sess, api, info, model, system, history, user_text, tool_result, tools, status, out_text, tool_call,
        usage, ts, rng,
    )  # fmt: skip

    # Headers.
    req_id = f"{getrandbits(96):024x}"
    req_headers: dict[str, Any] = sess.req_headers.copy()
    if status == 429 and "x-stainless-retry-count" in req_headers:
        req_headers["x-stainless-retry-count"] = str(int(rand() * 3))
    resp_headers: dict[str, Any] = {
        "content-type": "text/event-stream" if sess.stream and status == 200 else "application/json",
        "date": _http_date(ts),
    }
    if api == "ant_messages":
        resp_headers["request-id"] = "req_" + req_id
        resp_headers["anthropic-ratelimit-requests-remaining"] = str(getrandbits(12))
        resp_headers["anthropic-ratelimit-tokens-remaining"] = str(getrandbits(18))
        resp_headers["anthropic-organization-id"] = _ANT_ORG
    elif api == "gemini_generate":
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

    if rand() < 0.1:
        _add_credentials(req_headers, resp_headers, api, rng)

    capture: dict[str, Any] = {
        "request": {"headers": req_headers, "body": request_body},
        "response": {"headers": resp_headers, "body": response_body},
    }
    if tool_call is not None:
        call_id, name, tool_input = tool_call
        capture["tool_use"] = [{"id": call_id, "name": name, "input": tool_input}]
        sess.pending_tool = tool_call
    if rand() < 0.03:
        mime, magic = _BINARY_KINDS[int(rand() * len(_BINARY_KINDS))]
        capture["request"]["raw_body"] = magic + rng.randbytes(int(lognorm(8.0, 0.6)) + 256)
        capture["request"]["raw_content_type"] = mime
        if mime == "audio/wav" and status == 200 and rand() < 0.5:
            capture["response"]["raw_body"] = b"ID3\x04\x00\x00\x00\x00" + rng.randbytes(
                int(lognorm(8.0, 0.5))
            )
            capture["response"]["raw_content_type"] = "audio/mpeg"

    # The conversation goes on.
    if status == 200:
        if user_text:
            sess.history.append(("user", user_text[:300]))
        if out_text:
            sess.history.append(("assistant", out_text[:300]))
        if len(sess.history) > 8:
            del sess.history[:-4]

    login, node_id, tags = sess.identity
    record: dict[str, Any] = {
        "ver": SCHEMA_VERSION,
        "timestamp": ts,
        "identity": {"login_name": login, "node_id": node_id, "tags": list(tags)},
        "model": model,
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
    record["capture_id"] = _uuid(getrandbits(128))
    record["session_id"] = sess.session_id
    record["path"] = path
    record["status_code"] = status
    record["capture"] = capture
    return record


_DAY_CACHE: dict[int, str] = {}


def _http_date(ts: datetime) -> str:
    day = _DAY_CACHE.get(ordinal := ts.toordinal())
    if day is None:
        day = _DAY_CACHE[ordinal] = ts.strftime("%a, %d %b %Y")
    return f"{day} {ts.hour:02}:{ts.minute:02}:{ts.second:02} GMT"


def _add_credentials(req: dict[str, Any], resp: dict[str, Any], api: str, rng: random.Random) -> None:
    rand = rng.random

    def name(canonical: str) -> str:
        cases = _CRED_CASES[canonical]
        return cases[int(rand() * len(cases))]

    if api == "ant_messages":
        req[name("x-api-key")] = "sk-ant-api03-" + _rand_id(rng, 86) + "-" + _rand_id(rng, 8) + "AA"
    elif api == "gemini_generate" or rand() < 0.15:
        req[name("api-key")] = _rand_id(rng, 32)
    else:
        req[name("authorization")] = "Bearer sk-proj-" + _rand_id(rng, 48)
    if rand() < 0.35:
        ga = f"GA1.1.{rng.getrandbits(30)}.{rng.getrandbits(30)}"
        req[name("cookie")] = f"_ga={ga}; session={_rand_id(rng, 40)}"
    if rand() < 0.1:
        req[name("proxy-authorization")] = "Basic " + _rand_id(rng, 28) + "=="
    if rand() < 0.45:
        resp[name("set-cookie")] = (
            f"__cf_bm={_rand_id(rng, 43)}-{rng.getrandbits(31)}-1.0.1.1-{_rand_id(rng, 60)}; path=/; "
            "expires=Thu, 01-Jan-2026 00:30:00 GMT; domain=.api.example.com; HttpOnly; Secure; SameSite=None"
        )


def _bodies(
    sess: _Session,
    api: str,
    info: dict[str, Any],
    model: str,
    system: str,
    history: list[tuple[str, str]],
    user_text: str,
    tool_result: tuple[str, str, dict[str, Any]] | None,
    tools: list[dict[str, Any]],
    status: int,
    out_text: str,
    tool_call: tuple[str, str, dict[str, Any]] | None,
    usage: dict[str, int],
    ts: datetime,
    rng: random.Random,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    served = info["served"]
    created = int(ts.timestamp())
    in_tok, out_tok = usage["input_tokens"], usage["output_tokens"]
    cached, reasoning = usage["cached_tokens"], usage["reasoning_tokens"]
    rid = f"{rng.getrandbits(96):024x}"
    request: dict[str, Any]
    response: dict[str, Any]

    if api == "ant_messages":
        messages: list[dict[str, Any]] = [{"role": role, "content": t} for role, t in history]
        if tool_result is not None:
            call_id, name, args = tool_result
            messages.append(
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": call_id, "name": name, "input": dict(args)}],
                }
            )
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call_id, "content": user_text}],
                }
            )
        else:
            messages.append({"role": "user", "content": user_text})
        request = {"model": model, "max_tokens": 8192 if sess.stream else 4096}
        if system:
            request["system"] = system
        request["messages"] = messages
        if tools:
            request["tools"] = [
                {"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
                for t in tools
            ]
        if sess.stream:
            request["stream"] = True
        if status != 200:
            kind, msg = _ERRORS.get(status, _ERRORS[500])
            response = {"type": "error", "error": {"type": kind, "message": msg}, "request_id": "req_" + rid}
        else:
            content: list[dict[str, Any]] = []
            if out_text:
                content.append({"type": "text", "text": out_text})
            if tool_call is not None:
                content.append(
                    {
                        "type": "tool_use",
                        "id": tool_call[0],
                        "name": tool_call[1],
                        "input": dict(tool_call[2]),
                    }
                )
            response = {
                "id": "msg_01" + rid,
                "type": "message",
                "role": "assistant",
                "model": served,
                "content": content,
                "stop_reason": "tool_use" if tool_call else "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": in_tok - cached,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": cached,
                    "output_tokens": out_tok,
                    "service_tier": "standard",
                },
            }
        return request, response, "/v1/messages"

    if api == "gemini_generate":
        contents: list[dict[str, Any]] = [
            {"role": "model" if role == "assistant" else "user", "parts": [{"text": t}]}
            for role, t in history
        ]
        if tool_result is not None:
            _, name, args = tool_result
            contents.append(
                {"role": "model", "parts": [{"functionCall": {"name": name, "args": dict(args)}}]}
            )
            contents.append(
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": name, "response": {"content": user_text}}}],
                }
            )
        else:
            contents.append({"role": "user", "parts": [{"text": user_text}]})
        request = {"contents": contents}
        if system:
            request["systemInstruction"] = {"parts": [{"text": system}]}
        if tools:
            request["tools"] = [{"functionDeclarations": [dict(t) for t in tools]}]
        request["generationConfig"] = {"temperature": 0.7, "maxOutputTokens": 8192}
        verb = "streamGenerateContent" if sess.stream else "generateContent"
        path = f"/v1beta/models/{model}:{verb}"
        if status != 200:
            kind, msg = _ERRORS.get(status, _ERRORS[500])
            gstatus = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED"}
            response = {"error": {"code": status, "message": msg, "status": gstatus.get(status, "INTERNAL")}}
        else:
            parts: list[dict[str, Any]] = []
            if out_text:
                parts.append({"text": out_text})
            if tool_call is not None:
                parts.append({"functionCall": {"name": tool_call[1], "args": dict(tool_call[2])}})
            response = {
                "candidates": [
                    {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
                ],
                "usageMetadata": {
                    "promptTokenCount": in_tok,
                    "candidatesTokenCount": out_tok - reasoning,
                    "totalTokenCount": in_tok + out_tok,
                    "cachedContentTokenCount": cached,
                    "thoughtsTokenCount": reasoning,
                },
                "modelVersion": served,
                "responseId": rid,
            }
        return request, response, path

    # OpenAI: chat completions or responses.
    if api == "oai_responses":
        items: list[dict[str, Any]] = [{"role": role, "content": t} for role, t in history]
        if tool_result is not None:
            call_id, name, args = tool_result
            items.append(
                {"type": "function_call", "call_id": call_id, "name": name, "arguments": _json(args)}
            )
            items.append({"type": "function_call_output", "call_id": call_id, "output": user_text})
        else:
            items.append({"role": "user", "content": user_text})
        request = {"model": model}
        if system:
            request["instructions"] = system
        request["input"] = items
        if tools:
            request["tools"] = [{"type": "function", **t} for t in tools]
        if info["reasoning"]:
            request["reasoning"] = {"effort": "medium"}
        request["store"] = False
        if sess.stream:
            request["stream"] = True
        if status != 200:
            kind, msg = _ERRORS.get(status, _ERRORS[500])
            response = {"error": {"message": msg, "type": kind, "param": None, "code": None}}
        else:
            output: list[dict[str, Any]] = []
            if reasoning:
                output.append({"id": "rs_" + rid, "type": "reasoning", "summary": []})
            if out_text:
                output.append(
                    {
                        "id": "msg_" + rid,
                        "type": "message",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "annotations": [], "text": out_text}],
                    }
                )
            if tool_call is not None:
                output.append(
                    {
                        "id": "fc_" + rid,
                        "type": "function_call",
                        "status": "completed",
                        "call_id": tool_call[0],
                        "name": tool_call[1],
                        "arguments": _json(tool_call[2]),
                    }
                )
            response = {
                "id": "resp_" + rid,
                "object": "response",
                "created_at": created,
                "status": "completed",
                "model": served,
                "output": output,
                "usage": {
                    "input_tokens": in_tok,
                    "input_tokens_details": {"cached_tokens": cached},
                    "output_tokens": out_tok,
                    "output_tokens_details": {"reasoning_tokens": reasoning},
                    "total_tokens": in_tok + out_tok,
                },
            }
        return request, response, "/v1/responses"

    messages = [{"role": "system", "content": system}] if system else []
    messages.extend({"role": role, "content": t} for role, t in history)
    if tool_result is not None:
        call_id, name, args = tool_result
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": _json(args)}}
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call_id, "content": user_text})
    else:
        messages.append({"role": "user", "content": user_text})
    request = {"model": model, "messages": messages}
    if tools:
        request["tools"] = [{"type": "function", "function": dict(t)} for t in tools]
    if not info["reasoning"]:
        request["temperature"] = 0.2 if tools else 0.7
    if sess.stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    if status != 200:
        kind, msg = _ERRORS.get(status, _ERRORS[500])
        response = {"error": {"message": msg, "type": kind, "param": None, "code": None}}
    else:
        message: dict[str, Any] = {"role": "assistant", "content": out_text or None, "refusal": None}
        if tool_call is not None:
            message["tool_calls"] = [
                {
                    "id": tool_call[0],
                    "type": "function",
                    "function": {"name": tool_call[1], "arguments": _json(tool_call[2])},
                }
            ]
        response = {
            "id": "chatcmpl-" + rid,
            "object": "chat.completion",
            "created": created,
            "model": served,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if tool_call else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": in_tok,
                "completion_tokens": out_tok,
                "total_tokens": in_tok + out_tok,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            },
            "system_fingerprint": "fp_" + rid[:10],
        }
    return request, response, "/v1/chat/completions"


def _json(args: dict[str, Any]) -> str:
    # Tool-call arguments are a JSON string in the OpenAI formats.
    return json.dumps(args, separators=(",", ":"))


# --------------------------------------------------------------------------------------------------


def _encode_unstripped(record: dict[str, Any]) -> tuple[int, bytes]:
    # Generated records already have their fields in schema order and a UTC timestamp.
    return timestamp_micros(record["timestamp"]), cbor2.dumps(record, timezone=UTC)


def seed_store(
    store: SeedTarget,
    count: int,
    *,
    seed: int = 0,
    batch_size: int = 5000,
    progress: Callable[[int], None] | None = None,
    start: datetime | None = None,
    span: timedelta = timedelta(days=30),
    strip: bool = True,
) -> int:
    """Append ``count`` generated records to ``store`` in batches; return the last id assigned.

    Records are encoded with ``encode_body`` (credentials stripped) and sealed as our own. ``strip=False``
    instead stores them as a gateway that does not strip would, credential headers included (same CBOR
    layout), unsealed: foreign rows, to exercise the exporter's check and stripping. ``progress`` is
    called after each batch with the number of records appended so far. With ``count <= 0`` nothing is
    appended and the store's ``max_id()`` (or 0) is returned. ``start`` and ``span`` are passed to
    `generate_records`.
    """
    encode = encode_body if strip else _encode_unstripped
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    last = 0
    done = 0
    batch: list[tuple[int, bytes]] = []
    for record in generate_records(count, seed=seed, start=start, span=span):
        batch.append(encode(record))
        if len(batch) >= batch_size:
            last = store.append_encoded(batch, sealed=strip)
            done += len(batch)
            batch = []
            if progress is not None:
                progress(done)
    if batch:
        last = store.append_encoded(batch, sealed=strip)
        done += len(batch)
        if progress is not None:
            progress(done)
    if done == 0:
        max_id = getattr(store, "max_id", None)
        return int(max_id()) if callable(max_id) else 0
    return last
