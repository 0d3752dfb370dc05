"""RetentionPolicy through the real API: the gate stays closed, naming the exporter, while it is missing, and
opens to purge only what the exporter has committed once it has run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from capture_export.api import GROUP, VERSION
from capture_export.store import SQLiteStore
from tests.support.operator_harness import Kube, OperatorThread, Policies, wait_for
from tests.support.records import make_record

from .helpers import table, table_rows

OLD, YOUNG = timedelta(days=2), timedelta(minutes=1)  # against maxAge 24h


def insert(store: SQLiteStore, ages: list[timedelta]) -> None:
    now = datetime.now(UTC)
    start = store.highest_assigned_id()
    store.append(make_record(start + i, timestamp=now - age) for i, age in enumerate(ages))


def test_gate_closed_for_a_missing_exporter_then_purge_after_export(
    kube: Kube, policies: Policies, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore,
) -> None:
    insert(sqlite_store, [OLD] * 5 + [YOUNG] * 3)
    start_operator()
    policies.apply_policy("retain", {"maxAge": "24h", "exporters": ["usage"], "every": 1, "batchSize": 2})

    gate = policies.wait_condition("retain", "GateOpen", "False", "ExporterNotFound", timeout=60)
    assert "usage" in gate["message"]
    status = policies.status("retain")
    assert status["gate"]["limitingExporter"] == "usage" and status["observedGeneration"] == 1
    wait_for(lambda: any(e[:2] == ("Warning", "ExporterNotFound") for e in policies.events("retain")),
             what="a Warning Event naming the gate's reason")
    assert sqlite_store.count() == 8

    kube.apply_exporter("usage", exporter_spec())
    kube.wait_status("usage", lambda s: s.get("cursor") == "8", timeout=60, what="exporter caught up")
    insert(sqlite_store, [OLD] * 2)  # ids 9, 10: old but not exported (the exporter runs hourly)
    runs = policies.status("retain")["totals"]["runs"]
    status = policies.wait_status("retain", lambda s: s["totals"]["purged"] == 5 and s["totals"]["runs"] > runs + 1,
                                  timeout=30, what="old exported records purged")
    assert list(sqlite_store.ids()) == [6, 7, 8, 9, 10]
    policies.wait_condition("retain", "GateOpen", "True")
    assert status["gate"]["bound"] == "8"

    [row] = table_rows(table(policies.client, f"/apis/{GROUP}/{VERSION}/namespaces/{policies.namespace}/"
                                              "retentionpolicies"))
    assert (row["Name"], row["Max Age"], row["Gate"], row["Purged"]) == ("retain", "24h", "True", 5)
