"""Fault injection: the export worker between a fault proxy and SeaweedFS, and PostgreSQL.

Each test breaks something real while the worker drains a PostgreSQL store (the gateway keeps writing
meanwhile), lets the worker recover on its own schedule (``CycleOutcome.due_in``, the engine's
``RetryPolicy``), then checks that ``verify`` finds every record exactly once and that the status
(conditions, last run, history) says what happened.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from capture_export.api import S3ExporterSpec, S3ExporterStatus
from capture_export.audit import verify_export
from capture_export.export import BatchResult, ExporterId, RetryPolicy
from capture_export.export.cycle import CycleOutcome, ExporterWorker
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, ObjectStoreError, S3Location, S3ObjectStore
from capture_export.store import StoreOpener
from capture_export.store.postgres import PostgresStore
from capture_export.store.records import encode_body
from tests.support.cli import run_and_kill_at_random, run_cli, write_manifest
from tests.support.faultproxy import FaultProxy
from tests.support.pg import TempPostgres
from tests.support.records import make_record

pytestmark = pytest.mark.postgres

# Long enough for three failed cycles (each one's own retries, ~3.5 s, then the operator's backoff: 5 s,
# 10 s, 20 s: the third starts ~22 s in, with 18 s to spare on a loaded machine), so the doubling is seen;
# it ends before the fourth (~45 s in). A 60 s outage cost another 40 s for a fourth failure, alike.
OUTAGE_SECONDS = 40.0
# The other tests retry a failed cycle this soon rather than after the backoff (5 s, 10 s, … as the operator
# schedules it), which test_s3_outage waits out and checks: they test what fails, how it is reported and
# that the export recovers exactly once, and spent ~45 s of the file's time waiting.
RETRY_FAILED_AFTER = 1.0
BODIES = [encode_body(make_record(n)) for n in range(128)]
INSERT = "INSERT INTO captures (ts_us, body) SELECT * FROM unnest(%s::bigint[], %b::bytea[])"


def seed(dsn: str, count: int) -> int:
    """Append ``count`` records; return the last id."""
    store = PostgresStore(dsn)
    last = 0
    for start in range(0, count, 5000):
        last = store.append_encoded([BODIES[i % len(BODIES)] for i in range(start, min(count, start + 5000))])
    store.close()
    return last


class GatewayWriter:
    """The gateway writing on: small transactions, now and then one held open, reconnecting after
    failures (a restarted server). Counts what it committed."""

    def __init__(self, dsn: str, *, rows_per_second: float = 400, seed: int = 7) -> None:
        self.dsn = dsn
        self.interval = 10 / rows_per_second  # 10 rows per transaction on average
        self.rng = random.Random(seed)
        self.committed = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GatewayWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, connect_timeout=3)
                rows = self.rng.randint(1, 19)
                chosen = [BODIES[self.rng.randrange(len(BODIES))] for _ in range(rows)]
                conn.execute(INSERT, ([t for t, _ in chosen], [b for _, b in chosen]))
                if self.rng.random() < 0.02:
                    self._stop.wait(self.rng.uniform(0.5, 2.0))  # a transaction held open
                conn.commit()
                self.committed += rows
            except psycopg.Error:
                self.failures += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                self._stop.wait(0.2)
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()


class Secrets:
    def __init__(self, data: dict[tuple[str, str], dict[str, str]]) -> None:
        self.data = data

    def get(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.data.get((namespace, name))


@dataclass
class Harness:
    """One exporter's worker, driven cycle by cycle as the operator would."""

    worker: ExporterWorker
    spec: S3ExporterSpec
    opener: StoreOpener
    status: S3ExporterStatus = field(default_factory=S3ExporterStatus)
    outcomes: list[CycleOutcome] = field(default_factory=list)
    waited: float = 0.0

    def cycle(self, on_batch: Callable[[BatchResult], None] | None = None) -> CycleOutcome:
        outcome = self.worker.cycle(self.spec, self.status, generation=1, on_batch=on_batch)
        self.status = outcome.status
        self.outcomes.append(outcome)
        return outcome

    def drain(self, *, deadline: float = 300.0, on_batch: Callable[[BatchResult], None] | None = None,
              until: Callable[[], bool] = lambda: True, retry_failed_after: float | None = None) -> CycleOutcome:
        """Cycle until a run succeeds with no backlog left (and ``until()``). After a failure, sleep
        ``due_in`` exactly as the operator schedules the next cycle (the backoff under test); after a
        success that is not enough (``until``), run again soon, as a run-now annotation would.
        ``retry_failed_after``: after a failure, sleep at most this long instead, as a run-now annotation
        would (for tests of what fails and how it recovers, not of the backoff, which ``test_s3_outage``
        measures: the cycles' ``due_in`` are still computed and recorded)."""
        give_up = time.monotonic() + deadline
        while True:
            outcome = self.cycle(on_batch)
            result = outcome.result
            ok = result is not None and result.failure is None
            if ok and result.backlog == 0 and until():  # type: ignore[union-attr]
                return outcome
            assert time.monotonic() < give_up, f"no recovery within {deadline}s: {self.summary()}"
            pause = min(outcome.due_in, 0.2) if ok else outcome.due_in
            if not ok and retry_failed_after is not None:
                pause = min(pause, retry_failed_after)
            self.waited += pause
            time.sleep(pause)

    def cursor(self) -> int:
        return int(self.status.cursor)

    def failure_reasons(self) -> list[str]:
        reasons = []
        for outcome in self.outcomes:
            if outcome.result is not None and outcome.result.failure is not None:
                reasons.append(outcome.result.failure.reason)
            elif outcome.result is None:
                # UpToDate=False (BacklogRemaining) says records wait, not why the cycle failed.
                reasons.extend(c.reason for c in outcome.status.conditions
                               if c.status == "False" and c.type not in ("Ready", "UpToDate"))
        return reasons

    def condition(self, type_: str, outcome: CycleOutcome | None = None) -> tuple[str, str]:
        status = (outcome or self.outcomes[-1]).status
        found = next(c for c in status.conditions if c.type == type_)
        return found.status, found.reason

    def summary(self) -> str:
        return "; ".join(
            f"{o.result.outcome if o.result else 'NoRun'}"
            f"({o.result.failure.reason if o.result and o.result.failure else ''}) due {o.due_in:.0f}s"
            for o in self.outcomes
        )

    def close(self) -> None:
        self.opener.close()


@pytest.fixture
def make_harness(s3_server: LocalS3, bucket: str) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(store_dsn: str, endpoint: str, *, limit: int = 1000, read_timeout: float = 60.0,
             name: str = "faults") -> Harness:
        spec = S3ExporterSpec(bucket=bucket, region="us-east-1", endpoint=endpoint, prefix="faults",
                              limit=limit, every=3600, secret_ref={"name": "s3"})
        secrets = Secrets({("default", "s3"): {"access_key_id": s3_server.access_key_id,
                                               "access_secret": s3_server.secret_access_key}})
        opener = StoreOpener(store_dsn, secrets.get)

        def object_store(location: S3Location, credentials: Credentials | None) -> S3ObjectStore:
            return S3ObjectStore(location, credentials, read_timeout=read_timeout, connect_timeout=2)

        worker = ExporterWorker(ExporterId("default", name), open_store=opener, secrets=secrets,
                                object_store_factory=object_store)
        harness = Harness(worker, spec, opener)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


def verify_exactly_once(dsn: str, object_store: S3ObjectStore, expected_at_least: int) -> None:
    store = PostgresStore(dsn)
    try:
        report = verify_export(store, object_store, "faults")
        assert report.ok, report.summary()
        assert report.missing == [] and report.duplicated == []
        assert report.store_records == store.count() >= expected_at_least, report.summary()
        assert report.exported_records == report.store_records, report.summary()
    finally:
        store.close()


def s3_proxy(s3_server: LocalS3) -> FaultProxy:
    return FaultProxy(s3_server.port, http=True)


def _http_attempts_per_call(s3_server: LocalS3, bucket: str) -> int:
    """How many HTTP requests one object-store call makes when the first one fails transiently."""
    with s3_proxy(s3_server) as proxy:
        objects = S3ObjectStore(S3Location(bucket, "us-east-1", proxy.endpoint),
                                Credentials(s3_server.access_key_id, s3_server.secret_access_key))
        objects.check()
        proxy.throttle(1)
        try:
            objects.put("probe", b"x")
        except ObjectStoreError:
            return 1
        return 1 + proxy.stats.throttled


@pytest.fixture
def attempts_per_call(s3_server: LocalS3, bucket: str) -> int:
    """HTTP attempts per object-store call: 1, the engine alone retries (see the test below)."""
    return _http_attempts_per_call(s3_server, bucket)


def test_object_store_makes_one_http_attempt_per_call(s3_server: LocalS3, bucket: str) -> None:
    assert _http_attempts_per_call(s3_server, bucket) == 1


# --------------------------------------------------------------------------------------------------
# S3 faults


def test_connection_resets_mid_upload(
    pg_dsn: str, s3_server: LocalS3, object_store: S3ObjectStore, make_harness: Callable[..., Harness],
    attempts_per_call: int,
) -> None:
    seed(pg_dsn, 20_000)
    resets = RetryPolicy().attempts * attempts_per_call + 2
    with s3_proxy(s3_server) as proxy, GatewayWriter(pg_dsn) as gateway:
        harness = make_harness(pg_dsn, proxy.endpoint)
        # Uploads cut halfway, many in a row: the first ones exhaust one request's retries (the run
        # fails and says so), the last two are absorbed by retries in the next run.
        proxy.reset_uploads(resets, after_bytes=4000)
        harness.drain(retry_failed_after=RETRY_FAILED_AFTER)
        gateway.stop()
        harness.drain(retry_failed_after=RETRY_FAILED_AFTER)
    assert proxy.stats.resets == resets
    assert "EndpointUnreachable" in harness.failure_reasons(), harness.summary()
    failed = next(o for o in harness.outcomes if o.result and o.result.failure)
    assert harness.condition("BucketReachable", failed) == ("False", "EndpointUnreachable")
    assert failed.status.last_run is not None and failed.status.last_run.outcome == "Failed"
    assert "failed mid-request" in (failed.status.last_run.error or "") or "connect" in (
        failed.status.last_run.error or "")
    assert harness.condition("Ready") == ("True", harness.condition("Ready")[1])
    assert harness.condition("BucketReachable")[0] == "True"
    verify_exactly_once(pg_dsn, object_store, 20_000 + gateway.committed)


def test_s3_outage(
    pg_dsn: str, s3_server: LocalS3, object_store: S3ObjectStore, make_harness: Callable[..., Harness]
) -> None:
    """The endpoint goes away for half a minute in the middle of a drain; the gateway writes on."""
    seed(pg_dsn, 30_000)
    with s3_proxy(s3_server) as proxy, GatewayWriter(pg_dsn) as gateway:
        harness = make_harness(pg_dsn, proxy.endpoint)
        timer = threading.Timer(OUTAGE_SECONDS, proxy.restore)
        batches = 0

        def on_batch(done: BatchResult) -> None:
            nonlocal batches
            batches += 1
            if batches == 5:
                proxy.outage()
                timer.start()

        started = time.monotonic()
        harness.drain(on_batch=on_batch, deadline=OUTAGE_SECONDS * 3)
        recovered_after = time.monotonic() - started
        timer.join()
        gateway.stop()
        harness.drain()
    assert recovered_after >= OUTAGE_SECONDS
    reasons = harness.failure_reasons()
    assert reasons and set(reasons) <= {"EndpointUnreachable"}, harness.summary()
    first_failed = next(o for o in harness.outcomes if o.result and o.result.failure)
    assert first_failed.result is not None and first_failed.result.rows >= 5 * 1000 - 1000  # progress kept
    assert harness.condition("BucketReachable", first_failed) == ("False", "EndpointUnreachable")
    assert harness.condition("Ready", first_failed)[0] == "False"
    # Failed cycles back off: 5 s, 10 s, 20 s …
    dues = [o.due_in for o in harness.outcomes if o.result is None or o.result.failure is not None]
    assert dues == sorted(dues) and dues[:3] == [5.0, 10.0, 20.0], harness.summary()
    assert harness.condition("Ready")[0] == "True" and harness.condition("BucketReachable")[0] == "True"
    # The failed run is in the history (which keeps the last 10 runs: the drain after recovery may push it
    # out by the end), and the last run succeeded.
    assert first_failed.status.history[0].outcome == "Failed"
    assert harness.status.history[0].outcome in ("Succeeded", "NothingToDo")
    print(f"\n{OUTAGE_SECONDS:.0f}s outage: recovered after {recovered_after:.1f}s; cycles: {harness.summary()}")
    verify_exactly_once(pg_dsn, object_store, 30_000 + gateway.committed)


def test_slow_responses_and_responses_slower_than_the_read_timeout(
    pg_dsn: str, s3_server: LocalS3, object_store: S3ObjectStore, make_harness: Callable[..., Harness],
    attempts_per_call: int,
) -> None:
    seed(pg_dsn, 8_000)
    with s3_proxy(s3_server) as proxy:
        harness = make_harness(pg_dsn, proxy.endpoint, read_timeout=1.0)
        proxy.delay = 0.3  # every response chunk 300 ms late: slow, within the timeout
        proxy.upload_delay = 0.01
        outcome = harness.cycle()
        assert outcome.result is not None and outcome.result.failure is None and outcome.result.rows == 8_000
        assert outcome.result.duration_seconds >= 8 * 2 * 0.3  # two PUTs per batch, each delayed
        # Now two responses never come: the client times out, retries, and the retried PUT overwrites
        # the object the server had stored meanwhile (same key): still exactly once.
        proxy.delay = 0.0
        seed(pg_dsn, 3_000)
        proxy.stall_responses(2)
        engine = harness.worker.engine
        assert engine is not None
        requests_before = engine.requests
        outcome = harness.cycle()
    assert proxy.stats.stalled == 2
    assert outcome.result is not None and outcome.result.failure is None and outcome.result.rows == 3_000
    if attempts_per_call == 1:
        # The engine's own retries are counted (botocore's are invisible). The stalls may hit the cycle's
        # reads before the run (the checkpoint, other exporters' checkpoints), so count the whole cycle.
        assert engine.requests - requests_before >= 2 * outcome.result.objects + 2
    assert harness.condition("Ready")[0] == "True"
    verify_exactly_once(pg_dsn, object_store, 11_000)


def _engine_gaps(arrivals: list[float], per_call: int) -> list[float]:
    """Seconds between the engine's attempts: from the last HTTP try of one attempt to the first of the
    next."""
    return [arrivals[(k + 1) * per_call] - arrivals[(k + 1) * per_call - 1]
            for k in range(len(arrivals) // per_call - 1)]


def test_slowdown_throttling_backs_off(
    pg_dsn: str, s3_server: LocalS3, object_store: S3ObjectStore, make_harness: Callable[..., Harness],
    attempts_per_call: int,
) -> None:
    """503 SlowDown: the engine waits 2 s, 4 s, 8 s between attempts (RetryPolicy.throttle_delay)."""
    policy = RetryPolicy()
    seed(pg_dsn, 3_000)
    with s3_proxy(s3_server) as proxy:
        harness = make_harness(pg_dsn, proxy.endpoint)
        proxy.throttle(2 * attempts_per_call)  # two engine attempts throttled, the third passes
        first = harness.cycle()
        assert first.result is not None and first.result.failure is None and first.result.rows == 3_000
        gaps = _engine_gaps(proxy.throttled_at, attempts_per_call)
        assert len(gaps) == 1 and gaps[0] >= policy.delay(0, "Throttled") * 0.95, gaps

        seed(pg_dsn, 2_000)
        proxy.throttled_at.clear()
        proxy.throttle(policy.attempts * attempts_per_call)  # every attempt the engine allows
        failed = harness.cycle()
        gaps = _engine_gaps(proxy.throttled_at, attempts_per_call)
        expected = [policy.delay(k, "Throttled") for k in range(policy.attempts - 1)]
        assert expected == [2.0, 4.0, 8.0]
        assert len(gaps) == len(expected) and all(
            want * 0.95 <= got <= want + 1.5 for got, want in zip(gaps, expected, strict=True)), gaps
        assert failed.result is not None and failed.result.failure is not None
        assert failed.result.failure.reason == "Throttled"
        assert harness.condition("BucketReachable", failed) == ("False", "Throttled")
        assert failed.status.last_run is not None and "throttling" in (failed.status.last_run.error or "")
        assert failed.due_in == 5.0
        time.sleep(RETRY_FAILED_AFTER)
        final = harness.drain(retry_failed_after=RETRY_FAILED_AFTER)
    assert final.result is not None and final.result.failure is None
    assert harness.condition("BucketReachable") == ("True", "Verified")
    assert proxy.stats.throttled == (2 + policy.attempts) * attempts_per_call
    verify_exactly_once(pg_dsn, object_store, 5_000)


# --------------------------------------------------------------------------------------------------
# PostgreSQL faults


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_mid_cycle(
    mode: str, pg_cluster: TempPostgres, pg_dsn: str, s3_server: LocalS3, object_store: S3ObjectStore,
    make_harness: Callable[..., Harness],
) -> None:
    seed(pg_dsn, 30_000)
    with GatewayWriter(pg_dsn) as gateway:
        harness = make_harness(pg_dsn, s3_server.endpoint, limit=500)
        restarter = threading.Thread(target=pg_cluster.restart, kwargs={"mode": mode, "down_seconds": 1.0})
        batches = 0

        def on_batch(done: BatchResult) -> None:
            nonlocal batches
            batches += 1
            if batches == 4:
                restarter.start()  # while the next batch is being read and this one uploaded

        harness.drain(on_batch=on_batch, retry_failed_after=RETRY_FAILED_AFTER)
        restarter.join()
        time.sleep(0.5)
        gateway.stop()
        harness.drain(retry_failed_after=RETRY_FAILED_AFTER)
    assert gateway.failures >= 1  # the gateway saw the restart too
    assert "StoreUnavailable" in harness.failure_reasons(), harness.summary()
    failed = next(o for o in harness.outcomes if o.result and o.result.failure)
    assert harness.condition("StoreReachable", failed) == ("False", "StoreUnavailable")
    assert "PostgreSQL store" in (failed.status.last_run.error or "")  # type: ignore[union-attr]
    assert harness.condition("StoreReachable")[0] == "True" and harness.condition("Ready")[0] == "True"
    verify_exactly_once(pg_dsn, object_store, 30_000 + gateway.committed)


def test_postgres_connection_cut_mid_result_and_unreachable(
    pg_cluster: TempPostgres, pg_dsn: str, s3_server: LocalS3, object_store: S3ObjectStore,
    make_harness: Callable[..., Harness],
) -> None:
    seed(pg_dsn, 20_000)
    with FaultProxy(pg_cluster.port) as proxy, GatewayWriter(pg_dsn) as gateway:
        via_proxy = pg_dsn.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
        harness = make_harness(via_proxy, s3_server.endpoint)
        first = harness.cycle(on_batch=lambda done: None)
        assert first.result is not None and first.result.failure is None
        # Result sets cut off mid-stream. A read cut on a reused connection is retried once on a fresh
        # one; a cut on that one too fails the run (which connection meets which cut is up to timing).
        target = seed(pg_dsn, 20_000)
        # Six armed for at least four cuts: the exporter's store-lock session takes one (or two, if it
        # reconnects) and never downloads that much.
        proxy.reset_downloads(6, after_bytes=200_000)
        harness.drain(until=lambda: harness.cursor() >= target, retry_failed_after=RETRY_FAILED_AFTER)
        assert proxy.stats.resets >= 4
        for outcome in harness.outcomes:
            if outcome.result is not None and outcome.result.failure is not None:
                assert outcome.result.failure.reason == "StoreUnavailable"
                assert harness.condition("StoreReachable", outcome) == ("False", "StoreUnavailable")
        # Then PostgreSQL is unreachable for a while.
        proxy.outage()
        seed(pg_dsn, 1_000)  # unseen: the store is down
        down = harness.cycle()
        failure = down.result.failure if down.result is not None else None
        assert failure is not None and failure.reason == "StoreUnavailable", harness.summary()
        assert "PostgreSQL store" in failure.message and "refused" in failure.message
        assert harness.condition("StoreReachable", down) == ("False", "StoreUnavailable")
        assert harness.condition("Ready", down)[0] == "False"
        threading.Timer(3.0, proxy.restore).start()
        harness.drain(retry_failed_after=RETRY_FAILED_AFTER)
        gateway.stop()
        harness.drain(retry_failed_after=RETRY_FAILED_AFTER)
    assert harness.condition("StoreReachable")[0] == "True" and harness.condition("Ready")[0] == "True"
    verify_exactly_once(pg_dsn, object_store, 41_000 + gateway.committed)


# --------------------------------------------------------------------------------------------------
# The worker killed at random moments


KILLS = 50


def test_worker_killed_at_random_points(pg_dsn: str, s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    """``capture-export run --once`` on PostgreSQL, SIGKILLed at random moments (50 times mid-run) while
    the gateway writes (with transactions held open); then one clean run, and ``verify``."""
    # Each run is killed within 0.15 s of its first commit (or during its start-up), a few batches in, while the
    # gateway adds hundreds of records a second: the backlog only grows, and 20,000 keep every run busy. The
    # 100,000 there were cost the final drain and verify 80,000 more records, and tested nothing more.
    seed(pg_dsn, 20_000)
    state = tmp_path / "state.json"
    rng = random.Random(6)
    killed_mid_run = 0
    cursors: list[int] = []
    with GatewayWriter(pg_dsn, rows_per_second=600) as gateway:
        attempt = 0
        while killed_mid_run < KILLS:
            attempt += 1
            assert attempt <= 3 * KILLS, f"only {killed_mid_run} kills landed mid-run in {attempt} runs"
            manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket, prefix="faults",
                                      limit=rng.choice([50, 120, 200]))
            killed_mid_run += run_and_kill_at_random(manifest, state, pg_dsn, cwd=tmp_path, rng=rng, anywhere=0.2,
                                                     startup_window=(0.05, 1.0), drain_window=0.15)
            if state.exists():
                saved = json.loads(state.read_text())["S3Exporter/default/usage"]  # never torn
                cursors.append(int(saved["cursor"]))
    assert cursors == sorted(cursors)  # the saved cursor never goes back

    finish = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", pg_dsn, cwd=tmp_path)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    status = json.loads(state.read_text())["S3Exporter/default/usage"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Ready"][0] == "True" and conditions["UpToDate"] == ("True", "CaughtUp")
    assert status["backlog"] == 0 and status["lastRun"]["outcome"] in ("Succeeded", "NothingToDo")
    verify = run_cli("verify", "-f", manifest, "--store", pg_dsn, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "missing: 0" in verify.stdout and "duplicated: 0" in verify.stdout
    store = PostgresStore(pg_dsn)
    total = store.count()
    store.close()
    assert total >= 20_000 + gateway.committed
    assert f"records in store up to id {status['cursor']}: {total}" in verify.stdout, verify.stdout
    print(f"\n{killed_mid_run} kills mid-run in {attempt} runs; {total:,} records exported exactly once")
