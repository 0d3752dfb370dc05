"""What `capture-export run --once` of the default format loads: only what it uses. Every module imported is
CPU at every start (and memory for the life of the process), paid by each `run --once` of a cron job or a
CI step, and by every test that starts the command."""

from __future__ import annotations

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
}


def test_run_once_of_the_default_format_loads_only_what_it_uses(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    seed_store(store, 300, seed=5)
    store.close()
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=100)
    listing = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, str(listing), "run", "--once", "-f", str(manifest),
         "--store", str(store_path), "--state", str(tmp_path / "state.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Succeeded: 300 records in 3 objects" in result.stdout  # it did export, in the default format
    loaded = set(json.loads(listing.read_text()))
    needless = {name: why for name, why in NOT_USED.items()
                if any(module == name or module.startswith(f"{name}.") for module in loaded)}
    assert not needless, f"loaded but not used: {needless}"
