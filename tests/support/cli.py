"""Helpers for tests that drive the ``capture-export`` command in a subprocess."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

from capture_export.local_s3 import LocalS3

CLI = [sys.executable, "-m", "capture_export.cli"]

# An environment variable set on a killed run: every process it started (the encode pool's fork server and
# workers, re-parented once it is killed) inherits it, so that the test can find those left running.
RUN_MARK = "CAPTURE_EXPORT_TEST_RUN_MARK"
# How long the helpers of a killed run may take to notice and exit (they watch it with a pidfd: at once).
HELPERS_EXIT_WITHIN = 10.0


def write_manifest(path: Path, s3: LocalS3, bucket: str, *, limit: int = 200, prefix: str = "llm",
                   name: str = "usage", extra_spec: str = "") -> Path:
    path.write_text(f"""\
apiVersion: v1
kind: Secret
metadata: {{name: s3-creds, namespace: default}}
stringData: {{access_key_id: {s3.access_key_id}, access_secret: {s3.secret_access_key}}}
---
apiVersion: capture.dev/v1alpha1
kind: S3Exporter
metadata: {{name: {name}, namespace: default}}
spec:
  bucket: {bucket}
  region: us-east-1
  endpoint: {s3.endpoint}
  secretRef: {{name: s3-creds}}
  prefix: {prefix}
  limit: {limit}
  every: 3600
{extra_spec}""")
    return path


def run_cli(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _wait_for_a_commit(state: Path, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until this run has committed a batch (the state file is rewritten after every commit)."""
    before = state.stat().st_mtime_ns if state.exists() else 0
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if state.exists() and state.stat().st_mtime_ns != before:
            return
        time.sleep(0.01)


def run_and_kill_at_random(
    manifest: Path, state: Path, store: str | Path, *, cwd: Path, rng: random.Random,
    anywhere: float, startup_window: tuple[float, float], drain_window: float,
) -> bool:
    """Start `capture-export run --once` and SIGKILL it at a random moment: with probability ``anywhere``
    somewhere in ``startup_window`` seconds (startup included), else up to ``drain_window`` seconds after
    its first commit. Returns whether the kill landed while it ran; fails on any other exit, and when a
    process it started (an encode pool worker, the fork server) outlives it by ``HELPERS_EXIT_WITHIN``."""
    mark = uuid.uuid4().hex
    process = subprocess.Popen(
        [*CLI, "run", "--once", "-f", str(manifest), "--state", str(state), "--store", str(store)],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, RUN_MARK: mark},
    )
    if rng.random() < anywhere:
        time.sleep(rng.uniform(*startup_window))
    else:
        _wait_for_a_commit(state, process)
        time.sleep(rng.uniform(0.0, drain_window))
    killed = process.poll() is None
    if killed:
        process.kill()
    process.wait()
    if process.returncode not in (0, -9):
        assert process.stderr is not None
        raise AssertionError(f"exit {process.returncode}: {process.stderr.read().decode()}")
    assert_no_process_left(mark)
    return killed


def processes_marked(mark: str) -> dict[int, str]:
    """The live processes (of this user) started with ``RUN_MARK=mark`` in their environment, with their
    command lines; zombies, which hold nothing but their exit status, are not counted."""
    needle = f"{RUN_MARK}={mark}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def assert_no_process_left(mark: str, within: float = HELPERS_EXIT_WITHIN) -> None:
    """Every process of the run marked ``mark`` has ended within ``within`` seconds of its end."""
    deadline = time.monotonic() + within
    while (left := processes_marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes of a killed run still running after {within:.0f} s: {left}"
