"""`capture-export operator` as a process: SIGTERM ends every resource's worker within the stop timeout
(kopf never has to leave a daemon orphaned), and an operator that refuses to start exits at once, saying why.

The operator runs as the chart's pod runs it, a real process with a kubeconfig for the emulated API server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from capture_export.handlers.settings import EXIT_SECONDS
from capture_export.local_s3 import free_port
from capture_export.store import SQLiteStore
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
    s3_secret: str, sqlite_store: SQLiteStore,
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
