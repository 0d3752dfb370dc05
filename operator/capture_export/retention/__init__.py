"""Retention: the gate (pure: which records may go), the purge (chunked deletes) and one policy's cycle."""

from __future__ import annotations

from .cycle import ExporterRef, RetentionOutcome, RetentionWorker
from .gate import ExporterObservation, Gate, evaluate_gate, gating_exporters
from .purge import Purger, PurgeStats

__all__ = [
    "ExporterObservation",
    "ExporterRef",
    "Gate",
    "PurgeStats",
    "Purger",
    "RetentionOutcome",
    "RetentionWorker",
    "evaluate_gate",
    "gating_exporters",
]
