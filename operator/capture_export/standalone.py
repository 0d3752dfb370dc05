"""Run the very manifests a user would ``kubectl apply``, without a cluster.

Each S3Exporter in the files gets a worker that runs on its schedule (at once again while a backlog
remains); Secrets in the same files supply credentials; state (cursor, last run, history) is kept in a
local JSON file, written after every committed batch. Ctrl-C stops after the batch in flight commits.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from .api import S3ExporterStatus
from .api.destination import changed_fields, destination_of
from .api.manifests import ManifestSet, Resource
from .api.vocabulary import ConditionType, Domain, EventType, Reason, Truth
from .clock import Clock, SystemClock
from .collector import LessCollection
from .export import BatchResult, ExporterId, ExportFailure
from .export.cycle import CycleOutcome, ExporterWorker
from .export.model import unexpected_failure
from .schedule import Schedule, Scheduled
from .status.conditions import get_condition
from .status.exporter import Event, StatusUpdate, cursor_position, guard_cursor
from .store import StoreOpener

if TYPE_CHECKING:  # the retention modules load only for manifests with a RetentionPolicy
    from .retention.standalone import Policy, PolicyTurns

__all__ = ["DESTINATIONS", "StandaloneRunner", "StateFile", "StateInUse"]

# State file key of each exporter's destination (api/destination.py), recorded with its first committed
# batch: the standalone counterpart of the operator's ``capture.dev/destination`` annotation.
DESTINATIONS = "capture.dev/destination"


class StateInUse(SystemExit):
    """Another ``capture-export run`` holds the state file: two runners on one state file would overwrite
    each other's cursors."""


class StateFile:
    """Statuses of every resource, keyed ``Kind/namespace/name``, in one JSON file replaced atomically.

    One runner per state file: the runner holds an exclusive ``flock`` on ``<state>.lock`` for its whole
    life (the lock dies with the process, ``kill -9`` included); a second runner exits at once with a
    message naming the file and the holder's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lock_file = self._acquire(path)
        self.data: dict[str, Any] = {}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except ValueError:
                self.close()
                raise SystemExit(f"error: state file {path} is not valid JSON; move it aside to start afresh") from None
            except OSError:  # the command names the file with its option (--state adir: is a directory)
                self.close()
                raise
            if not isinstance(self.data, dict):
                self.close()
                raise SystemExit(f"error: state file {path} does not hold a JSON object; move it aside to start afresh")

    @staticmethod
    def _acquire(path: Path) -> TextIO:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(f"{path.name}.lock")
        handle = lock_path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StateInUse(f"error: state file {path} is in use by another capture-export run (pid {holder}); "
                             "run one runner per state file, or give this one its own --state") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    @property
    def temporary_path(self) -> Path:
        """Where a save is written before it replaces the state file."""
        return self.path.with_name(f".{self.path.name}.tmp")

    def get(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        return value if isinstance(value, dict) else None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Save ``value`` under ``key``; ExportFailure ``StateNotWritable`` when the file cannot be written
        (a read-only or full disk): the exporter that saves stops after its committed batch and says so."""
        with self._lock:
            self.data[key] = value
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # No other process writes this state file (see _acquire), and a stale temporary file from a
                # killed run is simply replaced.
                tmp = self.temporary_path
                with tmp.open("w") as handle:
                    json.dump(self.data, handle, indent=1, default=str)
                    handle.flush()
                    os.fsync(handle.fileno())
                tmp.replace(self.path)
            except OSError as exc:
                raise ExportFailure(Reason.STATE_NOT_WRITABLE, f"state file {self.path} cannot be written "
                                    f"({exc.strerror or exc.__class__.__name__}); what was exported is committed in "
                                    "the bucket and resumed from there", domain=Domain.STATE, transient=False) from None

    def close(self) -> None:
        if not self._lock_file.closed:
            self._lock_file.close()  # releases the flock


Exporter = Scheduled[ExporterWorker, S3ExporterStatus]


class Progress:
    """Prints a progress line at most every ``every`` seconds while a backlog drains."""

    def __init__(self, out: TextIO, every: float = 1.0) -> None:
        self.out = out
        self.every = every
        self.last = 0.0

    def batch(self, ref: str, done: BatchResult, exported: int, started: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        rate = exported / max(now - started, 1e-6)
        print(f"  {ref}: {exported:,} records exported this run, cursor {done.cursor.position}, "
              f"{rate:,.0f} records/s", file=self.out, flush=True)


class StandaloneRunner:
    def __init__(
        self,
        manifests: ManifestSet,
        *,
        state_path: Path,
        default_store: str | None,
        out: TextIO = sys.stdout,
        default_namespaces: Collection[str] | None = None,
        sqlite_directories: Sequence[str] | None = None,
        on_cycle: Callable[[Resource, dict[str, Any]], None] | None = None,
        progress_seconds: float = 1.0,
        collection: LessCollection | None = None,
    ) -> None:
        """``on_cycle(resource, status)`` is called after every cycle of an exporter or policy, with its
        status as it is written to the state file (``run --output json``). ``progress_seconds``: the least
        time between two progress lines of a long export or purge. ``collection``: what spares the exports
        of ``run_once`` the garbage collector's needless work (``run --once`` holds it off from start-up)."""
        self.manifests = manifests
        self.state = StateFile(state_path)
        # Tenancy as in the operator: which namespaces may use the default store, where SQLite stores may be.
        self.stores = StoreOpener(default_store, manifests.get, default_namespaces=default_namespaces,
                                  sqlite_directories=sqlite_directories)
        self.out = out
        self.on_cycle = on_cycle
        self.progress_seconds = progress_seconds
        self.stop_event = threading.Event()
        self.stopped_by: int | None = None  # the signal that asked the runner to stop
        self.clock: Clock = SystemClock()
        self.exporters: list[Exporter] = [
            Exporter(
                resource,
                ExporterWorker(ExporterId(resource.namespace, resource.name), open_store=self.stores,
                               secrets=manifests, clock=self.clock),
                S3ExporterStatus(),
            )
            for resource in manifests.of_kind("S3Exporter")
        ]
        for item in self.exporters:
            saved = self.state.raw(item.state_key)
            if saved:
                try:
                    item.status = S3ExporterStatus.model_validate(saved)
                except ValidationError as exc:
                    # A hand-edited or damaged entry: that exporter refuses (CheckpointCorrupt) until it is
                    # fixed or reset; the entry is kept as it is, and the other exporters run.
                    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
                    item.state_problem = (f"state file {self.state.path} entry {item.state_key} is not valid "
                                          f"({problems})")
        self.outcomes: dict[str, CycleOutcome] = {}
        self.collect_less_during_export = False  # run_once: see LessCollection
        self._less_collection = collection or LessCollection()
        self.state_failures = 0  # state-file writes that failed (each printed; --once then exits 1)
        self.schedule = Schedule(self.stop_event, out, self._contained)
        self.schedule.add(self.exporters, self._exporter_turn)  # first: --once purges what it exported
        self.policies: PolicyTurns | None = None
        if manifests.of_kind("RetentionPolicy"):
            from .retention.standalone import PolicyTurns

            self.policies = PolicyTurns(self)
            self.schedule.add(self.policies.policies, self._policy_turn)

    def request_stop(self, signum: int | None = None, _frame: object = None) -> None:
        if signum is not None and self.stopped_by is None:
            self.stopped_by = signum
        if not self.stop_event.is_set():
            print("stopping after the batch in flight commits…", file=self.out, flush=True)
        self.stop_event.set()

    def state_entry(self, key: str) -> dict[str, Any] | None:
        return self.state.get(key)

    def _exporter_turn(self, item: Exporter) -> tuple[float, bool]:
        try:
            outcome = self._cycle(item)
        finally:
            self._less_collection.end()  # also when the cycle ended before its export, or refused to start
        self.outcomes[item.resource.ref] = outcome
        return outcome.due_in, outcome.result is not None and outcome.result.failure is None

    def _policy_turn(self, item: Policy) -> tuple[float, bool]:
        self._less_collection.end()  # no exporter ran (none, all suspended): the purge gets the collector back
        assert self.policies is not None  # the policies' turn is scheduled with them
        return self.policies(item)

    def _refuse_corrupt_state(self, item: Exporter) -> CycleOutcome:
        spec = item.resource.spec
        update = StatusUpdate(item.status, now=self.clock.now(), generation=item.resource.generation)
        failure = ExportFailure(Reason.CHECKPOINT_CORRUPT, f"{item.state_problem}; fix or remove the entry, or "
                                "reset the exporter (annotation capture.dev/reset-cursor)", domain=Domain.BUCKET,
                                transient=False)
        update.fail(failure)
        update.events.append(Event(EventType.WARNING, Reason.EXPORT_FAILED, failure.message))
        status, events = update.finish()
        outcome = CycleOutcome(status, events, None, float(spec.every))
        self._report(item.resource.ref, outcome)
        return outcome

    def _cycle(self, item: Exporter) -> CycleOutcome:
        reset_token = item.resource.annotations.get("capture.dev/reset-cursor")
        if item.state_problem is not None and reset_token is None:
            return self._refuse_corrupt_state(item)  # before anything rewrites the damaged entry
        if (refused := self._refuse_moved_destination(item)) is not None:
            return refused
        ref = item.resource.ref
        spec = item.resource.spec
        item.state_problem = None  # a reset starts afresh; the entry is replaced below
        progress = Progress(self.out, self.progress_seconds)
        started = time.monotonic()
        exported = 0

        def on_batch(done: BatchResult) -> None:
            nonlocal exported
            exported += done.rows
            # Persist after every committed batch so Ctrl-C or a crash loses nothing already done.
            epoch, position = guard_cursor(cursor_position(item.status), (done.cursor.epoch, done.cursor.position))
            item.status.epoch, item.status.cursor = epoch, str(position)
            self._record_destination(item)
            self.state.put(item.state_key, item.status.model_dump(mode="json", by_alias=True))
            progress.batch(ref, done, exported, started)

        outcome = item.worker.cycle(
            spec,
            item.status,
            generation=item.resource.generation,
            reset_token=reset_token,
            should_stop=self.stop_event.is_set,
            on_batch=on_batch,
            before_export=self._less_collection.start if self.collect_less_during_export else None,
        )
        item.status = outcome.status
        if item.status.cursor != "0":  # a state file older than the record of destinations too
            self._record_destination(item)
        self._report(ref, outcome)
        self.save(ref, item.state_key, outcome.status.model_dump(mode="json", by_alias=True),
                  reported=outcome.result is not None and outcome.result.failure is not None and
                  outcome.result.failure.reason == Reason.STATE_NOT_WRITABLE)
        self.cycle_done(item.resource, self.state.get(item.state_key) or {})
        return outcome

    def save(self, ref: str, key: str, status: dict[str, Any], *, reported: bool = False, what: str = "") -> bool:
        """Write one resource's status to the state file; a failure is printed (unless ``reported``
        already), makes the run fail, and never stops the other resources."""
        try:
            self.state.put(key, status)
            return True
        except ExportFailure as failure:
            self.state_failures += 1
            if not reported:
                print(f"{ref}: {what}Failed - {failure.reason}: {failure.message}", file=self.out, flush=True)
            return False

    def _contained(self, ref: str, exc: Exception) -> None:
        """The last line of defence: an exception from one resource's turn is reported, not raised."""
        failure = unexpected_failure(exc)
        print(f"{ref}: Failed - {failure.reason}: {failure.message}", file=self.out, flush=True)

    def _destination(self, item: Exporter) -> dict[str, Any]:
        current = destination_of(item.resource.spec)
        if current.get("endpoint"):  # never a password in the state file, whatever the endpoint holds
            from urllib.parse import urlsplit

            parts = urlsplit(current["endpoint"])
            current["endpoint"] = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        return current

    def _record_destination(self, item: Exporter) -> None:
        """Fix the exporter's destination once it has exported something (saved with the next state put)."""
        recorded = self.state.data.setdefault(DESTINATIONS, {})
        if isinstance(recorded, dict) and item.state_key not in recorded:
            recorded[item.state_key] = self._destination(item)

    def _refuse_moved_destination(self, item: Exporter) -> CycleOutcome | None:
        """Refuse, as the operator does, a destination changed since the exporter's first batch: its cursor
        belongs to the old one, so carried over it would export nothing to the new one."""
        recorded = (self.state.data.get(DESTINATIONS) or {}).get(item.state_key)
        current = self._destination(item)
        changed = changed_fields(recorded, current)
        if not changed or recorded is None:
            return None
        detail = ", ".join(f"{name} {recorded[name]!r} -> {current[name]!r}" for name in changed)
        message = (f"the destination is immutable ({detail}); not exporting until it is restored: give the "
                   "exporter a new metadata.name to export everything to the new destination from the start")
        update = StatusUpdate(item.status, now=self.clock.now(), generation=item.resource.generation)
        update.set(ConditionType.READY, Truth.FALSE, Reason.DESTINATION_IMMUTABLE, message)
        outcome = CycleOutcome(update.status, update.events, None, float(item.resource.spec.every))
        item.status = update.status
        self.state.put(item.state_key, update.status.model_dump(mode="json", by_alias=True))
        self._report(item.resource.ref, outcome)
        self.cycle_done(item.resource, self.state.get(item.state_key) or {})
        return outcome

    def cycle_done(self, resource: Resource, status: dict[str, Any]) -> None:
        if self.on_cycle is not None:
            self.on_cycle(resource, status)
    def _report(self, ref: str, outcome: CycleOutcome) -> None:
        for event in outcome.events:
            print(f"  {ref}: {event.type} {event.reason}: {event.message}", file=self.out, flush=True)
        run = outcome.result
        if run is None:  # the cycle failed before it could run: Ready says why
            ready = get_condition(outcome.status.conditions, ConditionType.READY)
            if ready is not None and ready.status == Truth.FALSE:
                print(f"{ref}: Failed - {ready.reason}: {ready.message}", file=self.out, flush=True)
            return
        rate = run.rows / run.duration_seconds if run.duration_seconds > 0 else 0.0
        line = (f"{ref}: {run.outcome}: {run.rows:,} records in {run.objects} objects, "
                f"{run.bytes:,} bytes, {run.duration_seconds:.2f}s ({rate:,.0f} records/s), "
                f"cursor {run.cursor.position}, backlog {run.backlog}")
        if run.failure is not None:
            line += f" - {run.failure.reason}: {run.failure.message}"
        print(line, file=self.out, flush=True)

    def run_once(self) -> bool:
        """One cycle of every exporter, then of every policy. Returns True when all succeeded."""
        self.collect_less_during_export = True
        return self.schedule.run_once() and not self.state_failures

    def run_forever(self) -> None:
        self.schedule.run_forever()

    def install_signal_handlers(self) -> None:
        """Ctrl-C, SIGTERM and SIGHUP (the terminal closed) stop after the batch in flight commits."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.request_stop)

    def close(self) -> None:
        for item in self.exporters:
            item.worker.close()
        self.stores.close()
        self.state.close()
