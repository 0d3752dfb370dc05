"""RetentionPolicy in the operator, against the emulated API server, a real SeaweedFS and a real SQLite store:
the gate closes naming a missing exporter and opens once it has caught up, a soft delete is undone by
``capture-export restore``, and a refused spec purges nothing until it is fixed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capture_export.cli import main as cli
from capture_export.store import SQLiteStore
from tests.support.operator_harness import EmulatedCluster, Kube, OperatorThread, Policies, wait_for
from tests.support.records import make_record


@pytest.fixture
def policies(cluster: EmulatedCluster) -> Iterator[Policies]:
    client = Policies(cluster)
    yield client
    client.close()


def insert(store: SQLiteStore, ages: list[timedelta]) -> None:
    now = datetime.now(UTC)
    start = store.highest_assigned_id()
    store.append(make_record(start + i, timestamp=now - age) for i, age in enumerate(ages))


OLD, YOUNG = timedelta(days=2), timedelta(minutes=1)  # against maxAge 24h


def test_missing_exporter_closes_the_gate_naming_it_until_it_catches_up(
    kube: Kube, policies: Policies, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore,
) -> None:
    insert(sqlite_store, [OLD] * 5 + [YOUNG] * 3)
    start_operator()
    policies.apply_policy("retain", {"maxAge": "24h", "exporters": ["usage"], "every": 1, "batchSize": 2})

    gate = policies.wait_condition("retain", "GateOpen", "False", "ExporterNotFound")
    assert "usage" in gate["message"]
    status = policies.status("retain")
    assert status["gate"]["limitingExporter"] == "usage" and status["lastRun"]["outcome"] == "GateClosed"
    assert policies.condition("retain", "Ready")["status"] == "False"
    assert status["observedGeneration"] == 1 and "kopf" not in status
    wait_for(lambda: any(e[:2] == ("Warning", "ExporterNotFound") for e in policies.events("retain")),
             what="a Warning Event naming the gate's reason")
    assert sqlite_store.count() == 8
    body = policies.get("retain")
    assert body is not None and body["metadata"]["finalizers"] == ["capture.dev/finalizer"]

    # The exporter appears and exports everything; the next runs purge the old, exported records only.
    kube.apply_exporter("usage", exporter_spec())
    kube.wait_status("usage", lambda s: s.get("cursor") == "8", what="exporter caught up")
    insert(sqlite_store, [OLD] * 2)  # ids 9, 10: old but not exported (the exporter runs hourly)
    runs = policies.status("retain")["totals"]["runs"]
    status = policies.wait_status("retain", lambda s: s["totals"]["purged"] == 5 and s["totals"]["runs"] > runs + 1,
                                  what="old exported records purged")
    assert list(sqlite_store.ids()) == [6, 7, 8, 9, 10]
    policies.wait_condition("retain", "GateOpen", "True")
    policies.wait_condition("retain", "Ready", "True")
    assert status["gate"]["bound"] == "8"
    wait_for(lambda: any(e[:2] == ("Normal", "Purged") for e in policies.events("retain")), what="Purged Event")


def test_soft_delete_then_restore_after_the_policy_is_deleted(
    kube: Kube, policies: Policies, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, store_path: Path,
) -> None:
    insert(sqlite_store, [OLD] * 5 + [YOUNG] * 2)
    start_operator()
    kube.apply_exporter("usage", exporter_spec())
    kube.wait_status("usage", lambda s: s.get("cursor") == "7", what="exporter caught up")
    policies.apply_policy("retain", {"maxAge": "24h", "exporters": ["usage"], "softDelete": {"gracePeriod": "1h"}})

    status = policies.wait_status("retain", lambda s: (s.get("lastRun") or {}).get("softDeleted") == 5,
                                  what="old records soft-deleted")
    assert status["lastRun"]["purged"] == 0 and status["softDeletedPending"] == 5
    assert sqlite_store.count() == 2  # hidden, still restorable

    # Deleting the policy stops its daemon and lets the resource go (our finalizer removed) ...
    policies.delete("retain")
    wait_for(lambda: policies.get("retain") is None, what="the policy gone")
    # ... and restore brings the records back (a live policy would soft-delete them again).
    assert cli(["restore", "--store", str(store_path)]) == 0
    assert sqlite_store.count() == 7 and sqlite_store.soft_deleted_count() == 0


def test_invalid_spec_is_refused_and_nothing_is_purged_until_fixed(
    cluster: EmulatedCluster, policies: Policies, start_operator: Callable[..., OperatorThread],
    sqlite_store: SQLiteStore,
) -> None:
    insert(sqlite_store, [OLD] * 3)
    start_operator()
    # A cluster whose CRD is old or carries no schema lets the spec through: the operator refuses on its own.
    cluster.without_crd_validation()
    policies.apply_policy("retain", {"maxAge": "24h", "requireExport": False, "batchSize": 0, "every": 1})

    ready = policies.wait_condition("retain", "Ready", "False", "InvalidSpec")
    assert "batchSize" in ready["message"]
    wait_for(lambda: [e for e in policies.events("retain") if e[:2] == ("Warning", "InvalidSpec")],
             what="InvalidSpec Event")
    assert policies.status("retain")["observedGeneration"] == 1
    assert sqlite_store.count() == 3

    policies.patch("retain", {"spec": {"batchSize": 2}})
    status = policies.wait_status("retain", lambda s: s["totals"]["purged"] == 3, what="purge after the fix")
    assert status["gate"]["mode"] == "AgeOnly" and sqlite_store.count() == 0
    assert len([e for e in policies.events("retain") if e[:2] == ("Warning", "InvalidSpec")]) == 1
