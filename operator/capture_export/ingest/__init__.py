"""The ingest server: gateways feed the capture store over HTTP, exactly once.

``server.py`` (aiohttp: auth, limits, routes), ``writer.py`` (group commit, insert-or-ignore by
capture_id), and one module per input: ``native.py`` (schema-v2 records), ``litellm.py`` (LiteLLM's
``generic_api`` payloads), ``otlp.py`` (OpenTelemetry GenAI spans).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import BadInput, IngestRefused, Overloaded, StoreUnavailable, TooLarge
from .limits import IngestLimits

# Imported on first use: a parsing process imports only the parsers (no aiohttp, no metrics).
_LAZY = {"TokenFile": ".auth", "litellm_record": ".litellm", "parse_litellm": ".litellm",
         "IngestMetrics": ".metrics", "parse_records": ".native", "IngestServer": ".server", "serve": ".server",
         "store_opener": ".server", "GroupCommitter": ".writer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BadInput",
    "GroupCommitter",
    "IngestLimits",
    "IngestMetrics",
    "IngestRefused",
    "IngestServer",
    "Overloaded",
    "StoreUnavailable",
    "TokenFile",
    "TooLarge",
    "litellm_record",
    "parse_litellm",
    "parse_records",
    "serve",
    "store_opener",
]
