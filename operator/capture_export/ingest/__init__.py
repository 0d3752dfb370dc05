"""The ingest server: gateways feed the capture store over HTTP, exactly once (DESIGN.md §2).

``server.py`` (aiohttp: auth, limits, routes), ``writer.py`` (group commit, insert-or-ignore by
capture_id), and one module per input: ``native.py`` (schema-v2 records), ``litellm.py`` (LiteLLM's
``generic_api`` payloads), ``otlp.py`` (OpenTelemetry GenAI spans).
"""

from __future__ import annotations

from .auth import TokenFile
from .errors import BadInput, IngestRefused, Overloaded, StoreUnavailable, TooLarge
from .litellm import litellm_record, parse_litellm
from .metrics import IngestMetrics
from .native import parse_records
from .server import IngestLimits, IngestServer, serve, store_opener
from .writer import GroupCommitter

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
