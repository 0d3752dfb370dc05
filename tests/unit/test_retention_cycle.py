"""One RetentionPolicy cycle against real parts (SQLite store, the export engine's checkpoints in in-memory
buckets): what the gate does when exporters are missing, new, failing or reset, and what status says."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from capture_export.api import RetentionPolicyStatus, S3ExporterSpec
from capture_export.export import ExporterId
from capture_export.retention import ExporterRef, Purger, RetentionWorker
from capture_export.store import SQLiteStore, StoreError
from tests.support.retention import World, policy, sync_pipeline

REPO = Path(__file__).resolve().parents[2]
OLD, YOUNG = 48 * 60, 10  # record ages in minutes, against maxAge 24h


@pytest.fixture
def world() -> Any:
    with sync_pipeline():
        yield World(limits=[3, 3])


def condition(status: Any, type_: str) -> Any:
    return next(c for c in status.conditions if c.type == type_)


def test_missing_exporter_closes_the_gate_naming_it_then_catching_up_opens_it(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0", "x1"])
    world.insert([OLD] * 5 + [YOUNG] * 2)
    world.exporters["x0"].export()
    world.exporters["x1"].present = False
    outcome = world.purge(spec)
    gate = condition(outcome.status, "GateOpen")
    assert (gate.status, gate.reason) == ("False", "ExporterNotFound") and "x1" in gate.message
    assert condition(outcome.status, "Ready").status == "False"
    assert outcome.status.gate.limiting_exporter == "x1"
    assert outcome.status.last_run.outcome == "GateClosed" and outcome.status.last_run.reason == "ExporterNotFound"
    assert world.store.count() == 7
    assert any(e.type == "Warning" and e.reason == "ExporterNotFound" for e in outcome.events)

    world.exporters["x1"].present = True  # created, but has not run: still closed
    outcome = world.purge(spec)
    assert condition(outcome.status, "GateOpen").reason == "ExporterNeverRun" and world.store.count() == 7

    world.exporters["x1"].export()
    outcome = world.purge(spec)
    assert condition(outcome.status, "GateOpen").status == "True"
    assert condition(outcome.status, "Ready").status == "True"
    assert (outcome.status.last_run.outcome, outcome.status.last_run.purged) == ("Succeeded", 5)
    assert outcome.status.totals.purged == 5 and outcome.status.last_purge == world.clock.now()
    assert list(world.store.ids()) == [6, 7]
    assert any(e.reason == "Purged" for e in outcome.events)
    assert any(e.reason == "ExportConfirmed" for e in outcome.events)  # the flip to open is an Event


def test_the_slowest_exporter_limits_and_a_failing_one_holds_at_its_committed_cursor(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0", "x1"])
    world.insert([OLD] * 6)
    world.exporters["x0"].export()
    world.exporters["x1"].export()
    world.insert([OLD] * 6)  # ids 7..12
    world.exporters["x0"].export()
    world.exporters["x1"].bucket.fail_put_containing = "checkpoints"  # x1 fails before committing 7..9
    world.exporters["x1"].export()
    assert world.exporters["x1"].checkpoint().position == 6
    outcome = world.purge(spec)
    assert (outcome.status.gate.bound, outcome.status.gate.limiting_exporter) == ("6", "x1")
    assert list(world.store.ids()) == list(range(7, 13))


def test_unreadable_checkpoint_closes_the_gate_and_it_recovers_by_itself(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0"])
    world.insert([OLD] * 3)
    world.exporters["x0"].export()
    world.exporters["x0"].bucket.down = True
    outcome = world.purge(spec)
    gate = condition(outcome.status, "GateOpen")
    assert (gate.status, gate.reason) == ("False", "CheckpointUnreadable") and "bucket unreachable" in gate.message
    assert world.store.count() == 3 and outcome.status.last_run.outcome == "GateClosed"
    world.exporters["x0"].bucket.down = False
    assert world.purge(spec).status.last_run.purged == 3


def test_a_reset_lowers_the_bound_at_once(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0"])
    world.insert([YOUNG] * 6)
    world.exporters["x0"].export()
    assert world.purge(spec).status.gate.bound == "6"
    world.exporters["x0"].reset()
    world.clock.advance(timedelta(days=2))  # everything is old now, but nothing is re-exported yet
    outcome = world.purge(spec)
    assert condition(outcome.status, "GateOpen").reason == "ExporterReset"
    assert outcome.status.gate.exporters[0].epoch == 1 and world.store.count() == 6
    world.exporters["x0"].export()
    assert world.purge(spec).status.last_run.purged == 6


def test_a_reset_during_a_long_purge_lowers_the_bound_for_the_chunks_that_follow(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0"], batchSize=2)
    world.insert([OLD] * 10)
    world.exporters["x0"].export()
    world.worker.recheck_seconds = 0.0  # re-read the checkpoint before every chunk
    real = world.store.expire_chunk
    calls = []

    def expire_chunk(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 2:
            world.exporters["x0"].reset()
        return real(*args, **kwargs)

    world.store.expire_chunk = expire_chunk  # type: ignore[method-assign]
    outcome = world.purge(spec)
    assert outcome.status.last_run.purged == 4  # the two chunks before the reset was seen
    assert outcome.status.last_run.bound == "0"
    assert world.store.count() == 6


def test_an_exporter_of_another_store_cannot_vouch(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0"])
    world.insert([OLD])
    world.exporters["x0"].export()
    refs = world.refs()
    other = S3ExporterSpec.model_validate({**refs["x0"].spec.model_dump(by_alias=True, exclude_none=True),
                                           "store": {"sqlite": {"path": "/elsewhere.sqlite"}}})
    outcome = world.worker.cycle(spec, world.status, {"x0": ExporterRef("x0", other)})
    assert condition(outcome.status, "GateOpen").reason == "ExporterStoreMismatch"
    assert "sqlite /elsewhere.sqlite" in outcome.status.gate.message and world.store.count() == 1


def test_an_empty_store_reference_is_the_default_store(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0"], store={})
    world.insert([OLD])
    world.exporters["x0"].export()
    assert world.purge(spec).status.last_run.purged == 1


def test_selector_picks_labelled_exporters(world: World) -> None:
    spec = policy(maxAge="24h", exporterSelector={"matchLabels": {"gate": "yes"}})
    world.insert([OLD] * 4)
    outcome = world.purge(spec)
    assert condition(outcome.status, "GateOpen").reason == "NoExportersSelected"
    world.exporters["x1"].labels = {"gate": "yes"}
    world.exporters["x1"].export()
    outcome = world.purge(spec)
    assert outcome.status.gate.limiting_exporter == "x1" and outcome.status.last_run.purged == 4


def test_dry_run_counts_and_changes_nothing(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0"], dryRun=True)
    world.insert([OLD] * 3 + [YOUNG])
    world.exporters["x0"].export()
    outcome = world.purge(spec)
    run = outcome.status.last_run
    assert (run.outcome, run.would_purge, run.purged) == ("DryRun", 3, 0) and world.store.count() == 4


def test_soft_delete_hides_then_removes_after_the_grace_period_and_restore_brings_back(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0"], softDelete={"gracePeriod": "2h"})
    world.insert([OLD] * 4 + [YOUNG])
    world.exporters["x0"].export()
    outcome = world.purge(spec)
    assert (outcome.status.last_run.soft_deleted, outcome.status.last_run.purged) == (4, 0)
    assert outcome.status.soft_deleted_pending == 4 and world.store.count() == 1
    # Restore within the grace period.
    assert Purger(world.store, batch_size=3, pause_seconds=0).restore() == 4
    assert world.store.count() == 5
    # Marked again, then kept through the grace period, then removed.
    world.purge(spec)
    world.clock.advance(timedelta(hours=1))
    assert world.purge(spec).status.last_run.purged == 0 and world.store.soft_deleted_count() == 4
    world.clock.advance(timedelta(hours=1))
    outcome = world.purge(spec)
    assert outcome.status.last_run.purged == 4 and outcome.status.soft_deleted_pending == 0
    assert outcome.status.totals.soft_deleted == 8 and outcome.status.totals.purged == 4
    assert world.store.highest_assigned_id() == 5 and list(world.store.ids()) == [5]


def test_require_export_false_purges_unexported_records_and_warns(world: World) -> None:
    spec = policy(maxAge="24h", requireExport=False)
    world.insert([OLD] * 3 + [YOUNG])
    outcome = world.purge(spec)
    assert outcome.status.last_run.purged == 3
    assert condition(outcome.status, "GateOpen").reason == "ExportNotRequired"
    assert outcome.status.gate.mode == "AgeOnly" and "EXPORTED OR NOT" in outcome.status.gate.message
    assert any(e.type == "Warning" and e.reason == "PurgingUnexported" for e in outcome.events)


def test_time_budget_stops_between_chunks_and_asks_to_continue_at_once(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0"], batchSize=2)
    world.insert([OLD] * 10)
    world.exporters["x0"].export()
    clock = world.clock
    clock.sleep = lambda seconds: setattr(clock, "mono", clock.mono + 1.0)  # type: ignore[method-assign]
    world.worker.pause_seconds = 0.001
    outcome = world.purge(spec, max_seconds=2.5)
    assert outcome.status.last_run.outcome == "Stopped" and outcome.due_in == 0.0
    assert 0 < outcome.status.last_run.purged < 10
    outcome = world.purge(spec)
    assert world.store.count() == 0 and outcome.due_in == 3600.0


def test_events_only_on_transitions(world: World) -> None:
    spec = policy(maxAge="24h", exporters=["x0"])
    world.insert([YOUNG])
    world.exporters["x0"].export()
    first = world.purge(spec)
    assert {e.reason for e in first.events} >= {"ExportConfirmed", "Ready"}
    second = world.purge(spec)
    assert second.events == [] and second.status.last_run.outcome == "NothingToDo"
    assert second.status.history[0] == second.status.last_run and len(second.status.history) == 2


def test_store_failures_are_reported_and_retried_sooner(world: World) -> None:
    def broken(spec: Any, namespace: str) -> Any:
        raise StoreError("cannot open SQLite store /nope: unable to open database file")

    worker = RetentionWorker(ExporterId("ns", "p"), open_store=broken, secrets={}, clock=world.clock)
    outcome = worker.cycle(policy(maxAge="24h", exporters=["x0"], every=600), world.status, world.refs())
    store = condition(outcome.status, "StoreReachable")
    assert (store.status, store.reason) == ("False", "StoreUnavailable")
    assert outcome.status.last_run.outcome == "Failed" and outcome.failed and outcome.due_in == 5.0
    assert condition(outcome.status, "Ready").status == "False"
    assert any(e.reason == "PurgeFailed" for e in outcome.events)
    assert worker.cycle(policy(maxAge="24h", exporters=["x0"], every=600), outcome.status, {}).due_in == 10.0


def test_a_store_without_retention_support_is_refused(world: World) -> None:
    class OldStore:
        def max_id(self) -> int:
            return 0

    worker = RetentionWorker(ExporterId("ns", "p"), open_store=lambda s, n: OldStore(), secrets={}, clock=world.clock)
    outcome = worker.cycle(policy(maxAge="24h", exporters=["x0"]), world.status, {})
    assert condition(outcome.status, "StoreReachable").reason == "StoreUnsupported"


def test_status_fits_the_crd_schema(world: World) -> None:
    from tests.support.crd_schema import CustomResourceValidator

    spec = policy(maxAge="24h", exporters=["x0", "x1"], softDelete={"gracePeriod": "1h"})
    world.insert([OLD] * 3)
    world.exporters["x0"].export()
    world.exporters["x1"].export()
    status = world.purge(spec).status
    document = {
        "apiVersion": "capture.dev/v1alpha1", "kind": "RetentionPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    assert CustomResourceValidator(REPO / "crds").errors(document) == []


def test_reset_after_a_purge_keeps_purged_records_in_the_bucket(tmp_path: Path) -> None:
    with sync_pipeline():
        world = World(limits=[5], store=SQLiteStore(tmp_path / "s.sqlite"))
        world.insert([YOUNG, YOUNG, OLD, OLD, OLD, OLD, OLD, OLD, YOUNG, YOUNG])  # ids 1..10
        exporter = world.exporters["x0"]
        exporter.export()  # objects 1-5 and 6-10
        world.purge(policy(maxAge="24h", exporters=["x0"]))  # purges 3..8, all committed
        assert list(world.store.ids()) == [1, 2, 9, 10]
        exporter.reset()
        exporter.export()  # objects 1-5 and 6-10 hold purged records: kept as they are, and skipped
        assert {3, 4, 5, 6, 7, 8} <= exporter.bucket.data_ids()
        assert exporter.cursor.position == 10


def test_a_parquet_exporter_gates_where_pyarrow_is_missing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate reads only the checkpoint: an operator without pyarrow still sees a Parquet exporter's
    committed cursor (it cannot export Parquet, but what was exported elsewhere may be purged)."""
    from capture_export.export import ExportEngine, formats

    exporter = world.exporters["x0"]
    exporter.spec = exporter.spec.model_copy(update={"format": "parquet"})
    exporter.engine = ExportEngine(exporter.spec, exporter.engine.exporter, world.store, exporter.bucket,
                                   clock=world.clock)
    world.insert([OLD] * 4 + [YOUNG])
    exporter.export()
    assert exporter.checkpoint().position == 5

    def missing() -> None:
        raise formats.FormatUnavailable("format parquet needs pyarrow, which is not installed here")

    monkeypatch.setattr(formats, "_pyarrow", missing)
    outcome = world.purge(policy(maxAge="24h", exporters=["x0"]))
    assert condition(outcome.status, "GateOpen").status == "True"
    assert outcome.status.gate.bound == "5" and outcome.status.last_run.purged == 4
    assert list(world.store.ids()) == [5]


def test_a_selector_matching_more_than_64_exporters_still_gates_and_reports() -> None:
    """Status lists at most 64 gating exporters (the limiting one and the ones holding the gate shut
    first) and counts them all; the gate itself weighs every one."""
    from tests.support.crd_schema import CustomResourceValidator

    with sync_pipeline():
        world = World(limits=[5] * 70)
        ids = world.insert([OLD] * 4)
        for exporter in world.exporters.values():
            exporter.labels = {"gate": "yes"}
            if exporter.name != "x63":
                exporter.export()
        spec = policy(maxAge="24h", exporterSelector={"matchLabels": {"gate": "yes"}})
        outcome = world.purge(spec)
        gate = outcome.status.gate
        assert outcome.status.last_run.outcome == "GateClosed", outcome.status.last_run
        assert gate.limiting_exporter == "x63" and not gate.open
        assert gate.exporter_count == 70 and len(gate.exporters) == 64
        assert gate.exporters[0].name == "x63" and gate.exporters[0].state == "NeverRun"
        assert world.visible() == set(ids)

        world.exporters["x63"].export()
        outcome = world.purge(spec)
        assert outcome.status.last_run.purged == 4 and outcome.status.gate.exporter_count == 70
    document = {
        "apiVersion": "capture.dev/v1alpha1", "kind": "RetentionPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": outcome.status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    assert CustomResourceValidator(REPO / "crds").errors(document) == []


def test_each_soft_deleted_record_keeps_the_grace_period_of_the_policy_that_hid_it(world: World) -> None:
    """Two policies on one store: ``keep`` promises 30 days, ``tidy`` keeps 1 day. ``tidy`` hides what it
    selects for a day, and never removes early what ``keep`` hid; the longer grace is not stretched to
    ``tidy``'s records either."""
    keep = policy(maxAge="30d", exporters=["x0"], softDelete={"gracePeriod": "30d"})
    tidy = policy(maxAge="24h", exporters=["x0"], softDelete={"gracePeriod": "1d"})
    tidy_worker = RetentionWorker(ExporterId("ns", "tidy"), open_store=lambda spec, ns: world.store, secrets={},
                                  clock=world.clock, retry=world.worker.retry, pause_seconds=0.0,
                                  object_store_factory=world.worker.object_store_factory)
    ancient = world.insert([40 * 24 * 60] * 3)  # keep's, 40 days old
    recent = world.insert([2 * 24 * 60] * 2)  # only tidy selects these
    for _ in range(3):
        world.exporters["x0"].export()
    assert world.purge(keep).status.last_run.soft_deleted == 3

    def run_tidy(dry_run: bool = False) -> Any:
        spec = tidy.model_copy(update={"dry_run": dry_run})
        return tidy_worker.cycle(spec, RetentionPolicyStatus(), world.refs())

    assert run_tidy().status.last_run.soft_deleted == 2
    world.clock.advance(timedelta(days=2))  # tidy's grace is over, keep's is not
    assert run_tidy(dry_run=True).status.last_run.would_purge == 2
    assert run_tidy().status.last_run.purged == 2  # its own records only
    assert world.store.soft_deleted_count() == 3 and not set(recent) & set(world.store.ids())
    assert world.purge(keep).status.last_run.purged == 0
    world.clock.advance(timedelta(days=29))  # keep's 30 days are over
    assert run_tidy().status.last_run.purged == 3 and world.store.soft_deleted_count() == 0
    assert not set(ancient) & set(world.store.ids())


def test_a_purge_cut_into_runs_says_how_far_it_has_got_in_status_and_as_it_goes(world: World) -> None:
    """The operator cuts a long purge into runs of 60 s: between them ``status.purgeInProgress`` says what
    has gone and what is left; within a run, ``on_progress`` hears it every ``progress_seconds``."""
    spec = policy(maxAge="24h", exporters=["x0"], batchSize=2, softDelete={"gracePeriod": "1h"})
    world.insert([OLD] * 30)
    while world.exporters["x0"].export().rows:
        pass
    clock = world.clock
    clock.sleep = lambda seconds: setattr(clock, "mono", clock.mono + 1.0)  # type: ignore[method-assign]
    world.worker.pause_seconds = 0.001
    world.worker.progress_seconds = 2.0
    heard: list[Any] = []
    first = world.purge(spec, max_seconds=4.5, on_progress=heard.append)
    assert first.status.last_run.outcome == "Stopped"
    going = first.status.purge_in_progress
    assert going is not None and going.soft_deleted == first.status.last_run.soft_deleted > 0
    assert going.remaining == 30 - going.soft_deleted and going.started == first.status.last_run.start
    assert heard and [p.done for p in heard] == sorted(p.done for p in heard)
    assert heard[0].remaining == 30 - heard[0].done and heard[-1].done <= going.soft_deleted

    second = world.purge(spec, max_seconds=4.5)
    assert second.status.purge_in_progress is not None
    assert second.status.purge_in_progress.started == going.started
    assert second.status.purge_in_progress.soft_deleted == going.soft_deleted + second.status.last_run.soft_deleted
    done = world.purge(spec)
    assert done.status.last_run.outcome == "Succeeded" and done.status.purge_in_progress is None
    assert world.store.soft_deleted_count() == 30


def test_a_hard_delete_beside_soft_deleted_records_says_its_deletions_are_not_restorable(world: World) -> None:
    """One policy promises restorable purges, another on the same store deletes for good: the second never
    touches what the first hid, and its Purged Event tells its owner that what it deleted is gone for good."""
    keep = policy(maxAge="30d", exporters=["x0"], softDelete={"gracePeriod": "30d"})
    hard = policy(maxAge="24h", exporters=["x0"])
    ancient = world.insert([40 * 24 * 60] * 3)
    world.insert([2 * 24 * 60] * 2)
    while world.exporters["x0"].export().rows:
        pass
    assert world.purge(keep).status.last_run.soft_deleted == 3
    hard_worker = RetentionWorker(ExporterId("ns", "hard"), open_store=lambda spec, ns: world.store, secrets={},
                                  clock=world.clock, retry=world.worker.retry, pause_seconds=0.0,
                                  object_store_factory=world.worker.object_store_factory)
    outcome = hard_worker.cycle(hard, RetentionPolicyStatus(), world.refs())
    assert outcome.status.last_run.purged == 2 and world.store.soft_deleted_count() == 3
    purged = next(e for e in outcome.events if e.reason == "Purged")
    assert "not restorable" in purged.message and "3 soft-deleted" in purged.message, purged.message
    assert Purger(world.store, batch_size=10, pause_seconds=0).restore() == 3
    assert set(world.store.ids()) == set(ancient)
