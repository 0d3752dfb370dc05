"""Export: one run reads batches, encodes them, writes data and checkpoint objects, advances the cursor."""

from __future__ import annotations

from .checkpoint import Checkpoints
from .engine import ExportEngine
from .formats import BatchEncoder, CborZstdEncoder
from .layout import ObjectLayout, parse_range
from .model import BatchResult, Cursor, ExporterId, ExportFailure, RetryPolicy, RunResult

__all__ = [
    "BatchEncoder",
    "BatchResult",
    "CborZstdEncoder",
    "Checkpoints",
    "Cursor",
    "ExportEngine",
    "ExportFailure",
    "ExporterId",
    "ObjectLayout",
    "RetryPolicy",
    "RunResult",
    "parse_range",
]
