"""Export: one run reads batches, encodes them, writes data and checkpoint objects, advances the cursor.

The names below load on first use: the API models import the format names (export/format_names.py) to
derive the spec's allowed formats, and the engine imports the API models, so importing this package
must not import the engine at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_names import names_loaded_on_use

if TYPE_CHECKING:
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

_HOMES = {
    "Checkpoints": "checkpoint",
    "ExportEngine": "engine",
    "BatchEncoder": "formats",
    "CborZstdEncoder": "formats",
    "ObjectLayout": "layout",
    "parse_range": "layout",
    "BatchResult": "model",
    "Cursor": "model",
    "ExporterId": "model",
    "ExportFailure": "model",
    "RetryPolicy": "model",
    "RunResult": "model",
}

__getattr__ = names_loaded_on_use(__name__, _HOMES)
