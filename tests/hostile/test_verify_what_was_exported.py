"""Issue 18, item 3: ``verify -f manifest.yaml`` must audit what the exporter of the manifest exported.

Before the fix it ignored the exporter's ``spec.store`` and audited the default store (an empty SQLite
file: "0 missing, OK" while records were missing from the bucket), and it counted every record the store
held, so a live store with records not yet exported failed the audit. Now it opens the store the exporter
names, as ``run`` does, and checks up to the exporter's committed checkpoint unless ``--up-to`` is given;
the report says which limit it used.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.cli import CLI, run_cli

from .identity_support import HostileExporter, assert_no_traceback, seed_sqlite


def _empty_default_store(workdir: Path) -> Path:
    """The default store a newcomer's working directory holds: `store init` made it, nothing is in it."""
    path = workdir / ".capture-export" / "store.sqlite"
    created = run_cli("store", "init", "--store", path, cwd=workdir)
    assert created.returncode == 0, created.stderr
    return path


def test_verify_audits_the_store_the_exporter_names(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    own_store = tmp_path / "team" / "captures.sqlite"
    own_store.parent.mkdir()
    seed_sqlite(own_store, 1000, seed=3)
    default = _empty_default_store(tmp_path)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(default),
                               extra_spec=f"  store: {{sqlite: {{path: {own_store}}}}}\n")
    exported = exporter.run_once()
    assert exported.returncode == 0, exported.stdout + exported.stderr
    first_object = sorted(exporter.data_keys())[0]  # records 1-200
    exporter.client().delete_object(Bucket=bucket, Key=first_object)

    # As the quick start runs it (no --store), and as a careful user runs it, with the same --store as `run`.
    for extra in ([], ["--store", str(default)]):
        audit = run_cli("verify", "-f", exporter.manifest, *extra, cwd=tmp_path)
        assert_no_traceback(audit)
        assert audit.returncode == 1, audit.stdout + audit.stderr
        assert "missing: 200 (1, 2, 3" in audit.stdout, audit.stdout
        assert "records in store up to id 1000: 1000" in audit.stdout, audit.stdout


def test_verify_stops_at_the_committed_checkpoint_of_a_live_store(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.sqlite"
    seed_sqlite(store_path, 1000, seed=4)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store_path))
    assert exporter.run_once().returncode == 0
    # The gateway goes on writing; the exporter has not run since.
    store = SQLiteStore(store_path)
    try:
        seed_store(store, 300, seed=5)
    finally:
        store.close()

    audit = exporter.verify()
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "records in store up to id 1000: 1000" in audit.stdout, audit.stdout
    assert "up to id 1000, the committed checkpoint" in audit.stdout, audit.stdout

    # An explicit --up-to still wins, and says so.
    everything = exporter.verify("--up-to", "1300")
    assert everything.returncode == 1, everything.stdout
    assert "missing: 300 (1001, 1002" in everything.stdout and "given with --up-to" in everything.stdout

    # Without a manifest the exporter is known by the one checkpoint under the prefix.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key}
    by_bucket = subprocess.run(
        [*CLI, "verify", "--bucket", bucket, "--prefix", exporter.prefix, "--endpoint", s3_server.endpoint,
         "--store", str(store_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert by_bucket.returncode == 0, by_bucket.stdout + by_bucket.stderr
    assert "up to id 1000, the committed checkpoint of default/usage" in by_bucket.stdout, by_bucket.stdout


def test_verify_without_a_checkpoint_checks_all_the_store_holds(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """A wiped bucket (checkpoint gone too) must fail the audit, not pass it for want of a limit."""
    store_path = tmp_path / "store.sqlite"
    seed_sqlite(store_path, 600, seed=6)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store_path))
    assert exporter.run_once().returncode == 0
    exporter.wipe()

    audit = exporter.verify()
    assert_no_traceback(audit)
    assert audit.returncode == 1, audit.stdout
    assert "missing: 600 (1, 2" in audit.stdout, audit.stdout
    assert "up to id 600, all the store holds (no committed checkpoint of default/usage" in audit.stdout
