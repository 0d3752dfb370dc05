"""One RetentionPolicy's cycle, shared by the kopf handler and the standalone runner.

Given the spec, the last status and the S3Exporters of the policy's namespace (a name -> ``ExporterRef``
mapping the caller builds: the standalone runner from the manifests, the kopf handler from the
cluster), a cycle reads each gating exporter's checkpoint object from its bucket, evaluates the gate
(retention/gate.py), purges what it allows (retention/purge.py) and returns the new status, the Events
worth emitting and when the next cycle is due. No Kubernetes here.

Order within a cycle: first soft-deleted records whose grace period is over are removed for good, those
at or below the bound (they were exported when they were marked, but an exporter that joined the gate or
was reset since must export them again first), then old records at or below the bound are deleted, or
marked and hidden with ``softDelete``. ``dryRun`` counts both and changes nothing.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api import RetentionPolicySpec, RetentionPolicyStatus, S3ExporterSpec, S3ExporterStatus
from ..api.retention import RetentionRun
from ..api.vocabulary import ConditionType, EventType, GateExporterState, GateMode, PurgeOutcome, Reason, Truth
from ..backoff import FailureBackoff
from ..clock import Clock, SystemClock
from ..export.checkpoint import Checkpoints, reused_ids
from ..export.cycle import ObjectStoreFactory
from ..export.layout import ObjectLayout
from ..export.model import ExporterId, ExportFailure, RetryPolicy
from ..objectstore import ObjectStore, ObjectStoreError, S3Access, S3Location, S3ObjectStore
from ..objectstore.credentials import CredentialResolver, SecretSource
from ..redact import describe_exception
from ..status.conditions import get_condition
from ..status.exporter import Event
from ..status.retention import RetentionStatusUpdate
from ..store import (
    RETENTION_METHODS,
    CaptureStore,
    StoreError,
    StoreNotFound,
    StoreRefused,
    describe_store,
    store_identity,
)
from .gate import ExporterObservation, Gate, evaluate_gate, gating_exporters, micros
from .purge import Purger, PurgeStats

log = logging.getLogger(__name__)

__all__ = ["ExporterRef", "PurgeProgress", "RetentionOutcome", "RetentionWorker"]


StoreOpener = Callable[[Any, str], CaptureStore]


@dataclass(frozen=True)
class ExporterRef:
    """An S3Exporter in the policy's namespace, as the caller knows it. ``status`` is optional and only
    used to say that a limiting exporter is failing; the gate trusts the checkpoint in the bucket."""

    name: str
    spec: S3ExporterSpec
    labels: Mapping[str, str] = field(default_factory=dict)
    status: S3ExporterStatus | None = None


@dataclass
class RetentionOutcome:
    status: RetentionPolicyStatus
    events: list[Event]
    gate: Gate | None
    stats: PurgeStats | None
    due_in: float  # seconds until the next cycle should start (0: at once, the run was cut short)

    @property
    def failed(self) -> bool:
        return self.status.last_run is not None and self.status.last_run.outcome == PurgeOutcome.FAILED


@dataclass(frozen=True)
class PurgeProgress:
    """A purge run so far, for whoever shows it (the standalone runner prints it)."""

    removed: int  # records removed for good
    soft_deleted: int  # records hidden
    seconds: float
    remaining: int | None  # records still to remove or hide, when counted

    @property
    def done(self) -> int:
        return self.removed + self.soft_deleted

    @property
    def rate(self) -> float:
        return self.done / max(self.seconds, 1e-6)


ProgressReport = Callable[[PurgeProgress], None]


class _ProgressTracker:
    """Sums what the chunks did and reports it at most every ``every`` seconds. What is left is counted once,
    at the first report (a quick run never pays for the count), then followed down from that total."""

    def __init__(self, report: ProgressReport, every: float, clock: Clock, count_left: Callable[[], int]) -> None:
        self.report = report
        self.every = every
        self.clock = clock
        self.count_left = count_left
        self.started = self.last = clock.monotonic()
        self.removed = self.soft_deleted = 0
        self.total: int | None = None
        self.counted = False

    def chunk(self, removed: int, soft_deleted: int) -> None:
        self.removed += removed
        self.soft_deleted += soft_deleted
        now = self.clock.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        done = self.removed + self.soft_deleted
        if not self.counted:
            self.counted = True
            try:
                self.total = done + self.count_left()
            except StoreError:
                self.total = None  # progress without what is left; the purge itself goes on
        remaining = max(self.total - done, 0) if self.total is not None else None
        self.report(PurgeProgress(self.removed, self.soft_deleted, now - self.started, remaining))


class _Failure(Exception):
    """Why a run failed; ``store``: whether it speaks to the store (StoreReachable), else Ready says it."""

    def __init__(self, reason: str, message: str, *, store: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.store = store


def _failing(status: S3ExporterStatus | None) -> str | None:
    if status is None:
        return None
    ready = get_condition(status.conditions, ConditionType.READY)
    if ready is not None and ready.status == Truth.FALSE:
        return ready.reason
    return None


class RetentionWorker:
    """Holds what one policy reuses between cycles: object-store clients for the exporters' buckets."""

    def __init__(
        self,
        policy: ExporterId,
        *,
        open_store: StoreOpener,
        secrets: SecretSource,
        clock: Clock | None = None,
        object_store_factory: ObjectStoreFactory | None = None,
        retry: RetryPolicy | None = None,
        pause_seconds: float | None = None,
        max_chunk_seconds: float = 0.05,
        recheck_seconds: float = 10.0,
        progress_seconds: float = 5.0,
    ) -> None:
        """``progress_seconds``: the least time between two progress reports of a run (``cycle``'s
        ``on_progress``)."""
        self.policy = policy
        self.open_store = open_store
        self.credentials = CredentialResolver(secrets)
        self.clock = clock or SystemClock()
        self.object_store_factory = object_store_factory or (
            lambda location, access: S3ObjectStore(location, access, now=self.clock.now))
        self.retry = retry or RetryPolicy(attempts=3)
        self.pause_seconds = pause_seconds
        self.max_chunk_seconds = max_chunk_seconds
        self.recheck_seconds = recheck_seconds
        self.progress_seconds = progress_seconds
        self._objects: dict[tuple[S3Location, S3Access], ObjectStore] = {}
        self.backoff = FailureBackoff()

    # -- the gate's inputs ---------------------------------------------------------------------------

    def _object_store(self, spec: S3ExporterSpec, access: S3Access) -> ObjectStore:
        key = (S3Location(spec.bucket, spec.region, spec.endpoint), access)
        objects = self._objects.get(key)
        if objects is None:
            if len(self._objects) > 64:  # rotated credentials leave old clients behind
                self._objects.clear()
            objects = self._objects[key] = self.object_store_factory(key[0], access)
        return objects

    def observe(self, spec: RetentionPolicySpec, ref: ExporterRef | None, name: str,
                store: CaptureStore) -> ExporterObservation:
        """Read one gating exporter's committed cursor from the checkpoint object in its bucket."""
        if ref is None:
            return ExporterObservation(name, GateExporterState.NOT_FOUND)
        if store_identity(ref.spec.store) != store_identity(spec.store):
            detail = f"{describe_store(ref.spec.store)}, the policy purges {describe_store(spec.store)}"
            return ExporterObservation(name, GateExporterState.STORE_MISMATCH, detail=detail)
        namespace = self.policy.namespace
        try:
            # The exporter's own access (Secret, role, CA bundle): the gate reads its checkpoint as it wrote it.
            access = self.credentials.access(namespace, name, ref.spec)
            objects = self._object_store(ref.spec, access)
            layout = ObjectLayout(ref.spec.prefix, namespace, name)
            checkpoint = Checkpoints(objects, layout, ExporterId(namespace, name), self.clock,
                                     retry=self.retry).read_full()
        except (ExportFailure, ObjectStoreError) as exc:
            return ExporterObservation(name, GateExporterState.UNREADABLE, detail=f"{exc.reason}: {exc.message}",
                                       failing=_failing(ref.status))
        except Exception as exc:  # a client that cannot even be built: never echo its text (secrets)
            return ExporterObservation(name, GateExporterState.UNREADABLE, detail=exc.__class__.__name__,
                                       failing=_failing(ref.status))
        if checkpoint is not None and checkpoint.store_id and checkpoint.store_id != store.identity():
            # Its records came from another store (this one was recreated or replaced): they prove nothing here.
            return ExporterObservation(name, GateExporterState.STORE_MISMATCH, detail=(
                f"its checkpoint was written from store {checkpoint.store_id}, the policy purges store "
                f"{store.identity()}"))
        reused = reused_ids(checkpoint, store) if checkpoint is not None else None
        if reused is not None:  # its cursor vouches for records that are no longer these ids
            return ExporterObservation(name, GateExporterState.STORE_MISMATCH, detail=reused)
        cursor = checkpoint.cursor if checkpoint is not None else None
        return ExporterObservation(name, GateExporterState.COMMITTED, cursor=cursor, failing=_failing(ref.status))

    def evaluate(self, spec: RetentionPolicySpec, exporters: Mapping[str, ExporterRef], store: CaptureStore) -> Gate:
        """The gate now. Raises StoreError when the store cannot be read."""
        now = self.clock.now()
        observations: list[ExporterObservation] = []
        selector = ""
        if spec.require_export:
            match = spec.exporter_selector.match_labels if spec.exporter_selector else None
            names = gating_exporters(spec.exporters, match, {n: r.labels for n, r in exporters.items()})
            observations = [self.observe(spec, exporters.get(name), name, store) for name in names]
            if match is not None:
                selector = "matchLabels " + ",".join(f"{k}={v}" for k, v in sorted(match.items()))
        return evaluate_gate(
            require_export=spec.require_export,
            max_age=spec.max_age_delta,
            now=now,
            observations=observations,
            store_high_id=store.highest_assigned_id(),
            horizon=store.safe_horizon() if not spec.require_export else 0,
            selector=selector,
        )

    # -- one cycle -----------------------------------------------------------------------------------

    def _store(self, spec: RetentionPolicySpec) -> CaptureStore:
        try:
            store = self.open_store(spec, self.policy.namespace)
        except StoreNotFound as exc:  # a typo in the policy's store never creates an empty one
            raise _Failure(Reason.STORE_NOT_FOUND, str(exc)) from None
        except StoreRefused as exc:
            raise _Failure(exc.reason, exc.message) from None
        except StoreError as exc:
            raise _Failure(Reason.STORE_UNAVAILABLE, str(exc)) from None
        missing = [m for m in RETENTION_METHODS if not callable(getattr(store, m, None))]
        if missing:
            raise _Failure(Reason.STORE_UNSUPPORTED, f"{store!r} does not implement retention ({', '.join(missing)})")
        return store

    def cycle(
        self,
        spec: RetentionPolicySpec,
        status: RetentionPolicyStatus,
        exporters: Mapping[str, ExporterRef],
        *,
        generation: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        max_seconds: float | None = None,
        on_progress: ProgressReport | None = None,
    ) -> RetentionOutcome:
        """One purge run. ``exporters``: every S3Exporter in the policy's namespace, by name (or at least
        the gating ones; a gating name that is absent closes the gate). ``max_seconds`` bounds the run;
        a run cut short ends ``Stopped`` with ``due_in`` 0 so the caller continues at once, and
        ``status.purgeInProgress`` follows the purge over such runs. ``on_progress`` hears how a long run
        is getting on, at most every ``progress_seconds``."""
        now = self.clock.now()
        started = self.clock.monotonic()
        deadline = started + max_seconds if max_seconds is not None else None
        update = RetentionStatusUpdate(status, now=now, generation=generation)
        run = RetentionRun(start=now, outcome=PurgeOutcome.NOTHING_TO_DO)
        stats = PurgeStats()
        left: int | None = None  # what a run cut short left to do, when counted
        gate: Gate | None = None
        failure: _Failure | None = None
        try:
            store = self._store(spec)
            try:
                gate = self.evaluate(spec, exporters, store)
                update.store_ok()
                update.gate(gate)
                run.bound, run.cutoff, run.limiting_exporter = str(gate.bound), gate.cutoff, gate.limiting
                stats = self._purge(spec, store, gate, run, should_stop=should_stop, deadline=deadline,
                                    exporters=exporters, on_progress=on_progress)
                update.status.soft_deleted_pending = store.soft_deleted_count()
                if stats.stopped:
                    try:
                        left = self._left(spec, store, stats.bound, gate.cutoff_us, micros(self.clock.now()))
                    except StoreError:
                        left = None
            except StoreError as exc:
                raise _Failure(Reason.STORE_UNAVAILABLE, str(exc)) from None
        except Exception as exc:  # contained: whatever happens, this policy gets a condition, not a crash
            if isinstance(exc, _Failure):
                failure = exc
            else:
                log.warning("%s: contained an unexpected %s", self.policy, describe_exception(exc))
                log.debug("where: %s", "".join(traceback.format_tb(exc.__traceback__)))
                failure = _Failure(Reason.INTERNAL_ERROR, f"unexpected {describe_exception(exc)}; nothing more is "
                                   "purged until it is retried (see the log at --debug for where)", store=False)
            if failure.store:
                update.store_failed(failure.reason, failure.message)
            else:
                update.failed(failure.reason, f"internal error: {failure.message}")
        run.end = self.clock.now()
        run.duration_seconds = round(self.clock.monotonic() - started, 3)
        run.purged, run.soft_deleted = stats.purged, stats.soft_deleted
        run.chunks, run.longest_chunk_seconds = stats.chunks, round(stats.longest_chunk_seconds, 4)
        run.outcome = self._outcome(spec, gate, stats, failure)
        if failure is not None:
            run.reason, run.error = failure.reason, failure.message
            update.events.append(Event(EventType.WARNING, Reason.PURGE_FAILED, f"{failure.reason}: {failure.message}"))
        elif run.outcome == PurgeOutcome.GATE_CLOSED and gate is not None:
            run.reason = gate.reason
        update.record_run(run)
        update.purge_progress(run, remaining=left)
        self._announce(update, spec, gate, stats, run)
        new_status, events = update.finish()
        if failure is not None:
            due_in = self.backoff.failed(spec.every)
        else:
            self.backoff.succeeded()
            due_in = 0.0 if stats.stopped and not should_stop() else float(spec.every)
        return RetentionOutcome(new_status, events, gate, stats, due_in)

    def _purge(
        self,
        spec: RetentionPolicySpec,
        store: CaptureStore,
        gate: Gate,
        run: RetentionRun,
        *,
        should_stop: Callable[[], bool],
        deadline: float | None,
        exporters: Mapping[str, ExporterRef],
        on_progress: ProgressReport | None,
    ) -> PurgeStats:
        now_us = micros(self.clock.now())
        grace_us = _grace_us(spec)
        # Each record hidden by a policy carries the end of that policy's grace period: another policy on the
        # same store, with a shorter one, removes it only once that is over. Marks from before the store
        # recorded it are judged by this policy's grace period.
        undated_before_us = now_us - grace_us if grace_us is not None else None
        if spec.dry_run:
            run.would_purge = self._left(spec, store, gate.bound if gate.open else 0, gate.cutoff_us, now_us)
            return PurgeStats(bound=gate.bound)
        on_chunk = None
        if on_progress is not None:
            on_chunk = _ProgressTracker(on_progress, self.progress_seconds, self.clock, lambda: self._left(
                spec, store, gate.bound, gate.cutoff_us, now_us)).chunk
        purger = Purger(store, batch_size=spec.batch_size, clock=self.clock, max_chunk_seconds=self.max_chunk_seconds,
                        pause_seconds=self.pause_seconds, recheck_seconds=self.recheck_seconds, on_chunk=on_chunk)
        stats = PurgeStats(bound=gate.bound)
        if grace_us is not None and gate.bound > 0:
            # Bounded by the gate as it is now, not as it was when they were marked: an exporter that joined
            # the gate since, or was reset (its bucket wiped), has yet to export them, and they wait for it.
            stats.add(purger.purge_soft_deleted(now_us, max_id=gate.bound, undated_marked_before_us=undated_before_us,
                                                should_stop=should_stop, deadline=deadline))
        if gate.open and not stats.stopped:

            def recheck() -> int:
                try:
                    current = self.evaluate(spec, exporters, store)
                except Exception:
                    return 0
                return current.bound if current.open else 0

            expired = purger.expire(
                gate.bound, gate.cutoff_us,
                mark_at_us=now_us if grace_us is not None else None,
                purge_after_us=now_us + grace_us if grace_us is not None else None,
                should_stop=should_stop, deadline=deadline,
                recheck=recheck if spec.require_export else None,
            )
            stats.add(expired)
            stats.bound = expired.bound
            if expired.bound < gate.bound:
                run.bound = str(expired.bound)
        return stats

    @staticmethod
    def _left(spec: RetentionPolicySpec, store: CaptureStore, bound: int, cutoff_us: int, now_us: int) -> int:
        """Records a run with this bound would remove or hide: old visible ones and, with ``softDelete``,
        hidden ones whose grace period is over (what a dry run reports)."""
        if bound <= 0:
            return 0
        left = store.count_expired(bound, cutoff_us)
        grace_us = _grace_us(spec)
        if grace_us is not None:
            left += store.soft_deleted_due_count(now_us, max_id=bound, undated_marked_before_us=now_us - grace_us)
        return left

    @staticmethod
    def _outcome(spec: RetentionPolicySpec, gate: Gate | None, stats: PurgeStats, failure: _Failure | None) -> str:
        if failure is not None:
            return PurgeOutcome.FAILED
        if spec.dry_run:
            return PurgeOutcome.DRY_RUN
        if stats.stopped:
            return PurgeOutcome.STOPPED
        if stats.purged or stats.soft_deleted:
            return PurgeOutcome.SUCCEEDED
        if gate is not None and not gate.open:
            return PurgeOutcome.GATE_CLOSED
        return PurgeOutcome.NOTHING_TO_DO

    @staticmethod
    def _announce(update: RetentionStatusUpdate, spec: RetentionPolicySpec, gate: Gate | None, stats: PurgeStats,
                  run: RetentionRun) -> None:
        if not (stats.purged or stats.soft_deleted) or gate is None:
            return
        limited = f"; bound set by {gate.limiting}" if gate.limiting else ""
        parts = []
        if stats.expired:
            parts.append(f"deleted {stats.expired}")
            pending = update.status.soft_deleted_pending
            if pending:  # another policy on this store (or this one before) promised restorable purges
                parts[-1] += (f" for good, not restorable: this policy has no softDelete (the store's {pending} "
                              "soft-deleted records are untouched)")
        if stats.soft_deleted:
            parts.append(f"soft-deleted {stats.soft_deleted}")
        if stats.purged_soft:
            parts.append(f"removed {stats.purged_soft} soft-deleted past their grace period")
        cutoff = gate.cutoff.isoformat().replace("+00:00", "Z")
        update.events.append(Event(EventType.NORMAL, Reason.PURGED, f"{', '.join(parts)} (records up to id "
                                   f"{run.bound}, older than {cutoff}){limited}"))
        if gate.mode == GateMode.AGE_ONLY and (stats.expired or stats.soft_deleted):
            update.events.append(Event(EventType.WARNING, Reason.PURGING_UNEXPORTED, "requireExport is false: records "
                                       "were purged by age alone, whether exported or not"))


def _grace_us(spec: RetentionPolicySpec) -> int | None:
    return int(spec.soft_delete.grace.total_seconds() * 1_000_000) if spec.soft_delete else None
