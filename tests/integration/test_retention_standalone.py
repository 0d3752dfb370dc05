"""RetentionPolicy in `capture-export run -f`, from the same YAML as the S3Exporter, against a real S3 server
(SeaweedFS) and a SQLite store: export first, then purge only what the bucket holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from capture_export.audit import verify_export
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.cli import run_cli, write_manifest
from tests.support.records import make_record

OLD, YOUNG = 300, 200


def seed(path: Path) -> None:
    now = datetime.now(UTC)
    store = SQLiteStore(path)
    # Interleaved ages, as a gateway writing late records would leave them.
    records = [make_record(i, timestamp=now - (timedelta(days=40) if i % 5 < 3 else timedelta(hours=1)))
               for i in range(OLD + YOUNG)]
    store.append(records)
    store.close()


def policy(path: Path, spec: str, name: str = "keep-30d") -> str:
    text = f"""
---
apiVersion: capture.dev/v1alpha1
kind: RetentionPolicy
metadata: {{name: {name}, namespace: default}}
spec:
{spec}"""
    path.write_text(path.read_text() + text)
    return text


def state_of(state: Path, name: str = "keep-30d") -> dict:
    return json.loads(state.read_text())[f"RetentionPolicy/default/{name}"]


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_run_once_exports_then_purges_only_old_exported_records(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store_path, state = tmp_path / "store.sqlite", tmp_path / "state.json"
    seed(store_path)
    manifest = write_manifest(tmp_path / "all.yaml", s3_server, bucket, limit=128)
    policy(manifest, "  maxAge: 30d\n  exporters: [usage]\n  batchSize: 50\n")
    result = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "default/usage: Succeeded: 500 records" in result.stdout
    assert f"default/keep-30d: retention Succeeded: purged {OLD}" in result.stdout
    status = state_of(state)
    assert status["lastRun"]["purged"] == OLD and status["lastRun"]["bound"] == "500"
    assert status["lastRun"]["chunks"] >= OLD // 50 and status["lastRun"]["limitingExporter"] == "usage"
    assert condition(status, "GateOpen")["status"] == "True" and condition(status, "Ready")["status"] == "True"
    assert status["gate"]["exporters"][0] == {"name": "usage", "state": "Committed", "cursor": "500", "epoch": 0,
                                              "message": "S3Exporter usage committed up to id 500 (epoch 0)"}

    store = SQLiteStore(store_path)
    objects = S3ObjectStore(S3Location(bucket, "us-east-1", s3_server.endpoint),
                            Credentials(s3_server.access_key_id, s3_server.secret_access_key))
    report = verify_export(store, objects, "llm")
    assert store.count() == YOUNG and report.ok and report.not_in_store == OLD and report.exported_records == 500
    store.close()

    again = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, cwd=tmp_path)
    assert "retention NothingToDo: purged 0" in again.stdout
    assert state_of(state)["totals"] == {"purged": OLD, "softDeleted": 0, "runs": 2}


def test_a_missing_exporter_holds_the_gate_shut_and_is_named(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    store_path, state = tmp_path / "store.sqlite", tmp_path / "state.json"
    seed(store_path)
    manifest = write_manifest(tmp_path / "all.yaml", s3_server, bucket)
    policy(manifest, "  maxAge: 30d\n  exporters: [usage, archive]\n")
    result = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gate CLOSED at id 0 (limited by archive)" in result.stdout
    gate = condition(state_of(state), "GateOpen")
    assert (gate["status"], gate["reason"]) == ("False", "ExporterNotFound") and "archive" in gate["message"]
    store = SQLiteStore(store_path)
    assert store.count() == OLD + YOUNG
    store.close()


def test_an_exporter_whose_bucket_is_missing_closes_the_gate(s3_server: LocalS3, tmp_path: Path) -> None:
    store_path, state = tmp_path / "store.sqlite", tmp_path / "state.json"
    seed(store_path)
    manifest = write_manifest(tmp_path / "all.yaml", s3_server, "no-such-bucket-here")
    policy(manifest, "  maxAge: 30d\n  exporters: [usage]\n")
    result = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, cwd=tmp_path)
    assert result.returncode == 1  # the exporter failed; the policy purged nothing
    gate = condition(state_of(state), "GateOpen")
    assert (gate["status"], gate["reason"]) == ("False", "CheckpointUnreadable") and "usage" in gate["message"]
    store = SQLiteStore(store_path)
    assert store.count() == OLD + YOUNG
    store.close()


def test_soft_delete_then_restore_with_the_cli(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    store_path, state = tmp_path / "store.sqlite", tmp_path / "state.json"
    seed(store_path)
    manifest = write_manifest(tmp_path / "all.yaml", s3_server, bucket, limit=1000)
    policy(manifest, "  maxAge: 30d\n  exporters: [usage]\n  softDelete: {gracePeriod: 7d}\n")
    result = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"soft-deleted {OLD}" in result.stdout and f"{OLD} soft-deleted records restorable" in result.stdout
    assert state_of(state)["softDeletedPending"] == OLD
    store = SQLiteStore(store_path)
    assert store.count() == YOUNG and store.soft_deleted_count() == OLD
    store.close()

    dry = run_cli("restore", "-f", manifest, "--store", store_path, "--dry-run", cwd=tmp_path)
    assert f"{OLD} soft-deleted records" in dry.stdout
    restored = run_cli("restore", "-f", manifest, "--store", store_path, "--since", "1h", cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert f"restored {OLD} soft-deleted records" in restored.stdout and "0 remain" in restored.stdout
    store = SQLiteStore(store_path)
    assert store.count() == OLD + YOUNG and store.soft_deleted_count() == 0
    store.close()


def test_require_export_false_purges_by_age_alone_and_says_so(tmp_path: Path) -> None:
    store_path, state = tmp_path / "store.sqlite", tmp_path / "state.json"
    seed(store_path)
    manifest = tmp_path / "policy.yaml"
    manifest.write_text("")
    policy(manifest, "  maxAge: 30d\n  requireExport: false\n", name="age-only")
    result = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EXPORTED OR NOT" in result.stdout and "PurgingUnexported" in result.stdout
    status = state_of(state, "age-only")
    assert status["lastRun"]["purged"] == OLD and status["gate"]["mode"] == "AgeOnly"


def test_a_long_purge_shows_its_progress_before_its_end(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    """Someone purging millions of rows must see it move, not one line an hour later: rows removed so far,
    the rate and what is left, at the progress interval (made small here), then the run's own line."""
    store_path, state = tmp_path / "store.sqlite", tmp_path / "state.json"
    store = SQLiteStore(store_path)
    old = datetime.now(UTC) - timedelta(days=40)
    store.append(make_record(i, timestamp=old) for i in range(20_000))
    store.close()
    manifest = write_manifest(tmp_path / "all.yaml", s3_server, bucket, limit=10_000)
    policy(manifest, "  maxAge: 30d\n  exporters: [usage]\n  batchSize: 200\n")
    result = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path,
                     "--progress-every", "0.1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if "default/keep-30d: retention Succeeded: purged 20,000" in line)
    progress = [line for line in lines[:end] if "default/keep-30d: purging:" in line]
    assert len(progress) >= 2, result.stdout
    removed = [int(line.split("purging: ")[1].split()[0].replace(",", "")) for line in progress]
    assert removed == sorted(removed) and 0 < removed[0] < 20_000 and removed[-1] <= 20_000, progress
    assert all("records/s" in line and "left" in line for line in progress), progress


def test_a_purge_after_no_export_runs_with_the_garbage_collector_on(tmp_path: Path, monkeypatch: Any) -> None:
    """`run --once` holds the collector off until an export starts (collector.py); with no exporter to
    run, the purge must not be left without it: its own cyclic garbage would never be collected."""
    import gc

    from capture_export.cli import main
    from capture_export.retention.standalone import PolicyTurns

    store_path, state = tmp_path / "store.sqlite", tmp_path / "state.json"
    seed(store_path)
    manifest = tmp_path / "policy.yaml"
    manifest.write_text("")
    policy(manifest, "  maxAge: 30d\n  requireExport: false\n", name="age-only")
    collector_on: list[bool] = []
    purge = PolicyTurns.__call__

    def turn(self: PolicyTurns, item: Any) -> tuple[float, bool]:
        collector_on.append(gc.isenabled())
        return purge(self, item)

    monkeypatch.setattr(PolicyTurns, "__call__", turn)
    assert main(["run", "--once", "-f", str(manifest), "--state", str(state), "--store", str(store_path)]) == 0
    assert collector_on == [True]
    assert gc.isenabled()
