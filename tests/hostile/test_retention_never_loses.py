"""The careless operator and the hostile tenant against retention: whatever they do to an exporter's
saved status, a RetentionPolicy never deletes a record that is not in the bucket.

The gate reads each exporter's committed cursor from its checkpoint object, never from status. But the
exporter resumes from its saved status (or the standalone state file) too, and anyone with patch on
``s3exporters/status`` can write a cursor there: an exporter that believed it and skipped ahead would
write that cursor into its checkpoint, and the gate would then vouch for records nobody exported.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capture_export.audit import verify_export
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.operator_fixtures import cluster_fixture, kube_fixture, start_operator_fixture  # noqa: F401
from tests.support.operator_harness import EmulatedCluster, Kube, OperatorThread, Policies, wait_for
from tests.support.records import make_record
from tests.support.retention import World, policy, sync_pipeline

from .retention_support import RetentionRun, append_old_records, open_store, world_store
from .runs_support import exporter_spec


@pytest.mark.parametrize("forged", [{"cursor": "450"}, {"cursor": "450", "epoch": 3}],
                         ids=["cursor ahead", "cursor ahead in a newer epoch"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_hand_edited_saved_cursor_never_lets_retention_purge_unexported_records(
    s3_server: LocalS3, bucket: str, tmp_path: Path, request: pytest.FixtureRequest, kind: str,
    forged: dict[str, object],
) -> None:
    run = RetentionRun(s3_server, bucket, tmp_path,
                       store=request.getfixturevalue("pg_dsn") if kind == "postgresql" else None)
    first = append_old_records(run.store, 300)
    done = run.run_once()
    assert done.returncode == 0, done.stdout + done.stderr
    assert run.store_ids() == set() and run.bucket_ids() == set(first)  # exported, then purged

    later = append_old_records(run.store, 200)  # ids 301..500, old enough to purge once exported
    run.edit_state(**forged)  # past 300, below the store's highest id: nothing refuses it as impossible

    again = run.run_once()
    assert "Traceback" not in again.stdout + again.stderr, again.stdout + again.stderr
    lost = set(later) - run.store_ids() - run.bucket_ids()
    assert not lost, f"{len(lost)} records neither in the store nor in the bucket (ids {min(lost)}-{max(lost)})"
    # And the exporter caught up from what the bucket holds: everything is exported once, then purged.
    assert run.bucket_ids() == set(first) | set(later)
    assert run.store_ids() == set()
    # The saved status says what the bucket holds again, and the run said why it went back.
    assert (run.state_entry()["epoch"], run.state_entry()["cursor"]) == (0, "500"), run.state_entry()
    assert "SavedCursorAhead" in again.stdout, again.stdout
    assert "refusing to move cursor back" not in again.stderr, again.stderr


@pytest.mark.parametrize("forged", [{"cursor": "45"}, {"cursor": "45", "epoch": 3}],
                         ids=["cursor ahead", "cursor ahead in a newer epoch"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_tenant_who_patches_an_exporters_status_cursor_cannot_get_unexported_records_purged(
    cluster: EmulatedCluster, kube: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3,
    bucket: str, sqlite_store: SQLiteStore, request: pytest.FixtureRequest, kind: str,
    forged: dict[str, object],
) -> None:
    """In the operator: status is a subresource anyone with patch on ``s3exporters/status`` may write. A
    cursor written there while the operator restarts (an upgrade, a drained node) is what the new worker
    starts from; it must not skip records that the policy then purges as exported."""
    store, on_store = sqlite_store, {}  # the operator's default store
    if kind == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        store = open_store(dsn)
        request.addfinalizer(store.close)
        kube.create_secret("capture-store", {"dsn": dsn})
        on_store = {"store": {"postgres": {"secretRef": {"name": "capture-store"}}}}
    now = datetime.now(UTC)
    store.append(make_record(i, timestamp=now - timedelta(days=40)) for i in range(30))
    kube.create_secret("s3-creds", {"access_key_id": s3_server.access_key_id,
                                    "access_secret": s3_server.secret_access_key})
    policies = Policies(cluster)
    first = start_operator()
    kube.apply_exporter("usage", exporter_spec(s3_server, bucket) | {"limit": 10} | on_store)
    policies.apply_policy("keep", {"maxAge": "30d", "exporters": ["usage"], "every": 1, "batchSize": 10}
                          | on_store)
    kube.wait_status("usage", lambda s: s.get("cursor") == "30", what="the first export")
    wait_for(lambda: store.count() == 0, timeout=30, what="the first purge")
    first.stop()

    store.append(make_record(i, timestamp=now - timedelta(days=40)) for i in range(30, 50))  # 31..50
    kube.patch_status("usage", forged)  # the tenant, while no operator runs
    start_operator()
    # Status says what the bucket holds again (epoch and all).
    kube.wait_status("usage", lambda s: (s.get("epoch"), s.get("cursor")) == (0, "50"), timeout=60,
                     what="the export after the restart")
    wait_for(lambda: store.count() == 0, timeout=30, what="the second purge")

    objects = S3ObjectStore(S3Location(bucket, "us-east-1", s3_server.endpoint),
                            Credentials(s3_server.access_key_id, s3_server.secret_access_key))
    report = verify_export(store, objects, "llm")
    assert report.exported_records == 50 and not report.duplicated, report.summary()  # each exported once
    assert any(e[:2] == ("Warning", "SavedCursorAhead") for e in kube.events("usage")), kube.events("usage")


def _joins_the_gate(world: World) -> None:
    """A careless operator gives a second archive (a compliance copy) the label the policy selects."""
    world.exporters["x1"].labels = {"archive": "yes"}


def _wiped_and_reset(world: World) -> None:
    """The bucket is emptied by hand (a lifecycle rule, `aws s3 rm --recursive`), and the exporter reset
    to export everything again."""
    exporter = world.exporters["x0"]
    exporter.bucket.objects.clear()
    assert exporter.reset()


@pytest.mark.parametrize("mishap", [_joins_the_gate, _wiped_and_reset], ids=["a new exporter joins the gate",
                                                                              "bucket wiped, exporter reset"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_soft_deleted_records_wait_out_a_closed_gate_before_they_are_removed_for_good(
    mishap: Callable[[World], None], request: pytest.FixtureRequest, kind: str
) -> None:
    """Soft-deleted records stay in the export stream so that an exporter new to the gate, or reset, exports
    them again. Their grace period may end while that exporter has not: then they are still the only copy
    its bucket can get, and removing them would purge records a gating exporter has not exported."""
    with sync_pipeline():
        world = World(limits=[10, 10], store=world_store(kind, request))
        world.exporters["x0"].labels = {"archive": "yes"}
        world.exporters["x1"].labels = {"archive": "no"}
        spec = policy(maxAge="24h", exporterSelector={"matchLabels": {"archive": "yes"}},
                      softDelete={"gracePeriod": "1h"})
        old = world.insert([48 * 60] * 5 + [10] * 2)[:5]
        world.exporters["x0"].export()
        assert world.purge(spec).status.last_run.soft_deleted == 5

        mishap(world)
        world.clock.advance(timedelta(hours=2))  # the grace period is over
        dry = world.purge(spec.model_copy(update={"dry_run": True}))
        assert dry.status.last_run.would_purge == 0  # the dry run tells the truth about it too
        closed = world.purge(spec)
        assert closed.status.gate.open is False
        assert world.store.soft_deleted_count() == 5, "soft-deleted records removed for good behind a closed gate"
        assert closed.status.soft_deleted_pending == 5

        # The exporter that held the gate exports them; then, and only then, they go.
        late = world.exporters["x0" if mishap is _wiped_and_reset else "x1"]
        late.export()
        assert set(old) <= late.bucket.data_ids()
        opened = world.purge(spec)
        assert opened.status.gate.open is True and opened.status.last_run.purged == 5
        assert world.store.soft_deleted_count() == 0


def _restart_ids(store: Path | str) -> None:
    if isinstance(store, str):
        import psycopg

        with psycopg.connect(store, autocommit=True) as db:
            db.execute("TRUNCATE captures RESTART IDENTITY")
        return
    with sqlite3.connect(store) as db:
        db.execute("DELETE FROM captures")
        db.execute("DELETE FROM sqlite_sequence WHERE name = 'captures'")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_ids_restarted_under_the_same_store_hold_the_export_and_the_gate(
    s3_server: LocalS3, bucket: str, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """A careless DBA empties the table and resets its id sequence (PostgreSQL: ``TRUNCATE captures RESTART
    IDENTITY``); the store keeps its identity. Once the gateway's new ids pass the old cursor, the exporter
    would resume there, skipping the new records below it, and the gate would purge them as exported."""
    run = RetentionRun(s3_server, bucket, tmp_path,
                       store=request.getfixturevalue("pg_dsn") if kind == "postgresql" else None)
    first = append_old_records(run.store, 300)
    done = run.run_once()
    assert done.returncode == 0, done.stdout + done.stderr
    assert run.store_ids() == set() and run.bucket_ids() == set(first)

    _restart_ids(run.store)
    fresh = append_old_records(run.store, 400)  # ids 1..400 again: new records, none exported
    assert fresh[0] == 1

    again = run.run_once()
    assert "Traceback" not in again.stdout + again.stderr, again.stdout + again.stderr
    assert run.store_ids() == set(fresh), f"{len(set(fresh) - run.store_ids())} new records purged unexported"
    reasons = {c["reason"] for c in run.state_entry()["conditions"] if c["status"] == "False"}
    assert "StoreMismatch" in reasons, run.state_entry()["conditions"]
    gate = run.state_entry("RetentionPolicy/default/keep")["gate"]
    assert gate["open"] is False and gate["reason"] == "ExporterStoreMismatch", gate
    assert run.bucket_ids() == set(first)  # the old records' only copy is untouched
