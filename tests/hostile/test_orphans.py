"""kill -9 leaves no helper processes behind: the encode pool's workers (and their fork server) and the
ingest server's parsing processes end with the process that started them, instead of idling for ever."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil

from capture_export.local_s3 import LocalS3
from capture_export.store.sqlite import SQLiteStore
from tests.support.cli import CLI, write_manifest
from tests.support.ingest import IngestProcess
from tests.support.records import make_record


def _descendants_after_kill(process: subprocess.Popen[bytes], helpers: list[psutil.Process]) -> list[str]:
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(helpers, timeout=10)
    return [f"{p.pid}: {' '.join(p.cmdline())[:120]}" for p in alive]


def _wait_for_helpers(pid: int, at_least: int, timeout: float = 60) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        helpers = psutil.Process(pid).children(recursive=True)
        if len(helpers) >= at_least:
            return helpers
        time.sleep(0.1)
    raise AssertionError(f"process {pid} started fewer than {at_least} helper processes in {timeout} s")


def test_an_exporter_killed_mid_export_leaves_no_encode_workers(
    s3_server: LocalS3, bucket: str, tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    store.append(make_record(i) for i in range(20_000))
    store.close()
    # Compressed: uncompressed JSON Lines of our own rows is written without the pool.
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=500,
                              extra_spec="  format: jsonl\n  compression: zstd\n")
    process = subprocess.Popen(
        [*CLI, "run", "--once", "-f", str(manifest), "--state", str(tmp_path / "state.json"), "--store",
         str(tmp_path / "store.sqlite"), "--encode-workers", "2"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        helpers = _wait_for_helpers(process.pid, at_least=3)  # the fork server and its two workers
        assert _descendants_after_kill(process, helpers) == []
    finally:
        if process.poll() is None:
            process.kill()


def test_an_ingest_server_killed_leaves_no_parsing_processes(tmp_path: Path) -> None:
    server = IngestProcess(tmp_path / "store.sqlite", tmp_path).start()
    assert server.process is not None
    helpers = _wait_for_helpers(server.process.pid, at_least=2)
    assert _descendants_after_kill(server.process, helpers) == []
