"""S3Exporter in a cluster: kopf handlers around the export cycle (export/cycle.py), nothing more.

* ``configure`` (on create, update and resume) validates the spec with the API models, refuses what the
  API server should have refused (an invalid spec, a changed destination) and hands the accepted spec
  to the resource's worker, waking it.
* ``run-now`` and ``reset-cursor`` wake it when the ``capture.dev/run-now`` or ``capture.dev/reset-cursor``
  annotation changes; the cycle acts on a value once (it records it in ``status.lastRunNow``/``lastReset``).
* ``worker``, a daemon per resource, runs one cycle whenever one is due: the spec or an annotation
  changed, ``every`` seconds passed, or a backlog remains. Each cycle is one ``ExporterWorker.cycle``
  call on a thread; its status goes out in one explicit status patch, its Events after it. On deletion
  kopf keeps our finalizer until the daemon exits, and the daemon exits only after the batch in flight
  has committed its data and checkpoint objects.

A refused spec stops the worker (it does not keep exporting under an older spec): ``Ready=False`` says
why (``InvalidSpec`` naming the field, ``DestinationImmutable``), a Warning Event says it once, and the
worker resumes by itself when the spec is fixed. The destination is recorded at creation in the
``capture.dev/destination`` annotation, so the refusal survives operator restarts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from ..api import GROUP, S3EXPORTER, VERSION, S3ExporterSpec, S3ExporterStatus
from ..api.destination import destination_of
from ..api.manifests import InvalidManifest, parse_spec
from ..api.vocabulary import EventType, Reason
from ..export import BatchResult
from ..export.cycle import CycleOutcome, ExporterWorker
from ..export.model import ExportFailure, RunResult, unexpected_failure
from ..redact import redact
from ..status.exporter import Event, StatusUpdate, cursor_position, not_behind
from .scheduler import Desired, Hold, ResourceWorker, lenient_status
from .settings import RESET_CURSOR, RUN_NOW, Runtime

__all__ = ["DESTINATION", "KIND", "RESET_CURSOR", "RUN_NOW", "Desired", "ExporterState", "Hold", "judge",
           "load_status", "register"]

KIND = S3EXPORTER.kind
PLURAL = S3EXPORTER.plural
DESTINATION = f"{GROUP}/destination"
log = logging.getLogger(__name__)


def judge(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> tuple[S3ExporterSpec | None, Hold | None]:
    """Validate a spec as the CRD would, and check the destination against the one recorded at creation."""
    try:
        parsed = parse_spec(KIND, dict(spec))
    except InvalidManifest as exc:
        return None, Hold(Reason.INVALID_SPEC, f"spec refused, not exporting: {exc}")
    assert isinstance(parsed, S3ExporterSpec)
    try:
        recorded = json.loads(annotations.get(DESTINATION) or "null")
    except ValueError:
        recorded = None
    current = destination_of(parsed)
    changed = [k for k in current if isinstance(recorded, dict) and k in recorded and recorded[k] != current[k]]
    if changed:
        # redact: a destination recorded before userinfo was refused may hold a password.
        detail = redact(", ".join(f"{k} {recorded[k]!r} -> {current[k]!r}" for k in changed))
        return parsed, Hold(Reason.DESTINATION_IMMUTABLE, f"the destination is immutable ({detail}); not exporting "
                            "until it is restored: create a new S3Exporter to move the export")
    if parsed.suspend:
        return parsed, Hold(Reason.SUSPENDED, "spec.suspend is true: exporting is paused", warning=False)
    return parsed, None


def load_status(raw: Mapping[str, Any] | None) -> S3ExporterStatus:
    """The stored status, leniently: unreadable fields are dropped rather than losing the cursor (one written
    as a number is read as one)."""
    raw = dict(raw or {})
    cursor = raw.get("cursor")
    if isinstance(cursor, int) and not isinstance(cursor, bool):
        raw["cursor"] = str(cursor)
    return lenient_status(S3ExporterStatus, raw)


class ExporterState(ResourceWorker[S3ExporterSpec, S3ExporterStatus, ExporterWorker]):
    """One S3Exporter's worker (handlers/scheduler.py): its cycle is one ``ExporterWorker.cycle`` on a
    thread; a run-now or reset annotation changing is an input that runs a cycle at once."""

    kind = KIND
    plural = PLURAL
    cycle_worker = ExporterWorker
    load_status = staticmethod(load_status)

    def started(self) -> None:
        self.runtime.metrics.exporters.set(sum(1 for k in self.runtime.workers if k[0] == KIND))

    def stopped(self) -> None:
        runtime = self.runtime
        runtime.metrics.exporters.set(sum(1 for k in runtime.workers if k[0] == KIND))
        runtime.metrics.forget(self.id.namespace, self.id.name)
        runtime.writer.forget(PLURAL, self.id.namespace, self.id.name)

    def close(self) -> None:
        # Give up the destination (store lock, lease) so that a successor need not wait; within the stop budget.
        self.worker.close(self.runtime.release_seconds())

    @staticmethod
    def decide(spec: Mapping[str, Any], meta: kopf.Meta, patch: kopf.Patch) -> Desired[S3ExporterSpec]:
        parsed, hold = judge(spec, meta.annotations)
        if parsed is not None and DESTINATION not in meta.annotations:
            patch.metadata.annotations[DESTINATION] = json.dumps(destination_of(parsed), sort_keys=True)
        return Desired(meta.get("generation"), parsed, hold)

    # -- status --------------------------------------------------------------------------------------

    def status_update(self, status: S3ExporterStatus, generation: int | None) -> StatusUpdate:
        return StatusUpdate(status, now=self.runtime.clock.now(), generation=generation)

    def settle(self, previous: S3ExporterStatus, status: S3ExporterStatus) -> S3ExporterStatus:
        return not_behind(status, cursor_position(previous), what=str(self.id))

    async def publish(self, body: Mapping[str, Any], status: S3ExporterStatus, events: list[Event]) -> bool:
        return await self.runtime.writer.write_exporter(body, PLURAL, status, events)

    def failed(self, status: S3ExporterStatus, desired: Desired[S3ExporterSpec], failure: ExportFailure) -> tuple[
            S3ExporterStatus, list[Event]]:
        """``status`` with ``failure`` as the cycle's outcome: its condition and its Events."""
        update = self.status_update(status, desired.generation)
        update.fail(failure)
        update.events.append(Event(EventType.WARNING, Reason.EXPORT_FAILED, failure.message))
        return update.finish()

    def crashed(self, status: S3ExporterStatus, desired: Desired[S3ExporterSpec],
                exc: Exception) -> tuple[S3ExporterStatus, list[Event]]:
        return self.failed(status, desired, unexpected_failure(exc))

    # -- the cycle -----------------------------------------------------------------------------------

    def inputs(self, body: Mapping[str, Any], desired: Desired[S3ExporterSpec]) -> tuple[object, ...]:
        annotations = body.get("metadata", {}).get("annotations") or {}
        return desired, annotations.get(RUN_NOW), annotations.get(RESET_CURSOR)

    async def run(self, desired: Desired[S3ExporterSpec], inputs: tuple[object, ...],
                  should_stop: Callable[[], bool]) -> CycleOutcome:
        runtime, config = self.runtime, self.runtime.config
        _, run_now, reset = inputs
        namespace, name = self.id.namespace, self.id.name
        assert desired.spec is not None

        def on_batch(batch: BatchResult) -> None:
            runtime.metrics.batch(namespace, name, batch)

        cycle = functools.partial(
            self.worker.cycle, desired.spec, self.status, generation=desired.generation,
            reset_token=reset, run_now_token=run_now,  # type: ignore[arg-type]
            max_seconds=config.cycle_max_seconds, should_stop=should_stop, on_batch=on_batch,
        )
        started = time.monotonic()
        result: RunResult | None = None
        runtime.metrics.cycles_in_flight.inc()
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(runtime.cycles, cycle)
            result = outcome.result
        finally:
            runtime.metrics.cycles_in_flight.dec()
            runtime.metrics.cycle(namespace, name, result, time.monotonic() - started)
        failed = outcome.result is None or outcome.result.failure is not None
        if failed and config.retry_cap is not None:
            outcome.due_in = min(outcome.due_in, config.retry_cap)
        return outcome


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    ExporterState.register(registry, runtime)
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.field(*resource, field=("metadata", "annotations", RUN_NOW), id="run-now", registry=registry)
    @kopf.on.field(*resource, field=("metadata", "annotations", RESET_CURSOR), id="reset-cursor",
                   registry=registry)
    async def manual_action(body: kopf.Body, **_: Any) -> None:
        ExporterState.ensure(runtime, body).wake.set()
