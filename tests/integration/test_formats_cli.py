"""`capture-export run`, `verify` and `cat` with a templated key, a filter and the other formats."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.cli import CLI, run_cli, write_manifest

RECORDS = 2000


@pytest.fixture
def seeded_store(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, RECORDS, seed=41, start=datetime(2026, 11, 24, 6, tzinfo=UTC), span=timedelta(days=2))
    store.close()
    return path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_run_verify_and_cat_with_a_template_and_a_filter(
    s3_server: LocalS3, bucket: str, tmp_path: Path, seeded_store: Path, fmt: str
) -> None:
    extra = (f"  format: {fmt}\n  compression: gzip\n  pathTemplate: '{{prefix}}/{{exporter}}/{{date}}'\n"
             "  filter: {statusCodes: [200]}\n  privacyMode: true\n")
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=300, extra_spec=extra)
    run = run_cli("run", "--once", "-f", manifest, "--store", seeded_store, "--state", tmp_path / "s.json",
                  cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    state = json.loads((tmp_path / "s.json").read_text())["S3Exporter/default/usage"]
    exported, filtered = state["totals"]["rows"], state["totals"]["filtered"]
    assert exported + filtered == RECORDS and filtered > 0 and state["lastRun"]["filtered"] == filtered

    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="llm/")["Contents"]]
    data = sorted(k for k in keys if "_capture-export" not in k)
    extension = ".parquet" if fmt == "parquet" else ".jsonl.gz"
    assert data and all(k.startswith("llm/usage/2026-11-2") and k.endswith(extension) for k in data), data
    assert {k.split("/")[2] for k in data} == {"2026-11-22", "2026-11-23", "2026-11-24"}

    verify = run_cli("verify", "-f", manifest, "--store", seeded_store, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "missing: 0" in verify.stdout and "duplicated: 0" in verify.stdout
    assert f"excluded by the exporter's filter (not expected in the bucket): {filtered}" in verify.stdout
    # Without the exporter (bucket and prefix only), the filtered records count as missing.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key}
    bare = subprocess.run([*CLI, "verify", "--bucket", bucket, "--prefix", "llm", "--endpoint", s3_server.endpoint,
                           "--store", str(seeded_store)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120)
    assert bare.returncode == 1 and f"missing: {filtered} " in bare.stdout, bare.stdout + bare.stderr
    cat = subprocess.run([*CLI, "cat", f"s3://{bucket}/llm/", "--endpoint", s3_server.endpoint], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=120)
    lines = [json.loads(line) for line in cat.stdout.splitlines()]
    assert len(lines) == exported and [r["id"] for r in lines] == sorted(r["id"] for r in lines)
    assert all(r["status_code"] == 200 and r["timestamp"].endswith("Z") for r in lines)
    assert not any("messages" in r["capture"]["request"].get("body", {}) for r in lines)

    local = tmp_path / data[0].rsplit("/", 1)[1]
    local.write_bytes(s3_server.client().get_object(Bucket=bucket, Key=data[0])["Body"].read())
    one = run_cli("cat", local, cwd=tmp_path)
    assert one.returncode == 0 and one.stdout.splitlines() == cat.stdout.splitlines()[: len(one.stdout.splitlines())]
