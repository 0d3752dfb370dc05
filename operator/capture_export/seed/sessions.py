"""Who sends the synthetic traffic: identities (people and tagged devices, a few of them heavy users)
and their sessions, each a conversation with one model through one client library."""

from __future__ import annotations

import random
from typing import Any

from .catalogue import API_FAMILY, CLIENTS, DOMAINS, FIRST_NAMES, LAST_NAMES, MODELS, TAGS, TOOLS
from .text import TextSource

__all__ = [
    "IDENTITIES",
    "Identity",
    "Session",
    "SessionMaker",
    "ToolCall",
    "make_identities",
    "rand_id",
    "request_headers",
    "uuid",
]

IDENTITIES = 160
_ALNUM = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

Identity = tuple[str, str, tuple[str, ...]]  # login name, node id, tags
ToolCall = tuple[str, str, dict[str, Any]]  # call id, tool name, arguments


def rand_id(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(_ALNUM, k=n))


def uuid(bits: int) -> str:
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def make_identities(rng: random.Random, count: int) -> list[Identity]:
    identities = []
    for i in range(count):
        node_id = "n" + rand_id(rng, 10) + "CNTRL"
        if rng.random() < 0.3:
            tags = tuple(sorted(set(rng.sample(TAGS, rng.randint(1, 3)))))
            identities.append(("tagged-devices", node_id, tags))
        else:
            first, last = FIRST_NAMES[i % len(FIRST_NAMES)], rng.choice(LAST_NAMES)
            domain = rng.choice(DOMAINS)
            login = f"{first}.{last}@{domain}"
            if domain == "github":
                login = f"{first}{i // len(FIRST_NAMES) or ''}@github"
            tags = ("tag:prod",) if rng.random() < 0.15 else ()
            identities.append((login, node_id, tags))
    return identities


class Session:
    """One conversation: its identity, model, API, client and the turns so far."""

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

    identity: Identity
    model: str
    api_type: str
    session_id: str
    system: str
    tools: list[dict[str, Any]]
    history: list[tuple[str, str]]  # (role, text), the last few turns
    remaining: int  # requests left before the session ends
    turn: int
    client: tuple[str, str, str]
    stream: bool
    pending_tool: ToolCall | None  # the tool the model called last: its result is the next user turn
    req_headers: dict[str, str]


class SessionMaker:
    """New sessions for one generator: heavier users (a Zipf-ish weighting over identities) and popular
    models start more of them."""

    def __init__(self, rng: random.Random, texts: TextSource, system_prompts: list[str]) -> None:
        self._rng = rng
        self._texts = texts
        self._system_prompts = system_prompts
        self._identities = make_identities(rng, IDENTITIES)
        self._identity_weights = [1.0 / (i + 1) ** 0.9 for i in range(len(self._identities))]
        self._models = list(MODELS)
        self._model_weights = [MODELS[m]["weight"] for m in self._models]

    def new(self) -> Session:
        rng = self._rng
        rand, randint, choices = rng.random, rng.randint, rng.choices
        s = Session()
        s.identity = choices(self._identities, weights=self._identity_weights)[0]
        s.model = choices(self._models, weights=self._model_weights)[0]
        apis = MODELS[s.model]["api"]
        s.api_type = choices([a for a, _ in apis], weights=[w for _, w in apis])[0]
        s.session_id = uuid(rng.getrandbits(128))
        s.system = self._system_prompts[int(rand() * len(self._system_prompts))] if rand() < 0.85 else ""
        s.tools = rng.sample(TOOLS, randint(1, 4)) if rand() < 0.3 else []
        s.history = []
        s.remaining = min(40, int(self._texts.lognorm(1.4, 0.9)) + 1)
        s.turn = 0
        s.client = rng.choice(CLIENTS[API_FAMILY[s.api_type]])
        s.stream = rand() < 0.4
        s.pending_tool = None
        s.req_headers = request_headers(s, rng)
        return s


def request_headers(sess: Session, rng: random.Random) -> dict[str, str]:
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
    headers["x-forwarded-for"] = f"100.{64 + (ord(node_id[1]) & 63)}.{rng.getrandbits(8)}.{rng.getrandbits(8)}"
    headers["x-tailscale-node"] = node_id
    return headers
