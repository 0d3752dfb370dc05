"""RetentionPolicies in the standalone runner (``capture-export run -f``), from the same YAML.

Each policy is an item of the runner's schedule (schedule.py), after the exporters (so ``--once`` purges
what that very run exported); its turn runs one cycle against the S3Exporters of its namespace in the same
manifests. Status goes to the runner's state file under ``RetentionPolicy/{namespace}/{name}``.
"""

from __future__ import annotations

from typing import Any

from ..api import RetentionPolicyStatus
from ..api.vocabulary import GateMode, Reason
from ..export import ExporterId
from ..schedule import Runner, Scheduled
from .cycle import ExporterRef, PurgeProgress, RetentionOutcome, RetentionWorker

__all__ = ["PolicyTurns"]

Policy = Scheduled[RetentionWorker, RetentionPolicyStatus]


class PolicyTurns:
    """The runner's RetentionPolicies (``policies``) and the turn each gets (calling this)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.policies: list[Policy] = []
        for resource in runner.manifests.of_kind("RetentionPolicy"):
            worker = RetentionWorker(ExporterId(resource.namespace, resource.name), open_store=runner.stores,
                                     secrets=runner.manifests, clock=runner.clock,
                                     progress_seconds=runner.progress_seconds)
            item = Policy(resource, worker, RetentionPolicyStatus())
            saved = runner.state_entry(item.state_key)
            if saved:
                item.status = RetentionPolicyStatus.model_validate(saved)
            self.policies.append(item)

    def exporters_for(self, namespace: str) -> dict[str, ExporterRef]:
        """The S3Exporters of one namespace in the manifests, with the statuses the runner holds."""
        runner = self.runner
        statuses: dict[str, Any] = {item.resource.ref: item.status for item in runner.exporters}
        return {
            r.name: ExporterRef(r.name, r.spec, dict(r.labels), statuses.get(r.ref))
            for r in runner.manifests.of_kind("S3Exporter")
            if r.namespace == namespace
        }

    def __call__(self, item: Policy) -> tuple[float, bool]:
        """One cycle of one policy: its status to the state file; (seconds until due again, succeeded)."""
        runner = self.runner
        outcome = item.worker.cycle(
            item.resource.spec,
            item.status,
            self.exporters_for(item.resource.namespace),
            generation=item.resource.generation,
            should_stop=runner.stop_event.is_set,
            on_progress=lambda progress: self._progress(item.resource.ref, progress),
        )
        item.status = outcome.status
        self._report(runner, item.resource.ref, outcome)
        saved = runner.save(item.resource.ref, item.state_key, outcome.status.model_dump(mode="json", by_alias=True),
                            what="retention ")
        runner.cycle_done(item.resource, runner.state_entry(item.state_key) or {})
        return outcome.due_in, not outcome.failed and saved

    def _progress(self, ref: str, progress: PurgeProgress) -> None:
        """One line while a long purge goes on, as the exporters' lines while a backlog drains."""
        line = (f"  {ref}: purging: {progress.done:,} records so far ({progress.removed:,} removed for good, "
                f"{progress.soft_deleted:,} soft-deleted), {progress.rate:,.0f} records/s")
        if progress.remaining is not None:
            line += f", {progress.remaining:,} left"
        print(line, file=self.runner.out, flush=True)

    @staticmethod
    def _report(runner: Runner, ref: str, outcome: RetentionOutcome) -> None:
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
            if not gate.open and gate.mode != GateMode.AGE_ONLY:
                # Not a failure (the gate doing its work), but say why on every run, not only in the first
                # run's events: the reason is often a mistake (an exporter left out of the -f files).
                why = gate.message.removeprefix("gate closed by ")
                # No exporter selected: the message already says nothing is purged.
                said = gate.reason == Reason.NO_EXPORTERS_SELECTED
                line += f": {why}" + ("" if said else "; nothing is purged until it opens")
            if gate.mode == GateMode.AGE_ONLY:
                line += " - requireExport is false: purging by age alone, EXPORTED OR NOT"
        if outcome.status.soft_deleted_pending:
            line += f"; {outcome.status.soft_deleted_pending:,} soft-deleted records restorable"
        if run.error:
            line += f" - {run.reason}: {run.error}"
        print(line, file=out, flush=True)
