"""Export: one run reads batches, encodes them, writes data and checkpoint objects, advances the cursor."""

from __future__ import annotations

from .engine import BatchResult, Cursor, ExportEngine, ExporterId, ExportFailure, RetryPolicy, RunResult
from .formats import BatchEncoder, CborZstdEncoder
from .layout import ObjectLayout, parse_range

__all__ = [
    "BatchEncoder",
    "BatchResult",
    "CborZstdEncoder",
    "Cursor",
    "ExportEngine",
    "ExportFailure",
    "ExporterId",
    "ObjectLayout",
    "RetryPolicy",
    "RunResult",
    "parse_range",
]
