"""How an S3Exporter's status follows from what a cycle did. Pure: no I/O, time passed in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..api import Condition, ExportTotals, RunRecord, S3ExporterStatus
from ..api.s3exporter import HISTORY_LENGTH
from ..export import ExportFailure, RunResult
from .conditions import ConditionChange, set_condition, summarize_ready

__all__ = [
    "DOMAIN_CONDITIONS",
    "READY_INPUTS",
    "Event",
    "StatusUpdate",
]

# Which condition each failure domain speaks to.
DOMAIN_CONDITIONS = {"Bucket": "BucketReachable", "Credentials": "CredentialsValid", "Store": "StoreReachable"}
READY_INPUTS = ["CredentialsValid", "StoreReachable", "BucketReachable"]


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


class StatusUpdate:
    """Accumulates changes to one status and the Events they deserve."""

    def __init__(self, status: S3ExporterStatus, *, now: datetime, generation: int | None) -> None:
        self.status = status.model_copy(deep=True)
        self.now = now
        self.generation = generation
        self.events: list[Event] = []
        self._format_failure: ExportFailure | None = None
        self.status.observed_generation = generation
        for type_ in [*READY_INPUTS, "UpToDate"]:
            if not any(c.type == type_ for c in self.status.conditions):
                self.set(type_, "Unknown", "Pending", "not yet checked", quiet=True)

    def set(self, type_: str, status: str, reason: str, message: str, *, quiet: bool = False) -> None:
        self.status.conditions, change = set_condition(
            self.status.conditions, type_, status, reason, message, now=self.now, generation=self.generation
        )
        if change is not None and not quiet:
            self._event_for(change)

    def _event_for(self, change: ConditionChange) -> None:
        condition: Condition = change.condition
        if condition.status == "Unknown":
            return
        bad = condition.status == "False" and condition.type != "UpToDate"
        self.events.append(
            Event("Warning" if bad else "Normal", condition.reason, f"{condition.type}={condition.status}: "
                  f"{condition.message}")
        )

    def fail(self, failure: ExportFailure) -> None:
        if failure.domain == "Format":
            # The spec's format cannot be written here (pyarrow missing, a record it cannot encode): no
            # failure-domain condition of its own; Ready says it (see finish).
            self._format_failure = failure
            return
        self.set(DOMAIN_CONDITIONS.get(failure.domain, "BucketReachable"), "False", failure.reason, failure.message)

    def passed(self, *types: str) -> None:
        messages = {
            "CredentialsValid": "credentials accepted",
            "StoreReachable": "capture store readable",
            "BucketReachable": "bucket reachable and writable",
        }
        for type_ in types:
            self.set(type_, "True", "Verified" if type_ != "StoreReachable" else "Reachable", messages[type_])

    def record_run(self, result: RunResult) -> None:
        status = self.status
        failure = result.failure
        run = RunRecord(
            start=result.start,
            end=result.end,
            duration_seconds=round(result.duration_seconds, 3),
            rows=result.rows,
            bytes=result.bytes,
            objects=result.objects,
            object_key=result.last_key,
            cursor=str(result.cursor.position),
            outcome=result.outcome,  # type: ignore[arg-type]
            reason=failure.reason if failure else None,
            error=failure.message if failure else None,
            filtered=result.filtered,
        )
        status.last_run = run
        status.history = [run, *status.history][:HISTORY_LENGTH]
        self.advance_cursor(result.cursor.epoch, result.cursor.position)
        status.totals = ExportTotals(
            rows=status.totals.rows + result.rows,
            objects=status.totals.objects + result.objects,
            bytes=status.totals.bytes + result.bytes,
            filtered=status.totals.filtered + result.filtered,
        )
        if result.rows:
            status.last_successful_export = result.end
        if result.backlog is not None:
            status.backlog = result.backlog
        if failure is not None:
            self.fail(failure)
            self.events.append(Event("Warning", "ExportFailed", failure.message))
        else:
            # A run that wrote objects proves store, credentials and bucket at once.
            self.passed("StoreReachable", *(["CredentialsValid", "BucketReachable"] if result.objects else []))
        if result.backlog == 0:
            self.set("UpToDate", "True", "CaughtUp", f"all records up to id {result.cursor.position} exported")
        elif result.backlog is not None:
            self.set("UpToDate", "False", "BacklogRemaining", f"{result.backlog} records waiting", quiet=True)

    def advance_cursor(self, epoch: int, position: int) -> None:
        """Never move the cursor backwards, except into a newer epoch (a reset)."""
        status = self.status
        if (epoch, position) >= (status.epoch, int(status.cursor)):
            status.epoch, status.cursor = epoch, str(position)

    def finish(self) -> tuple[S3ExporterStatus, list[Event]]:
        ready, reason, message = summarize_ready(self.status.conditions, READY_INPUTS)
        format_failure = self._format_failure
        if format_failure is not None and ready != "False":
            ready, reason, message = "False", format_failure.reason, f"format: {format_failure.message}"
        self.set("Ready", ready, reason, message)
        return self.status, self.events
