"""RetentionPolicy in a cluster: kopf handlers around the retention cycle (retention/cycle.py), nothing more.

* ``configure`` (on create, update and resume) validates the spec with the API models and hands the
  accepted spec to the resource's worker, waking it. A refused spec holds the worker (``Ready=False``,
  ``InvalidSpec`` naming the field, one Warning Event): it never purges under an older spec, and it
  resumes by itself when the spec is fixed.
* ``worker``, a daemon per resource, runs one cycle whenever one is due: the spec changed, ``every``
  seconds passed, or the last run was cut short by its time budget. Each cycle is one
  ``RetentionWorker.cycle`` call on a thread (never two of the same policy at once) against every
  S3Exporter of the policy's namespace, listed from the API server just before the cycle, so the gate
  sees exporters that no worker of this process serves yet. Its status goes out in one explicit status
  patch, its Events after it. On deletion the daemon is stopped, the purge stops at a chunk boundary,
  and kopf removes our finalizer once the daemon has exited.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from ..api import GROUP, RETENTIONPOLICY, S3EXPORTER, VERSION, RetentionPolicySpec, RetentionPolicyStatus
from ..api.manifests import InvalidManifest, parse_spec
from ..api.s3exporter import S3ExporterSpec
from ..api.vocabulary import ConditionType, EventType, Reason, Truth
from ..export import ExporterId
from ..redact import describe_exception
from ..retention import ExporterRef, RetentionOutcome, RetentionWorker
from ..status.conditions import get_condition, set_condition
from ..status.exporter import Event
from ..status.retention import RetentionStatusUpdate
from .kube import KubeApiError
from .s3exporter import load_status as load_exporter_status
from .settings import Runtime, sleep_until_woken

__all__ = ["KIND", "Desired", "PolicyState", "exporters_from", "judge", "load_status", "register"]

KIND = RETENTIONPOLICY.kind
PLURAL = RETENTIONPOLICY.plural
StatusChange = Callable[[RetentionPolicyStatus], "tuple[RetentionPolicyStatus, list[Event]] | None"]
CYCLE_MAX_SECONDS = 60.0  # a long purge goes in runs this long, with a status write after each
CRASH_BACKOFF = 30.0
API_RETRY = 10.0  # the exporters could not be listed: try again this soon
STATUS_RETRY = 5.0
log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Desired:
    """What the last configure handler decided. Compared by identity: each handler run is a new one."""

    generation: int | None
    spec: RetentionPolicySpec | None
    refusal: str | None = None  # InvalidSpec's message: the worker holds


def judge(spec: Mapping[str, Any]) -> tuple[RetentionPolicySpec | None, str | None]:
    """Validate a spec as the CRD would: the spec, or why it is refused."""
    try:
        parsed = parse_spec(KIND, dict(spec))
    except InvalidManifest as exc:
        return None, f"spec refused, not purging: {exc}"
    assert isinstance(parsed, RetentionPolicySpec)
    return parsed, None


def load_status(raw: Mapping[str, Any] | None) -> RetentionPolicyStatus:
    """The stored status, leniently: unreadable fields are dropped rather than the whole status."""
    raw = dict(raw or {})
    try:
        return RetentionPolicyStatus.model_validate(raw)
    except ValidationError:
        pass
    status = RetentionPolicyStatus()
    for name, field in RetentionPolicyStatus.model_fields.items():
        key = field.alias or name
        if key not in raw:
            continue
        try:
            status = RetentionPolicyStatus.model_validate({**status.model_dump(by_alias=True), key: raw[key]})
        except ValidationError:
            log.warning("unreadable status field %s=%r; dropped", key, raw[key])
    return status


def exporters_from(items: Iterable[Mapping[str, Any]]) -> dict[str, ExporterRef]:
    """The gate's view of a namespace's S3Exporters (raw bodies from the API). Those whose spec does not
    parse are left out: a gating one then counts as missing and the gate closes naming it."""
    refs: dict[str, ExporterRef] = {}
    for item in items:
        meta = item.get("metadata") or {}
        name = meta.get("name")
        if not name:
            continue
        try:
            spec = parse_spec(S3EXPORTER.kind, item.get("spec") or {})
        except InvalidManifest:
            continue
        assert isinstance(spec, S3ExporterSpec)
        refs[name] = ExporterRef(name, spec, dict(meta.get("labels") or {}), load_exporter_status(item.get("status")))
    return refs


class PolicyState:
    """One RetentionPolicy's worker: the spec its handler accepted, its status, and its daemon's loop."""

    def __init__(self, runtime: Runtime, namespace: str, name: str, raw_status: Mapping[str, Any] | None) -> None:
        self.runtime = runtime
        self.id = ExporterId(namespace, name)
        self.worker = RetentionWorker(self.id, open_store=runtime.stores, secrets=runtime.secrets,
                                      clock=runtime.clock, object_store_factory=runtime.object_stores)
        self.status = load_status(raw_status)
        self.desired: Desired | None = None
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()  # one status writer at a time
        self.running = threading.Lock()  # held by the cycle's thread: never two cycles at once
        self.due = 0.0  # loop time when the next cycle is due
        self.last_desired: Desired | None = None

    @classmethod
    def ensure(cls, runtime: Runtime, body: Mapping[str, Any]) -> PolicyState:
        meta = body.get("metadata", {})
        key = (KIND, meta.get("namespace", ""), meta.get("name", ""))
        state = runtime.workers.get(key)
        if state is None:
            state = runtime.workers[key] = cls(runtime, key[1], key[2], body.get("status"))
        return state

    def forget(self) -> None:
        self.runtime.workers.pop((KIND, self.id.namespace, self.id.name), None)

    # -- status --------------------------------------------------------------------------------------

    async def write(self, body: Mapping[str, Any], change: StatusChange) -> bool:
        """Apply ``change`` to the current status and write the result in one status patch."""
        async with self.lock:
            changed = change(self.status)
            if changed is None:
                return True
            self.status, events = changed
            raw = self.status.model_dump(mode="json", by_alias=True)
            try:
                return await self.runtime.writer.write_status(body, PLURAL, raw, events)
            except Exception as exc:  # the API is down or refuses: keep the status, write it next time
                log.warning("%s: status not written: %s", self.id, exc)
                return False

    def held(self, status: RetentionPolicyStatus, desired: Desired) -> tuple[RetentionPolicyStatus, list[Event]]:
        """``status`` with ``Ready=False InvalidSpec``, and a Warning Event once per new refusal."""
        assert desired.refusal is not None
        update = RetentionStatusUpdate(status, now=self.runtime.clock.now(), generation=desired.generation)
        before = get_condition(update.status.conditions, ConditionType.READY)
        update.status.conditions, _ = set_condition(update.status.conditions, ConditionType.READY, Truth.FALSE,
                                                    Reason.INVALID_SPEC,
                                                    desired.refusal, now=update.now, generation=desired.generation)
        if before is not None and (before.status, before.reason, before.message) == (Truth.FALSE, Reason.INVALID_SPEC,
                                                                                       desired.refusal):
            return update.status, []
        return update.status, [Event(EventType.WARNING, Reason.INVALID_SPEC, desired.refusal)]

    async def configure(self, body: Mapping[str, Any], desired: Desired) -> None:
        """Accept a handler's decision: write the refusal or the first-visit conditions, wake the worker."""
        self.desired = desired  # first: a cycle running under an older spec stops at its next chunk
        self.wake.set()
        if desired.refusal is not None:
            await self.write(body, lambda current: self.held(current, desired))
        else:
            now = self.runtime.clock.now()
            await self.write(body, lambda current: None if current.conditions else
                             RetentionStatusUpdate(current, now=now, generation=None).finish())

    # -- the worker loop ------------------------------------------------------------------------------

    async def serve(self, body: Mapping[str, Any], stopped: kopf.DaemonStopped) -> None:
        loop = asyncio.get_running_loop()
        while not stopped.is_set():
            self.wake.clear()
            desired = self.desired
            timeout: float | None = None
            if desired is not None and desired.refusal is None:
                if desired is not self.last_desired or loop.time() >= self.due:
                    self.last_desired = desired
                    due_in = await self._cycle(body, desired, stopped)
                    self.due = loop.time() + due_in
                    continue
                timeout = self.due - loop.time()
            await sleep_until_woken(self.wake, stopped, timeout)

    def _run(self, desired: Desired, should_stop: Callable[[], bool]) -> RetentionOutcome:
        """One cycle, on a thread: list the namespace's S3Exporters, then gate and purge."""
        assert desired.spec is not None
        with self.running:
            items = self.runtime.kube.list_objects(S3EXPORTER.plural, self.id.namespace)
            return self.worker.cycle(desired.spec, self.status, exporters_from(items), generation=desired.generation,
                                     should_stop=should_stop, max_seconds=CYCLE_MAX_SECONDS)

    async def _cycle(self, body: Mapping[str, Any], desired: Desired, stopped: kopf.DaemonStopped) -> float:
        def should_stop() -> bool:  # from the cycle's thread: stop at the next chunk boundary
            return stopped.is_set() or self.desired is not desired

        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                self.runtime.cycles, self._run, desired, should_stop)
        except KubeApiError as exc:  # no exporters to gate on: purge nothing, try again soon
            log.warning("%s: not purging: %s", self.id, exc)
            return API_RETRY
        except Exception as exc:  # the cycle contains its own failures; this is the last line of defence
            description = describe_exception(exc)
            log.warning("%s: contained an unexpected %s", self.id, description)

            def failed(current: RetentionPolicyStatus) -> tuple[RetentionPolicyStatus, list[Event]]:
                update = RetentionStatusUpdate(current, now=self.runtime.clock.now(), generation=desired.generation)
                update.failed(Reason.INTERNAL_ERROR, f"internal error: unexpected {description}")
                update.events.append(Event(EventType.WARNING, Reason.PURGE_FAILED, f"unexpected {description}"))
                return update.finish()

            await self.write(body, failed)
            return CRASH_BACKOFF

        def result(current: RetentionPolicyStatus) -> tuple[RetentionPolicyStatus, list[Event]]:
            latest = self.desired
            if latest is not None and latest is not desired and latest.refusal is not None:
                return self.held(outcome.status, latest)[0], outcome.events  # refused meanwhile: keep it visible
            return outcome.status, outcome.events

        due_in = outcome.due_in
        if not await self.write(body, result):
            due_in = min(due_in, STATUS_RETRY)
        run = outcome.status.last_run
        log.debug("%s: retention %s (generation %s), next in %.0fs", self.id, run.outcome if run else None,
                  desired.generation, due_in)
        return due_in


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.resume(*resource, id="configure", registry=registry)
    @kopf.on.create(*resource, id="configure", registry=registry)
    @kopf.on.update(*resource, id="configure", field="spec", registry=registry)
    async def configure(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, **_: Any) -> None:
        state = PolicyState.ensure(runtime, body)
        parsed, refusal = judge(spec)
        await state.configure(body, Desired(meta.get("generation"), parsed, refusal))

    @kopf.daemon(*resource, id="worker", cancellation_polling=1.0, registry=registry)
    async def worker(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        state = PolicyState.ensure(runtime, body)
        try:
            await state.serve(body, stopped)
        finally:
            state.forget()
