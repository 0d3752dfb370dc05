"""Issue 10, item 11: ``verify`` and ``cat`` never crash on bad objects: each unreadable object is named
and counted, the rest is still read, and the command exits non-zero. Objects of other exporters under a
nested prefix (or in their own template folder) are not counted as duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from capture_export.local_s3 import LocalS3

from .identity_support import HostileExporter, assert_no_traceback, seed_sqlite

BAD_OBJECTS = {
    "llm/garbage.cbor.zstd": b"this is not zstd",
    "llm/00000000000000090001-00000000000000090100.cbor.zstd": zstandard.ZstdCompressor().compress(b"\xff\xff\x1f"),
    "llm/truncated.jsonl.zst": b"",  # filled in with half of a real zstd frame
    "llm/broken.jsonl": b'{"id": 1, "model": \n',
    "llm/junk.parquet": b"PAR1 not really parquet PAR1",
    "llm/gz.jsonl.gz": b"\x1f\x8b but not gzip",
}


@pytest.fixture
def exported(s3_server: LocalS3, bucket: str, tmp_path: Path) -> HostileExporter:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 1000, seed=12)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=250)
    result = exporter.run_once()
    assert result.returncode == 0, result.stdout + result.stderr
    return exporter


def _put_bad_objects(exporter: HostileExporter) -> None:
    real = exporter.get_object(exporter.data_keys()[0])
    assert real is not None
    for key, data in BAD_OBJECTS.items():
        exporter.put_object(key, data or real[: len(real) // 2])


def test_verify_names_and_counts_every_unreadable_object(exported: HostileExporter) -> None:
    _put_bad_objects(exported)
    audit = exported.verify()
    assert_no_traceback(audit)
    assert audit.returncode == 1, audit.stdout + audit.stderr
    for key in BAD_OBJECTS:
        assert key in audit.stdout, key
    assert f"unreadable: {len(BAD_OBJECTS)}" in audit.stdout
    # The readable objects were still checked: every record is there, once.
    assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout


def test_cat_prints_what_it_can_and_names_every_unreadable_object(exported: HostileExporter) -> None:
    _put_bad_objects(exported)
    result = exported.cat(f"s3://{exported.bucket}/llm/")
    assert_no_traceback(result)
    assert result.returncode != 0
    ids = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert sorted(ids) == list(range(1, 1001))
    for key in BAD_OBJECTS:
        assert key in result.stderr, key


def test_cat_of_a_single_unreadable_object_is_an_error_not_a_traceback(exported: HostileExporter) -> None:
    exported.put_object("llm/garbage.cbor.zstd", b"this is not zstd")
    result = exported.cat(f"s3://{exported.bucket}/llm/garbage.cbor.zstd")
    assert_no_traceback(result)
    assert result.returncode != 0 and "llm/garbage.cbor.zstd" in result.stderr
    local = exported.workdir / "local.cbor.zstd"
    local.write_bytes(b"garbage")
    result = exported.cat(local)
    assert_no_traceback(result)
    assert result.returncode != 0 and str(local) in result.stderr


@pytest.mark.parametrize(
    ("other_prefix", "other_template"),
    [("llm/team-b", ""), ("llm", "  pathTemplate: '{prefix}/{exporter}'\n")],
    ids=["nested-prefix", "own-template-folder"],
)
def test_other_exporters_objects_under_the_prefix_are_not_duplicates(
    exported: HostileExporter, other_prefix: str, other_template: str
) -> None:
    other = HostileExporter(exported.s3, exported.bucket, exported.workdir, exported.store, name="team-b",
                            prefix=other_prefix, limit=300, extra_spec=other_template)
    result = other.run_once()
    assert result.returncode == 0, result.stdout + result.stderr
    assert len([key for key in other.data_keys() if key.startswith("llm/team-b/")]) == 4

    audit = exported.verify()
    assert audit.returncode == 0, audit.stdout
    assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout
    assert "records in bucket: 1000" in audit.stdout
    theirs = other.verify()
    assert theirs.returncode == 0, theirs.stdout
