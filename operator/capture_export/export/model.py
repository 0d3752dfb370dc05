"""The export's shared vocabulary: who exports (``ExporterId``), how far (``Cursor``), why a run stopped
(``ExportFailure``), how requests are retried (``RetryPolicy``, ``Requests``) and what a run or a batch did
(``RunResult``, ``BatchResult``, ``PreparedBatch``). The gate, status, metrics and handlers import these
without importing the engine."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar

from ..api.vocabulary import Domain, ExportOutcome, Reason
from ..clock import Clock
from ..objectstore.base import ObjectStoreError
from ..redact import describe_exception

T = TypeVar("T")
log = logging.getLogger(__name__)

__all__ = [
    "BatchResult",
    "Cursor",
    "ExportFailure",
    "ExporterId",
    "PreparedBatch",
    "Requests",
    "RetryPolicy",
    "RunResult",
    "unexpected_failure",
]


@dataclass(frozen=True)
class ExporterId:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Cursor:
    """Export progress. ``position`` is the highest committed record id; ``epoch`` counts resets (a reset
    starts again from 0, so a newer epoch wins over a higher position); ``high_water`` is the highest id
    this exporter may have written to the bucket (exported, or read for a batch whose upload may have
    started), below which objects from an earlier epoch or a killed run may exist."""

    epoch: int = 0
    position: int = 0
    high_water: int = 0

    def order(self) -> tuple[int, int]:
        return (self.epoch, self.position)

    def newest(self, other: Cursor | None) -> Cursor:
        if other is None:
            return self
        best = self if self.order() >= other.order() else other
        return replace(best, high_water=max(self.high_water, other.high_water, best.position))


class ExportFailure(Exception):
    """Why a run stopped early. ``domain`` names the condition it speaks to: Bucket, Credentials or Store,
    or Format (the format cannot be written here: a missing package, records it cannot encode)."""

    def __init__(self, reason: str, message: str, *, domain: str, transient: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.domain = domain
        self.transient = transient

    @classmethod
    def from_object_store(cls, exc: ObjectStoreError) -> ExportFailure:
        return cls(exc.reason, exc.message, domain=exc.domain, transient=exc.transient)


def unexpected_failure(exc: BaseException, consequence: str = "") -> ExportFailure:
    """An exception nobody foresaw, contained as this exporter's failure (``InternalError``): named by its
    class and place, never by its text. The traceback goes to the log at DEBUG (frames only)."""
    description = describe_exception(exc)
    log.warning("contained an unexpected %s", description)
    log.debug("where: %s", "".join(traceback.format_tb(exc.__traceback__)))
    tail = f"; {consequence}" if consequence else ""
    return ExportFailure(Reason.INTERNAL_ERROR, f"unexpected {description}{tail}; it is retried with backoff (see "
                         "the log at --debug for where)", domain=Domain.INTERNAL, transient=False)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    throttle_delay: float = 2.0

    def delay(self, attempt: int, reason: str) -> float:
        base = self.throttle_delay if reason == Reason.THROTTLED else self.base_delay
        return min(self.max_delay, base * 2.0 ** attempt)


class Requests:
    """Object-store requests, each retried with backoff while its failure is transient; ``count`` counts
    every attempt (a run reports how many it made). Safe to call from several threads (two uploads at once)."""

    def __init__(self, clock: Clock, retry: RetryPolicy) -> None:
        self.clock = clock
        self.retry = retry
        self.count = 0
        self._counting = threading.Lock()

    def __call__(self, operation: Callable[[], T]) -> T:
        attempt = 0
        while True:
            with self._counting:
                self.count += 1
            try:
                return operation()
            except ObjectStoreError as exc:
                attempt += 1
                if not exc.transient or attempt >= self.retry.attempts:
                    raise ExportFailure.from_object_store(exc) from None
                self.clock.sleep(self.retry.delay(attempt - 1, exc.reason))


@dataclass
class PreparedBatch:
    first_id: int  # the range of ids the batch handled (read), which names its object
    last_id: int
    first_timestamp_us: int
    rows: int  # records in the object
    raw_bytes: int
    payload: bytes | None  # None: the filter excluded every record, no object is written
    key: str | None
    read_seconds: float
    encode_seconds: float
    filtered: int = 0
    # CPU time spent on the batch by the thread that read it and the thread or worker process that encoded
    # it (benchmarks/format_throughput.py breaks the exporter's CPU down by stage with them).
    read_cpu_seconds: float = 0.0
    encode_cpu_seconds: float = 0.0
    # Records moved to the store's quarantine while preparing it: (id, reason).
    quarantined: list[tuple[int, str]] = field(default_factory=list)
    # onCorruptRecord Hold: the batch stops before a corrupt record; after committing what precedes it,
    # the run fails with this.
    held: ExportFailure | None = None
    last_timestamp_us: int | None = None  # the stored timestamp of record ``last_id``, for the checkpoint


@dataclass(frozen=True)
class BatchResult:
    key: str | None  # None when the filter excluded every record of the batch (no object written)
    first_id: int
    last_id: int
    rows: int
    raw_bytes: int
    bytes: int
    cursor: Cursor
    read_seconds: float
    encode_seconds: float
    upload_seconds: float
    filtered: int = 0
    read_cpu_seconds: float = 0.0
    encode_cpu_seconds: float = 0.0
    commit_cpu_seconds: float = 0.0  # the upload (on its thread), the sweep and the checkpoint
    quarantined: tuple[tuple[int, str], ...] = ()  # (id, reason) of records moved to the quarantine

    @property
    def object_written(self) -> bool:
        return self.key is not None


@dataclass
class RunResult:
    start: datetime
    end: datetime | None = None
    outcome: str = ExportOutcome.NOTHING_TO_DO  # see ExportOutcome
    rows: int = 0
    bytes: int = 0
    raw_bytes: int = 0
    objects: int = 0
    last_key: str | None = None
    cursor: Cursor = field(default_factory=Cursor)
    failure: ExportFailure | None = None
    backlog: int | None = None
    requests: int = 0
    filtered: int = 0  # records the filter excluded: handled (the cursor passed them), not exported
    # Objects in the destination's folders that look like data objects but are not this exporter's: the
    # sweep left them alone (export/provenance.py). Each is reported once per worker.
    foreign_objects: list[str] = field(default_factory=list)
    # (id, reason) of the records this run moved to the store's quarantine (onCorruptRecord: Quarantine).
    quarantined: list[tuple[int, str]] = field(default_factory=list)

    @property
    def duration_seconds(self) -> float:
        return (self.end - self.start).total_seconds() if self.end else 0.0
