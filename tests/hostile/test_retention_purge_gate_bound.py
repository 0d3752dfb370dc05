"""The careless operator against soft delete: records hidden while every gating exporter of the time had
exported them are removed for good, once their grace period is over, only up to the gate's bound *now*.

Soft-deleted records stay in the export stream, so an exporter that joins the gate, or is reset after its
bucket was wiped, exports them again. While it has committed none of them the gate is closed and nothing
goes (test_retention_never_loses.py). Once it has committed some, the gate opens with its cursor as the
bound: the records above that cursor are still the only copy its bucket can get, and must wait for it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from tests.support.retention import Exporter, World, policy, sync_pipeline

from .retention_support import world_store


def _joins_the_gate(world: World) -> Exporter:
    """A second archive (a compliance copy) is given the label the policy selects; it has exported nothing."""
    world.exporters["x1"].labels = {"archive": "yes"}
    return world.exporters["x1"]


def _wiped_and_reset(world: World) -> Exporter:
    """The gating exporter's bucket is emptied by hand, and the exporter reset to export everything again."""
    exporter = world.exporters["x0"]
    exporter.bucket.objects.clear()
    assert exporter.reset()
    return exporter


@pytest.mark.parametrize("mishap", [_joins_the_gate, _wiped_and_reset], ids=["a new exporter joins the gate",
                                                                              "bucket wiped, exporter reset"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_soft_deleted_records_past_their_grace_period_go_only_up_to_the_late_exporters_cursor(
    mishap: Callable[[World], Exporter], request: pytest.FixtureRequest, kind: str
) -> None:
    with sync_pipeline():
        # 3 records a batch: a late exporter's first batch ends below the others
        world = World(limits=[3, 3], store=world_store(kind, request))
        world.exporters["x0"].labels = {"archive": "yes"}
        world.exporters["x1"].labels = {"archive": "no"}
        spec = policy(maxAge="24h", exporterSelector={"matchLabels": {"archive": "yes"}},
                      softDelete={"gracePeriod": "1h"})
        old = world.insert([48 * 60] * 8 + [10] * 2)[:8]
        world.exporters["x0"].export()
        assert world.purge(spec).status.last_run.soft_deleted == 8

        late = mishap(world)
        world.clock.advance(timedelta(hours=2))  # the grace period of all eight is over
        # The late exporter gets through one batch (it is stopped, or its bucket is slow): it commits 1..3.
        first = late.engine.run(late.cursor, should_stop=lambda: True)
        late.cursor = first.cursor
        committed = late.checkpoint()
        assert committed is not None and committed.position == old[2]
        assert late.bucket.data_ids() == set(old[:3])

        dry = world.purge(spec.model_copy(update={"dry_run": True}))
        assert dry.status.last_run.would_purge == 3  # the dry run tells the same story
        partial = world.purge(spec)
        assert partial.status.gate.open is True and partial.status.gate.bound == str(old[2])
        assert partial.status.last_run.purged == 3, "soft-deleted records removed above the gate's bound"
        hidden_left = world.store.soft_deleted_count()
        assert hidden_left == 5, f"{8 - hidden_left} soft-deleted records removed, the late exporter has 3"
        assert partial.status.soft_deleted_pending == 5

        # What it has not exported yet is still in the export stream: it exports them; then they go.
        late.export()
        assert set(old) <= late.bucket.data_ids()  # every hidden record reached its bucket
        caught_up = world.purge(spec)
        assert caught_up.status.gate.open is True and caught_up.status.last_run.purged == 5
        assert world.store.soft_deleted_count() == 0
