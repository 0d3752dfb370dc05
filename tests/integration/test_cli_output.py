"""Machine-readable and progress output of the command line: `run -o json`, `status` after a
real run, and `restore`'s progress."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest

from capture_export.cli import main
from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore
from tests.support.cli import CLI, run_cli, write_manifest
from tests.support.records import make_record


def test_run_output_json_prints_each_resource_with_its_status(s3_server: LocalS3, bucket: str,
                                                              tmp_path: Path) -> None:
    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    store.append(make_record(i) for i in range(1, 1201))
    store.close()
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=500)
    state = tmp_path / "state.json"
    result = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, "-o", "json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()  # stdout holds only the JSON: one line per cycle
    obj = json.loads(line)
    assert (obj["apiVersion"], obj["kind"], obj["metadata"]) == (
        "capture.dev/v1alpha1", "S3Exporter", {"name": "usage", "namespace": "default"})
    assert obj["spec"]["bucket"] == bucket and obj["spec"]["limit"] == 500
    assert obj["status"]["cursor"] == "1200" and obj["status"]["lastRun"]["outcome"] == "Succeeded"
    assert "Succeeded: 1,200 records" in result.stderr  # the human report is still there, on stderr

    # `status` reads what that run left in the state file.
    table = run_cli("status", "--state", state, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:5] == ["NAMESPACE", "NAME", "READY", "EXPORTED", "BACKLOG"]
    assert row.split()[:5] == ["default", "s3exporter/usage", "True", "1200", "0"]
    listing = json.loads(run_cli("status", "--state", state, "-o", "json", cwd=tmp_path).stdout)
    assert listing["items"][0]["status"] == obj["status"]


def test_restore_shows_progress_when_it_takes_more_than_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    store.append(make_record(i) for i in range(1, 12_001))
    store.expire_chunk(store.max_id(), 2**62, 100_000, mark_at_us=1)  # soft-delete them all
    assert store.soft_deleted_count() == 12_000
    store.close()
    # Every clock reading a second later than the last: each chunk "takes" a second.
    ticks = itertools.count(1000.0, 1.0)
    monkeypatch.setattr("capture_export.progress.time.monotonic", lambda: next(ticks))
    assert main(["restore", "--store", str(store_path), "--batch-size", "5000"]) == 0
    captured = capsys.readouterr()
    assert "restored 12,000 soft-deleted records" in captured.out
    progress = [line for line in captured.err.splitlines() if line.startswith("restoring:")]
    assert progress[0].startswith("restoring: 5,000/12,000 records (42%)")
    assert progress[-1].startswith("restoring: 12,000/12,000 records (100%)")


def _exported(tmp_path: Path, s3_server: LocalS3, bucket: str, records: int, limit: int) -> tuple[Path, Path]:
    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    store.append(make_record(i) for i in range(1, records + 1))
    store.close()
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=limit)
    result = run_cli("run", "--once", "-f", manifest, "--state", tmp_path / "state.json", "--store", store_path,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return manifest, store_path


def test_verify_shows_progress_on_stderr_when_it_takes_more_than_a_second(
    s3_server: LocalS3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest, store_path = _exported(tmp_path, s3_server, bucket, 1000, 250)
    ticks = itertools.count(1000.0, 1.0)  # every clock reading a second after the last: each object "takes" one
    monkeypatch.setattr("capture_export.progress.time.monotonic", lambda: next(ticks))
    assert main(["verify", "-f", str(manifest), "--store", str(store_path)]) == 0
    captured = capsys.readouterr()
    assert "verifying" not in captured.out and "OK" in captured.out  # stdout holds the report only
    progress = [line for line in captured.err.splitlines() if line.startswith("verifying default/usage:")]
    assert progress, captured.err
    assert progress[-1].startswith("verifying default/usage: 4/4 objects (100%)"), progress


def test_verify_output_json_is_one_object_and_no_progress(
    s3_server: LocalS3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest, store_path = _exported(tmp_path, s3_server, bucket, 600, 200)
    store = SQLiteStore(store_path)
    store.append(make_record(i) for i in range(601, 701))  # not exported yet: not missing
    store.close()
    ticks = itertools.count(1000.0, 1.0)
    monkeypatch.setattr("capture_export.progress.time.monotonic", lambda: next(ticks))
    assert main(["verify", "-f", str(manifest), "--store", str(store_path), "-o", "json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    report = json.loads(captured.out)
    (audit,) = report["exporters"]
    assert report["ok"] is True and audit["name"] == "default/usage"
    assert (audit["upTo"], audit["recordsInStore"], audit["recordsInBucket"], audit["missing"]) == ("600", 600, 600, 0)
    assert audit["limit"] == "the committed checkpoint of default/usage"

    assert main(["verify", "-f", str(manifest), "--store", str(store_path), "-o", "json", "--up-to", "700"]) == 1
    audit = json.loads(capsys.readouterr().out)["exporters"][0]
    assert audit["missing"] == 100 and audit["missingIds"][:2] == ["601", "602"]


def test_cat_with_the_exporters_manifest_needs_no_aws_variables(s3_server: LocalS3, bucket: str,
                                                                 tmp_path: Path) -> None:
    """Issue 18, item 3: `cat -f exporter.yaml` reads the exporter's objects with its Secret, endpoint,
    prefix and layout; another exporter's objects in the same bucket are not printed."""
    manifest, store_path = _exported(tmp_path, s3_server, bucket, 450, 200)
    other = write_manifest(tmp_path / "other.yaml", s3_server, bucket, prefix="other", name="other")
    assert run_cli("run", "--once", "-f", other, "--state", tmp_path / "other.json", "--store", store_path,
                   cwd=tmp_path).returncode == 0
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    result = subprocess.run([*CLI, "cat", "-f", str(manifest)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    ids = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert ids == list(range(1, 451))

    both = tmp_path / "both.yaml"  # one Secret, two exporters
    both.write_text(f"{manifest.read_text()}\n---\n{other.read_text().split('---', 1)[1]}")
    two = run_cli("cat", "-f", both, cwd=tmp_path)
    assert two.returncode == 2 and "--exporter" in two.stderr, two.stderr
    chosen = run_cli("cat", "-f", both, "--exporter", "other", cwd=tmp_path)
    assert chosen.returncode == 0 and len(chosen.stdout.splitlines()) == 450, chosen.stderr
