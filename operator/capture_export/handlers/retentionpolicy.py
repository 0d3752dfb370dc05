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
from typing import Any

import kopf

from ..api import RETENTIONPOLICY, S3EXPORTER, RetentionPolicySpec, RetentionPolicyStatus
from ..api.manifests import InvalidManifest, parse_spec
from ..api.s3exporter import S3ExporterSpec
from ..api.vocabulary import EventType, Reason
from ..redact import describe_exception
from ..retention import ExporterRef, RetentionOutcome, RetentionWorker
from ..status.exporter import Event
from ..status.retention import RetentionStatusUpdate
from .kube import KubeApiError
from .s3exporter import load_status as load_exporter_status
from .scheduler import Desired, Hold, Postpone, ResourceWorker, lenient_status
from .settings import Runtime

__all__ = ["KIND", "Desired", "Hold", "PolicyState", "exporters_from", "judge", "load_status", "register"]

KIND = RETENTIONPOLICY.kind
PLURAL = RETENTIONPOLICY.plural
CYCLE_MAX_SECONDS = 60.0  # a long purge goes in runs this long, with a status write after each
API_RETRY = 10.0  # the exporters could not be listed: try again this soon
log = logging.getLogger(__name__)


def judge(spec: Mapping[str, Any]) -> tuple[RetentionPolicySpec | None, Hold | None]:
    """Validate a spec as the CRD would: the spec, or why it is refused."""
    try:
        parsed = parse_spec(KIND, dict(spec))
    except InvalidManifest as exc:
        return None, Hold(Reason.INVALID_SPEC, f"spec refused, not purging: {exc}")
    assert isinstance(parsed, RetentionPolicySpec)
    return parsed, None


def load_status(raw: Mapping[str, Any] | None) -> RetentionPolicyStatus:
    """The stored status, leniently: unreadable fields are dropped rather than the whole status."""
    return lenient_status(RetentionPolicyStatus, raw)


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


class PolicyState(ResourceWorker[RetentionPolicySpec, RetentionPolicyStatus, RetentionWorker]):
    """One RetentionPolicy's worker (handlers/scheduler.py): its cycle lists the namespace's S3Exporters,
    then gates and purges, on a thread (never two cycles of one policy at once)."""

    kind = KIND
    plural = PLURAL
    cycle_worker = RetentionWorker
    load_status = staticmethod(load_status)

    def __init__(self, runtime: Runtime, namespace: str, name: str, raw_status: Mapping[str, Any] | None) -> None:
        super().__init__(runtime, namespace, name, raw_status)
        self.running = threading.Lock()  # held by the cycle's thread: never two cycles at once

    @staticmethod
    def decide(spec: Mapping[str, Any], meta: kopf.Meta, patch: kopf.Patch) -> Desired[RetentionPolicySpec]:
        parsed, hold = judge(spec)
        return Desired(meta.get("generation"), parsed, hold)

    # -- status --------------------------------------------------------------------------------------

    def status_update(self, status: RetentionPolicyStatus, generation: int | None) -> RetentionStatusUpdate:
        return RetentionStatusUpdate(status, now=self.runtime.clock.now(), generation=generation)

    async def publish(self, body: Mapping[str, Any], status: RetentionPolicyStatus, events: list[Event]) -> bool:
        return await self.runtime.writer.write_status(body, PLURAL, status.model_dump(mode="json", by_alias=True),
                                                      events)

    def crashed(self, status: RetentionPolicyStatus, desired: Desired[RetentionPolicySpec],
                exc: Exception) -> tuple[RetentionPolicyStatus, list[Event]]:
        description = describe_exception(exc)
        log.warning("%s: contained an unexpected %s", self.id, description)
        update = self.status_update(status, desired.generation)
        update.failed(Reason.INTERNAL_ERROR, f"internal error: unexpected {description}")
        update.events.append(Event(EventType.WARNING, Reason.PURGE_FAILED, f"unexpected {description}"))
        return update.finish()

    # -- the cycle -----------------------------------------------------------------------------------

    def _run(self, desired: Desired[RetentionPolicySpec], should_stop: Callable[[], bool]) -> RetentionOutcome:
        """One cycle, on a thread: list the namespace's S3Exporters, then gate and purge."""
        assert desired.spec is not None
        with self.running:
            items = self.runtime.kube.list_objects(S3EXPORTER.plural, self.id.namespace)
            return self.worker.cycle(desired.spec, self.status, exporters_from(items), generation=desired.generation,
                                     should_stop=should_stop, max_seconds=CYCLE_MAX_SECONDS)

    async def run(self, desired: Desired[RetentionPolicySpec], inputs: tuple[object, ...],
                  should_stop: Callable[[], bool]) -> RetentionOutcome:
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.runtime.cycles, self._run, desired, should_stop)
        except KubeApiError as exc:  # no exporters to gate on: purge nothing, try again soon
            log.warning("%s: not purging: %s", self.id, exc)
            raise Postpone(API_RETRY) from None


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    PolicyState.register(registry, runtime)
