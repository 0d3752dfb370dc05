"""Crash containment: whatever fails inside one exporter's or policy's cycle becomes
that resource's condition (a clear reason and message) and an Event, never a traceback to the user, and
never stops the other exporters, standalone or in the operator.

The failures are real ones found by handling the product carelessly: a row the gateway stored as TEXT, a
``ts_us`` of 2^62 under a dated ``pathTemplate``, a state file that cannot be written after the first
batch. Each test puts the broken exporter first and a healthy one after it: the healthy one must export
everything exactly once, and the broken one must say why it stopped and lose nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from capture_export.audit import verify_export
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.operator_fixtures import cluster_fixture, kube_fixture, start_operator_fixture  # noqa: F401
from tests.support.operator_harness import Kube, OperatorThread, wait_for
from tests.support.records import make_record

from .canary_support import assert_no_traceback
from .runs_support import (
    exporter_document,
    exporter_spec,
    policy_document,
    run_cli,
    s3_secret,
    wait_for_event,
    write_manifest,
)


def make_store(path: Path, count: int) -> Path:
    store = SQLiteStore(path)
    store.append(make_record(i) for i in range(count))
    store.close()
    return path


def insert_raw(path: Path, ts_us: int, body: Any) -> None:
    """A row as a gateway's own INSERT writes it, bypassing capture-export's append."""
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO captures (ts_us, body) VALUES (?, ?)", (ts_us, body))


def text_row(path: Path) -> None:
    """A record stored as TEXT (JSON), not a CBOR BLOB."""
    insert_raw(path, 1_795_000_000_000_000, json.dumps({"ver": 2, "model": "gpt-4o"}))


def far_future_row(path: Path) -> None:
    """A record whose ``ts_us`` is 2^62 (year ~146,000): no date folder can hold it."""
    import cbor2

    insert_raw(path, 2**62, cbor2.dumps({"ver": 2, "model": "gpt-4o", "capture_id": "far-future"}))


BREAKAGES: dict[str, tuple[Callable[[Path], None], dict[str, Any], str]] = {
    # name: (how the store is broken, spec changes, the reason the broken exporter reports)
    "text-row": (text_row, {}, "CorruptRecord"),
    "ts-2^62-dated-template": (far_future_row, {"pathTemplate": "{prefix}/{date}"}, "CorruptRecord"),
}


def objects(s3: LocalS3, bucket: str) -> S3ObjectStore:
    return S3ObjectStore(S3Location(bucket, "us-east-1", s3.endpoint), Credentials(s3.access_key_id,
                                                                                     s3.secret_access_key))


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_standalone_one_broken_exporter_does_not_stop_the_others(
    s3_server: LocalS3, bucket: str, tmp_path: Path, breakage: str,
) -> None:
    break_store, spec_changes, reason = BREAKAGES[breakage]
    broken = make_store(tmp_path / "broken.sqlite", 20)
    break_store(broken)
    healthy = make_store(tmp_path / "healthy.sqlite", 30)
    manifest = write_manifest(
        tmp_path / "exporters.yaml",
        s3_secret(s3_server),
        exporter_document("broken", exporter_spec(s3_server, bucket, prefix="broken", limit=10,
                                                  store={"sqlite": {"path": str(broken)}}, **spec_changes)),
        exporter_document("healthy", exporter_spec(s3_server, bucket, prefix="healthy", limit=10,
                                                   store={"sqlite": {"path": str(healthy)}})),
    )
    result = run_cli("run", "--once", "-f", manifest, "--state", "state.json", cwd=tmp_path)
    assert_no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "default/healthy: Succeeded: 30 records" in result.stdout, result.stdout
    assert "default/broken: Failed" in result.stdout and reason in result.stdout, result.stdout
    state = json.loads((tmp_path / "state.json").read_text())
    ready = {c["type"]: c for c in state["S3Exporter/default/broken"]["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", reason), ready
    assert "record 21" in ready["message"] or "id 21" in ready["message"], ready
    assert state["S3Exporter/default/broken"]["cursor"] == "20"  # everything before the bad row exported
    store = SQLiteStore(healthy)
    try:
        report = verify_export(store, objects(s3_server, bucket), "healthy")
        assert report.ok and report.exported_records == 30, report.summary()
    finally:
        store.close()


def test_standalone_state_file_that_cannot_be_written_after_the_first_batch_is_a_condition(
    s3_server: LocalS3, bucket: str, tmp_path: Path,
) -> None:
    """The first run writes the state file; then the directory's temp file name is taken by a directory
    (as a full or read-only disk would refuse the write, but also for root). The next run exports its
    first batch, cannot save its state, and says so for every exporter instead of dying."""
    first = make_store(tmp_path / "a.sqlite", 10)
    second = make_store(tmp_path / "b.sqlite", 10)
    manifest = write_manifest(
        tmp_path / "exporters.yaml",
        s3_secret(s3_server),
        policy_document("keep", {"maxAge": "3650d", "requireExport": False, "store": {"sqlite": {"path": str(first)}}}),
        exporter_document("first", exporter_spec(s3_server, bucket, prefix="a", limit=10,
                                                 store={"sqlite": {"path": str(first)}})),
        exporter_document("second", exporter_spec(s3_server, bucket, prefix="b", limit=10,
                                                  store={"sqlite": {"path": str(second)}})),
    )
    state = tmp_path / "state" / "state.json"
    assert run_cli("run", "--once", "-f", manifest, "--state", state, cwd=tmp_path).returncode == 0
    for path in (first, second):
        store = SQLiteStore(path)
        store.append(make_record(i) for i in range(10, 35))
        store.close()
    blocker = state.with_name(f".{state.name}.tmp")  # StateFile.temporary_path
    blocker.mkdir()  # every save now fails

    result = run_cli("run", "--once", "-f", manifest, "--state", state, cwd=tmp_path)
    assert_no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    for name in ("first", "second"):
        assert f"default/{name}: Failed" in result.stdout and "StateNotWritable" in result.stdout, result.stdout
    assert "default/keep: retention Failed" in result.stdout, result.stdout
    assert str(state) in result.stdout

    blocker.rmdir()  # fixed: the next run finishes, exactly once
    again = run_cli("run", "--once", "-f", manifest, "--state", state, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    for path, prefix in ((first, "a"), (second, "b")):
        store = SQLiteStore(path)
        try:
            report = verify_export(store, objects(s3_server, bucket), prefix)
            assert report.ok and report.exported_records == 35, report.summary()
        finally:
            store.close()


# -- the operator ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_operator_broken_exporter_gets_a_condition_and_an_event_and_the_others_export(
    kube: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3, bucket: str,
    sqlite_store: SQLiteStore, tmp_path: Path, breakage: str,
) -> None:
    break_store, spec_changes, reason = BREAKAGES[breakage]
    broken = make_store(Path(sqlite_store.path).parent / "broken.sqlite", 20)
    break_store(broken)
    sqlite_store.append(make_record(i) for i in range(30))
    kube.create_secret("s3-creds", {"access_key_id": s3_server.access_key_id,
                                    "access_secret": s3_server.secret_access_key})
    start_operator()
    kube.apply_exporter("broken", exporter_spec(s3_server, bucket, prefix="broken", limit=10,
                                                store={"sqlite": {"path": str(broken)}}, **spec_changes))
    kube.apply_exporter("healthy", exporter_spec(s3_server, bucket, prefix="healthy", limit=10))

    kube.wait_status("healthy", lambda s: s.get("cursor") == "30", what="the healthy exporter exported")
    ready = kube.wait_condition("broken", "Ready", "False", timeout=30)
    assert ready["reason"] == reason, ready
    assert kube.status("broken")["cursor"] == "20"
    events = wait_for_event(kube.core, "broken", reason)
    assert any(e[:2] == ("Warning", reason) for e in events), events
    report = verify_export(sqlite_store, objects(s3_server, bucket), "healthy")
    assert report.ok and report.exported_records == 30, report.summary()


def test_operator_cycle_that_raises_anything_is_a_condition_and_an_event_then_recovers(
    kube: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3, bucket: str,
    sqlite_store: SQLiteStore,
) -> None:
    """An exception nobody foresaw (injected into the running exporter's engine) leaves the exporter
    Ready=False with a reason and a Warning Event, not Ready=Unknown with a traceback in the log; the cursor
    stays, and the next cycle recovers by itself once the fault is gone."""
    sqlite_store.append(make_record(i) for i in range(10))
    kube.create_secret("s3-creds", {"access_key_id": s3_server.access_key_id,
                                    "access_secret": s3_server.secret_access_key})
    operator = start_operator()
    kube.apply_exporter("usage", exporter_spec(s3_server, bucket))
    kube.wait_status("usage", lambda s: s.get("cursor") == "10", what="first export")

    engine = operator.runtime.workers[("S3Exporter", "default", "usage")].worker.engine

    def unforeseen(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("nobody foresaw this")

    engine.run = unforeseen  # type: ignore[method-assign]
    sqlite_store.append(make_record(i) for i in range(10, 20))
    kube.annotate("usage", **{"capture.dev/run-now": "boom"})
    ready = kube.wait_condition("usage", "Ready", "False", timeout=30)
    assert ready["reason"] == "InternalError" and "ZeroDivisionError" in ready["message"], ready
    assert kube.status("usage")["cursor"] == "10"
    events = wait_for_event(kube.core, "usage", "InternalError")
    assert any(e[:2] == ("Warning", "InternalError") for e in events), events

    del engine.run  # the fault is gone: the retry (with backoff) exports the rest
    kube.wait_status("usage", lambda s: s.get("cursor") == "20", timeout=30, what="recovered")
    kube.wait_condition("usage", "Ready", "True")


def test_operator_policy_cycle_that_raises_anything_is_a_condition_and_an_event(
    kube: Kube, start_operator: Callable[..., OperatorThread], sqlite_store: SQLiteStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(10))
    operator = start_operator()
    body = {"apiVersion": "capture.dev/v1alpha1", "kind": "RetentionPolicy", "metadata": {"name": "purge"},
            "spec": {"maxAge": "3650d", "requireExport": False, "every": 3600}}
    kube.custom.create_namespaced_custom_object("capture.dev", "v1alpha1", "default", "retentionpolicies", body)
    key = ("RetentionPolicy", "default", "purge")
    wait_for(lambda: key in operator.runtime.workers, what="the policy's worker")
    worker = operator.runtime.workers[key].worker

    def unforeseen(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("nobody foresaw this")

    worker.evaluate = unforeseen  # type: ignore[method-assign]
    policy = kube.custom.get_namespaced_custom_object("capture.dev", "v1alpha1", "default", "retentionpolicies",
                                                      "purge")

    def ready() -> dict[str, Any] | None:
        obj = kube.custom.get_namespaced_custom_object("capture.dev", "v1alpha1", "default", "retentionpolicies",
                                                       "purge")
        found = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)
        return found if found and found["status"] == "False" else None

    kube.custom.patch_namespaced_custom_object("capture.dev", "v1alpha1", "default", "retentionpolicies", "purge",
                                               {"spec": {"every": 3599}})
    condition = wait_for(ready, timeout=30, what="the policy's Ready=False")
    assert condition["reason"] == "InternalError" and "ZeroDivisionError" in condition["message"], (condition, policy)
    events = wait_for_event(kube.core, "purge", "InternalError")
    assert any(e[:2] == ("Warning", "InternalError") for e in events), events
    assert sqlite_store.count() == 10
