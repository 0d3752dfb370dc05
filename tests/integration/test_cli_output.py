"""Machine-readable and progress output of the command line: `run -o json`, `status` after a
real run, and `restore`'s progress."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from capture_export.cli import main
from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore
from tests.support.cli import run_cli, write_manifest
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
