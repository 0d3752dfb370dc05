"""Readiness that means serving, a stop that fits the pod's grace period, and no Kubernetes API call that can
hang on a connection the network dropped."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes.client
import pytest

from capture_export.handlers.kube import KubeApi, KubeApiError
from capture_export.local_s3 import free_port
from capture_export.store import SQLiteStore
from tests.support.emulator import ApiFaults
from tests.support.faultproxy import FaultProxy
from tests.support.operator_harness import EmulatedCluster, Kube, OperatorThread, operator_config, wait_for
from tests.support.records import make_record


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_ready_only_while_the_api_answers(cluster: EmulatedCluster,
                                          start_operator: Callable[..., OperatorThread]) -> None:
    port = free_port()
    start_operator(readiness_port=port, readiness_interval=0.2)
    wait_for(lambda: readyz(port) == 200, 20, what="Ready once started and the API answered")
    cluster.faults = ApiFaults(rate=1.0, statuses=(500,))
    wait_for(lambda: readyz(port) == 503, 20, what="NotReady while every API call fails")
    cluster.faults = None
    wait_for(lambda: readyz(port) == 200, 20, what="Ready again once the API answers")


def test_not_ready_before_the_api_ever_answered(tmp_path: Path) -> None:
    """An operator whose API server is unreachable serves /healthz (kopf's, always 200) but never /readyz."""
    unreachable = EmulatedCluster()
    unreachable.url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = operator_config(unreachable, tmp_path / "store.sqlite", readiness_interval=0.2)
    operator = OperatorThread(config).start(wait=False)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # not served yet, or 503: never 200
            assert readyz(config.readiness_port) != 200
            time.sleep(0.2)
    finally:
        operator.stop()


@pytest.fixture
def stalling_api(cluster: EmulatedCluster) -> Iterator[FaultProxy]:
    host_port = int(cluster.url.rsplit(":", 1)[1])
    with FaultProxy(host_port, http=True) as proxy:
        yield proxy


@pytest.mark.parametrize("call", ["read_secret", "patch_status", "list_objects"])
def test_every_api_call_gives_up_on_a_silent_connection(stalling_api: FaultProxy, kube: Kube, call: str) -> None:
    """A dropped connection (the request went out, no answer ever comes) must fail the call within its
    timeout, not hold the status writer for the ~15 minutes TCP takes to notice."""
    kube.apply_exporter("usage", {"bucket": "capture-exports", "region": "us-east-1", "prefix": "exports"})
    configuration = kubernetes.client.Configuration(host=stalling_api.endpoint)
    api = KubeApi(configuration, request_timeout=(1.0, 1.0))
    calls = {
        "read_secret": lambda: api.read_secret("default", "s3-credentials"),
        "patch_status": lambda: api.patch_status("s3exporters", "default", "usage", {"backlog": 1}),
        "list_objects": lambda: api.list_objects("s3exporters", "default"),
    }
    calls[call]()  # through the proxy, answered
    stalling_api.stall_responses(100)  # every retry the client makes too
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(calls[call]())
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(15)
    elapsed = time.monotonic() - started
    if worker.is_alive():
        stalling_api.stop()  # let the hung call end with the test
        worker.join(10)
        pytest.fail(f"{call} still waiting for an answer after {elapsed:.0f}s")
    assert isinstance(outcome[0], KubeApiError), outcome
    assert elapsed < 10
    api.close()


def test_stop_waits_for_batches_in_flight_no_longer_than_the_stop_timeout(
    cluster: EmulatedCluster, kube: Kube, start_operator: Callable[..., OperatorThread],
    exporter_spec: Callable[..., dict], s3_secret: str, sqlite_store: SQLiteStore,
) -> None:
    """A batch whose upload hangs (the bucket's endpoint stopped answering) must not keep the operator past
    its stop timeout: the pod's grace period is sized from it, and the kill after it wastes more."""
    sqlite_store.append(make_record(i) for i in range(50))
    silent = FaultProxy(int(exporter_spec()["endpoint"].rsplit(":", 1)[1]), http=True).start()
    try:
        silent.stall_responses(1000)
        operator = start_operator(stop_timeout=2.0)
        kube.apply_exporter("usage", exporter_spec(endpoint=silent.endpoint))
        wait_for(lambda: operator.runtime.metrics.cycles_in_flight._value.get() >= 1, 20,
                 what="a cycle in flight")
        started = time.monotonic()
        operator.stop(timeout=30)
        assert time.monotonic() - started < operator.config.shutdown_seconds
    finally:
        silent.stop()
