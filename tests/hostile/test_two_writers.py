"""Issue 10, item 5: two writers of one destination. Two ``capture-export run`` processes on the same
manifest (same or different ``--state``), an operator and a standalone runner, or two runners on copies of
one store wrote overlapping objects (8801-8870 and 8801-8940), and with one shared state file one process
crashed on the temp-file rename. Exactly one writer per destination at a time now: the other reports
``DestinationInUse`` (or, sharing a state file, exits with a clear message) and writes nothing.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from capture_export.export.connection import run_connection_test
from capture_export.export.model import ExportFailure
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import S3ObjectStore
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from capture_export.store.postgres import PostgresStore
from tests.support.faultproxy import FaultProxy
from tests.support.pg import TempPostgres
from tests.support.seeded import SeededBatches

from .identity_support import (
    HostileExporter,
    assert_no_traceback,
    create_secret,
    failed_reasons,
    operator_cluster,
    operator_spec,
    seed_postgres,
    seed_sqlite,
    wait_until,
)


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert "Traceback" not in err, err
    return out, err


def _finish_and_verify(exporter: HostileExporter) -> None:
    final = exporter.run_once()
    assert final.returncode == 0, final.stdout + final.stderr
    audit = exporter.verify()
    assert audit.returncode == 0, audit.stdout
    assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout


def _refused_as_in_use(result: subprocess.CompletedProcess[str], exporter: HostileExporter) -> None:
    assert result.returncode != 0, result.stdout
    assert_no_traceback(result)
    assert "DestinationInUse" in result.stdout, result.stdout
    assert "DestinationInUse" in failed_reasons(exporter.status()), exporter.status()


def test_second_runner_with_its_own_state_is_refused(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 2000, seed=13)
    first = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=100)
    second = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=70,
                             state=tmp_path / "other-state.json")
    runner = first.start()
    try:
        wait_until(lambda: (first.status() or {}).get("cursor") == "2000", 60, "the first runner's export")
        before = first.snapshot()
        _refused_as_in_use(second.run_once(), second)
        assert first.snapshot() == before
    finally:
        _stop(runner)
    seed_sqlite(store, 300, seed=14)
    _finish_and_verify(second)  # once the first is gone, the second may write


def test_second_runner_sharing_the_state_file_exits_with_a_clear_message(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 2000, seed=15)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=100)
    runner = exporter.start()
    try:
        wait_until(lambda: (exporter.status() or {}).get("cursor") == "2000", 60, "the first runner's export")
        second = exporter.run_once()
        assert second.returncode != 0, second.stdout
        assert_no_traceback(second)
        assert "in use" in second.stderr and str(exporter.state) in second.stderr, second.stderr
        assert (exporter.status() or {}).get("cursor") == "2000"  # the state file is intact
    finally:
        _stop(runner)
    _finish_and_verify(exporter)


def test_two_runners_sharing_a_state_file_started_together_never_crash(
    s3_server: LocalS3, bucket: str, tmp_path: Path, seeded_batches: SeededBatches
) -> None:
    store = tmp_path / "store.sqlite"
    # 10,000 records in batches of 100 keep both runs busy well past their start, where they race for the
    # state file (20,000 cost ~10 s more to generate); the kill -9 tests append this same batch.
    seeded_batches.append(store, 10_000, seed=11)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=100)
    runs = [exporter.start(once=True) for _ in range(2)]
    results = [(*run.communicate(timeout=180), run.returncode) for run in runs]
    for out, err, code in results:
        assert "Traceback" not in err, err
        assert code == 0 or "in use" in err, out + err
    assert 0 in [code for _, _, code in results]  # one of them exported
    _finish_and_verify(exporter)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_racing_runners_with_a_busy_gateway_export_each_record_once(
    s3_server: LocalS3, bucket: str, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """Two runners of one exporter with different batch sizes and their own state files, while the gateway
    keeps writing: the tails of their batches differ (8801-8870 against 8801-8940)."""
    postgresql = kind == "postgresql"
    target: Any = request.getfixturevalue("pg_dsn") if postgresql else tmp_path / "store.sqlite"
    (seed_postgres if postgresql else seed_sqlite)(target, 500, seed=17)
    one = HostileExporter(s3_server, bucket, tmp_path, str(target), limit=70, every=1)
    two = HostileExporter(s3_server, bucket, tmp_path, str(target), limit=140, every=1,
                          state=tmp_path / "two.json")
    stop = threading.Event()

    def gateway(worker: int) -> None:
        store = PostgresStore(target) if postgresql else SQLiteStore(target)
        round_ = 0
        while not stop.is_set():
            seed_store(store, 37, seed=1000 * worker + round_)
            round_ += 1
            time.sleep(0.03)
        store.close()

    # Two gateway workers: on PostgreSQL their transactions commit ids out of order (the safe horizon's case).
    writers = [threading.Thread(target=gateway, args=(worker,)) for worker in (1, 2)]
    for writer in writers:
        writer.start()
    runners = [one.start(), two.start()]
    try:
        # Both run their cycles while the gateway writes; one of them is told the other holds the destination.
        wait_until(lambda: any("DestinationInUse" in failed_reasons(x.status()) for x in (one, two)), 90,
                   "one runner refused while the other exports")
        time.sleep(3)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
        outputs = [_stop(runner) for runner in runners]
    assert any("DestinationInUse" in out for out, _ in outputs)
    _finish_and_verify(one)


def test_second_runner_on_a_postgres_store_is_refused(
    s3_server: LocalS3, bucket: str, tmp_path: Path, pg_dsn: str
) -> None:
    seed_postgres(pg_dsn, 1000, seed=18)
    first = HostileExporter(s3_server, bucket, tmp_path, pg_dsn, limit=100)
    second = HostileExporter(s3_server, bucket, tmp_path, pg_dsn, limit=100, state=tmp_path / "other.json")
    runner = first.start()
    try:
        wait_until(lambda: (first.status() or {}).get("cursor") == "1000", 60, "the first runner's export")
        before = first.snapshot()
        _refused_as_in_use(second.run_once(), second)
        assert first.snapshot() == before
    finally:
        _stop(runner)
    _finish_and_verify(second)


def test_runner_on_a_copy_of_the_store_is_refused(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    """A copy of the store (a restored backup, the file copied to another machine) has the same identity,
    but no lock in the store can tell the two processes apart: the lease in the bucket does."""
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 1000, seed=19)
    copy = tmp_path / "copy.sqlite"
    shutil.copy(store, copy)
    first = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=100)
    second = HostileExporter(s3_server, bucket, tmp_path, str(copy), limit=100, state=tmp_path / "copy.json")
    runner = first.start()
    try:
        wait_until(lambda: (first.status() or {}).get("cursor") == "1000", 60, "the first runner's export")
        seed_sqlite(copy, 100, seed=26)  # the copy's gateway writes: the second runner has something to write
        before = first.snapshot()
        _refused_as_in_use(second.run_once(), second)
        assert first.snapshot() == before
    finally:
        _stop(runner)


def test_lease_of_a_dead_holder_elsewhere_is_taken_over_after_its_ttl(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """A holder killed on another machine (here: on a copy of the store) leaves its lease behind; a runner
    that has seen it unchanged for a whole TTL of its own clock takes the destination over."""
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 500, seed=20)
    copy = tmp_path / "copy.sqlite"
    shutil.copy(store, copy)
    ttl = {"CAPTURE_EXPORT_LEASE_TTL": "3"}
    holder = HostileExporter(s3_server, bucket, tmp_path, str(copy), limit=100, state=tmp_path / "copy.json",
                             env=ttl)
    runner = holder.start()
    wait_until(lambda: (holder.status() or {}).get("cursor") == "500", 60, "the holder's export")
    runner.kill()
    runner.communicate()

    seed_sqlite(store, 200, seed=21)
    contender = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=100, every=1, env=ttl)
    started = time.monotonic()
    process = contender.start()
    try:
        wait_until(lambda: "DestinationInUse" in failed_reasons(contender.status()), 30, "DestinationInUse first")
        wait_until(lambda: (contender.status() or {}).get("cursor") == "700", 60, "the take-over")
        assert time.monotonic() - started >= 3.0  # not before a whole TTL
    finally:
        _stop(process)
    audit = contender.verify()
    assert audit.returncode == 0, audit.stdout


def test_standalone_runner_is_refused_while_the_operator_exports(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 1000, seed=22)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=100)
    with operator_cluster(store) as (kube, _operator):
        create_secret(kube, s3_server)
        kube.apply_exporter("usage", operator_spec(exporter))
        kube.wait_status("usage", lambda s: s.get("cursor") == "1000", timeout=60, what="the operator's export")
        before = exporter.snapshot()
        _refused_as_in_use(exporter.run_once(), exporter)
        assert exporter.snapshot() == before
        seed_sqlite(store, 100, seed=23)
        kube.annotate("usage", **{"capture.dev/run-now": "1"})
        kube.wait_status("usage", lambda s: s.get("cursor") == "1100", timeout=60, what="the operator goes on")
    audit = exporter.verify()
    assert audit.returncode == 0, audit.stdout


@pytest.mark.parametrize("who", ["operator", "runner"])
def test_standalone_runner_may_take_over_once_the_operator_is_gone(
    s3_server: LocalS3, bucket: str, tmp_path: Path, who: str
) -> None:
    """The lock dies with its holder: after the operator (or a runner) stopped, the next one resumes at
    once, without waiting for a lease to expire."""
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 500, seed=24)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=100)
    if who == "operator":
        with operator_cluster(store) as (kube, _operator):
            create_secret(kube, s3_server)
            kube.apply_exporter("usage", operator_spec(exporter))
            kube.wait_status("usage", lambda s: s.get("cursor") == "500", timeout=60, what="the operator's export")
    else:
        runner = exporter.start()
        wait_until(lambda: (exporter.status() or {}).get("cursor") == "500", 60, "the runner's export")
        runner.kill()
        runner.communicate()
    seed_sqlite(store, 100, seed=25)
    _finish_and_verify(exporter)


def test_a_probe_deleted_by_a_racing_runner_is_not_a_broken_bucket(object_store: S3ObjectStore) -> None:
    """Two runners of one exporter starting together probe the same key: one may delete the probe between the
    other's write and read-back. That is a race, not a bucket that loses objects: the connection test passes
    (and the loser then meets the winner's lease), instead of failing with ProbeNotReadBack."""
    key = "llm/_capture-export/probes/default/usage"

    class OtherRunnerDeletesOnce:
        """The real store, with the other runner's delete landing right after this runner's first write."""

        def __init__(self, objects: S3ObjectStore) -> None:
            self.objects, self.raced = objects, False

        def __getattr__(self, name: str) -> object:
            return getattr(self.objects, name)

        def put(self, put_key: str, body: bytes, **options: object) -> object:
            written = self.objects.put(put_key, body, **options)  # type: ignore[arg-type]
            if not self.raced:
                self.raced = True
                self.objects.delete(put_key)
            return written

    report = run_connection_test(OtherRunnerDeletesOnce(object_store), object_store.location.bucket,  # type: ignore[arg-type]
                                 key)
    assert report.key == key
    assert object_store.get(key) is None  # and the probe is still cleaned up


def test_a_bucket_that_loses_every_probe_still_fails_the_connection_test(object_store: S3ObjectStore) -> None:
    class LosesEverything:
        def __init__(self, objects: S3ObjectStore) -> None:
            self.objects = objects

        def __getattr__(self, name: str) -> object:
            return getattr(self.objects, name)

        def get(self, get_key: str) -> None:
            return None

    with pytest.raises(ExportFailure) as failure:
        run_connection_test(LosesEverything(object_store), object_store.location.bucket,  # type: ignore[arg-type]
                            "llm/_capture-export/probes/default/usage")
    assert failure.value.reason == "ProbeNotReadBack"



def test_a_runner_that_closes_its_postgres_store_hands_the_exporter_over_at_once(
    pg_cluster: TempPostgres, pg_dsn: str
) -> None:
    """A runner stopping cleanly (Ctrl-C, a rollout) closes its store, and the next runner, started at once,
    must find the exporter free. On a slow link the server ends a closed session well after the client has
    returned from closing it: the exporter's lock must not live on with it."""
    with FaultProxy(pg_cluster.port) as slow_link:
        stopping = PostgresStore(pg_dsn.replace(f":{pg_cluster.port}/", f":{slow_link.port}/"))
        starting = PostgresStore(pg_dsn)
        assert stopping.lock_exporter("default/usage") is not None
        slow_link.upload_delay = 0.5
        stopping.close()
        assert starting.lock_exporter("default/usage") is not None, "the closed store still holds the exporter"
        starting.close()
