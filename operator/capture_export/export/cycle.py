"""One S3Exporter's cycle, shared by the kopf handlers and the standalone runner.

Given the spec and the last status, a cycle resolves credentials (re-read every time, so rotation takes
effect), opens the store (never creating it: a store that does not exist is ``StoreNotFound``), tests
the connection when the destination or credentials changed, claims the destination (one writer per
destination, export/ownership.py), recovers the cursor from the checkpoint and the status (refusing
another store's checkpoint, a vanished checkpoint and a cursor ahead of the store; a saved cursor ahead
of the checkpoint goes back to it), applies a requested reset, runs the export engine and returns the
new status, the Events worth emitting and when the next cycle is due.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..api import S3ExporterSpec, S3ExporterStatus
from ..api.vocabulary import ConditionType, Domain, EventType, ExportOutcome, Reason
from ..backoff import FailureBackoff
from ..clock import Clock, SystemClock
from ..objectstore import ObjectStore, ObjectStoreError, S3Access, S3Location, S3ObjectStore
from ..objectstore.credentials import CredentialResolver, SecretSource
from ..status.exporter import Event, StatusUpdate
from ..store import CaptureStore, StoreError, StoreNotFound, StoreRefused
from .checkpoint import parse_id
from .engine import ExportEngine
from .model import BatchResult, Cursor, ExporterId, ExportFailure, RunResult, unexpected_failure
from .ownership import RELEASE_SECONDS, Ownership

__all__ = ["CycleOutcome", "ExporterWorker", "ObjectStoreFactory", "StoreOpener"]

# Failures that say nothing about the connection: the cached engine (and the lease it watches) is kept.
_KEEP_ENGINE = frozenset({Reason.DESTINATION_IN_USE, Reason.CHECKPOINT_MISSING, Reason.CHECKPOINT_CORRUPT,
                          Reason.STORE_MISMATCH, Reason.CURSOR_AHEAD_OF_STORE})
_DEGRADED = ("bucket reachable and writable; this S3 server ignores conditional writes, so one writer per "
             "destination rests on the store lock and on other exporters' checkpoints only (docs/exactly-once.md)")


StoreOpener = Callable[[S3ExporterSpec, str], CaptureStore]
# (where, how: credentials, role, encryption, TLS) -> a client. Called again whenever either changed.
ObjectStoreFactory = Callable[[S3Location, S3Access], ObjectStore]


@dataclass
class CycleOutcome:
    status: S3ExporterStatus
    events: list[Event]
    result: RunResult | None
    due_in: float  # seconds until the next cycle should start


def _credentials_message(access: S3Access) -> str:
    source = "the Secret's keys" if access.credentials is not None else "the pod's default credentials"
    if access.credentials is not None and access.credentials.session_token:
        source += " and session token"
    if access.role is not None:
        external = " with an external id" if access.role.external_id else ""
        return (f"assumed role {access.role.role_arn} (session {access.role.session_name}){external} with {source}; "
                "accepted by the bucket")
    return f"{source} accepted by the bucket"


class ExporterWorker:
    """Holds what one exporter reuses between cycles: its engine, and whether it has been checked."""

    def __init__(
        self,
        exporter: ExporterId,
        *,
        open_store: StoreOpener,
        secrets: SecretSource,
        clock: Clock | None = None,
        object_store_factory: ObjectStoreFactory | None = None,
    ) -> None:
        self.exporter = exporter
        self.open_store = open_store
        self.credentials = CredentialResolver(secrets)
        self.clock = clock or SystemClock()
        self.object_store_factory = object_store_factory or (
            lambda location, access: S3ObjectStore(location, access, now=self.clock.now))
        self.engine: ExportEngine | None = None
        self._engine_key: tuple[object, ...] | None = None
        self.backoff = FailureBackoff()
        # One writer per destination: the store lock and the lease this worker holds between cycles.
        self.ownership = Ownership(exporter, clock=self.clock)

    def close(self, timeout: float = RELEASE_SECONDS) -> None:
        """Give up the destination (the store lock, the lease): the worker is done. S3 gets ``timeout`` seconds
        to answer the lease's release; past it the lease is left to expire (export/ownership.py)."""
        self.ownership.release(timeout)

    def _access(self, spec: S3ExporterSpec) -> S3Access:
        try:
            return self.credentials.access(self.exporter.namespace, self.exporter.name, spec)
        except ObjectStoreError as exc:
            raise ExportFailure.from_object_store(exc) from None

    def _engine_for(self, spec: S3ExporterSpec, access: S3Access, store: CaptureStore) -> bool:
        """Make or reuse the engine; True when it is new (so the connection must be tested)."""
        location = S3Location(spec.bucket, spec.region, spec.endpoint)
        key = (location, access, id(store), spec.model_dump_json())
        if self.engine is not None and key == self._engine_key:
            return False
        try:
            objects = self.object_store_factory(location, access)
        except ObjectStoreError as exc:  # no client can be made (a region or an endpoint it refuses)
            raise ExportFailure.from_object_store(exc) from None
        self.engine = ExportEngine(spec, self.exporter, store, objects, clock=self.clock,
                                   hold=self.ownership.hold)
        self._engine_key = key
        return True

    @staticmethod
    def _saved_cursor(status: S3ExporterStatus, resetting: bool) -> Cursor:
        """The cursor the status (or the standalone state file) saved; CheckpointCorrupt when it is not an
        id (a hand-edited state file), unless a reset is about to start again anyway."""
        try:
            return Cursor(parse_id(status.epoch), parse_id(status.cursor))
        except ValueError as exc:
            if resetting:
                return Cursor(max(status.epoch, 0), 0)
            raise ExportFailure(Reason.CHECKPOINT_CORRUPT, f"the saved cursor is not valid ({exc}); a reset "
                                "(annotation capture.dev/reset-cursor) re-exports from the beginning",
                                domain=Domain.BUCKET, transient=False) from None

    @staticmethod
    def _saved_cursor_ahead(update: StatusUpdate, status: S3ExporterStatus, saved: Cursor,
                            checkpoint: Cursor) -> None:
        for corrected in (update.status, status):
            corrected.epoch, corrected.cursor = checkpoint.epoch, str(checkpoint.position)
        update.events.append(Event(EventType.WARNING, Reason.SAVED_CURSOR_AHEAD, (
            f"the saved cursor (epoch {saved.epoch}, {saved.position}) is ahead of the checkpoint in the bucket "
            f"(epoch {checkpoint.epoch}, {checkpoint.position}): status was edited or the bucket rolled back. "
            "Resuming from the checkpoint; records past it are exported again, none is skipped")))

    def cycle(
        self,
        spec: S3ExporterSpec,
        status: S3ExporterStatus,
        *,
        generation: int | None = None,
        reset_token: str | None = None,
        run_now_token: str | None = None,
        max_seconds: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[BatchResult], None] | None = None,
        before_export: Callable[[], None] | None = None,
    ) -> CycleOutcome:
        """One export run. ``status`` is not changed, but for one thing: when its cursor is ahead of the
        checkpoint (edited by hand or by a tenant), it is set back to the checkpoint's in place, so that
        the caller's never-backwards guards (the runner's save after each batch, the operator's settle)
        let the runs that follow in. ``before_export`` is called once the engine is ready (client made,
        connection tested, cursor recovered), right before the first batch."""
        update = StatusUpdate(status, now=self.clock.now(), generation=generation)
        if run_now_token is not None:
            update.status.last_run_now = run_now_token
        result: RunResult | None = None
        try:
            access = self._access(spec)
            try:
                store = self.open_store(spec, self.exporter.namespace)
                store_id = store.identity()
            except StoreNotFound as exc:
                raise ExportFailure(Reason.STORE_NOT_FOUND, str(exc), domain=Domain.STORE, transient=False) from None
            except StoreRefused as exc:  # not allowed or not a store: someone must fix the spec or the Secret
                raise ExportFailure(exc.reason, exc.message, domain=Domain.STORE, transient=False) from None
            except StoreError as exc:
                raise ExportFailure(Reason.STORE_UNAVAILABLE, str(exc), domain=Domain.STORE, transient=True) from None
            if self._engine_for(spec, access, store):
                assert self.engine is not None
                report = self.engine.check_connection()
                update.passed(ConditionType.CREDENTIALS_VALID, ConditionType.BUCKET_REACHABLE,
                              messages={ConditionType.CREDENTIALS_VALID: _credentials_message(access),
                                        ConditionType.BUCKET_REACHABLE: report.message})
            engine = self.engine
            assert engine is not None
            started = self.clock.now()
            resetting = reset_token is not None and reset_token != update.status.last_reset
            saved_cursor = self._saved_cursor(update.status, resetting)
            try:
                # The store lock now; the destination (lease, other exporters) before the first write.
                try:
                    self.ownership.begin(store, store_id, engine.objects, engine.layout, engine._call)
                except StoreError as exc:  # the exporter lock's own session could not reach the store
                    raise ExportFailure(Reason.STORE_UNAVAILABLE, str(exc), domain=Domain.STORE,
                                        transient=True) from None
                saved = engine.recover(saved_cursor, saved_store_id=update.status.store_id, resetting=resetting)
            except ExportFailure as exc:
                if not str(update.status.cursor).isdigit():
                    raise  # a damaged saved cursor (being reset): a condition only, no run to record
                # A run that could not start (the bucket down while the checkpoint is read, a refusal) is a
                # failed run like one that failed mid-way: in lastRun and history, not only in a condition.
                result = RunResult(start=started, end=self.clock.now(), outcome=ExportOutcome.FAILED,
                                   cursor=saved_cursor, failure=exc)
                update.record_run(result)
                self._forget_engine_after(exc)
                return self._outcome(spec, update, result, exc)
            if not resetting and saved.order() < saved_cursor.order():
                self._saved_cursor_ahead(update, status, saved_cursor, saved)
            update.advance_cursor(saved.epoch, saved.position)
            update.status.store_id = store_id
            if resetting:
                self.ownership.hold()  # the reset writes the checkpoint at once
                saved = engine.reset(saved)
                update.advance_cursor(saved.epoch, saved.position)  # a newer epoch: the guard lets it in
                update.status.totals = type(update.status.totals)()
                update.status.last_reset = reset_token
                update.events.append(Event(EventType.NORMAL, Reason.CURSOR_RESET, f"re-exporting from the beginning "
                                           f"(epoch {saved.epoch})"))
            if before_export is not None:
                before_export()
            result = engine.run(saved, max_seconds=max_seconds, should_stop=should_stop, on_batch=on_batch)
            if not self.ownership.conditional_writes:
                update.notes[ConditionType.BUCKET_REACHABLE] = _DEGRADED
            update.record_run(result)
            if result.foreign_objects:
                shown = ", ".join(result.foreign_objects[:5]) + (" …" if len(result.foreign_objects) > 5 else "")
                update.events.append(Event(EventType.WARNING, Reason.FOREIGN_OBJECTS, (
                    f"{len(result.foreign_objects)} object(s) among this exporter's that it did not write, left "
                    f"alone: {shown}")))
            failure = result.failure
        except Exception as exc:  # contained: whatever happens, this exporter gets a condition, not a crash
            failure = exc if isinstance(exc, ExportFailure) else unexpected_failure(exc)
            update.fail(failure)
            update.events.append(Event(EventType.WARNING, Reason.EXPORT_FAILED, failure.message))
            self._forget_engine_after(failure)
        return self._outcome(spec, update, result, failure)

    def _forget_engine_after(self, failure: ExportFailure) -> None:
        if failure.domain in (Domain.CREDENTIALS, Domain.BUCKET) and failure.reason not in _KEEP_ENGINE:
            # Re-test the connection next time rather than trusting a cached engine.
            self._engine_key = None

    def _outcome(self, spec: S3ExporterSpec, update: StatusUpdate, result: RunResult | None,
                 failure: ExportFailure | None) -> CycleOutcome:
        new_status, events = update.finish()
        if failure is not None:
            due_in = self.backoff.failed(spec.every)
        else:
            self.backoff.succeeded()
            backlog = result.backlog if result else None
            due_in = 0.0 if backlog and result and result.outcome != ExportOutcome.STOPPED else float(spec.every)
        return CycleOutcome(new_status, events, result, due_in)
