"""kill -9 the export worker at random moments; the bucket must still hold every record exactly once."""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capture_export.export.format_names import FORMAT_CHOICES
from capture_export.export.layout import parse_range
from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore
from tests.support.cli import CLI, RUN_MARK, assert_no_process_left, run_and_kill_at_random, run_cli, write_manifest
from tests.support.seeded import SeededBatches

KILLS = 24
# Records in the store before the first kill, and appended after each one. A run, killed within 0.3 s of its
# first commit, exports ~1,000 records (at most ~3,500 seen); the store grows by APPENDED between kills, so
# the backlog rarely runs out (a run that ends before its kill does not count as a kill mid-run). On a fast,
# quiet machine runs export more than APPENDED each and the backlog did run out (14-18 of 24 kills landed):
# a run that drains it is followed by SEEDED more records, as a burst of gateway traffic would bring. The same
# generated batches serve every test here (tests/support/seeded.py): generating records was most of their time.
SEEDED = 10_000
APPENDED = 1500
# Every value of spec.format with every compression it takes: the templated variant switches among them.
FORMATS = [(name, compression) for name, choice in FORMAT_CHOICES.items() for compression in choice.compressions]
# The templated variant: dated Hive folders, a filter, and the format and compression switching between
# crashes as a user editing the spec would (the sweep must find an orphan of another format).
TEMPLATED = """\
  pathTemplate: '{{prefix}}/{{year}}/{{month}}/{{day}}'
  hivePartitioning: true
  format: {format}
  compression: {compression}
  filter: {{statusCodes: [200, 429]}}
"""
TEMPLATED_KEY = re.compile(
    r"^llm/year=(\d{4})/month=(\d\d)/day=(\d\d)/\d{20}-\d{20}\.(cbor\.zstd|jsonl|jsonl\.gz|jsonl\.zst|parquet)$")


@pytest.mark.parametrize(("layout", "seeded", "kills", "appended"), [
    ("flat", SEEDED, KILLS, APPENDED), ("templated", SEEDED, KILLS, APPENDED), ("parquet", 2_000, 8, 1000)])
def test_kill_minus_nine_at_random_moments_then_verify(
    s3_server: LocalS3, bucket: str, tmp_path: Path, seeded_batches: SeededBatches, layout: str, seeded: int,
    kills: int, appended: int
) -> None:
    """``flat``: the default format; ``templated``: every format and compression in turn (each killed three
    or four times); ``parquet``: a short run of Parquet alone, batch after batch of the same format. The
    formats that decode are encoded by the pool's worker processes: after each kill, none may be left."""
    store_path = tmp_path / "store.sqlite"
    seeded_batches.append(store_path, seeded, seed=11)
    state = tmp_path / "state.json"
    rng = random.Random(20261125)
    killed_mid_run = 0
    total = seeded
    # Every format and compression, in a random order, again and again.
    formats = [choice for _ in range(0, kills, len(FORMATS)) for choice in rng.sample(FORMATS, len(FORMATS))]
    for attempt in range(kills):
        # Vary the batch size now and then, as a user editing `limit` between crashes would.
        limit = rng.choice([150, 200, 333])
        if layout == "parquet":
            # Small batches: the pool encodes the ones after the first commit meanwhile, and a run of a few
            # large ones often ended within the drain window, before its kill.
            limit = rng.choice([40, 60, 90])
        extra = ""
        if layout == "templated":
            fmt, compression = formats[attempt]
            extra = TEMPLATED.format(format=fmt, compression=compression)
        elif layout == "parquet":
            extra = "  format: parquet\n"
        manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=limit, extra_spec=extra)
        if rng.random() < 0.2 and state.exists():
            state.unlink()  # state file lost too: the bucket's checkpoint must carry the cursor
        landed = run_and_kill_at_random(manifest, state, store_path, cwd=tmp_path, rng=rng, anywhere=0.25,
                                        startup_window=(0.1, 0.5), drain_window=0.3)
        killed_mid_run += landed
        # Append between crashes, as the gateway keeps writing; after a run that drained the backlog, a burst.
        total = seeded_batches.append(store_path, appended, seed=100 + attempt)
        if not landed:
            total = seeded_batches.append(store_path, seeded, seed=11)
    assert killed_mid_run >= kills * 5 // 6, f"only {killed_mid_run} kills landed mid-run; slow the kills down"

    if layout == "templated":
        # The backlog the kills left is drained in the default format, the fast one: verify then reads
        # every format's objects side by side, without this test waiting on tens of thousands of records
        # encoded and decoded as JSON and Parquet on a busy machine.
        manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, limit=1000,
                                  extra_spec=TEMPLATED.format(format="cbor-zstd", compression="zstd"))
    finish = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, cwd=tmp_path)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    verify = run_cli("verify", "-f", manifest, "--store", store_path, cwd=tmp_path)
    _assert_every_record_once(verify, total)
    # The same audit without the manifest, as a user given only the bucket would run it: it reads every
    # object of every format alike.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key}
    bare = subprocess.run([*CLI, "verify", "--bucket", bucket, "--prefix", "llm", "--endpoint", s3_server.endpoint,
                           "--store", str(store_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    if layout == "templated":
        _assert_every_object_in_its_records_day(s3_server, bucket, store_path)
        # Without the manifest it does not know the filter: what the filter excluded is missing, nothing else.
        filtered = re.search(r"excluded by the exporter's filter \(not expected in the bucket\): (\d+)", verify.stdout)
        assert filtered and int(filtered[1]) > 0, verify.stdout
        assert "Traceback" not in bare.stderr, bare.stderr
        assert _bucket_line(bare.stdout) == _bucket_line(verify.stdout), bare.stdout + bare.stderr
        assert f"missing: {filtered[1]} " in bare.stdout and "duplicated: 0" in bare.stdout, bare.stdout
    else:
        _assert_every_record_once(bare, total)
    if layout == "parquet":
        keys = _data_keys(s3_server, bucket)
        assert keys and all(key.endswith(".parquet") for key in keys), keys


def _assert_every_record_once(verify: subprocess.CompletedProcess[str], total: int) -> None:
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "missing: 0" in verify.stdout and "duplicated: 0" in verify.stdout, verify.stdout
    assert f"records in store up to id {total}: {total}" in verify.stdout, verify.stdout


def _bucket_line(verify_output: str) -> str:
    """What verify says it read in the bucket: ``objects: N, records in bucket: M``."""
    match = re.search(r"objects: \d+, records in bucket: \d+", verify_output)
    assert match, verify_output
    return match[0]


def _data_keys(s3: LocalS3, bucket: str) -> list[str]:
    client = s3.client()
    return [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="llm/")
            for item in page.get("Contents", []) if "/_capture-export/" not in item["Key"]]


def _assert_every_object_in_its_records_day(s3: LocalS3, bucket: str, store_path: Path) -> None:
    """Every data object lies in the folder of the day of every record its range handled (exported or
    filtered): a batch never spans two days, through all the crashes and format switches."""
    store = SQLiteStore(store_path)
    stamps: dict[int, int] = {}
    after = 0
    while rows := store.read_batch(after, 10_000):
        stamps.update((row.id, row.timestamp_us) for row in rows)
        after = rows[-1].id
    store.close()
    keys = _data_keys(s3, bucket)
    assert keys
    for key in keys:
        match = TEMPLATED_KEY.match(key)
        assert match, key
        first, last = parse_range(key)  # type: ignore[misc]
        days = {datetime.fromtimestamp(stamps[i] // 1_000_000, UTC).strftime("%Y-%m-%d")
                for i in range(first, last + 1) if i in stamps}
        assert days == {"-".join(match.groups()[:3])}, key


# Kills that must land while a runner runs; rounds go on until they have (at most twice as many rounds). A
# round whose runners both ended before their kills had drained the backlog: a burst of SEEDED records follows,
# as gateway traffic would bring (the CI box of 2026-12-04 drained it in 2 of 16 rounds, with one round each).
RACING_ATTEMPTS = 16


def _race_and_kill(runs: list[tuple[Path, Path]], store: Path, *, cwd: Path, rng: random.Random) -> int:
    """Start one `capture-export run --once` per ``(manifest, state)`` at the same moment, wait for the first
    commit of either, and SIGKILL each at a random moment of its own after it. A runner may lose the race
    for the destination: it then exits 1 saying DestinationInUse (or, sharing a state file, that the file
    is in use), having written nothing. Returns how many kills landed while a runner ran; fails on any
    other exit, and when a process a runner started (the encode pool's fork server and workers) outlives it."""
    states = {state for _, state in runs}
    before = {state: state.stat().st_mtime_ns if state.exists() else 0 for state in states}
    marks = [uuid.uuid4().hex for _ in runs]
    processes = [
        subprocess.Popen([*CLI, "run", "--once", "-f", str(manifest), "--state", str(state), "--store", str(store)],
                         cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, RUN_MARK: mark})
        for (manifest, state), mark in zip(runs, marks, strict=True)
    ]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p.poll() is None for p in processes):
        if any(state.exists() and state.stat().st_mtime_ns != before[state] for state in states):
            break
        time.sleep(0.01)
    committed = time.monotonic()
    killed = 0
    for process, moment in sorted(zip(processes, [rng.uniform(0.0, 0.8) for _ in processes], strict=True),
                                  key=lambda pair: pair[1]):
        time.sleep(max(0.0, committed + moment - time.monotonic()))
        if process.poll() is None:
            process.kill()
            killed += 1
    for process, mark in zip(processes, marks, strict=True):
        process.wait()  # each one was killed or had ended: its output is short and waits in its pipes
        # Before reading its pipes: a helper left running would hold them open, and the read would never end.
        assert_no_process_left(mark)
        out, err = process.communicate()
        assert "Traceback" not in err, err
        if process.returncode == 1:
            assert "DestinationInUse" in out or "in use" in err, out + err
        elif process.returncode not in (0, -9):
            raise AssertionError(f"exit {process.returncode}: {out}{err}")
    return killed


def test_kill_minus_nine_with_two_runners_racing_for_the_same_exporter(
    s3_server: LocalS3, bucket: str, tmp_path: Path, seeded_batches: SeededBatches
) -> None:
    """Two runners of one exporter (their own state files, or now and then one shared state file, and
    other batch sizes) start together, race for the destination and are killed at random moments; the
    gateway writes between rounds. At most one of them may write at a time: every record exactly once.
    One of the two writes Parquet, encoded by the encode pool's processes: none of them may outlive the
    runner killed under them."""
    store_path = tmp_path / "store.sqlite"
    seeded_batches.append(store_path, SEEDED, seed=11)
    rng = random.Random(20261126)
    # Which runner writes Parquet (whose batches, however small, the encode pool's processes encode), and
    # compressed how: drawn apart, so that ``rng``'s draws (batch sizes, shared state files, kill moments)
    # stay those the timing was tuned with.
    formats = random.Random(20261202)
    killed = 0
    total = SEEDED
    for attempt in range(2 * RACING_ATTEMPTS):
        if killed >= RACING_ATTEMPTS:
            break
        runs = []
        pooled = formats.choice(("one", "two"))
        for runner in ("one", "two"):
            extra = ""
            if runner == pooled:
                extra = f"  format: parquet\n  compression: {formats.choice(FORMAT_CHOICES['parquet'].compressions)}\n"
            # Batches small enough that the winner's run outlasts the 0.8 s kill window after its first
            # commit: with 150-333 a run often ended before its kill (11 of 16 landed in a full run).
            manifest = write_manifest(tmp_path / f"exporter-{runner}.yaml", s3_server, bucket,
                                      limit=rng.choice([40, 60, 90]), extra_spec=extra)
            runs.append((manifest, tmp_path / f"state-{runner}.json"))
        if rng.random() < 0.3:
            runs[1] = (runs[1][0], runs[0][1])  # one state file for both
        landed = _race_and_kill(runs, store_path, cwd=tmp_path, rng=rng)
        killed += landed
        total = seeded_batches.append(store_path, APPENDED, seed=100 + attempt)
        if not landed:
            total = seeded_batches.append(store_path, SEEDED, seed=11)
    assert killed >= RACING_ATTEMPTS, f"only {killed} kills landed mid-run; slow the kills down"

    # The backlog the kills left is drained by the default-format runner (the fast one); verify reads both
    # formats' objects side by side.
    manifest, state = runs[1] if pooled == "one" else runs[0]
    finish = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", store_path, cwd=tmp_path)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    verify = run_cli("verify", "-f", manifest, "--store", store_path, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "missing: 0" in verify.stdout and "duplicated: 0" in verify.stdout
    assert f"records in store up to id {total}: {total}" in verify.stdout
