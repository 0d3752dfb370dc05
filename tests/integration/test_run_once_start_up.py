"""What `capture-export run --once` of the default format loads: only what it uses. Every module imported is
CPU at every start (and memory for the life of the process), paid by each `run --once` of a cron job or a
CI step, and by every test that starts the command."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.cli import write_manifest

# Runs `capture-export run …` as the console script does, then writes the names of the modules it loaded.
RUN_AND_LIST_MODULES = """\
import json, sys
from capture_export.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as listing:
    json.dump(sorted(sys.modules), listing)
sys.exit(code)
"""

# Loaded by a standalone export of the default format, whose batches are encoded in this process: none of it
# does anything there.
NOT_USED = {
    "kopf": "the operator's framework (`capture-export operator`)",
    "kubernetes": "the Kubernetes client (the operator)",
    "aiohttp": "the ingest server's web framework",
    "pyarrow": "Parquet's library",
    "boto3": "botocore's resource layer: the object store uses botocore's client",
    "s3transfer": "boto3's transfer manager (multipart uploads of files)",
    "multiprocessing": "the encode pool serves only the formats that decode",
    "capture_export.ingest.parsing": "the ingest server's request parsing",
    "capture_export.handlers": "the operator's handlers",
    "capture_export.retention": "RetentionPolicies: the manifest has none",
    "capture_export.api.retention": "the RetentionPolicy models: the manifest has none",
    "capture_export.api.crd": "the CRDs' generator (`capture-export crds`)",
}


def run_once_with(script: str, records: int, s3_server: LocalS3, bucket: str, tmp_path: Path) -> Path:
    """``script`` (a program like RUN_AND_LIST_MODULES) runs ``run --once`` on ``records`` seeded records in
    batches of 100 and writes what it found to the file its first argument names: that file."""
    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    seed_store(store, records, seed=5)
    store.close()
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=100)
    written = tmp_path / "written.json"
    result = subprocess.run(
        [sys.executable, "-c", script, str(written), "run", "--once", "-f", str(manifest),
         "--store", str(store_path), "--state", str(tmp_path / "state.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # It did export, in the default format.
    assert f"Succeeded: {records} records in {records // 100} objects" in result.stdout
    return written


def test_run_once_of_the_default_format_loads_only_what_it_uses(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    listing = run_once_with(RUN_AND_LIST_MODULES, 300, s3_server, bucket, tmp_path)
    loaded = set(json.loads(listing.read_text()))
    needless = {name: why for name, why in NOT_USED.items()
                if any(module == name or module.startswith(f"{name}.") for module in loaded)}
    assert not needless, f"loaded but not used: {needless}"


# Runs `capture-export run …` and writes, when the export of the first exporter began: how many objects were
# frozen (out of the collector's reach), the youngest generation's threshold, the generations start-up
# collected once the command began, and whether the collector is on.
RUN_AND_COUNT_FROZEN = """\
import gc, json, sys
from capture_export.cli import main
from capture_export.export.engine import ExportEngine
frozen = []
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
original = ExportEngine.run
def run(self, *args, **kwargs):
    frozen.append((gc.get_freeze_count(), gc.get_threshold()[0], collections, gc.isenabled()))
    return original(self, *args, **kwargs)
ExportEngine.run = run
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump(frozen, out)
sys.exit(code)
"""


def test_run_once_freezes_what_start_up_made_before_it_exports(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """botocore's S3 model, pydantic's schemas and the modules live until the process ends: every full
    collection during the export would walk them all again (~0.15 s of CPU together at 100k records)."""
    counts = run_once_with(RUN_AND_COUNT_FROZEN, 200, s3_server, bucket, tmp_path)
    ((frozen_at_start, threshold, start_up_collections, enabled),) = json.loads(counts.read_text())
    assert frozen_at_start > 50_000, f"only {frozen_at_start} objects frozen when the export began"
    assert threshold >= 7000, "a batch's thousands of rows would wake the collector every 700 new objects"
    # The arguments are parsed before `run` holds the collector off: a collection or two of the younger
    # generations (the parser's objects; which of them depends on the counts the imports left), never a full
    # one, which walks every module loaded so far.
    assert len(start_up_collections) <= 3 and 2 not in start_up_collections, \
        f"start-up collected objects that live as long as the process: generations {start_up_collections}"
    assert enabled, "the export's own cyclic garbage must still be collected"


def test_the_collector_is_as_it_was_once_the_export_is_over() -> None:
    """Frozen objects that became cyclic garbage are collected after all, and the thresholds are the
    process's: a runner that exports in-process (a test, an embedding program) gets both back."""
    from capture_export.collector import LessCollection

    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    for held_off in (False, True):
        less = LessCollection()
        if held_off:
            less.hold_off()
            assert not gc.isenabled()
        less.start()
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen and gc.get_threshold()[0] == LessCollection.YOUNGEST_THRESHOLD
        less.end()
        assert (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()) == (True, thresholds, frozen)
    less = LessCollection()
    less.hold_off()
    less.end()  # the run failed before any export began
    assert gc.isenabled()
