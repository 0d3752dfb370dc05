"""`capture-export run` on the very manifests a user would `kubectl apply`, without a cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.cli import CLI, run_cli, write_manifest


@pytest.fixture
def seeded_store(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, 5000, seed=21)
    store.close()
    return path


def test_run_once_drains_reports_and_keeps_state(
    s3_server: LocalS3, bucket: str, tmp_path: Path, seeded_store: Path
) -> None:
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=1000)
    state = tmp_path / "state.json"
    result = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", seeded_store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "default/usage: Succeeded: 5,000 records in 5 objects" in result.stdout
    status = json.loads(state.read_text())["S3Exporter/default/usage"]
    assert status["cursor"] == "5000" and status["backlog"] == 0
    assert status["lastRun"]["rows"] == 5000 and status["lastRun"]["outcome"] == "Succeeded"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    again = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", seeded_store, cwd=tmp_path)
    assert "NothingToDo: 0 records" in again.stdout
    assert len(json.loads(state.read_text())["S3Exporter/default/usage"]["history"]) == 2


@pytest.mark.parametrize(
    ("spec_line", "field", "rule"),
    [
        ("limit: 20000", "spec.limit", "less than or equal to 10000"),
        ("prefix: exports/", "spec.prefix", "must not start or end with '/'"),
        ("bucket: Not_A_Bucket", "spec.bucket", "should match pattern"),
        ("endpoint: ftp://x", "spec.endpoint", "must be an http:// or https:// URL"),
        ("every: 0", "spec.every", "greater than or equal to 1"),
        ("colour: blue", "spec.colour", "Extra inputs are not permitted"),
    ],
)
def test_invalid_manifests_are_refused_naming_the_field(
    tmp_path: Path, spec_line: str, field: str, rule: str
) -> None:
    key = spec_line.split(":")[0]
    base = {"bucket": "exports", "region": "us-east-1", "limit": "10"}
    lines = [f"  {k}: {v}" for k, v in base.items() if k != key] + [f"  {spec_line}"]
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("apiVersion: capture.dev/v1alpha1\nkind: S3Exporter\nmetadata: {name: bad}\nspec:\n"
                        + "\n".join(lines) + "\n")
    result = run_cli("run", "--once", "-f", manifest, cwd=tmp_path)
    assert result.returncode == 2
    assert field in result.stderr and rule in result.stderr and "default/bad" in result.stderr


def test_missing_region_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("apiVersion: capture.dev/v1alpha1\nkind: S3Exporter\nmetadata: {name: bad}\n"
                        "spec: {bucket: exports}\n")
    result = run_cli("run", "--once", "-f", manifest, cwd=tmp_path)
    assert result.returncode == 2 and "spec.region: Field required" in result.stderr


def test_ctrl_c_stops_cleanly_and_a_rerun_finishes_exactly_once(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    # 100 batches of 100: Ctrl-C comes right after the first commit, so the run is stopped early in it; the
    # rerun then drains the rest in small batches (40,000 records made that drain alone take ~40 s).
    seed_store(store, 10_000, seed=22)
    store.close()
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=100)
    state = tmp_path / "state.json"
    process = subprocess.Popen([*CLI, "run", "-f", str(manifest), "--state", str(state), "--store", str(store_path)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopping after the batch in flight commits" in out
    assert "Stopped" in out
    cursor = int(json.loads(state.read_text())["S3Exporter/default/usage"]["cursor"])
    assert 0 < cursor < 10_000

    finish = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, cwd=tmp_path)
    assert finish.returncode == 0
    verify = run_cli("verify", "-f", manifest, "--store", store_path, cwd=tmp_path)
    assert verify.returncode == 0 and "missing: 0" in verify.stdout and "duplicated: 0" in verify.stdout, verify.stdout


def test_verify_reports_missing_and_duplicated_records(
    s3_server: LocalS3, bucket: str, tmp_path: Path, seeded_store: Path
) -> None:
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=1000)
    run_cli("run", "--once", "-f", manifest, "--store", seeded_store, "--state", tmp_path / "s.json", cwd=tmp_path)
    client = s3_server.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="llm/")["Contents"]
                  if o["Key"].endswith(".cbor.zstd"))
    body = client.get_object(Bucket=bucket, Key=keys[1])["Body"].read()
    client.put_object(Bucket=bucket, Key="llm/copy-" + keys[1].split("/")[-1], Body=body)
    client.delete_object(Bucket=bucket, Key=keys[0])
    verify = run_cli("verify", "-f", manifest, "--store", seeded_store, cwd=tmp_path)
    assert verify.returncode == 1
    assert "missing: 1000 (1, 2, 3" in verify.stdout and "duplicated: 1000 (1001, 1002" in verify.stdout


def test_cat_decodes_an_export_to_json_lines(
    s3_server: LocalS3, bucket: str, tmp_path: Path, seeded_store: Path
) -> None:
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=1000)
    run_cli("run", "--once", "-f", manifest, "--store", seeded_store, "--state", tmp_path / "s.json", cwd=tmp_path)
    key = "llm/00000000000000000001-00000000000000001000.cbor.zstd"
    local = tmp_path / "batch.cbor.zstd"
    local.write_bytes(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    result = run_cli("cat", local, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert len(lines) == 1000
    first = json.loads(lines[0])
    assert first["id"] == 1 and first["ver"] == 2 and "T" in first["timestamp"]

    import os

    env_run = subprocess.run([*CLI, "cat", f"s3://{bucket}/{key}", "--endpoint", s3_server.endpoint],
                             cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
                                  "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key})
    assert env_run.stdout.splitlines() == lines
