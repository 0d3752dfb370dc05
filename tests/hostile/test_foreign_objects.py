"""Issue 10, item 8: a foreign object with a range-shaped name in the prefix. Before the fix the sweep
deleted it (its name says it starts inside the first batch). The sweep now deletes only objects this
exporter wrote (their metadata names the exporter and the store; objects from before that metadata
existed must hold exactly the store's records): a foreign object stays, and is reported.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
import zstandard

from capture_export.local_s3 import LocalS3

from .identity_support import HostileExporter, seed_sqlite

FOREIGN_KEY = "llm/00000000000000000050-00000000000000000120.cbor.zstd"


def _foreign_payload() -> bytes:
    records = [{"id": i, "ver": 2, "timestamp": datetime(2020, 1, 1, tzinfo=UTC), "model": "someone-elses",
                "capture_id": f"foreign-{i}"} for i in range(50, 121)]
    return zstandard.ZstdCompressor().compress(b"".join(cbor2.dumps(r) for r in records))


@pytest.mark.parametrize("metadata", [None, {"capture-export-exporter": "other/tenant"}],
                         ids=["no-metadata", "another-exporters-metadata"])
def test_sweep_keeps_a_foreign_object_with_a_range_shaped_name(
    s3_server: LocalS3, bucket: str, tmp_path: Path, metadata: dict[str, str] | None
) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 1000, seed=10)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=200)
    payload = _foreign_payload()
    exporter.put_object(FOREIGN_KEY, payload, metadata)

    result = exporter.run_once()
    assert result.returncode == 0, result.stdout + result.stderr
    assert exporter.get_object(FOREIGN_KEY) == payload  # untouched
    assert FOREIGN_KEY in result.stdout  # reported (an Event), not silently deleted

    audit = exporter.verify()
    assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout, audit.stdout
    assert FOREIGN_KEY in audit.stdout  # verify names the object that is not this exporter's
    assert audit.returncode == 0


def test_reset_sweep_keeps_foreign_objects_and_removes_our_own(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """A reset with another batch size sweeps every object of the earlier epoch, and still not a foreign
    one placed among them."""
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 1000, seed=11)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=300)
    assert exporter.run_once().returncode == 0
    foreign = "llm/00000000000000000400-00000000000000000401.cbor.zstd"
    payload = _foreign_payload()
    exporter.put_object(foreign, payload)

    exporter.limit = 170
    exporter.reset()
    result = exporter.run_once()
    assert result.returncode == 0, result.stdout + result.stderr
    assert exporter.get_object(foreign) == payload
    audit = exporter.verify()
    assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout, audit.stdout
    assert audit.returncode == 0
