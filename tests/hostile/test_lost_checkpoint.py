"""Issue 10, item 7: checkpoint and state both lost, and the batch size changed. Before the fix only the
first batch swept, and 3,000 of 3,200 records went out twice. When nothing knows the high-water mark the
exporter now lists its own data objects first, so every overlapping object is swept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3

from .identity_support import HostileExporter, seed_sqlite


@pytest.mark.parametrize(
    ("template", "written_by"),
    [
        ("", "this version"),
        ("  pathTemplate: '{prefix}/{year}/{month}'\n", "this version"),
        ("", "the previous version"),
    ],
    ids=["flat", "dated", "objects-without-metadata"],
)
def test_checkpoint_and_state_lost_and_limit_changed(
    s3_server: LocalS3, bucket: str, tmp_path: Path, template: str, written_by: str
) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 3200, seed=9)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=1000, extra_spec=template)
    assert exporter.run_once().returncode == 0
    if written_by == "the previous version":
        exporter.strip_metadata()

    client = exporter.client()
    client.delete_object(Bucket=bucket, Key=exporter.checkpoint_key)
    exporter.state.unlink()
    exporter.limit = 150
    exporter.write_manifest(exporter.manifest)

    again = exporter.run_once()
    assert again.returncode == 0, again.stdout + again.stderr
    audit = exporter.verify()
    assert "duplicated: 0" in audit.stdout and "missing: 0" in audit.stdout, audit.stdout
    assert audit.returncode == 0
