"""The operator against a real kube-apiserver, a real SeaweedFS and a real SQLite store: the example
exporter reaches Ready and exports, status lives in the /status subresource, observedGeneration follows the
spec, run-now and reset-cursor work, and deletion waits for the finalizer and the batch in flight."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import kubernetes.client
import yaml

from capture_export.api import GROUP, VERSION
from capture_export.audit import verify_export
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.operator_harness import Kube, OperatorThread, wait_for
from tests.support.records import make_record

from .apiserver import REPO_ROOT, TempApiServer
from .helpers import table, table_rows

PREFIX = "exports"


def example_documents(namespace: str, endpoint: str) -> list[dict[str, Any]]:
    """examples/exporter.yaml as a user would apply it, in the test's namespace, pointed at our SeaweedFS."""
    documents = [doc for doc in yaml.safe_load_all((REPO_ROOT / "examples" / "exporter.yaml").read_text()) if doc]
    for doc in documents:
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "S3Exporter":
            doc["spec"]["endpoint"] = endpoint
    return documents


def apply_example(kube: Kube, namespace: str, endpoint: str) -> dict[str, Any]:
    exporter: dict[str, Any] = {}
    for doc in example_documents(namespace, endpoint):
        if doc["kind"] == "Secret":
            kube.core.create_namespaced_secret(namespace, doc)
        else:
            exporter = kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "s3exporters", doc)
    return exporter


def test_the_example_exporter_reaches_ready_exports_and_shows_its_columns(
    apiserver: TempApiServer, kube: Kube, namespace: str, start_operator: Callable[..., OperatorThread],
    s3_server: LocalS3, sqlite_store: SQLiteStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(120))
    s3_server.create_bucket("capture-exports")
    start_operator()
    created = apply_example(kube, namespace, s3_server.endpoint)
    name, spec = created["metadata"]["name"], created["spec"]
    assert created["metadata"]["generation"] == 1
    # Defaults were filled in by the API server from the CRD's schema.
    assert (spec["format"], spec["pathTemplate"], spec["suspend"]) == ("cbor-zstd", "{prefix}", False)

    kube.wait_condition(name, "Ready", "True", timeout=60)
    status = kube.wait_status(name, lambda s: s.get("cursor") == "120", what="all 120 exported")
    assert status["observedGeneration"] == 1 and status["backlog"] == 0
    objects = S3ObjectStore(S3Location("capture-exports", "us-east-1", s3_server.endpoint),
                            Credentials(s3_server.access_key_id, s3_server.secret_access_key))
    report = verify_export(sqlite_store, objects, spec["prefix"])
    assert report.ok and report.exported_records == 120, report.summary()
    body = kube.get(name)
    assert body is not None and body["metadata"]["finalizers"] == ["capture.dev/finalizer"]

    # `kubectl get s3exporters` (and -o wide), through the API server's Table rendering of our columns.
    document = table(kube.client, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/s3exporters")
    [row] = table_rows(document, wide=True)
    assert {k: row[k] for k in ("Name", "Bucket", "Ready", "Exported", "Backlog", "Reason")} == {
        "Name": name, "Bucket": "capture-exports", "Ready": "True", "Exported": 120, "Backlog": 0,
        "Reason": "Ready"}
    assert status["lastSuccessfulExport"] and re.fullmatch(r"\d+s", row["Last Export"])  # dates show as an age


def test_status_is_a_subresource_and_observed_generation_follows_the_spec(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(30))
    start_operator()
    kube.apply_exporter("usage", exporter_spec(limit=100, every=3600))
    kube.wait_status("usage", lambda s: s.get("cursor") == "30", timeout=60, what="first export")

    # Status sent to the main resource is dropped; spec sent to /status is dropped: neither can forge the other.
    kube.patch("usage", {"status": {"cursor": "999999"}})
    kube.patch_status("usage", {"cursor": "30"})
    kube.custom.patch_namespaced_custom_object_status(GROUP, VERSION, kube.namespace, "s3exporters", "usage",
                                                      {"spec": {"limit": 1}})
    body = kube.get("usage")
    assert body is not None
    assert body["status"]["cursor"] == "30" and body["spec"]["limit"] == 100
    assert body["metadata"]["generation"] == 1  # status writes never bump the generation

    kube.patch("usage", {"spec": {"limit": 10, "every": 1}})
    status = kube.wait_status("usage", lambda s: s.get("observedGeneration") == 2, what="generation 2 observed")
    sqlite_store.append(make_record(i) for i in range(30, 55))
    status = kube.wait_status("usage", lambda s: s.get("cursor") == "55", timeout=30, what="the new schedule")
    assert {c["type"]: c["observedGeneration"] for c in status["conditions"]} == {
        "Ready": 2, "CredentialsValid": 2, "BucketReachable": 2, "StoreReachable": 2, "UpToDate": 2}
    kube.wait_condition("usage", "Ready", "True")


def test_run_now_and_reset_cursor_annotations(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(20))
    start_operator()
    kube.apply_exporter("usage", exporter_spec(every=3600, limit=10))
    kube.wait_status("usage", lambda s: s.get("cursor") == "20", timeout=60, what="first export")

    sqlite_store.append(make_record(i) for i in range(20, 35))
    kube.annotate("usage", **{"capture.dev/run-now": "1"})
    status = kube.wait_status("usage", lambda s: s.get("cursor") == "35", what="run-now export")
    assert status["lastRunNow"] == "1" and status["observedGeneration"] == 1  # annotations are not spec

    keys = sorted(info.key for info in object_store.list(f"{PREFIX}/") if info.key.endswith(".cbor.zstd"))
    kube.annotate("usage", **{"capture.dev/reset-cursor": "2026-11-24"})
    status = kube.wait_status("usage", lambda s: s.get("epoch") == 1 and s.get("cursor") == "35",
                              what="re-export in epoch 1")
    assert status["lastReset"] == "2026-11-24" and status["totals"]["rows"] == 35
    assert sorted(info.key for info in object_store.list(f"{PREFIX}/") if info.key.endswith(".cbor.zstd")) == keys
    report = verify_export(sqlite_store, object_store, PREFIX)
    assert report.ok and report.exported_records == 35, report.summary()


def test_deletion_waits_for_the_finalizer_and_the_batch_in_flight(
    apiserver: TempApiServer, kube: Kube, start_operator: Callable[..., OperatorThread],
    exporter_spec: Callable[..., dict], s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    sqlite_store.append(make_record(i % 500) for i in range(3000))
    operator = start_operator(cycle_max_seconds=0.2)
    kube.apply_exporter("usage", exporter_spec(limit=10))
    kube.wait_status("usage", lambda s: int(s.get("cursor", 0)) > 0 and (s.get("backlog") or 0) > 0,
                     timeout=60, what="a backlog being drained")
    operator.stop()

    # No operator: the API server keeps the object, marked for deletion, until our finalizer goes.
    kube.delete("usage")
    held = kube.get("usage")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["capture.dev/finalizer"]

    sqlite_store.append(make_record(i) for i in range(3000, 3010))
    operator = start_operator(cycle_max_seconds=0.2)
    wait_for(lambda: kube.get("usage") is None, timeout=30, what="finalizer removed, object gone")
    wait_for(lambda: not operator.runtime.workers, timeout=10, what="worker forgotten")
    keys = sorted(info.key for info in object_store.list(f"{PREFIX}/") if info.key.endswith(".cbor.zstd"))
    checkpoint = object_store.get(f"{PREFIX}/_capture-export/checkpoints/{kube.namespace}/usage.json")
    assert checkpoint is not None
    covered = int(yaml.safe_load(checkpoint)["cursor"])
    assert keys and int(keys[-1].split("/")[-1][21:41]) == covered < 3010
    report = verify_export(sqlite_store, object_store, PREFIX, up_to=covered)
    assert report.ok, report.summary()


def test_events_reach_the_real_api(kube: Kube, start_operator: Callable[..., OperatorThread],
                                   exporter_spec: Callable[..., dict], sqlite_store: SQLiteStore) -> None:
    """A Warning Event with the reason, about the object, in its namespace (kopf's poster, real admission)."""
    start_operator()
    kube.apply_exporter("usage", exporter_spec(secretRef={"name": "missing"}))
    kube.wait_condition("usage", "Ready", "False", "SecretNotFound", timeout=60)
    wait_for(lambda: any(e[:2] == ("Warning", "SecretNotFound") for e in kube.events("usage")), timeout=30,
             what="the Warning Event")
    events = kubernetes.client.CoreV1Api(kube.client).list_namespaced_event(kube.namespace).items
    event = next(e for e in events if e.reason == "SecretNotFound")
    body = kube.get("usage")
    assert body is not None
    assert (event.involved_object.kind, event.involved_object.uid) == ("S3Exporter", body["metadata"]["uid"])
