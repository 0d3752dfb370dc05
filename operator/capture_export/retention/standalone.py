"""RetentionPolicies in the standalone runner (``capture-export run -f``), from the same YAML.

The runner calls the scheduler once per loop turn, after its exporters (so ``--once`` purges what that
very run exported); each policy whose time has come runs one cycle against the S3Exporters of its
namespace in the same manifests. Status goes to the runner's state file under
``RetentionPolicy/{namespace}/{name}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..api import RetentionPolicyStatus
from ..api.manifests import Resource
from ..api.vocabulary import GateMode
from ..export import ExporterId
from .cycle import ExporterRef, RetentionOutcome, RetentionWorker

if TYPE_CHECKING:
    from ..standalone import StandaloneRunner

CONTAINED_RETRY = 30.0  # seconds before a policy whose cycle raised is tried again

__all__ = ["RetentionScheduler"]


@dataclass
class _Policy:
    resource: Resource
    worker: RetentionWorker
    due: float = 0.0
    status: RetentionPolicyStatus = field(default_factory=RetentionPolicyStatus)

    @property
    def state_key(self) -> str:
        return f"RetentionPolicy/{self.resource.ref}"


class RetentionScheduler:
    """The runner's ``extra_kinds`` hook for RetentionPolicy documents."""

    def __init__(self, runner: StandaloneRunner) -> None:
        self.policies: list[_Policy] = []
        for resource in runner.manifests.of_kind("RetentionPolicy"):
            worker = RetentionWorker(ExporterId(resource.namespace, resource.name), open_store=runner.stores,
                                     secrets=runner.manifests, clock=runner.clock)
            item = _Policy(resource, worker)
            saved = runner.state.get(item.state_key)
            if saved:
                item.status = RetentionPolicyStatus.model_validate(saved)
            self.policies.append(item)
        self.outcomes: dict[str, RetentionOutcome] = {}
        self.ok = True

    @staticmethod
    def exporters_for(runner: StandaloneRunner, namespace: str) -> dict[str, ExporterRef]:
        """The S3Exporters of one namespace in the manifests, with the statuses the runner holds."""
        statuses = {item.resource.ref: item.status for item in runner.exporters}
        return {
            r.name: ExporterRef(r.name, r.spec, dict(r.labels), statuses.get(r.ref))
            for r in runner.manifests.of_kind("S3Exporter")
            if r.namespace == namespace
        }

    def __call__(self, runner: StandaloneRunner) -> float | None:
        self.ok = True
        for item in self.policies:
            if runner.stop_event.is_set():
                break
            if item.due > time.monotonic():
                continue
            try:
                outcome = item.worker.cycle(
                    item.resource.spec,
                    item.status,
                    self.exporters_for(runner, item.resource.namespace),
                    generation=item.resource.generation,
                    should_stop=runner.stop_event.is_set,
                )
            except Exception as exc:  # contained: the other policies and the exporters go on
                runner._contained(item.resource.ref, exc)
                item.due = time.monotonic() + CONTAINED_RETRY
                self.ok = False
                continue
            item.status = outcome.status
            item.due = time.monotonic() + outcome.due_in
            self.outcomes[item.resource.ref] = outcome
            self.ok &= not outcome.failed
            self._report(runner, item.resource.ref, outcome)
            self.ok &= runner.save(item.resource.ref, item.state_key,
                                   outcome.status.model_dump(mode="json", by_alias=True), what="retention ")
            runner.cycle_done(item.resource, runner.state.get(item.state_key) or {})
        return min((item.due for item in self.policies), default=None)

    @staticmethod
    def _report(runner: StandaloneRunner, ref: str, outcome: RetentionOutcome) -> None:
        out = runner.out
        for event in outcome.events:
            print(f"  {ref}: {event.type} {event.reason}: {event.message}", file=out, flush=True)
        run = outcome.status.last_run
        if run is None:
            return
        gate = outcome.status.gate
        line = (f"{ref}: retention {run.outcome}: purged {run.purged:,}, soft-deleted {run.soft_deleted:,} "
                f"in {run.duration_seconds:.2f}s ({run.chunks} chunks, "
                f"longest {run.longest_chunk_seconds * 1000:.0f} ms)")
        if run.would_purge is not None:
            line += f", dry run: would purge {run.would_purge:,}"
        if gate is not None:
            line += f"; gate {'open' if gate.open else 'CLOSED'} at id {gate.bound}"
            if gate.limiting_exporter:
                line += f" (limited by {gate.limiting_exporter})"
            if gate.mode == GateMode.AGE_ONLY:
                line += " - requireExport is false: purging by age alone, EXPORTED OR NOT"
        if outcome.status.soft_deleted_pending:
            line += f"; {outcome.status.soft_deleted_pending:,} soft-deleted records restorable"
        if run.error:
            line += f" - {run.reason}: {run.error}"
        print(line, file=out, flush=True)
