"""Ctrl-C at a terminal: the terminal sends SIGINT to every process of the foreground process group, the
command's helper processes (ingest parsers, encode workers) as well as the command. The README says
Ctrl-C stops these commands; it must do so without a KeyboardInterrupt traceback from any of them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from capture_export.local_s3 import LocalS3, free_port
from tests.support.cli import CLI, run_cli, write_manifest

STARTED_WITHIN = 60.0
STOPPED_WITHIN = 60.0


def _start_in_own_group(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """The command as a shell starts it in a terminal: the leader of its own process group."""
    return subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _press_ctrl_c(process: subprocess.Popen[str], *, once_printed: str, on: str) -> tuple[str, str]:
    """Wait until ``process`` printed ``once_printed`` on stream ``on``, give its helpers a moment to
    start, send SIGINT to its whole process group, and return its stdout and stderr."""
    stream = process.stdout if on == "stdout" else process.stderr
    assert stream is not None
    seen = ""
    deadline = time.monotonic() + STARTED_WITHIN
    while once_printed not in seen:
        assert time.monotonic() < deadline, f"{once_printed!r} never printed; got {seen!r}"
        line = stream.readline()
        assert line, f"the command ended before printing {once_printed!r}: {seen!r}"
        seen += line
    time.sleep(3)  # the helper processes are up and waiting for work
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=STOPPED_WITHIN)
    return (seen + stdout, stderr) if on == "stdout" else (stdout, seen + stderr)


def test_ctrl_c_stops_the_ingest_server_and_its_parsers_quietly(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("a-token-for-this-test\n")
    process = _start_in_own_group(["ingest", "--store", "store.sqlite", "--listen", f"127.0.0.1:{free_port()}",
                                   "--token-file", "token", "--parse-workers", "2"], tmp_path)
    _, stderr = _press_ctrl_c(process, once_printed="ingest server on", on="stdout")
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert process.returncode == 0, stderr


def test_ctrl_c_stops_a_run_and_its_encode_workers_quietly(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    seeded = run_cli("seed", "--store", "store.sqlite", "--count", "500", cwd=tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    # Compressed: uncompressed JSON Lines of our own rows is written without the encode workers.
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket,
                              extra_spec="  format: jsonl\n  compression: zstd\n")
    process = _start_in_own_group(["run", "-f", str(manifest), "--store", "store.sqlite", "--encode-workers", "2"],
                                  tmp_path)
    _, stderr = _press_ctrl_c(process, once_printed="Succeeded", on="stdout")
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert process.returncode == 0, stderr
