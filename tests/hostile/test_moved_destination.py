"""The careless operator edits the destination between runs.

With the same state file, a changed ``prefix``, ``bucket`` or ``pathTemplate`` used to carry the old cursor
to the new destination: the runner wrote nothing there and reported success. It must refuse as the
operator does: ``Ready=False`` with reason ``DestinationImmutable`` naming the field, a non-zero exit,
nothing written anywhere; and run again once the destination is restored. A new exporter name is a new
exporter, which exports everything to the new destination from the start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.objectstore import S3Location, S3ObjectStore
from capture_export.objectstore.credentials import Credentials
from capture_export.store import SQLiteStore
from tests.support.cli import run_cli, write_manifest
from tests.support.records import make_record

RECORDS = 500


def _keys(s3: LocalS3, *buckets: str) -> set[str]:
    credentials = Credentials(s3.access_key_id, s3.secret_access_key)
    return {f"{name}/{info.key}" for name in buckets
            for info in S3ObjectStore(S3Location(name, "us-east-1", s3.endpoint), credentials).list("")}


@pytest.mark.parametrize("field", ["prefix", "bucket", "pathTemplate"])
def test_a_changed_destination_is_refused_and_nothing_is_written(
    field: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    store.append(make_record(i) for i in range(1, RECORDS + 1))
    store.close()
    state = tmp_path / "state.json"
    other_bucket = f"{bucket}-moved"
    s3_server.create_bucket(other_bucket)

    first = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=200)
    done = run_cli("run", "--once", "-f", first, "--state", state, "--store", store_path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    written = _keys(s3_server, bucket, other_bucket)
    assert written

    moved = {
        "prefix": dict(prefix="moved"),
        "bucket": dict(bucket=other_bucket),
        "pathTemplate": dict(extra_spec="  pathTemplate: '{prefix}/{date}'\n"),
    }[field]
    changed = write_manifest(tmp_path / "moved.yaml", s3_server, moved.pop("bucket", bucket), limit=200, **moved)
    refused = run_cli("run", "--once", "-f", changed, "--state", state, "--store", store_path, cwd=tmp_path)
    assert refused.returncode != 0, refused.stdout
    assert "DestinationImmutable" in refused.stdout and field in refused.stdout
    assert _keys(s3_server, bucket, other_bucket) == written  # nothing written, in either place
    status = json.loads(state.read_text())["S3Exporter/default/usage"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DestinationImmutable")
    assert field in ready["message"]
    assert status["cursor"] == str(RECORDS)  # the cursor stays with the destination it belongs to

    # Restored, it runs again.
    again = run_cli("run", "--once", "-f", first, "--state", state, "--store", store_path, cwd=tmp_path)
    assert again.returncode == 0, again.stderr + again.stdout


def test_a_new_exporter_name_exports_everything_to_the_new_destination(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    store.append(make_record(i) for i in range(1, RECORDS + 1))
    store.close()
    state = tmp_path / "state.json"
    first = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=200)
    assert run_cli("run", "--once", "-f", first, "--state", state, "--store", store_path,
                   cwd=tmp_path).returncode == 0
    renamed = write_manifest(tmp_path / "moved.yaml", s3_server, bucket, limit=200, prefix="moved", name="usage-v2")
    result = run_cli("run", "--once", "-f", renamed, "--state", state, "--store", store_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"{RECORDS:,} records" in result.stdout
    check = run_cli("verify", "-f", renamed, "--store", store_path, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
