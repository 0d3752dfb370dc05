"""What the synthetic traffic is made of: models and their prices, tools, people, client libraries, the
credential headers a careless gateway captures, error bodies and binary payloads. Data only."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ANTHROPIC_ORG",
    "API_FAMILY",
    "BINARY_KINDS",
    "CALL_ID_PREFIX",
    "CLIENTS",
    "CREDENTIAL_CASES",
    "DOMAINS",
    "ERRORS",
    "FIRST_NAMES",
    "LAST_NAMES",
    "MODELS",
    "TAGS",
    "TOOLS",
    "TOOL_ARGS",
    "words",
]


def words(text: str) -> list[str]:
    return text.split()


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

# Tools a session may offer the model, and the arguments the model calls them with.

TOOLS: list[dict[str, Any]] = [
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

TOOL_ARGS: dict[str, list[dict[str, Any]]] = {
    "get_weather": [{"city": c, "unit": "celsius"} for c in ("Toronto", "Berlin", "Osaka", "Lisbon")],
    "search_docs": [{"query": q, "limit": 5} for q in ("retention policy", "export cursor", "rate limits")],
    "run_sql": [{"sql": "SELECT model, count(*) FROM captures GROUP BY model ORDER BY 2 DESC LIMIT 20"}],
    "read_file": [{"path": p, "start_line": 1, "end_line": 120} for p in ("src/main.py", "values.yaml")],
    "create_ticket": [{"title": "Export lag above threshold", "body": "Backlog grew.", "labels": ["ops"]}],
    "kubectl_get": [{"kind": k, "namespace": "gateway"} for k in ("pods", "s3exporters", "events")],
}

# Identities: people (login names) and tagged devices.

FIRST_NAMES = words(
    """
alice bob carol dave erin frank grace heidi ivan judy mallory nia oscar peggy quentin rupert sybil trent
uma victor wendy xavier yara zoe amir bea chen dario elif farah goran hana
"""
)
LAST_NAMES = words(
    """
smith jones garcia kim patel nguyen muller rossi silva tanaka novak berg cohen diaz okafor
"""
)
DOMAINS = ["example.com", "corp.example.com", "example.org", "github"]
TAGS = ["tag:prod", "tag:staging", "tag:dev", "tag:ci", "tag:ml", "tag:agents", "tag:batch", "tag:gateway"]

# Client libraries per API family: (user agent, x-stainless-lang, package version).
CLIENTS = {
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

# Credential headers as gateways capture them, in the capitalisations clients send.
CREDENTIAL_CASES = {
    "authorization": ("authorization", "Authorization", "AUTHORIZATION", "authorization"),
    "x-api-key": ("x-api-key", "X-Api-Key", "X-API-KEY", "x-api-key"),
    "api-key": ("api-key", "Api-Key", "API-KEY"),
    "cookie": ("cookie", "Cookie", "COOKIE"),
    "set-cookie": ("set-cookie", "Set-Cookie", "SET-COOKIE"),
    "proxy-authorization": ("proxy-authorization", "Proxy-Authorization", "PROXY-AUTHORIZATION"),
}

ANTHROPIC_ORG = "2f9c6a1e-8a4b-4a51-9d6e-0c7b1f0e3a55"
API_FAMILY = {"oai_completions": "oai", "oai_responses": "oai", "ant_messages": "ant", "gemini_generate": "gem"}
CALL_ID_PREFIX = {
    "oai_completions": "call_",
    "oai_responses": "call_",
    "ant_messages": "toolu_",
    "gemini_generate": "",
}

ERRORS = {
    400: ("invalid_request_error", "The request was malformed: messages must alternate user and assistant."),
    401: ("authentication_error", "Invalid credentials were supplied for this request."),
    429: ("rate_limit_error", "Rate limit reached for requests per minute. Please retry after a short wait."),
    500: ("api_error", "The server had an error while processing your request. Sorry about that!"),
    529: ("overloaded_error", "The service is temporarily overloaded. Please try again later."),
}

BINARY_KINDS = (
    ("image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ("image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"),
    ("audio/wav", b"RIFF\x00\x00\x00\x00WAVEfmt "),
    ("application/pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
)
