"""Property tests: random interleavings of inserts, exports, exporter failures and resets, purges and
restores (10,000 examples in all). Real parts throughout: the SQLite store, the export engine writing
real data and checkpoint objects (into in-memory buckets), the retention worker reading them back.

* Safety: a purge removes only records at or below every gating exporter's committed cursor, old enough,
  and present in every gating exporter's bucket.
* Completeness: after a purge, no visible record at or below the bound and older than maxAge remains;
  with softDelete, no soft-deleted record past its grace period remains.
* The bound in status is the one computed independently from the checkpoint objects.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from tests.support.retention import HOUR_US, World, policy, scratch_store, sync_pipeline

# One operation: (kind, exporter, n, failure). Mostly inserts, exports and purges; now and then a bucket
# is down for the next few operations, an exporter is reset, soft-deleted records are restored, the
# missing exporter appears. ``n`` gives the records' ages (minutes), the tick, or the outage's length.
# Each is drawn as one integer and decoded (one draw per operation keeps generation cheap); the decoded
# operations are printed with a failing example.
_WEIGHTS = {"insert": 4, "export": 5, "tick": 3, "purge": 3, "outage": 1, "reset": 1, "restore": 1, "appear": 1}
_KINDS = [kind for kind, weight in _WEIGHTS.items() for _ in range(weight)]
_FAILURES = [None, None, None, "checkpoints", ".cbor.zstd"]
OPERATION = st.integers(0, len(_KINDS) * 2 * 601 * len(_FAILURES) - 1)


def _decode(value: int) -> tuple[str, str, int, str | None]:
    value, kind = divmod(value, len(_KINDS))
    value, exporter = divmod(value, 2)
    failure, n = divmod(value, 601)
    return _KINDS[kind], ("x0", "x1")[exporter], n, _FAILURES[failure]


def _ages(n: int) -> list[int]:
    return [n, (n * 7) % 601, (n * 13) % 601][: 1 + n % 3]


CONFIG = st.fixed_dictionaries({
    "limits": st.lists(st.integers(1, 5), min_size=2, max_size=2),
    "max_age_hours": st.integers(1, 4),
    "grace_minutes": st.none() | st.integers(0, 180),
    "batch_size": st.integers(1, 6),
    "gating": st.sampled_from(["x0", "both", "selector"]),
    "x1_labelled": st.booleans(),
    "x1_present": st.sampled_from([True, True, True, False]),
})
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _spec(config: dict) -> object:
    fields: dict = {"maxAge": f"{config['max_age_hours']}h", "batchSize": config["batch_size"]}
    if config["gating"] == "x0":
        fields["exporters"] = ["x0"]
    elif config["gating"] == "both":
        fields["exporters"] = ["x0", "x1"]
    else:
        fields["exporterSelector"] = {"matchLabels": {"gate": "yes"}}
    if config["grace_minutes"] is not None:
        fields["softDelete"] = {"gracePeriod": f"{config['grace_minutes']}m"}
    return policy(**fields)


def _gating(world: World, config: dict) -> list[str]:
    if config["gating"] == "x0":
        return ["x0"]
    if config["gating"] == "both":
        return ["x0", "x1"]
    return sorted(e.name for e in world.exporters.values() if e.present and e.labels.get("gate") == "yes")


def _expected_bound(world: World, gating: list[str]) -> int:
    """Independently of the gate: the smallest committed position among the gating exporters' checkpoint
    objects, or 0 when one is missing, unreadable, has none or was reset."""
    if not gating:
        return 0
    bound = None
    for name in gating:
        exporter = world.exporters[name]
        if not exporter.present or exporter.bucket.down:
            return 0
        checkpoint = exporter.checkpoint()
        if checkpoint is None or checkpoint.position == 0:
            return 0
        bound = checkpoint.position if bound is None else min(bound, checkpoint.position)
    return bound or 0


def _committed(world: World, name: str) -> set[int]:
    exporter = world.exporters[name]
    if exporter.bucket.down:
        return set()
    checkpoint = exporter.checkpoint()
    position = checkpoint.position if checkpoint else 0
    return {i for i in exporter.bucket.data_ids() if i <= position}


def _stored(world: World) -> set[int]:
    """Every record id in the store, soft-deleted ones included."""
    return {row.id for row in world.store.read_batch(0, 1_000_000, horizon=2**62)}


@settings(max_examples=9_000, **SETTINGS)
@given(config=CONFIG, operations=st.lists(OPERATION, min_size=8, max_size=24))
def test_purges_only_what_every_gating_exporter_committed_and_all_of_it(config: dict, operations: list) -> None:
    decoded = [_decode(value) for value in operations]
    note(f"operations: {decoded}")
    spec = _spec(config)
    grace_us = config["grace_minutes"] * 60_000_000 if config["grace_minutes"] is not None else None
    with sync_pipeline():
        world = World(limits=config["limits"], store=scratch_store())
        world.exporters["x0"].labels = {"gate": "yes"}
        world.exporters["x1"].labels = {"gate": "yes"} if config["x1_labelled"] else {}
        world.exporters["x1"].present = config["x1_present"]
        ledger: dict[str, set[int]] = {name: set() for name in world.exporters}
        had_reset = False
        purged_while_gating: dict[str, set[int]] = {name: set() for name in world.exporters}
        outage_until: dict[str, int] = {}
        for step, (kind, name, n, failure) in enumerate([*decoded, ("purge", "x0", 0, None)]):
            for down, until in outage_until.items():
                world.exporters[down].bucket.down = step < until
            if kind == "insert":
                world.insert(_ages(n))
            elif kind == "tick":
                world.clock.advance(timedelta(minutes=1 + n % 300))
            elif kind == "export":
                exporter = world.exporters[name]
                exporter.bucket.fail_put_containing = failure
                exporter.export()
                exporter.bucket.fail_put_containing = None
                ledger[name] |= _committed(world, name)
            elif kind == "outage":
                outage_until[name] = step + 2 + n % 4
            elif kind == "reset":
                had_reset |= world.exporters[name].reset()
            elif kind == "restore":
                world.store.restore_chunk(1_000_000)
            elif kind == "appear":
                world.exporters["x1"].present = True
            else:
                gating = _gating(world, config)
                bound = _expected_bound(world, gating)
                cutoff_us = world.now_us() - config["max_age_hours"] * HOUR_US
                before, stored_before = world.visible(), _stored(world)
                outcome = world.purge(spec)
                after = world.visible()
                # Removed for good (soft-deleted ones past their grace too): never above the gate's bound now.
                assert all(i <= bound for i in stored_before - _stored(world)), (stored_before - _stored(world), bound)
                gone = before - after
                assert after <= before, "a purge never brings records back"
                event("purge removed records" if gone else "purge removed nothing")
                event(f"gate {'open' if bound else 'closed'}; had reset: {had_reset}")
                # Safety.
                in_buckets = {name: world.exporters[name].bucket.data_ids() for name in gating} if gone else {}
                for record_id in gone:
                    assert record_id <= bound, (record_id, bound)
                    assert world.inserted[record_id] < cutoff_us
                    for name in gating:
                        assert record_id in ledger[name], f"record {record_id} never committed by {name}"
                        assert record_id in in_buckets[name]
                for name in gating:
                    purged_while_gating[name] |= gone
                # A purged record is never lost to an exporter that gated its purge, whatever happened since:
                # it is in that exporter's bucket, or still in the store, soft-deleted. A re-export after a
                # reset reads soft-deleted records with new batch bounds and sweeps the old objects; a run
                # that fails between two batches leaves the rest out of the bucket until the next run, and
                # the store keeps them, since nothing above the gate's bound is removed for good (above).
                stored_now = _stored(world)
                for name, purged in purged_while_gating.items():
                    if purged:
                        missing = purged - world.exporters[name].bucket.data_ids() - stored_now
                        assert not missing, f"purged records lost from {name}'s bucket: {sorted(missing)[:5]}"
                # Completeness.
                left = [i for i in after if i <= bound and world.inserted[i] < cutoff_us]
                assert not left, f"old records at or below bound {bound} survived: {left[:5]}"
                if grace_us is not None:  # (those marked by this very run wait for the next, even with 0s; those
                    # above the bound wait for the exporters that hold the gate)
                    assert world.store.soft_deleted_count(world.now_us() - max(grace_us, 1), max_id=bound) == 0
                else:
                    assert world.store.soft_deleted_count() == 0
                # Status tells the same story.
                run = outcome.status.last_run
                assert run is not None and run.outcome != "Failed", run
                assert outcome.status.gate is not None
                assert outcome.status.gate.bound == str(bound)
                assert outcome.status.gate.open == (bound > 0)
                gate_condition = next(c for c in outcome.status.conditions if c.type == "GateOpen")
                assert gate_condition.status == ("True" if bound > 0 else "False")
                if bound == 0 and gating:
                    assert outcome.status.gate.limiting_exporter in gating
                    assert outcome.status.gate.limiting_exporter in gate_condition.message
                if grace_us is None:
                    assert run.purged == len(gone)
                else:
                    assert run.soft_deleted == len(gone)


@settings(max_examples=1_000, **SETTINGS)
@given(
    max_age_hours=st.integers(1, 4),
    batch_size=st.integers(1, 6),
    operations=st.lists(st.one_of(
        st.tuples(st.just("insert"), st.lists(st.integers(0, 600), min_size=1, max_size=6)),
        st.tuples(st.just("tick"), st.integers(1, 300)),
        st.tuples(st.just("purge")),
    ), max_size=16),
)
def test_age_only_purges_every_old_record_exported_or_not(max_age_hours: int, batch_size: int,
                                                          operations: list) -> None:
    spec = policy(maxAge=f"{max_age_hours}h", requireExport=False, batchSize=batch_size)
    world = World(limits=[1], store=scratch_store())
    for operation in [*operations, ("purge",)]:
        if operation[0] == "insert":
            world.insert(operation[1])
        elif operation[0] == "tick":
            world.clock.advance(timedelta(minutes=operation[1]))
        else:
            cutoff_us = world.now_us() - max_age_hours * HOUR_US
            before = world.visible()
            outcome = world.purge(spec)
            after = world.visible()
            assert all(world.inserted[i] < cutoff_us for i in before - after)
            assert all(world.inserted[i] >= cutoff_us for i in after)
            gate = outcome.status.gate
            assert gate is not None and gate.mode == "AgeOnly" and "EXPORTED OR NOT" in gate.message
            assert next(c for c in outcome.status.conditions if c.type == "GateOpen").reason == "ExportNotRequired"
