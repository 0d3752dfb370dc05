"""One writer per destination (export/ownership.py): the lease's rules, the store lock, other exporters'
checkpoints, and what the engine refuses on recovery. In-memory bucket, real SQLite, a clock we move."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from capture_export.api import S3ExporterSpec
from capture_export.export import Cursor, ExportEngine, ExporterId, ExportFailure, RetryPolicy
from capture_export.export.checkpoint import decode_checkpoint
from capture_export.export.layout import ObjectLayout, layouts_apart
from capture_export.export.model import Requests
from capture_export.export.ownership import DestinationLease, Holder, Ownership, probe_conditional_writes
from capture_export.objectstore import MemoryObjectStore
from capture_export.store import SQLiteStore
from tests.support.records import make_record
from tests.support.retention import FakeClock

NO_WAIT = RetryPolicy(attempts=1)
LAYOUT = ObjectLayout("p", "default", "usage")
TTL = 60.0


def holder(exporter: str = "default/usage", store: str = "store-a", instance: str = "one", scope: str = "s1") -> Holder:
    return Holder(exporter, store, instance, scope)


def lease(objects: MemoryObjectStore, clock: FakeClock, who: Holder) -> DestinationLease:
    return DestinationLease(objects, LAYOUT.lease_key(), who, ttl=TTL, clock=clock, requests=Requests(clock, NO_WAIT))


def refused(action) -> ExportFailure:  # type: ignore[no-untyped-def]
    with pytest.raises(ExportFailure) as caught:
        action()
    assert caught.value.reason == "DestinationInUse"
    return caught.value


def test_a_live_holder_keeps_the_lease_and_a_contender_waits_a_whole_ttl_of_its_own_clock() -> None:
    objects, clock = MemoryObjectStore(), FakeClock()
    first = lease(objects, clock, holder())
    first.claim()
    other = lease(objects, clock, holder("other/exporter", "store-b", "two", "s2"))
    failure = refused(other.claim)
    assert "other/exporter" not in failure.message and "default/usage" in failure.message

    # The holder renews within its TTL: the ETag changes, and the contender's watch starts again.
    clock.advance(timedelta(seconds=TTL / 2))
    first.hold()
    clock.advance(timedelta(seconds=TTL * 0.6))
    refused(other.claim)
    clock.advance(timedelta(seconds=TTL * 0.6))
    refused(other.claim)  # 0.6 TTL since it saw the renewed ETag

    # The holder goes silent (killed elsewhere): a whole TTL after the contender first saw its last ETag.
    clock.advance(timedelta(seconds=TTL * 0.5))
    other.claim()
    assert json.loads(objects.objects[LAYOUT.lease_key()])["exporter"] == "other/exporter"
    # The old holder, waking up, finds the lease taken and stops.
    clock.advance(timedelta(seconds=TTL))
    refused(first.hold)


def test_same_exporter_store_and_lock_scope_takes_over_at_once() -> None:
    """The store lock the newcomer holds proves the old holder gone (killed -9, restarted)."""
    objects, clock = MemoryObjectStore(), FakeClock()
    lease(objects, clock, holder(instance="before-kill")).claim()
    lease(objects, clock, holder(instance="after-restart")).claim()
    # Not across a copy of the store (another lock scope): that one waits.
    refused(lease(objects, clock, holder(instance="on-a-copy", scope="s-copy")).claim)


def test_renewal_happens_at_most_every_third_of_the_ttl() -> None:
    objects, clock = MemoryObjectStore(), FakeClock()
    held = lease(objects, clock, holder())
    held.claim()
    puts = objects.puts
    for _ in range(100):  # batches over half a TTL
        held.hold()
        clock.advance(timedelta(seconds=TTL / 200))
    assert objects.puts == puts + 1  # a third of the TTL passed once: one renewal for 100 batches


def test_a_cycle_soon_after_the_last_write_claims_its_own_lease_without_a_request() -> None:
    """Each cycle claims before its first write; a lease written less than a third of its TTL ago is still
    ours (a contender waits a whole TTL), so a busy exporter pays no lease request per cycle."""
    objects, clock = MemoryObjectStore(), FakeClock()
    requests = Requests(clock, NO_WAIT)
    held = DestinationLease(objects, LAYOUT.lease_key(), holder(), ttl=TTL, clock=clock, requests=requests)
    held.claim()
    made = requests.count
    clock.advance(timedelta(seconds=TTL / 4))
    held.claim()  # the next cycle's claim
    assert requests.count == made
    clock.advance(timedelta(seconds=TTL / 4))
    held.claim()  # half a TTL since the write: read and renew
    assert requests.count == made + 2


def test_a_server_that_ignores_conditional_writes_is_found_out() -> None:
    clock = FakeClock()
    honest, careless = MemoryObjectStore(), MemoryObjectStore()
    careless.honours_conditions = False
    requests = Requests(clock, NO_WAIT)
    assert probe_conditional_writes(honest, LAYOUT, requests)
    assert not probe_conditional_writes(careless, LAYOUT, requests)
    assert not [k for k in honest.objects if ".probe-" in k] and not [k for k in careless.objects if ".probe-" in k]


def test_store_lock_refuses_a_second_worker_of_the_same_exporter(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    objects, clock = MemoryObjectStore(), FakeClock()
    requests = Requests(clock, NO_WAIT)
    one = Ownership(ExporterId("default", "usage"), clock=clock, ttl=TTL)
    two = Ownership(ExporterId("default", "usage"), clock=clock, ttl=TTL)
    one.claim(store, store.identity(), objects, LAYOUT, requests)
    failure = refused(lambda: two.claim(store, store.identity(), objects, LAYOUT, requests))
    assert "lock" in failure.message
    one.release()
    assert LAYOUT.lease_key() not in objects.objects  # released: a successor need not wait
    two.claim(store, store.identity(), objects, LAYOUT, requests)
    two.release()
    store.close()


@pytest.mark.parametrize(
    ("ours", "theirs", "apart"),
    [
        ("{prefix}", "{prefix}", False),
        ("{prefix}/{date}", "{prefix}/{date}", False),
        ("{prefix}/{exporter}", "{prefix}/{exporter}", True),
        ("{prefix}/{exporter}/{date}", "{prefix}/{exporter}/{year}", True),
        ("{prefix}", "{prefix}/{exporter}", True),  # the flat one's keys are its folder's direct children
        ("{prefix}/{date}", "{prefix}/{exporter}", False),  # a date folder could be named like the exporter
        ("{prefix}/{exporter}-{date}", "{prefix}/{exporter}-{date}", False),  # same folder up to the date
    ],
)
def test_layouts_apart_is_conservative(ours: str, theirs: str, apart: bool) -> None:
    a = ObjectLayout("p", "default", "a", template=ours)
    b = ObjectLayout("p", "default", "b", template=theirs)
    assert layouts_apart(a, b) is apart
    assert layouts_apart(b, a) is apart


def test_unknown_layout_of_an_old_checkpoint_is_apart_only_when_ours_names_the_exporter() -> None:
    assert not layouts_apart(ObjectLayout("p", "default", "a"), None)
    assert layouts_apart(ObjectLayout("p", "default", "a", template="{prefix}/{exporter}"), None)


def _engine(store: SQLiteStore, objects: MemoryObjectStore, limit: int = 10) -> ExportEngine:
    spec = S3ExporterSpec(bucket="bkt", region="us-east-1", prefix="p", limit=limit)
    return ExportEngine(spec, ExporterId("default", "usage"), store, objects, clock=FakeClock(), retry=NO_WAIT)


def test_recover_refuses_another_store_a_missing_checkpoint_and_a_cursor_ahead(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.append(make_record(i) for i in range(30))
    objects = MemoryObjectStore()
    engine = _engine(store, objects)
    done = engine.run(engine.recover(Cursor()))
    assert done.cursor.position == 30
    checkpoint = decode_checkpoint(objects.objects[engine.checkpoints.key])
    assert (checkpoint.version, checkpoint.store_id, checkpoint.layout) == (2, store.identity(), ("{prefix}", False))

    def reason(action) -> str:  # type: ignore[no-untyped-def]
        with pytest.raises(ExportFailure) as caught:
            action()
        return caught.value.reason

    assert reason(lambda: engine.recover(done.cursor, saved_store_id="another-store")) == "StoreMismatch"
    engine.recover(done.cursor, saved_store_id="another-store", resetting=True)  # a reset may
    other = SQLiteStore(tmp_path / "other.sqlite")
    other.append(make_record(i) for i in range(40))
    assert reason(lambda: _engine(other, objects).recover(Cursor())) == "StoreMismatch"
    assert reason(lambda: _engine(other, objects).recover(Cursor(), resetting=True)) == "StoreMismatch"

    body = json.loads(objects.objects[engine.checkpoints.key])
    objects.objects[engine.checkpoints.key] = json.dumps({**body, "cursor": "31"}).encode()
    assert reason(lambda: engine.recover(done.cursor)) == "CursorAheadOfStore"
    del objects.objects[engine.checkpoints.key]
    assert reason(lambda: engine.recover(done.cursor)) == "CheckpointMissing"
    # Nothing knows the high-water mark: the bucket is listed for it.
    assert engine.recover(Cursor()).high_water == 30
    store.close()
    other.close()
