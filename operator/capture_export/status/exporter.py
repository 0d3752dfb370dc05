"""How an S3Exporter's status follows from what a cycle did. Pure: no I/O, time passed in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from ..api import Condition, ExportTotals, RunRecord, S3ExporterStatus
from ..api.s3exporter import HISTORY_LENGTH
from ..api.vocabulary import ConditionType, Domain, EventType, Reason, Truth
from ..export import ExportFailure, RunResult
from .conditions import ConditionChange, set_condition, summarize_ready

__all__ = [
    "DOMAIN_CONDITIONS",
    "READY_INPUTS",
    "Event",
    "StatusUpdate",
    "cursor_position",
    "guard_cursor",
    "not_behind",
    "quarantine_message",
]

log = logging.getLogger(__name__)

# Which condition each failure domain speaks to.
DOMAIN_CONDITIONS: dict[str, str] = {Domain.BUCKET: ConditionType.BUCKET_REACHABLE,
                                     Domain.CREDENTIALS: ConditionType.CREDENTIALS_VALID,
                                     Domain.STORE: ConditionType.STORE_REACHABLE}
READY_INPUTS = [ConditionType.CREDENTIALS_VALID, ConditionType.STORE_REACHABLE, ConditionType.BUCKET_REACHABLE]


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


# -- the cursor guard: every write of an S3Exporter's (epoch, cursor) goes through guard_cursor -------------


def cursor_position(status: S3ExporterStatus) -> tuple[int, int]:
    return status.epoch, int(status.cursor)


def guard_cursor(current: tuple[int, int], proposed: tuple[int, int], *, what: str = "") -> tuple[int, int]:
    """The (epoch, cursor) to keep: ``proposed``, unless it would move the cursor back. A newer epoch (a
    reset starts again from 0) wins over a higher position. A refusal is logged: it means a stale writer."""
    if proposed >= current:
        return proposed
    log.error("refusing to move %scursor back from %s to %s; keeping the newer one", f"{what} " if what else "",
              current, proposed)
    return current


def not_behind(status: S3ExporterStatus, floor: tuple[int, int], *, what: str = "") -> S3ExporterStatus:
    """``status``, with ``floor``'s (epoch, cursor) if that is newer (see guard_cursor)."""
    kept = guard_cursor(floor, cursor_position(status), what=what)
    if kept == cursor_position(status):
        return status
    return status.model_copy(update={"epoch": kept[0], "cursor": str(kept[1])})


class StatusUpdate:
    """Accumulates changes to one status and the Events they deserve."""

    def __init__(self, status: S3ExporterStatus, *, now: datetime, generation: int | None) -> None:
        self.status = status.model_copy(deep=True)
        self.now = now
        self.generation = generation
        self.events: list[Event] = []
        self._ready_failure: ExportFailure | None = None
        # A condition's message when it passes, when it has more to say than the default (see passed).
        self.notes: dict[str, str] = {}
        self.status.observed_generation = generation
        for type_ in [*READY_INPUTS, ConditionType.UP_TO_DATE]:
            if not any(c.type == type_ for c in self.status.conditions):
                self.set(type_, Truth.UNKNOWN, Reason.PENDING, "not yet checked", quiet=True)

    def set(self, type_: str, status: str, reason: str, message: str, *, quiet: bool = False) -> None:
        self.status.conditions, change = set_condition(
            self.status.conditions, type_, status, reason, message, now=self.now, generation=self.generation
        )
        if change is not None and not quiet:
            self._event_for(change)

    def _event_for(self, change: ConditionChange) -> None:
        condition: Condition = change.condition
        if condition.status == Truth.UNKNOWN:
            return
        bad = condition.status == Truth.FALSE and condition.type != ConditionType.UP_TO_DATE
        kind = EventType.WARNING if bad else EventType.NORMAL
        self.events.append(Event(kind, condition.reason, f"{condition.type}={condition.status}: {condition.message}"))

    def fail(self, failure: ExportFailure) -> None:
        if failure.domain not in DOMAIN_CONDITIONS:
            # No failure-domain condition of its own (the format cannot be written here, the state file
            # cannot be saved, an exception nobody foresaw): Ready says it (see finish).
            self._ready_failure = failure
            return
        self.set(DOMAIN_CONDITIONS.get(failure.domain, ConditionType.BUCKET_REACHABLE), Truth.FALSE, failure.reason,
                 failure.message)

    def passed(self, *types: str, messages: dict[str, str] | None = None) -> None:
        """Set each of ``types`` True; ``messages`` overrides the default message of a type."""
        defaults: dict[str, str] = {
            ConditionType.CREDENTIALS_VALID: "credentials accepted",
            ConditionType.STORE_REACHABLE: "capture store readable",
            ConditionType.BUCKET_REACHABLE: "bucket reachable and writable",
        }
        for type_ in types:
            reason = Reason.REACHABLE if type_ == ConditionType.STORE_REACHABLE else Reason.VERIFIED
            self.set(type_, Truth.TRUE, reason, self.notes.get(type_) or (messages or {}).get(type_, defaults[type_]))

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
            outcome=result.outcome,
            reason=failure.reason if failure else None,
            error=failure.message if failure else None,
            filtered=result.filtered,
            quarantined=len(result.quarantined),
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
        if result.quarantined:
            status.quarantined += len(result.quarantined)
            self.events.append(Event(EventType.WARNING, Reason.RECORD_QUARANTINED,
                                     quarantine_message(result.quarantined)))
        if result.backlog is not None:
            status.backlog = result.backlog
        if failure is not None:
            self.fail(failure)
            self.events.append(Event(EventType.WARNING, Reason.EXPORT_FAILED, failure.message))
        else:
            # A run that wrote objects proves store, credentials and bucket at once.
            # (Already True: keep the connection test's message, which says exactly what was tested.)
            proven = [type_ for type_ in (ConditionType.CREDENTIALS_VALID, ConditionType.BUCKET_REACHABLE)
                      if result.objects and not self._is_true(type_)]
            self.passed(ConditionType.STORE_REACHABLE, *proven)
        if result.backlog == 0:
            self.set(ConditionType.UP_TO_DATE, Truth.TRUE, Reason.CAUGHT_UP,
                     f"all records up to id {result.cursor.position} exported")
        elif result.backlog is not None:
            self.set(ConditionType.UP_TO_DATE, Truth.FALSE, Reason.BACKLOG_REMAINING,
                     f"{result.backlog} records waiting", quiet=True)

    def _is_true(self, type_: str) -> bool:
        return any(c.type == type_ and c.status == Truth.TRUE for c in self.status.conditions)

    def advance_cursor(self, epoch: int, position: int) -> None:
        """Never move the cursor backwards, except into a newer epoch (a reset)."""
        status = self.status
        epoch, position = guard_cursor(cursor_position(status), (epoch, position))
        status.epoch, status.cursor = epoch, str(position)

    def finish(self) -> tuple[S3ExporterStatus, list[Event]]:
        ready, reason, message = summarize_ready(self.status.conditions, READY_INPUTS)
        failure = self._ready_failure
        if failure is not None and ready != Truth.FALSE:
            labels: dict[str, str] = {Domain.FORMAT: "format", Domain.STATE: "state",
                                      Domain.INTERNAL: "internal error"}
            label = labels.get(failure.domain, str(failure.domain).lower())
            ready, reason, message = Truth.FALSE, failure.reason, f"{label}: {failure.message}"
        self.set(ConditionType.READY, ready, reason, message)
        return self.status, self.events


def quarantine_message(quarantined: list[tuple[int, str]], shown: int = 10) -> str:
    """The Event for records a run moved to the store's quarantine: ids and reasons, never bytes."""
    listed = "; ".join(f"record {record_id}: {reason}" for record_id, reason in quarantined[:shown])
    more = f"; and {len(quarantined) - shown} more" if len(quarantined) > shown else ""
    return (f"{len(quarantined)} record{'s' if len(quarantined) != 1 else ''} moved to the store's quarantine "
            f"(capture-export quarantine list): {listed}{more}")
