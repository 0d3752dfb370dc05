"""How a RetentionPolicy's status follows from what a purge run did. Pure: no I/O, time passed in."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from ..api.retention import (
    GATE_EXPORTERS_LISTED,
    RETENTION_HISTORY_LENGTH,
    GateExporter,
    GateStatus,
    PurgeInProgress,
    RetentionPolicyStatus,
    RetentionRun,
    RetentionTotals,
)
from ..api.vocabulary import ConditionType, EventType, PurgeOutcome, Reason, Truth
from .conditions import set_condition, summarize_ready
from .exporter import Event

if TYPE_CHECKING:
    from ..retention.gate import ExporterVerdict, Gate

__all__ = ["RETENTION_READY_INPUTS", "RetentionStatusUpdate"]

RETENTION_READY_INPUTS = [ConditionType.STORE_REACHABLE, ConditionType.GATE_OPEN]


class RetentionStatusUpdate:
    """Accumulates changes to one RetentionPolicy status and the Events they deserve."""

    def __init__(self, status: RetentionPolicyStatus, *, now: datetime, generation: int | None) -> None:
        # Nested values are only ever replaced here, never changed in place: a shallow copy (with fresh
        # lists) leaves the caller's status untouched, at a fraction of a deep copy's cost.
        self.status = status.model_copy(update={"conditions": list(status.conditions),
                                                "history": list(status.history)})
        self.now = now
        self.generation = generation
        self.events: list[Event] = []
        self._ready_failure: tuple[str, str] | None = None
        self.status.observed_generation = generation
        for type_ in RETENTION_READY_INPUTS:
            if not any(c.type == type_ for c in self.status.conditions):
                self.set(type_, Truth.UNKNOWN, Reason.PENDING, "not yet checked", quiet=True)

    def set(self, type_: str, status: str, reason: str, message: str, *, quiet: bool = False) -> None:
        self.status.conditions, change = set_condition(
            self.status.conditions, type_, status, reason, message, now=self.now, generation=self.generation
        )
        if change is None or quiet or change.condition.status == Truth.UNKNOWN:
            return
        condition = change.condition
        kind = EventType.WARNING if condition.status == Truth.FALSE else EventType.NORMAL
        self.events.append(Event(kind, condition.reason,
                                 f"{condition.type}={condition.status}: {condition.message}"))

    def store_ok(self) -> None:
        self.set(ConditionType.STORE_REACHABLE, Truth.TRUE, Reason.REACHABLE, "capture store reachable")

    def store_failed(self, reason: str, message: str) -> None:
        self.set(ConditionType.STORE_REACHABLE, Truth.FALSE, reason, message)

    def failed(self, reason: str, message: str) -> None:
        """A failure that is no condition's own (an exception nobody foresaw, the state file): Ready says it."""
        self._ready_failure = (reason, message)

    def gate(self, gate: Gate) -> None:
        """Publish the gate: the GateOpen condition (naming the limiting exporter) and ``status.gate``."""
        self.status.gate = GateStatus(
            open=gate.open,
            mode=gate.mode,
            bound=str(gate.bound),
            cutoff=gate.cutoff,
            limiting_exporter=gate.limiting,
            reason=gate.reason,
            message=gate.message,
            exporters=[
                GateExporter(
                    name=v.name,
                    state=v.state,
                    cursor=str(v.cursor.position) if v.cursor is not None else None,
                    epoch=v.cursor.epoch if v.cursor is not None else None,
                    message=v.message,
                )
                for v in _most_telling(gate)
            ],
            exporter_count=len(gate.exporters) if gate.exporters else None,
        )
        self.set(ConditionType.GATE_OPEN, Truth.TRUE if gate.open else Truth.FALSE, gate.reason, gate.message)

    def record_run(self, run: RetentionRun) -> None:
        status = self.status
        status.last_run = run
        status.history = [run, *status.history][:RETENTION_HISTORY_LENGTH]
        status.totals = RetentionTotals(
            purged=status.totals.purged + run.purged,
            soft_deleted=status.totals.soft_deleted + run.soft_deleted,
            runs=status.totals.runs + 1,
        )
        if run.purged or run.soft_deleted:
            status.last_purge = run.end

    def purge_progress(self, run: RetentionRun, *, remaining: int | None) -> None:
        """``purgeInProgress``: carried on (or begun) by a run cut short, cleared by any other run."""
        if run.outcome != PurgeOutcome.STOPPED:
            self.status.purge_in_progress = None
            return
        before = self.status.purge_in_progress
        started = before.started if before is not None else run.start
        purged = (before.purged if before else 0) + run.purged
        soft_deleted = (before.soft_deleted if before else 0) + run.soft_deleted
        end = run.end or self.now
        seconds = max((end - started).total_seconds(), 1e-6)
        self.status.purge_in_progress = PurgeInProgress(
            started=started, purged=purged, soft_deleted=soft_deleted, remaining=remaining,
            rate_per_second=round((purged + soft_deleted) / seconds, 1), updated=end)

    def finish(self) -> tuple[RetentionPolicyStatus, list[Event]]:
        ready, reason, message = summarize_ready(self.status.conditions, RETENTION_READY_INPUTS)
        if self._ready_failure is not None and ready != Truth.FALSE:
            ready, (reason, message) = Truth.FALSE, self._ready_failure
        self.set(ConditionType.READY, ready, reason, message)
        return self.status, self.events


def _most_telling(gate: Gate) -> list[ExporterVerdict]:
    """The gating exporters status has room for: the limiting one, those holding the gate shut, then the
    lowest bounds; a selector may match any number of exporters, and every one was weighed."""
    ranked = sorted(gate.exporters, key=lambda v: (v.name != gate.limiting, v.state == "Committed", v.bound, v.name))
    return ranked[:GATE_EXPORTERS_LISTED]
