"""One resource's worker in the operator, whatever its kind: the spec its handler accepted, its status, and
the loop its daemon runs.

The ``configure`` handler hands each accepted (or refused) spec to :meth:`ResourceWorker.configure`; the
daemon runs :meth:`ResourceWorker.daemon`, which runs one cycle whenever one is due (the spec or another
input changed, or the time the last cycle asked for has come) on a thread of the runtime's cycle pool, and
writes its status in one explicit status patch, its Events after it. A refused spec holds the worker:
``Ready=False`` says why, a Warning Event says it once, and the worker resumes when the spec is fixed.

Each kind (handlers/s3exporter.py, handlers/retentionpolicy.py) says what a cycle is, how its status is
read and written and what its inputs are; the scheduling lives here, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from ..api import GROUP, VERSION
from ..api.common import Condition
from ..api.vocabulary import ConditionType, EventType, Truth
from ..backoff import CONTAINED_RETRY
from ..export import ExporterId
from ..status.conditions import get_condition, set_condition
from ..status.exporter import Event
from .settings import Runtime

__all__ = ["STATUS_RETRY", "Desired", "Hold", "Postpone", "ResourceWorker", "lenient_status", "sleep_until_woken"]

STATUS_RETRY = 5.0  # the status could not be written: the next cycle comes this soon, and writes it
log = logging.getLogger(__name__)


class HasConditions(Protocol):
    conditions: list[Condition]


SpecT = TypeVar("SpecT")
CycleWorkerT = TypeVar("CycleWorkerT")
StatusT = TypeVar("StatusT", bound=HasConditions)
W = TypeVar("W", bound="ResourceWorker[Any, Any, Any]")
M = TypeVar("M", bound=BaseModel)
StatusChange = Callable[[StatusT], "tuple[StatusT, list[Event]] | None"]


@dataclass(frozen=True)
class Hold:
    """Why the worker must not run now (a refused spec, a moved destination, a suspension)."""

    reason: str
    message: str
    warning: bool = True


@dataclass(frozen=True, eq=False)
class Desired(Generic[SpecT]):
    """What the last configure handler decided. Compared by identity: each handler run is a new one."""

    generation: int | None
    spec: SpecT | None
    hold: Hold | None = None


class Outcome(Protocol[StatusT]):
    """What a kind's cycle returns (export/cycle.CycleOutcome, retention/cycle.RetentionOutcome)."""

    status: StatusT
    events: list[Event]
    due_in: float


class StatusUpdate(Protocol[StatusT]):
    status: StatusT
    now: Any

    def finish(self) -> tuple[StatusT, list[Event]]: ...


class Postpone(Exception):
    """Raised by a kind's cycle that could not start (nothing done, nothing to write): try again soon."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class CycleLeft(Exception):
    """The operator exits and the cycle outlived the stop timeout: the daemon ends without it, and keeps what
    the worker holds (the store lock, the lease) for the process's last moments, since the cycle's thread still
    runs and a late answer to its upload would let it commit."""


class ResourceWorker(Generic[SpecT, StatusT, CycleWorkerT]):
    """The per-resource worker of one kind; a kind subclasses it and fills in the hooks below.

    ``worker`` is the kind's engine-side worker (export/cycle.ExporterWorker, retention/cycle.RetentionWorker),
    made with the runtime's stores, Secrets, clock and object stores."""

    kind: ClassVar[str]
    plural: ClassVar[str]
    cycle_worker: ClassVar[Callable[..., Any]]

    def __init__(self, runtime: Runtime, namespace: str, name: str, raw_status: Mapping[str, Any] | None) -> None:
        self.runtime = runtime
        self.id = ExporterId(namespace, name)
        self.worker: CycleWorkerT = self.cycle_worker(self.id, open_store=runtime.stores, secrets=runtime.secrets,
                                                      clock=runtime.clock, object_store_factory=runtime.object_stores)
        self.status: StatusT = self.load_status(raw_status)
        self.desired: Desired[SpecT] | None = None
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()  # one status writer at a time
        self.due = 0.0  # loop time when the next cycle is due
        self.last_inputs: tuple[object, ...] | None = None

    # -- what each kind says --------------------------------------------------------------------------

    @staticmethod
    def load_status(raw: Mapping[str, Any] | None) -> StatusT:
        raise NotImplementedError

    def status_update(self, status: StatusT, generation: int | None) -> StatusUpdate[StatusT]:
        """The kind's status builder over ``status`` (it works on a copy)."""
        raise NotImplementedError

    def settle(self, previous: StatusT, status: StatusT) -> StatusT:
        """The status to keep and write when a change turns ``previous`` into ``status``."""
        return status

    async def publish(self, body: Mapping[str, Any], status: StatusT, events: list[Event]) -> bool:
        """Write ``status`` and then ``events``; False when it was not written (the resource is gone)."""
        raise NotImplementedError

    async def run(self, desired: Desired[SpecT], inputs: tuple[object, ...],
                  should_stop: Callable[[], bool]) -> Outcome[StatusT]:
        """One cycle under ``desired`` (on a thread of the runtime's cycle pool)."""
        raise NotImplementedError

    def crashed(self, status: StatusT, desired: Desired[SpecT], exc: Exception) -> tuple[StatusT, list[Event]]:
        """``status`` after a cycle raised past its own containment."""
        raise NotImplementedError

    def inputs(self, body: Mapping[str, Any], desired: Desired[SpecT]) -> tuple[object, ...]:
        """What a cycle acts on; a cycle runs at once whenever it differs from the last cycle's."""
        return (desired,)

    def started(self) -> None:
        """The worker joined ``runtime.workers``."""

    def stopped(self) -> None:
        """The worker left ``runtime.workers``."""

    def close(self) -> None:
        """The daemon ends (from a thread) and no cycle of it runs any more: give up what the worker holds."""

    @staticmethod
    def decide(spec: Mapping[str, Any], meta: kopf.Meta, patch: kopf.Patch) -> Desired[SpecT]:
        """The configure handler's decision on a spec: accepted, or held and why."""
        raise NotImplementedError

    # -- the worker's life ---------------------------------------------------------------------------

    @classmethod
    def register(cls, registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
        """The kind's ``configure`` handler (on create, update of the spec and resume) and its ``worker`` daemon."""
        resource = (GROUP, VERSION, cls.plural)

        @kopf.on.resume(*resource, id="configure", registry=registry)
        @kopf.on.create(*resource, id="configure", registry=registry)
        @kopf.on.update(*resource, id="configure", field="spec", registry=registry)
        async def configure(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
            await cls.ensure(runtime, body).configure(body, cls.decide(spec, meta, patch))

        @kopf.daemon(*resource, id="worker", cancellation_polling=1.0, registry=registry)
        async def worker(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
            await cls.ensure(runtime, body).daemon(body, stopped)

    @classmethod
    def ensure(cls: type[W], runtime: Runtime, body: Mapping[str, Any]) -> W:
        meta = body.get("metadata", {})
        key = (cls.kind, meta.get("namespace", ""), meta.get("name", ""))
        worker = runtime.workers.get(key)
        if worker is None:
            worker = runtime.workers[key] = cls(runtime, key[1], key[2], body.get("status"))
            worker.started()
        return worker

    def forget(self) -> None:
        self.runtime.workers.pop((self.kind, self.id.namespace, self.id.name), None)
        self.stopped()

    async def daemon(self, body: Mapping[str, Any], stopped: kopf.DaemonStopped) -> None:
        """The kopf daemon's body: serve until stopped, then give up what the worker holds; unless the operator
        exits leaving a cycle that still runs: its destination then stays held until the process ends (the
        store lock dies with it; the lease, unrenewed, is taken over as a killed writer's would be)."""
        watcher = asyncio.ensure_future(self._note_operator_stop(stopped))
        cycle_left = False
        try:
            await self.serve(body, stopped)
        except CycleLeft:
            cycle_left = True
        finally:
            watcher.cancel()
            self._operator_exiting(stopped)  # the stop budget runs from now, should the watcher not have run
            try:
                if not cycle_left:
                    await asyncio.to_thread(self.close)
            finally:
                self.forget()

    async def _note_operator_stop(self, stopped: kopf.DaemonStopped) -> None:
        await stopped.wait()
        self._operator_exiting(stopped)

    def _operator_exiting(self, stopped: kopf.DaemonStopped) -> bool:
        exiting = stopped.reason is not None and kopf.DaemonStoppingReason.OPERATOR_EXITING in stopped.reason
        if exiting:
            self.runtime.stopping()
        return exiting

    async def _finish(self, cycle: asyncio.Future[Outcome[StatusT]], stopped: kopf.DaemonStopped) -> Outcome[StatusT]:
        """The cycle's outcome. When the operator exits meanwhile, the cycle stops after its batch or chunk, and
        gets what remains of the stop timeout for it: kopf leaves a daemon that is not done by then orphaned.
        The cycle still running then (an upload that never answers) is left to the cleanup. A deleted resource's
        cycle is waited for, however long: its destination stays held until no batch of it can commit."""
        stopping = asyncio.ensure_future(stopped.wait())
        either: set[asyncio.Future[Any]] = {cycle, stopping}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not cycle.done() and self._operator_exiting(stopped):
                since = self.runtime.stopping_since or time.monotonic()
                remaining = since + self.runtime.config.stop_timeout - time.monotonic()
                await asyncio.wait({cycle}, timeout=max(0.0, remaining))
                if not cycle.done():
                    cycle.cancel()  # its thread goes on; runtime.stop says so, and the exit does not wait
                    raise CycleLeft
            return await cycle
        finally:
            stopping.cancel()

    # -- status --------------------------------------------------------------------------------------

    async def write(self, body: Mapping[str, Any], change: StatusChange[StatusT]) -> bool:
        """Apply ``change`` to the current status and write the result; one writer at a time."""
        async with self.lock:
            changed = change(self.status)
            if changed is None:
                return True
            status, events = changed
            self.status = self.settle(self.status, status)
            try:
                return await self.publish(body, self.status, events)
            except Exception as exc:  # the API is down or refuses: keep the status, write it next time
                log.warning("%s: status not written: %s", self.id, exc)
                return False

    def held(self, status: StatusT, desired: Desired[SpecT]) -> tuple[StatusT, list[Event]]:
        """``status`` with ``Ready=False`` for the hold, and the Event it deserves (once per new hold)."""
        assert desired.hold is not None
        hold = desired.hold
        update = self.status_update(status, desired.generation)
        before = get_condition(update.status.conditions, ConditionType.READY)
        update.status.conditions, _ = set_condition(
            update.status.conditions, ConditionType.READY, Truth.FALSE, hold.reason, hold.message, now=update.now,
            generation=desired.generation)
        if before is not None and (before.status, before.reason, before.message) == (Truth.FALSE, hold.reason,
                                                                                       hold.message):
            return update.status, []
        kind = EventType.WARNING if hold.warning else EventType.NORMAL
        return update.status, [Event(kind, hold.reason, hold.message)]

    async def configure(self, body: Mapping[str, Any], desired: Desired[SpecT]) -> None:
        """Accept a handler's decision: write the hold or the first-visit conditions, wake the worker."""
        self.desired = desired  # first: a cycle running under an older spec stops after its batch or chunk
        self.wake.set()
        if desired.hold is not None:
            await self.write(body, lambda current: self.held(current, desired))
        else:
            await self.write(body, lambda current: None if current.conditions else
                             self.status_update(current, None).finish())

    # -- the loop ------------------------------------------------------------------------------------

    async def serve(self, body: Mapping[str, Any], stopped: kopf.DaemonStopped) -> None:
        loop = asyncio.get_running_loop()
        while not stopped.is_set():
            self.wake.clear()
            desired = self.desired
            timeout: float | None = None
            if desired is not None and desired.hold is None:
                inputs = self.inputs(body, desired)
                if inputs != self.last_inputs or loop.time() >= self.due:
                    self.last_inputs = inputs
                    due_in = await self._cycle(body, desired, inputs, stopped)  # CycleLeft: the daemon ends
                    self.due = loop.time() + due_in
                    continue
                timeout = self.due - loop.time()
            await sleep_until_woken(self.wake, stopped, timeout)

    async def _cycle(self, body: Mapping[str, Any], desired: Desired[SpecT], inputs: tuple[object, ...],
                     stopped: kopf.DaemonStopped) -> float:
        def should_stop() -> bool:  # from the cycle's thread: stop after the batch or chunk in flight
            return stopped.is_set() or self.desired is not desired

        started = time.monotonic()
        try:
            outcome = await self._finish(asyncio.ensure_future(self.run(desired, inputs, should_stop)), stopped)
        except Postpone as postponed:
            return postponed.seconds
        except CycleLeft:
            raise
        except Exception as exc:  # the cycle contains its own failures; this is the last line of defence
            raised = exc
            await self.write(body, lambda current: self.crashed(current, desired, raised))
            return CONTAINED_RETRY

        def result(current: StatusT) -> tuple[StatusT, list[Event]]:
            latest = self.desired
            if latest is not None and latest is not desired and latest.hold is not None:
                return self.held(outcome.status, latest)[0], outcome.events  # refused meanwhile: keep it visible
            return outcome.status, outcome.events

        due_in = outcome.due_in
        cycled = time.monotonic()
        if not await self.write(body, result):
            due_in = min(due_in, STATUS_RETRY)
        log.debug("%s: cycle (generation %s) %.3fs, status write %.3fs, next in %.0fs", self.id, desired.generation,
                  cycled - started, time.monotonic() - cycled, due_in)
        return due_in


async def sleep_until_woken(wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float | None) -> None:
    """A daemon's idle wait: until its resource changes (``wake``), the daemon is stopped, or ``timeout``."""
    waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()


def lenient_status(model: type[M], raw: Mapping[str, Any] | None) -> M:
    """A stored status, leniently: what does not validate (a field of another operator version, a field
    edited by hand) is dropped field by field rather than the whole status, cursor and all."""
    raw = dict(raw or {})
    try:
        return model.model_validate(raw)
    except ValidationError:
        pass
    status = model()
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in raw:
            continue
        try:
            status = model.model_validate({**status.model_dump(by_alias=True), key: raw[key]})
        except ValidationError:
            log.warning("unreadable status field %s=%r; dropped", key, raw[key])
    return status
