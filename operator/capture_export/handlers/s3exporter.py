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
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from ..api import GROUP, S3EXPORTER, VERSION, S3ExporterSpec, S3ExporterStatus
from ..api.destination import destination_of
from ..api.manifests import InvalidManifest, parse_spec
from ..api.vocabulary import ConditionType, EventType, Reason, Truth
from ..export import BatchResult, ExporterId
from ..export.cycle import ExporterWorker
from ..export.model import ExportFailure, unexpected_failure
from ..redact import redact
from ..status.conditions import get_condition, set_condition
from ..status.exporter import Event, StatusUpdate, cursor_position, not_behind
from .settings import RESET_CURSOR, RUN_NOW, Runtime, sleep_until_woken

__all__ = ["DESTINATION", "KIND", "RESET_CURSOR", "RUN_NOW", "Desired", "ExporterState", "Hold", "judge",
           "load_status", "register"]

KIND = S3EXPORTER.kind
PLURAL = S3EXPORTER.plural
DESTINATION = f"{GROUP}/destination"
StatusChange = Callable[[S3ExporterStatus], "tuple[S3ExporterStatus, list[Event]] | None"]
CRASH_BACKOFF = 30.0
STATUS_RETRY = 5.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hold:
    """Why the worker must not export now."""

    reason: str
    message: str
    warning: bool = True


@dataclass(frozen=True, eq=False)
class Desired:
    """What the last configure handler decided. Compared by identity: each handler run is a new one."""

    generation: int | None
    spec: S3ExporterSpec | None
    hold: Hold | None = None


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
    """The stored status, leniently: unknown fields are dropped rather than losing the cursor."""
    raw = dict(raw or {})
    try:
        return S3ExporterStatus.model_validate(raw)
    except ValidationError:
        pass
    known = {field.alias or name for name, field in S3ExporterStatus.model_fields.items()}
    try:
        return S3ExporterStatus.model_validate({k: v for k, v in raw.items() if k in known})
    except ValidationError:
        log.warning("unreadable status %r; keeping only the cursor", raw)
        try:
            return S3ExporterStatus(cursor=str(int(raw.get("cursor", 0))), epoch=int(raw.get("epoch", 0)))
        except (TypeError, ValueError, ValidationError):
            return S3ExporterStatus()


class ExporterState:
    """One S3Exporter's worker: the spec its handler accepted, its status, and the loop its daemon runs."""

    def __init__(self, runtime: Runtime, namespace: str, name: str, raw_status: Mapping[str, Any] | None) -> None:
        self.runtime = runtime
        self.id = ExporterId(namespace, name)
        self.worker = ExporterWorker(self.id, open_store=runtime.stores, secrets=runtime.secrets,
                                     clock=runtime.clock, object_store_factory=runtime.object_stores)
        self.status = load_status(raw_status)
        self.desired: Desired | None = None
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.due = 0.0  # loop time when the next cycle is due
        self.last_inputs: tuple[object, ...] | None = None

    @classmethod
    def ensure(cls, runtime: Runtime, body: Mapping[str, Any]) -> ExporterState:
        meta = body.get("metadata", {})
        key = (KIND, meta.get("namespace", ""), meta.get("name", ""))
        state = runtime.workers.get(key)
        if state is None:
            state = runtime.workers[key] = cls(runtime, key[1], key[2], body.get("status"))
            runtime.metrics.exporters.set(sum(1 for k in runtime.workers if k[0] == KIND))
        return state

    def forget(self) -> None:
        runtime = self.runtime
        runtime.workers.pop((KIND, self.id.namespace, self.id.name), None)
        runtime.metrics.exporters.set(sum(1 for k in runtime.workers if k[0] == KIND))
        runtime.metrics.forget(self.id.namespace, self.id.name)
        runtime.writer.forget(PLURAL, self.id.namespace, self.id.name)

    # -- status --------------------------------------------------------------------------------------

    async def write(self, body: Mapping[str, Any], change: StatusChange) -> bool:
        """Apply ``change`` to the current status and write the result; one writer at a time."""
        async with self.lock:
            changed = change(self.status)
            if changed is None:
                return True
            status, events = changed
            self.status = not_behind(status, cursor_position(self.status), what=str(self.id))
            try:
                return await self.runtime.writer.write_exporter(body, PLURAL, self.status, events)
            except Exception as exc:  # the API is down or refuses: keep the status, write it next time
                log.warning("%s: status not written: %s", self.id, exc)
                return False

    def failed(self, status: S3ExporterStatus, desired: Desired, failure: ExportFailure) -> tuple[
            S3ExporterStatus, list[Event]]:
        """``status`` with ``failure`` as the cycle's outcome: its condition and its Events."""
        update = StatusUpdate(status, now=self.runtime.clock.now(), generation=desired.generation)
        update.fail(failure)
        update.events.append(Event(EventType.WARNING, Reason.EXPORT_FAILED, failure.message))
        return update.finish()

    def held(self, status: S3ExporterStatus, desired: Desired) -> tuple[S3ExporterStatus, list[Event]]:
        """``status`` with ``Ready=False`` for the hold, and the Event it deserves (once per new hold)."""
        assert desired.hold is not None
        hold = desired.hold
        update = StatusUpdate(status, now=self.runtime.clock.now(), generation=desired.generation)
        before = get_condition(update.status.conditions, ConditionType.READY)
        update.status.conditions, _ = set_condition(update.status.conditions, ConditionType.READY, Truth.FALSE,
                                                    hold.reason, hold.message, now=update.now,
                                                    generation=desired.generation)
        if before is not None and (before.status, before.reason, before.message) == (Truth.FALSE, hold.reason,
                                                                                       hold.message):
            return update.status, []
        kind = EventType.WARNING if hold.warning else EventType.NORMAL
        return update.status, [Event(kind, hold.reason, hold.message)]

    async def configure(self, body: Mapping[str, Any], desired: Desired) -> None:
        """Accept a handler's decision: write the hold or the first-visit conditions, wake the worker."""
        self.desired = desired  # first: a cycle running with an older spec stops after its batch in flight
        self.wake.set()
        if desired.hold is not None:
            await self.write(body, lambda current: self.held(current, desired))
        else:
            now = self.runtime.clock.now()
            await self.write(body, lambda current: None if current.conditions else
                             StatusUpdate(current, now=now, generation=None).finish())

    # -- the worker loop ------------------------------------------------------------------------------

    def inputs(self, body: Mapping[str, Any], desired: Desired | None = None) -> tuple[object, ...]:
        """What a cycle acts on; a cycle runs at once whenever it differs from the last cycle's."""
        annotations = body.get("metadata", {}).get("annotations") or {}
        return desired or self.desired, annotations.get(RUN_NOW), annotations.get(RESET_CURSOR)

    async def serve(self, body: Mapping[str, Any], stopped: kopf.DaemonStopped) -> None:
        loop = asyncio.get_running_loop()
        while not stopped.is_set():
            self.wake.clear()
            desired = self.desired
            timeout: float | None = None
            if desired is not None and desired.hold is None:
                if self.inputs(body, desired) != self.last_inputs or loop.time() >= self.due:
                    due_in = await self._cycle(body, desired, stopped)
                    self.due = loop.time() + due_in
                    continue
                timeout = self.due - loop.time()
            await sleep_until_woken(self.wake, stopped, timeout)

    async def _cycle(self, body: Mapping[str, Any], desired: Desired, stopped: kopf.DaemonStopped) -> float:
        runtime, config = self.runtime, self.runtime.config
        self.last_inputs = inputs = self.inputs(body, desired)
        _, run_now, reset = inputs
        namespace, name = self.id.namespace, self.id.name
        assert desired.spec is not None

        def should_stop() -> bool:  # from the cycle's thread: stop after the batch in flight commits
            return stopped.is_set() or self.desired is not desired

        def on_batch(batch: BatchResult) -> None:
            runtime.metrics.batch(namespace, name, batch)

        cycle = functools.partial(
            self.worker.cycle, desired.spec, self.status, generation=desired.generation,
            reset_token=reset, run_now_token=run_now,  # type: ignore[arg-type]
            max_seconds=config.cycle_max_seconds, should_stop=should_stop, on_batch=on_batch,
        )
        started = time.monotonic()
        runtime.metrics.cycles_in_flight.inc()
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(runtime.cycles, cycle)
        except Exception as exc:  # the cycle contains its own failures; this is the last line of defence
            failure = unexpected_failure(exc)
            runtime.metrics.cycle(namespace, name, None, time.monotonic() - started)
            await self.write(body, lambda current: self.failed(current, desired, failure))
            return CRASH_BACKOFF
        finally:
            runtime.metrics.cycles_in_flight.dec()
        runtime.metrics.cycle(namespace, name, outcome.result, time.monotonic() - started)
        def result(current: S3ExporterStatus) -> tuple[S3ExporterStatus, list[Event]]:
            latest = self.desired
            if latest is not None and latest is not desired and latest.hold is not None:
                # Refused while this cycle ran: keep the refusal visible.
                return self.held(outcome.status, latest)[0], outcome.events
            return outcome.status, outcome.events

        due_in = outcome.due_in
        failed = outcome.result is None or outcome.result.failure is not None
        if failed and config.retry_cap is not None:
            due_in = min(due_in, config.retry_cap)
        cycled = time.monotonic()
        if not await self.write(body, result):
            due_in = min(due_in, STATUS_RETRY)
        log.debug("%s: cycle (generation %s) %.3fs, status write %.3fs, next in %.0fs", self.id, desired.generation,
                  cycled - started, time.monotonic() - cycled, due_in)
        return due_in


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.resume(*resource, id="configure", registry=registry)
    @kopf.on.create(*resource, id="configure", registry=registry)
    @kopf.on.update(*resource, id="configure", field="spec", registry=registry)
    async def configure(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
        state = ExporterState.ensure(runtime, body)
        parsed, hold = judge(spec, meta.annotations)
        if parsed is not None and DESTINATION not in meta.annotations:
            patch.metadata.annotations[DESTINATION] = json.dumps(destination_of(parsed), sort_keys=True)
        await state.configure(body, Desired(meta.get("generation"), parsed, hold))

    @kopf.on.field(*resource, field=("metadata", "annotations", RUN_NOW), id="run-now", registry=registry)
    @kopf.on.field(*resource, field=("metadata", "annotations", RESET_CURSOR), id="reset-cursor",
                   registry=registry)
    async def manual_action(body: kopf.Body, **_: Any) -> None:
        ExporterState.ensure(runtime, body).wake.set()

    @kopf.daemon(*resource, id="worker", cancellation_polling=1.0, registry=registry)
    async def worker(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        state = ExporterState.ensure(runtime, body)
        try:
            await state.serve(body, stopped)
        finally:
            try:
                # Give up the destination (store lock, lease) so that a successor need not wait for it.
                await asyncio.to_thread(state.worker.close)
            finally:
                state.forget()
