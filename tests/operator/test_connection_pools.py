"""The operator's HTTP clients keep a connection for every thread that uses them at once.

urllib3 opens a new connection whenever its pool has none free and, when more come back than the pool holds,
closes the extra ones with a warning ("Connection pool is full, discarding connection"): with 200 exporters
that was a steady stream of warnings, and of new TCP (or TLS) connections. The operator's threads are known:
``--concurrency`` export cycles, the status writer's pool, the probes, and the workers giving their
destinations up when it stops. Each client's pool is sized to the threads that share it, not blindly.

Every request here goes through a proxy that slows each answer down, so that the threads' requests overlap
as they do under load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import pytest

from capture_export.handlers.settings import OperatorConfig, Runtime
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Access, S3Location
from tests.support.faultproxy import FaultProxy
from tests.support.operator_harness import EmulatedCluster, Kube

POOL_FULL = "Connection pool is full"
SLOW_ANSWER = 0.2  # seconds added to every answer: the requests in flight overlap


@contextlib.contextmanager
def running(config: OperatorConfig) -> Iterator[Runtime]:
    runtime = Runtime(config)
    try:
        yield runtime
    finally:
        runtime.cycles.shutdown(wait=True)
        runtime.api_calls.shutdown(wait=True)
        runtime.kube.close()


def all_at_once(call: Callable[[], object], executors: list[tuple[Executor, int]], rounds: int = 3) -> None:
    """``call`` from every thread of each executor at the same moment, ``rounds`` times."""
    threads = sum(count for _, count in executors)
    start = threading.Barrier(threads)

    def work() -> None:
        for _ in range(rounds):
            start.wait(30)
            call()

    futures: list[Future[None]] = [executor.submit(work) for executor, count in executors for _ in range(count)]
    for future in futures:
        future.result(120)


def threads_of(executor: ThreadPoolExecutor) -> int:
    return executor._max_workers  # the status writer's pool, however many threads the runtime gives it


def pool_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if POOL_FULL in record.getMessage()]


def test_the_kubernetes_client_keeps_a_connection_for_each_thread_that_calls_the_api(
    cluster: EmulatedCluster, kube: Kube, caplog: pytest.LogCaptureFixture,
) -> None:
    """Every export cycle reads its Secret while the status writer's threads patch statuses: as many API
    calls at once as the operator has such threads (the client's own default: 5 per CPU, whatever
    ``--concurrency`` says)."""
    kube.create_secret("s3", {"access_key_id": "id", "access_secret": "secret"})
    slow = FaultProxy(int(cluster.url.rsplit(":", 1)[1])).start()
    slow.delay = SLOW_ANSWER
    configuration = cluster.configuration()
    configuration.host = f"http://127.0.0.1:{slow.port}"
    concurrency = 5 * (os.cpu_count() or 1) + 1  # more cycles than the client's default pool holds
    caplog.set_level(logging.WARNING, logger="urllib3")
    try:
        with running(OperatorConfig(kube=configuration, concurrency=concurrency, liveness_port=None,
                                    readiness_port=None, metrics_port=None)) as runtime:
            all_at_once(lambda: runtime.secrets.get(kube.namespace, "s3"),
                        [(runtime.cycles, concurrency), (runtime.api_calls, threads_of(runtime.api_calls))])
    finally:
        slow.stop()
    assert not pool_warnings(caplog), pool_warnings(caplog)[:3]


def test_one_shared_s3_client_keeps_a_connection_for_each_export_cycle(
    s3_server: LocalS3, bucket: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Exporters that write to one bucket with the same credentials share one S3 client: with
    ``--concurrency 24``, 24 uploads at once through it."""
    slow = FaultProxy(int(s3_server.endpoint.rsplit(":", 1)[1]), http=True).start()
    slow.delay = SLOW_ANSWER
    concurrency = 24
    caplog.set_level(logging.WARNING, logger="urllib3")
    try:
        with running(OperatorConfig(concurrency=concurrency, liveness_port=None, readiness_port=None,
                                    metrics_port=None)) as runtime:
            access = S3Access(Credentials(s3_server.access_key_id, s3_server.secret_access_key))
            objects = runtime.object_stores(S3Location(bucket, "us-east-1", slow.endpoint), access)
            assert runtime.object_stores(S3Location(bucket, "us-east-1", slow.endpoint), access) is objects
            counter = iter(range(1_000_000))
            all_at_once(lambda: objects.put(f"pool/{next(counter)}", b"x" * 1024), [(runtime.cycles, concurrency)])
            assert sum(1 for _ in objects.list("pool/")) == 3 * concurrency
    finally:
        slow.stop()
    assert not pool_warnings(caplog), pool_warnings(caplog)[:3]
