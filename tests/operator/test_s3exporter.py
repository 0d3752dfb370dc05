"""The operator against an emulated API server, a real SeaweedFS and a real SQLite store.

Each test starts the operator as ``capture-export operator`` does, applies resources with the official
client, and waits for conditions with a deadline (never a fixed sleep).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from capture_export.audit import decode_object, verify_export
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.operator_fixtures import SECRET
from tests.support.operator_harness import (
    EmulatedCluster,
    Kube,
    OperatorThread,
    assert_exported_exactly_once,
    wait_for,
)
from tests.support.records import make_record

PREFIX = "exports"
CHECKPOINT = f"{PREFIX}/_capture-export/checkpoints/default/usage.json"


def data_keys(objects: S3ObjectStore) -> list[str]:
    return sorted(info.key for info in objects.list(f"{PREFIX}/") if info.key.endswith(".cbor.zstd"))


def records_in(objects: S3ObjectStore, key: str) -> list[int]:
    data = objects.get(key)
    assert data is not None
    return [int(record["id"]) for record in decode_object(data)]


def checkpoint(objects: S3ObjectStore) -> dict[str, Any]:
    raw = objects.get(CHECKPOINT)
    return json.loads(raw) if raw else {}


def test_create_exports_everything_and_reports_ready(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(250))
    operator = start_operator()
    kube.apply_exporter("usage", exporter_spec())

    kube.wait_condition("usage", "Ready", "True")
    status = kube.wait_status("usage", lambda s: s.get("cursor") == "250", what="cursor 250")
    assert_exported_exactly_once(sqlite_store, object_store)
    keys = data_keys(object_store)
    assert len(keys) == 3  # limit 100
    assert status["observedGeneration"] == 1
    assert (status["totals"]["rows"], status["totals"]["objects"]) == (250, 3) and status["totals"]["bytes"] > 0
    assert status["backlog"] == 0
    assert status["lastRun"]["outcome"] == "Succeeded" and status["lastRun"]["objectKey"] == keys[-1]
    assert status["lastSuccessfulExport"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Ready": ("True", "Ready"), "CredentialsValid": ("True", "Verified"),
                          "BucketReachable": ("True", "Verified"), "StoreReachable": ("True", "Reachable"),
                          "UpToDate": ("True", "CaughtUp")}
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert "kopf" not in status  # handlers return nothing into status

    body = kube.get("usage")
    assert body is not None
    meta = body["metadata"]
    assert meta["finalizers"] == ["capture.dev/finalizer"]
    destination = json.loads(meta["annotations"]["capture.dev/destination"])
    assert {k: destination[k] for k in ("bucket", "endpoint", "prefix")} == {
        "bucket": body["spec"]["bucket"], "endpoint": body["spec"]["endpoint"], "prefix": PREFIX}
    assert all(k.startswith("capture.dev/") for k in meta["annotations"])  # kopf's bookkeeping included

    # One Event per condition transition; none per successful run.
    events = kube.events("usage")
    assert ("Normal", "Ready", "Ready=True: all checks pass") in events
    assert all(e[0] == "Normal" for e in events)
    assert not any("succeeded" in e[2].lower() for e in events)

    # Metrics and liveness.
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{operator.runtime.metrics_port}/metrics").read().decode()
    assert 'capture_export_records_exported_total{name="usage",namespace="default"} 250.0' in metrics
    assert 'capture_export_runs_total{name="usage",namespace="default",outcome="Succeeded"}' in metrics
    assert 'capture_export_backlog_records{name="usage",namespace="default"} 0.0' in metrics
    assert 'capture_export_last_success_timestamp_seconds{name="usage",namespace="default"}' in metrics
    assert "capture_export_cycle_duration_seconds_bucket" in metrics
    health = urllib.request.urlopen(f"http://127.0.0.1:{operator.config.liveness_port}/healthz")
    assert health.status == 200 and json.loads(health.read()) == {"workers": 1}


def test_update_of_limit_and_every_takes_effect(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(100))
    start_operator()
    kube.apply_exporter("usage", exporter_spec(limit=100, every=3600))
    kube.wait_status("usage", lambda s: s.get("cursor") == "100", what="first export")

    kube.patch("usage", {"spec": {"limit": 30, "every": 1}})
    kube.wait_status("usage", lambda s: s.get("observedGeneration") == 2, what="generation 2 observed")
    sqlite_store.append(make_record(i) for i in range(100, 160))
    # Hourly before; now every second: the new records go out without any manual action, 30 per object.
    kube.wait_status("usage", lambda s: s.get("cursor") == "160", timeout=10, what="export on the new schedule")
    new_keys = [k for k in data_keys(object_store) if int(k.split("/")[-1][:20]) > 100]
    assert [len(records_in(object_store, k)) for k in new_keys] == [30, 30]
    assert_exported_exactly_once(sqlite_store, object_store)


def test_invalid_spec_is_refused_with_the_field_named_until_fixed(
    cluster: EmulatedCluster, kube: Kube, start_operator: Callable[..., OperatorThread],
    exporter_spec: Callable[..., dict], s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    # A cluster whose CRD is old or carries no schema lets the spec through: the operator must refuse on
    # its own.
    cluster.without_crd_validation()
    sqlite_store.append(make_record(i) for i in range(20))
    start_operator()
    kube.apply_exporter("usage", exporter_spec(limit=20_000, prefix="exports/"))

    ready = kube.wait_condition("usage", "Ready", "False", "InvalidSpec")
    assert "spec.limit" in ready["message"] and "10000" in ready["message"]
    assert "spec.prefix" in ready["message"]
    assert kube.status("usage")["observedGeneration"] == 1
    wait_for(lambda: any(e[:2] == ("Warning", "InvalidSpec") for e in kube.events("usage")), what="event")
    assert data_keys(object_store) == []

    kube.patch("usage", {"spec": {"limit": 50, "prefix": PREFIX}})
    kube.wait_condition("usage", "Ready", "True")
    kube.wait_status("usage", lambda s: s.get("cursor") == "20", what="export after the fix")
    assert_exported_exactly_once(sqlite_store, object_store)


def test_destination_is_immutable_and_the_operator_refuses_a_move(
    cluster: EmulatedCluster, kube: Kube, start_operator: Callable[..., OperatorThread],
    exporter_spec: Callable[..., dict], s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
    s3_server: LocalS3,
) -> None:
    sqlite_store.append(make_record(i) for i in range(10))
    start_operator()
    kube.apply_exporter("usage", exporter_spec())
    kube.wait_status("usage", lambda s: s.get("cursor") == "10", what="first export")

    # The CRD's transition rule refuses the move at the API (tests/operator/test_api_server_fidelity.py); a
    # cluster whose CRD lacks it lets it through, and the operator must refuse on its own.
    cluster.without_crd_validation()
    s3_server.create_bucket("elsewhere")
    kube.patch("usage", {"spec": {"bucket": "elsewhere", "every": 1}})
    ready = kube.wait_condition("usage", "Ready", "False", "DestinationImmutable")
    assert "'elsewhere'" in ready["message"]
    wait_for(lambda: any(e[:2] == ("Warning", "DestinationImmutable") for e in kube.events("usage")),
             what="event")
    sqlite_store.append(make_record(i) for i in range(10, 20))
    assert list(s3_server.client().list_objects_v2(Bucket="elsewhere").get("Contents", [])) == []

    kube.patch("usage", {"spec": {"bucket": exporter_spec()["bucket"]}})  # restored: exporting resumes
    kube.wait_condition("usage", "Ready", "True")
    kube.wait_status("usage", lambda s: s.get("cursor") == "20", what="export after the restore")
    assert_exported_exactly_once(sqlite_store, object_store)


def test_missing_secret_then_created_recovers_by_itself(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    sqlite_store: SQLiteStore, object_store: S3ObjectStore, s3_server: LocalS3,
) -> None:
    sqlite_store.append(make_record(i) for i in range(40))
    start_operator()
    kube.apply_exporter("usage", exporter_spec(secretRef={"name": "later"}))

    cond = kube.wait_condition("usage", "CredentialsValid", "False", "SecretNotFound")
    assert "default/later" in cond["message"]
    kube.wait_condition("usage", "Ready", "False", "SecretNotFound")
    assert kube.status("usage")["cursor"] == "0"
    wait_for(lambda: any(e[:2] == ("Warning", "SecretNotFound") for e in kube.events("usage")), what="event")

    kube.create_secret("later", {"access_key_id": s3_server.access_key_id})  # one key short
    cond = kube.wait_condition("usage", "CredentialsValid", "False", "SecretKeyMissing")
    assert "'access_secret'" in cond["message"] and "default/later" in cond["message"]
    assert s3_server.secret_access_key not in json.dumps(kube.status("usage"))

    kube.core.replace_namespaced_secret("later", "default", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"},
        "stringData": {"access_key_id": s3_server.access_key_id, "access_secret": s3_server.secret_access_key}})
    kube.wait_condition("usage", "CredentialsValid", "True")
    kube.wait_condition("usage", "Ready", "True")
    kube.wait_status("usage", lambda s: s.get("cursor") == "40", what="export after recovery")
    assert_exported_exactly_once(sqlite_store, object_store)
    assert s3_server.secret_access_key not in json.dumps(kube.status("usage"))
    assert not any(s3_server.secret_access_key in e[2] for e in kube.events("usage"))


def test_wrong_bucket_sets_bucket_reachable_false(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(5))
    start_operator()
    kube.apply_exporter("usage", exporter_spec(bucket="no-such-bucket"))

    cond = kube.wait_condition("usage", "BucketReachable", "False", "BucketNotFound")
    assert "'no-such-bucket'" in cond["message"]
    ready = kube.wait_condition("usage", "Ready", "False", "BucketNotFound")
    assert ready["message"].startswith("BucketReachable:")
    status = kube.status("usage")
    assert status["cursor"] == "0"
    wait_for(lambda: any(e[:2] == ("Warning", "BucketNotFound") for e in kube.events("usage")), what="event")


def test_run_now_triggers_one_cycle(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    token = "1"
    sqlite_store.append(make_record(i) for i in range(10))
    start_operator()
    kube.apply_exporter("usage", exporter_spec(every=3600))
    kube.wait_status("usage", lambda s: s.get("cursor") == "10", what="first export")
    events_before = wait_for(lambda: (events := kube.events("usage")) and events[-1][1] == "Ready" and events,
                             what="the Ready event")  # Events are posted in the background

    sqlite_store.append(make_record(i) for i in range(10, 25))
    kube.annotate("usage", **{"capture.dev/run-now": token})
    status = kube.wait_status("usage", lambda s: s.get("cursor") == "25", timeout=10, what="run-now export")
    assert status["lastRunNow"] == token
    assert status["observedGeneration"] == 1  # annotations are not spec

    sqlite_store.append(make_record(i) for i in range(25, 30))
    kube.annotate("usage", **{"capture.dev/run-now": token + "-again"})
    kube.wait_status("usage", lambda s: s.get("cursor") == "30", timeout=10, what="second run-now")
    assert_exported_exactly_once(sqlite_store, object_store)
    assert kube.events("usage") == events_before  # successful runs post no Events


def test_reset_cursor_reexports_everything_once_more_under_the_same_keys(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(120))
    start_operator()
    kube.apply_exporter("usage", exporter_spec(limit=50))
    first = kube.wait_status("usage", lambda s: s.get("cursor") == "120", what="first export")
    keys = data_keys(object_store)
    assert len(keys) == 3

    kube.annotate("usage", **{"capture.dev/reset-cursor": "2026-11-24"})
    status = kube.wait_status("usage", lambda s: s.get("epoch") == 1 and s.get("cursor") == "120",
                              what="re-export in epoch 1")
    assert status["lastReset"] == "2026-11-24"
    assert status["totals"]["rows"] == 120 and status["totals"]["objects"] == 3  # counted afresh
    assert first["totals"]["rows"] == 120
    assert data_keys(object_store) == keys  # same keys, overwritten: no duplicates
    assert checkpoint(object_store)["epoch"] == 1
    assert_exported_exactly_once(sqlite_store, object_store)
    wait_for(lambda: any(e[:2] == ("Normal", "CursorReset") for e in kube.events("usage")), what="event")

    # The same annotation value is not acted on twice, even after an operator restart.
    kube.annotate("usage", **{"capture.dev/run-now": "x"})
    kube.wait_status("usage", lambda s: s.get("lastRunNow") == "x", what="run-now after reset")
    assert kube.status("usage")["epoch"] == 1


def test_delete_stops_the_worker_after_the_batch_in_flight(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    sqlite_store.append(make_record(i % 500) for i in range(3000))
    operator = start_operator(cycle_max_seconds=0.2)
    kube.apply_exporter("usage", exporter_spec(limit=10))
    kube.wait_status("usage", lambda s: int(s.get("cursor", 0)) > 0 and (s.get("backlog") or 0) > 0,
                     what="a backlog being drained")

    kube.delete("usage")
    wait_for(lambda: kube.get("usage") is None, timeout=20, what="finalizer removed, object gone")
    wait_for(lambda: not operator.runtime.workers, timeout=5, what="worker forgotten")
    # Nothing half-written: every data object is covered by the checkpoint, which nothing moves any more.
    keys = data_keys(object_store)
    covered = int(checkpoint(object_store)["cursor"])
    assert keys and int(keys[-1].split("/")[-1][21:41]) == covered < 3000
    assert operator.runtime.metrics.registry.get_sample_value("capture_export_cycles_in_flight") == 0
    assert data_keys(object_store) == keys
    report = verify_export(sqlite_store, object_store, PREFIX, up_to=covered)
    assert report.ok, report.summary()


def test_restart_mid_backlog_resumes_from_the_checkpoint_without_duplicates(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    sqlite_store.append(make_record(i % 500) for i in range(3000))
    first = start_operator(cycle_max_seconds=0.2)
    kube.apply_exporter("usage", exporter_spec(limit=10))
    kube.wait_status("usage", lambda s: int(s.get("cursor", 0)) > 0 and (s.get("backlog") or 0) > 0,
                     what="a backlog being drained")
    first.stop()
    saved = int(checkpoint(object_store)["cursor"])
    assert 0 < saved < 3000
    # As if the operator had died before its last status writes: status lags behind the checkpoint.
    kube.patch_status("usage", {"cursor": "0"})

    second = start_operator(cycle_max_seconds=0.2)
    kube.wait_status("usage", lambda s: s.get("cursor") == "3000", timeout=30, what="drained after restart")
    kube.wait_condition("usage", "UpToDate", "True")
    assert_exported_exactly_once(sqlite_store, object_store)
    exported_after_restart = second.runtime.metrics.registry.get_sample_value(
        "capture_export_records_exported_total", {"namespace": "default", "name": "usage"})
    assert exported_after_restart == 3000 - saved


def test_suspend_pauses_exporting_and_unsuspend_resumes(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(10))
    start_operator()
    kube.apply_exporter("usage", exporter_spec(suspend=True))
    kube.wait_condition("usage", "Ready", "False", "Suspended")
    wait_for(lambda: ("Normal", "Suspended", "spec.suspend is true: exporting is paused") in kube.events("usage"),
             what="event")
    assert data_keys(object_store) == []

    kube.patch("usage", {"spec": {"suspend": False}})
    kube.wait_status("usage", lambda s: s.get("cursor") == "10" and s.get("observedGeneration") == 2,
                     what="export after resuming")
    kube.wait_condition("usage", "Ready", "True")


def test_namespaced_operator_serves_only_its_namespaces(
    cluster: EmulatedCluster, kube: Kube, start_operator: Callable[..., OperatorThread],
    exporter_spec: Callable[..., dict], s3_server: LocalS3, sqlite_store: SQLiteStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(10))
    teams = {}
    for namespace in ("team-a", "team-b"):
        teams[namespace] = Kube(cluster, namespace)
        teams[namespace].create_secret(SECRET, {"access_key_id": s3_server.access_key_id,
                                                "access_secret": s3_server.secret_access_key})
    try:
        start_operator(namespaces=("team-a",))
        teams["team-b"].apply_exporter("usage", exporter_spec(prefix="b"))
        teams["team-a"].apply_exporter("usage", exporter_spec(prefix="a"))
        teams["team-a"].wait_status("usage", lambda s: s.get("cursor") == "10", what="team-a exported")
        ignored = teams["team-b"].get("usage")
        assert ignored is not None and "finalizers" not in ignored["metadata"] and "status" not in ignored
    finally:
        for client in teams.values():
            client.close()


def test_rotated_credentials_take_effect_without_a_restart(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore, s3_server: LocalS3,
) -> None:
    sqlite_store.append(make_record(i) for i in range(10))
    start_operator()
    kube.apply_exporter("usage", exporter_spec())
    kube.wait_status("usage", lambda s: s.get("cursor") == "10", what="first export")

    def rotate(secret: str) -> None:
        kube.core.replace_namespaced_secret(SECRET, "default", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
            "stringData": {"access_key_id": s3_server.access_key_id, "access_secret": secret}})

    rotate("rotated-but-wrong")
    sqlite_store.append(make_record(i) for i in range(10, 20))
    kube.annotate("usage", **{"capture.dev/run-now": "after-rotation"})
    cond = kube.wait_condition("usage", "CredentialsValid", "False")
    assert cond["reason"] in ("InvalidCredentials", "AccessDenied")
    assert kube.status("usage")["cursor"] == "10"
    assert "rotated-but-wrong" not in json.dumps(kube.status("usage"))
    assert not any("rotated-but-wrong" in e[2] for e in kube.events("usage"))

    rotate(s3_server.secret_access_key)  # fixed: the retry picks it up, no restart, no annotation
    kube.wait_condition("usage", "CredentialsValid", "True")
    kube.wait_status("usage", lambda s: s.get("cursor") == "20", what="export with the rotated key")
    assert_exported_exactly_once(sqlite_store, object_store)


def test_a_refused_store_path_is_said_in_status_and_each_condition_change_once(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, tmp_path_factory: Any,
) -> None:
    """A spec.store.sqlite.path outside the directories SQLite stores may be in is refused, and the
    resource says so in status (Ready=False StorePathNotAllowed, its observedGeneration), as for
    StoreNotFound; each condition's change is one Event, not one per retry."""
    elsewhere = SQLiteStore(tmp_path_factory.mktemp("elsewhere") / "store.sqlite")
    elsewhere.append(make_record(i) for i in range(3))
    elsewhere.close()
    start_operator(retry_cap=0.2)  # retries come fast: an Event per retry would show within seconds
    kube.apply_exporter("usage", exporter_spec(store={"sqlite": {"path": str(elsewhere.path)}}))

    ready = kube.wait_condition("usage", "Ready", "False", "StorePathNotAllowed")
    assert "spec.store.sqlite.path" in ready["message"], ready
    assert kube.condition("usage", "StoreReachable")["reason"] == "StorePathNotAllowed"
    status = kube.status("usage")
    assert status.get("observedGeneration") == kube.get("usage")["metadata"]["generation"], status
    assert status["cursor"] == "0"
    wait_for(lambda: any(e[1] == "StorePathNotAllowed" for e in kube.events("usage")), what="an Event")
    time.sleep(3)  # many retries later
    refusals = sorted(e[2].split(":", 1)[0] for e in kube.events("usage") if e[1] == "StorePathNotAllowed")
    assert refusals == ["Ready=False", "StoreReachable=False"], refusals  # once per condition, not per retry
