"""Issue 10, item 4: the bucket or the prefix is wiped while the exporter runs or sleeps. Before the fix it
resumed from its saved cursor and reported UpToDate with every earlier record gone from the bucket. Now a
checkpoint that vanished while the saved cursor is above 0 is a ``CheckpointMissing`` condition and a
Warning Event: nothing is re-exported or skipped silently; a reset re-exports from the beginning.
"""

from __future__ import annotations

import signal
from pathlib import Path

from capture_export.local_s3 import LocalS3

from .identity_support import HostileExporter, assert_no_traceback, failed_reasons, seed_sqlite, wait_until


def test_prefix_wiped_between_runs_is_reported_then_reset_reexports(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 1000, seed=5)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=200)
    assert exporter.run_once().returncode == 0

    assert exporter.wipe() > 5  # `aws s3 rm --recursive s3://bucket/llm/`
    seed_sqlite(store, 100, seed=6)
    refused = exporter.run_once()
    assert refused.returncode != 0, refused.stdout
    assert_no_traceback(refused)
    reasons = failed_reasons(exporter.status())
    assert "CheckpointMissing" in reasons, exporter.status()
    assert "reset" in reasons["CheckpointMissing"]  # the message tells the way forward
    assert "Warning CheckpointMissing" in refused.stdout  # the Event
    assert exporter.keys() == []  # neither re-exported nor skipped past: nothing written

    # Still refused on the next run: the condition does not clear itself.
    assert exporter.run_once().returncode != 0 and exporter.keys() == []

    exporter.reset()
    fixed = exporter.run_once()
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    audit = exporter.verify()
    assert audit.returncode == 0, audit.stdout
    assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout


def test_bucket_wiped_while_the_runner_sleeps(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 600, seed=7)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=200, every=1)
    runner = exporter.start()
    try:
        wait_until(lambda: (exporter.status() or {}).get("cursor") == "600", 60, "the first export")
        exporter.wipe(prefix="")  # the whole bucket
        seed_sqlite(store, 50, seed=8)
        status = wait_until(lambda: "CheckpointMissing" in failed_reasons(exporter.status()) and exporter.status(),
                            30, "CheckpointMissing while the runner keeps running")
        assert status["cursor"] == "600"  # it did not move on past the new records either
        # Neither data nor a checkpoint: only the lease the running runner holds on its destination.
        assert [key for key in exporter.keys(prefix="") if "/_capture-export/leases/" not in key] == []
    finally:
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert "CheckpointMissing" in out
