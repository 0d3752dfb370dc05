"""`capture-export operator` as a process: SIGTERM ends every resource's worker within the stop timeout
(kopf never has to leave a daemon orphaned), and an operator that refuses to start exits at once, saying why.

The operator runs as the chart's pod runs it, a real process with a kubeconfig for the emulated API server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from capture_export.api.keys import CONTROL_SEGMENT
from capture_export.api.vocabulary import Reason
from capture_export.clock import SystemClock
from capture_export.export import ExporterId, ExportFailure, RetryPolicy
from capture_export.export.layout import ObjectLayout
from capture_export.export.model import Requests
from capture_export.export.ownership import Ownership
from capture_export.handlers.settings import EXIT_SECONDS, OperatorConfig, Runtime
from capture_export.local_s3 import free_port
from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore
from capture_export.store.postgres import PostgresStore
from tests.support.faultproxy import FaultProxy
from tests.support.operator_harness import EmulatedCluster, Kube, wait_for
from tests.support.records import make_record

ORPHANED = "did not exit in time"
STOP_TIMEOUT = 3.0


class OperatorProcess:
    def __init__(self, process: subprocess.Popen[str], output: Path, metrics_port: int) -> None:
        self.process = process
        self.output = output
        self.metrics_port = metrics_port

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def metric(self, name: str) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    def terminate(self, within: float) -> float:
        """SIGTERM; the seconds it took to exit (fails past ``within``)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            pytest.fail(f"still running {within:.0f}s after SIGTERM:\n{self.log()[-4000:]}")
        return time.monotonic() - started


@pytest.fixture
def run_operator(cluster: EmulatedCluster, sqlite_store: SQLiteStore, tmp_path: Path) -> Iterator[
        Callable[..., OperatorProcess]]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
        "users": [{"name": "operator", "user": {"token": "unused"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
    }))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    started: list[OperatorProcess] = []

    def run(*extra: str) -> OperatorProcess:
        output = tmp_path / f"operator-{len(started)}.log"
        metrics_port = free_port()
        with output.open("w") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "capture_export.cli", "operator", "--store", str(sqlite_store.path),
                 "--liveness-port", str(free_port()), "--readiness-port", "0", "--metrics-port", str(metrics_port),
                 "--stop-timeout", str(STOP_TIMEOUT), *extra],
                env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
        started.append(OperatorProcess(process, output, metrics_port))
        return started[-1]

    yield run
    for operator in started:
        if operator.process.poll() is None:
            operator.process.kill()
            operator.process.wait(10)


def serving(kube: Kube, operator: OperatorProcess, name: str) -> None:
    try:
        wait_for(lambda: kube.status(name).get("conditions"), 60, what=f"{name}'s first conditions")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator output:\n{operator.log()[-4000:]}") from None


def test_sigterm_with_idle_workers_ends_them_in_time(
    kube: Kube, run_operator: Callable[..., OperatorProcess], exporter_spec: Callable[..., dict[str, Any]],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    sqlite_store.append(make_record(i) for i in range(5))
    operator = run_operator()
    for name in ("usage", "audit"):
        kube.apply_exporter(name, exporter_spec(prefix=f"exports-{name}"))  # one destination each
    for name in ("usage", "audit"):
        kube.wait_status(name, lambda status: status.get("cursor") == "5", 60, what=f"{name} exported")
    took = operator.terminate(STOP_TIMEOUT + EXIT_SECONDS + 10)
    output = operator.log()
    assert ORPHANED not in output, output[-4000:]
    assert operator.process.returncode == 0, output[-4000:]
    assert took < STOP_TIMEOUT + EXIT_SECONDS, (took, output[-4000:])
    for name in ("usage", "audit"):  # a clean stop gives the destinations up: a successor need not wait
        assert object_store.head(ObjectLayout(f"exports-{name}", kube.namespace, name).lease_key()) is None


def test_sigterm_mid_cycle_ends_the_worker_in_time(
    kube: Kube, run_operator: Callable[..., OperatorProcess], exporter_spec: Callable[..., dict[str, Any]],
    s3_secret: str, sqlite_store: SQLiteStore,
) -> None:
    """The upload in flight never answers: the worker still ends within the stop timeout, not orphaned."""
    sqlite_store.append(make_record(i) for i in range(50))
    silent = FaultProxy(int(exporter_spec()["endpoint"].rsplit(":", 1)[1]), http=True).start()
    try:
        silent.stall_responses(1000)
        operator = run_operator()
        kube.apply_exporter("usage", exporter_spec(endpoint=silent.endpoint))
        wait_for(lambda: operator.metric("capture_export_cycles_in_flight") >= 1, 60, what="a cycle in flight")
        took = operator.terminate(STOP_TIMEOUT + EXIT_SECONDS + 10)
    finally:
        silent.stop()
    output = operator.log()
    assert ORPHANED not in output, output[-4000:]
    assert took < STOP_TIMEOUT + EXIT_SECONDS, (took, output[-4000:])


@pytest.mark.parametrize(("method", "exporters"), [("DELETE", 1), ("HEAD", 1), ("DELETE", 45)])
def test_sigterm_ends_in_time_when_s3_never_answers_the_lease_release(
    method: str, exporters: int, kube: Kube, run_operator: Callable[..., OperatorProcess],
    exporter_spec: Callable[..., dict[str, Any]], s3_secret: str, sqlite_store: SQLiteStore,
) -> None:
    """No cycle runs, and the stop gives the destinations up; S3 accepts the leases' HEAD or DELETE and never
    answers: the operator still exits within its stop budget (a pod's grace period), saying for each lease in
    one line that it is left to expire, rather than waiting for the client's read timeout. With many
    exporters, their releases queue for threads: they share the budget rather than each taking its own."""
    sqlite_store.append(make_record(i) for i in range(5))
    proxy = FaultProxy(int(exporter_spec()["endpoint"].rsplit(":", 1)[1]), http=True).start()
    names = [f"usage-{i}" for i in range(exporters)]
    try:
        operator = run_operator()
        for name in names:
            kube.apply_exporter(name, exporter_spec(endpoint=proxy.endpoint, prefix=f"exports-{name}"))
        for name in names:
            kube.wait_status(name, lambda status: status.get("cursor") == "5", 120, what=f"{name} exported")
        proxy.stall_responses(exporters, only=lambda line: line.startswith(f"{method} ") and "/leases/" in line)
        took = operator.terminate(STOP_TIMEOUT + EXIT_SECONDS + 60)
    finally:
        proxy.stop()
    output = operator.log()
    assert proxy.stats.stalled >= 1, output[-4000:]  # the case under test: a release's request hung
    assert operator.process.returncode == 0, output[-4000:]
    assert took < STOP_TIMEOUT + EXIT_SECONDS, (took, output[-4000:])
    left = [line for line in output.splitlines() if "left to expire" in line]
    assert len(left) >= proxy.stats.stalled if exporters > 1 else len(left) == 1, output[-4000:]
    assert all("/leases/" in line for line in left), output[-4000:]


def not_yet_exiting(process: subprocess.Popen[str]) -> bool:
    """Whether ``process`` still runs with its files open: one that exits closes them (its store lock with
    them) a moment before it can be reaped, so a lock that comes free then is not one it gave up."""
    try:
        return process.poll() is None and bool(os.listdir(f"/proc/{process.pid}/fd"))
    except OSError:
        return False


def claim_as_a_second_runner(store: SQLiteStore, objects: S3ObjectStore, exporter: ExporterId) -> Ownership | None:
    """What another runner of ``exporter`` on the same store does before it writes (a standalone
    ``capture-export run``, another replica): the engine's claim. None when it is refused."""
    clock = SystemClock()
    ownership = Ownership(exporter, clock=clock)
    try:
        ownership.claim(store, store.identity(), objects, ObjectLayout("exports", exporter.namespace, exporter.name),
                        Requests(clock, RetryPolicy(attempts=1)))
    except ExportFailure as failure:
        assert failure.reason == Reason.DESTINATION_IN_USE, failure
        return None
    return ownership


def test_an_exiting_operator_keeps_the_destination_while_a_cycle_it_left_still_runs(
    kube: Kube, run_operator: Callable[..., OperatorProcess], exporter_spec: Callable[..., dict[str, Any]],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    """The data upload never answers, and the operator exits past its stop timeout leaving that cycle's thread
    behind: a late answer would let it commit. Until the process is gone, no second runner may take the
    destination (it would export the same records again, or sweep what the old cycle commits)."""
    sqlite_store.append(make_record(i) for i in range(50))
    proxy = FaultProxy(int(exporter_spec()["endpoint"].rsplit(":", 1)[1]), http=True).start()
    exporter = ExporterId(kube.namespace, "usage")
    try:
        # Only the data uploads hang: the lease's own requests (and any release of it) still answer.
        proxy.stall_responses(1000, only=lambda line: line.startswith("PUT ") and f"/{CONTROL_SEGMENT}/" not in line)
        operator = run_operator()
        kube.apply_exporter(exporter.name, exporter_spec(endpoint=proxy.endpoint))
        wait_for(lambda: proxy.stats.stalled >= 1, 60, what="a data upload hanging")
        assert claim_as_a_second_runner(sqlite_store, object_store, exporter) is None
        signalled = time.monotonic()
        operator.process.send_signal(signal.SIGTERM)
        taken_after: float | None = None  # when a second runner got the destination while the operator ran
        while operator.process.poll() is None and time.monotonic() - signalled < STOP_TIMEOUT + EXIT_SECONDS + 10:
            second = claim_as_a_second_runner(sqlite_store, object_store, exporter)
            if second is not None:
                if not_yet_exiting(operator.process):
                    taken_after = time.monotonic() - signalled
                second.release()
                break
        try:
            operator.process.wait(max(0.0, signalled + STOP_TIMEOUT + EXIT_SECONDS + 10 - time.monotonic()))
        except subprocess.TimeoutExpired:
            operator.process.kill()
            operator.process.wait(10)
            pytest.fail(f"still running long after SIGTERM:\n{operator.log()[-4000:]}")
        exited_after = time.monotonic() - signalled
    finally:
        proxy.stop()
    output = operator.log()
    assert taken_after is None, (
        f"a second runner took the destination {taken_after:.2f}s after SIGTERM, while the operator (ended "
        f"{exited_after:.2f}s after it) still ran the cycle it had left behind:\n{output[-4000:]}")
    assert "cycles still in flight" in output, output[-4000:]  # the case under test: a cycle was left behind
    # Once the process is gone, the next runner of the same store takes the destination at once.
    second = claim_as_a_second_runner(sqlite_store, object_store, exporter)
    assert second is not None
    second.release()


def test_the_operator_s_cleanup_keeps_the_stores_of_a_cycle_left_running(pg_dsn: str) -> None:
    """A PostgreSQL store holds its exporters' locks on a session of its own: closing the store at the exit
    would give up the destination of a cycle still running (its upload may yet answer and commit)."""
    runtime = Runtime(OperatorConfig(store=pg_dsn, liveness_port=None, readiness_port=None, metrics_port=None,
                                     stop_timeout=0.2))
    runtime.create_default_store()
    held = runtime.stores(None, "default").lock_exporter("default/usage")
    assert held is not None
    upload_answers = threading.Event()
    runtime.cycles.submit(upload_answers.wait, 60)  # a cycle whose upload does not answer
    other_runner = PostgresStore(pg_dsn)
    try:
        runtime.stopping()
        asyncio.run(runtime.stop())
        assert other_runner.lock_exporter("default/usage") is None, "the lock of the cycle left running was given up"
    finally:
        upload_answers.set()
        other_runner.close()
        runtime.stores.close()


def test_the_operator_s_cleanup_closes_the_stores_when_no_cycle_runs(pg_dsn: str) -> None:
    runtime = Runtime(OperatorConfig(store=pg_dsn, liveness_port=None, readiness_port=None, metrics_port=None,
                                     stop_timeout=0.2))
    runtime.create_default_store()
    assert runtime.stores(None, "default").lock_exporter("default/usage") is not None
    other_runner = PostgresStore(pg_dsn)
    try:
        runtime.stopping()
        asyncio.run(runtime.stop())
        assert other_runner.lock_exporter("default/usage") is not None
    finally:
        other_runner.close()


def test_an_operator_that_refuses_to_start_exits_at_once(
    cluster: EmulatedCluster, run_operator: Callable[..., OperatorProcess],
) -> None:
    """A missing RBAC verb: one line naming it, status 1, and the process ends by itself, with no minute-long
    wait before the pod restarts. (How fast is a benchmark figure, not asserted here: 2.5 s of CPU on the dev
    machine, 5.9 s before kubernetes-validate was kept out of the operator's imports.)"""
    assert cluster.emulator is not None
    cluster.emulator.denied_access = frozenset({("watch", "s3exporters")})
    started = time.monotonic()
    operator = run_operator("--all-namespaces")
    pid = operator.process.pid
    while True:
        reaped, status, _ = os.wait4(pid, os.WNOHANG)
        if reaped:
            break
        if time.monotonic() - started > 60:
            pytest.fail(f"the refusing operator still ran after 60s:\n{operator.log()[-4000:]}")
        time.sleep(0.05)
    operator.process.returncode = os.waitstatus_to_exitcode(status)
    output = operator.log()
    assert operator.process.returncode == 1, output[-4000:]
    assert output.strip().splitlines()[-1].startswith(
        "capture-export operator: not started: the operator's RBAC is missing 1 permission(s): watch "
        "s3exporters.capture.dev (all namespaces)"), output[-4000:]
