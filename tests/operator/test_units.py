"""The operator's pure parts, without an API server: spec judgement, lenient status loading, kopf's
progress storage keeping our annotations in diffs, the status writer's cursor guard, client sharing,
metrics, and the ``capture-export operator`` command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._cogs.structs import bodies

from capture_export import cli
from capture_export.api import S3ExporterStatus
from capture_export.export import BatchResult, Cursor, RunResult
from capture_export.handlers import OperatorConfig
from capture_export.handlers.s3exporter import DESTINATION, judge, load_status
from capture_export.handlers.settings import RESET_CURSOR, RUN_NOW, ProgressStorage, SharedObjectStores
from capture_export.metrics import OperatorMetrics
from capture_export.objectstore import Credentials, MemoryObjectStore, S3Location
from capture_export.status.exporter import Event
from capture_export.status.writer import StatusWriter, cursor_of

SPEC = {"bucket": "exports", "region": "us-east-1", "endpoint": "http://s3:9000", "prefix": "p"}


def recorded(**overrides: Any) -> dict[str, str]:
    destination = {"bucket": "exports", "endpoint": "http://s3:9000", "prefix": "p", **overrides}
    return {DESTINATION: json.dumps(destination)}


def test_judge_accepts_a_valid_spec() -> None:
    spec, hold = judge(SPEC, {})
    assert spec is not None and spec.limit == 1000 and hold is None


def test_judge_names_every_refused_field() -> None:
    spec, hold = judge({**SPEC, "limit": 0, "prefix": "/p/", "bogus": 1}, {})
    assert spec is None and hold is not None and hold.reason == "InvalidSpec" and hold.warning
    for field in ("spec.limit", "spec.prefix", "spec.bogus"):
        assert field in hold.message


def test_judge_refuses_a_moved_destination_and_accepts_it_restored() -> None:
    for field, value in (("bucket", "other"), ("prefix", "q"), ("endpoint", "http://elsewhere:9000")):
        spec, hold = judge({**SPEC, field: value}, recorded())
        assert spec is not None and hold is not None and hold.reason == "DestinationImmutable"
        assert field in hold.message and value in hold.message
    assert judge(SPEC, recorded()) == (judge(SPEC, {})[0], None)
    # Fields recorded by an older operator are the only ones compared; an unreadable record is ignored.
    assert judge(SPEC, {DESTINATION: json.dumps({"bucket": "exports"})})[1] is None
    assert judge(SPEC, {DESTINATION: "not json"})[1] is None


def test_judge_holds_a_suspended_exporter_without_a_warning() -> None:
    _, hold = judge({**SPEC, "suspend": True}, {})
    assert hold is not None and hold.reason == "Suspended" and not hold.warning


def test_load_status_keeps_the_cursor_through_unknown_or_broken_fields() -> None:
    assert load_status(None) == S3ExporterStatus()
    assert load_status({"cursor": "42", "epoch": 2}).cursor == "42"
    kept = load_status({"cursor": "42", "epoch": 2, "kopf": {"progress": {}}, "fromTheFuture": 1})
    assert (kept.cursor, kept.epoch) == ("42", 2)
    broken = load_status({"cursor": "42", "epoch": 1, "conditions": "garbage"})
    assert (broken.cursor, broken.epoch) == ("42", 1)


def test_progress_storage_keeps_user_annotations_in_the_diff_essence() -> None:
    body = bodies.Body({"metadata": {"annotations": {
        RUN_NOW: "1", RESET_CURSOR: "r", "capture.dev/configure": "{}", "capture.dev/kopf-managed": "yes",
        "team/owner": "me"}}, "spec": {"a": 1}})
    essence = kopf.AnnotationsDiffBaseStorage(prefix="capture.dev").build(
        body=body, extra_fields=[("metadata", "annotations", RUN_NOW), ("metadata", "annotations", RESET_CURSOR)])
    cleared = ProgressStorage(prefix="capture.dev").clear(essence=essence)
    assert cleared["metadata"]["annotations"] == {RUN_NOW: "1", RESET_CURSOR: "r", "team/owner": "me"}
    # kopf's own storage hides them, so no handler could ever see a manual action:
    plain = kopf.AnnotationsProgressStorage(prefix="capture.dev").clear(essence=essence)
    assert plain["metadata"]["annotations"] == {"team/owner": "me"}


class RecordingApi:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.patches.append(dict(status))
        return True


def test_status_writer_never_moves_the_cursor_back() -> None:
    api = RecordingApi()
    emitted: list[Event] = []
    writer = StatusWriter(api, emit=lambda body, event: emitted.append(event))  # type: ignore[arg-type]
    body = {"metadata": {"namespace": "ns", "name": "x"}, "status": {"cursor": "10", "epoch": 0}}

    async def scenario() -> None:
        await writer.write_exporter(body, "s3exporters", S3ExporterStatus(cursor="20"), [Event("Normal", "A", "a")])
        await writer.write_exporter(body, "s3exporters", S3ExporterStatus(cursor="5"))  # a stale writer
        await writer.write_exporter(body, "s3exporters", S3ExporterStatus(cursor="0", epoch=1))  # a reset

    asyncio.run(scenario())
    assert [(p["epoch"], p["cursor"]) for p in api.patches] == [(0, "20"), (0, "20"), (1, "0")]
    assert emitted == [Event("Normal", "A", "a")]
    assert cursor_of({"cursor": "x"}) == (0, 0) and cursor_of(None) == (0, 0)


def test_shared_object_stores_share_one_client_per_destination_and_credentials() -> None:
    made: list[tuple[S3Location, Credentials | None]] = []

    def factory(location: S3Location, credentials: Credentials | None) -> MemoryObjectStore:
        made.append((location, credentials))
        return MemoryObjectStore()

    shared = SharedObjectStores(size=2, factory=factory)
    a, b = S3Location("a", "r"), S3Location("b", "r")
    key = Credentials("id", "secret")
    assert shared(a, key) is shared(a, key)
    assert shared(a, Credentials("id", "rotated")) is not shared(a, key)
    shared(b, None)
    assert len(made) == 3 and len(shared._clients) == 2


def test_metrics_count_batches_and_runs_and_forget_deleted_exporters() -> None:
    metrics = OperatorMetrics()
    batch = BatchResult("k", 1, 10, 10, 100, 50, Cursor(0, 10), 0, 0, 0)
    metrics.batch("ns", "x", batch)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    metrics.cycle("ns", "x", RunResult(start=now, end=now, outcome="Succeeded", rows=10, backlog=3), 0.2)
    metrics.cycle("ns", "x", None, 0.1)
    sample = metrics.registry.get_sample_value
    labels = {"namespace": "ns", "name": "x"}
    assert sample("capture_export_records_exported_total", labels) == 10
    assert sample("capture_export_bytes_exported_total", labels) == 50
    assert sample("capture_export_backlog_records", labels) == 3
    assert sample("capture_export_runs_total", {**labels, "outcome": "Succeeded"}) == 1
    assert sample("capture_export_runs_total", {**labels, "outcome": "Failed"}) == 1
    assert sample("capture_export_last_success_timestamp_seconds", labels) == now.timestamp()
    metrics.forget("ns", "x")
    assert sample("capture_export_records_exported_total", labels) is None
    assert sample("capture_export_runs_total", {**labels, "outcome": "Failed"}) is None


def test_operator_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started: list[OperatorConfig] = []
    monkeypatch.setattr("capture_export.handlers.run", lambda config, **_: started.append(config))
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setattr("capture_export.cli.cluster._cluster_problem", lambda: None)  # no cluster needed here
    store = str(tmp_path / "store.sqlite")  # in a directory that exists: one that does not is refused
    monkeypatch.setenv("CAPTURE_EXPORT_STORE", store)
    assert cli.main(["operator", "--namespace", "a", "-n", "b", "--metrics-port", "0"]) == 0
    assert cli.main(["operator", "--all-namespaces", "--store", "postgresql://x", "--liveness-port", "18080",
                     "--readiness-port", "0", "--stop-timeout", "20"]) == 0
    first, second = started
    assert (first.readiness_port, first.stop_timeout, second.readiness_port, second.stop_timeout) == (
        8081, 50.0, None, 20.0)
    assert (first.namespaces, first.store, first.metrics_port, first.liveness_port) == (
        ("a", "b"), store, None, 8080)
    assert first.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert (second.namespaces, second.store, second.metrics_port, second.liveness_endpoint) == (
        (), "postgresql://x", 9090, "http://0.0.0.0:18080/healthz")
    with pytest.raises(SystemExit):
        cli.main(["operator", "-n", "a", "-A"])


def test_client_libraries_never_log_secrets_even_when_verbose() -> None:
    import logging

    from capture_export.handlers.settings import CLIENT_LOGGERS, apply_settings

    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.DEBUG)  # what --verbose does
        apply_settings(kopf.OperatorSettings(), OperatorConfig())
        # The kubernetes client logs response bodies (a Secret's data) at DEBUG.
        assert not logging.getLogger("kubernetes.client.rest").isEnabledFor(logging.DEBUG)
        assert all(not logging.getLogger(name).isEnabledFor(logging.DEBUG) for name in CLIENT_LOGGERS)
        assert logging.getLogger("capture_export.handlers").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(level)
        for name in CLIENT_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
