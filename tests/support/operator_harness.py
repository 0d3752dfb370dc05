"""Run the emulated API server and the operator in background threads; talk to them like kubectl does.

The emulator (kmock, see emulator.py) serves real HTTP on a loopback port from its own event loop; the
operator runs exactly as ``capture-export operator`` does (``handlers.operate``) in another thread; the
tests use the official ``kubernetes`` client against the same URL. Waits poll for a condition with a
deadline, never sleep a fixed time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import kubernetes.client
from kmock import Server
from kubernetes.client.exceptions import ApiException

from capture_export.api import GROUP, VERSION
from capture_export.audit import verify_export
from capture_export.handlers import OperatorConfig, Runtime, operate
from capture_export.local_s3 import free_port
from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore

from .emulator import ApiFaults, ClusterEmulator

__all__ = [
    "ApiEndpoint",
    "EmulatedCluster",
    "Kube",
    "OperatorThread",
    "Policies",
    "assert_exported_exactly_once",
    "wait_for",
]

T = TypeVar("T")
PLURAL = "s3exporters"
POLICIES = "retentionpolicies"


class ApiEndpoint(Protocol):
    """Where the API server is: the emulator here, the real kube-apiserver in tests/kube."""

    def configuration(self) -> kubernetes.client.Configuration: ...


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last: {last!r}")
        time.sleep(interval)


class EmulatedCluster:
    """The emulator served over HTTP from a background thread."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: ClusterEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="emulator", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ClusterEmulator() as emulator, Server(emulator) as server:
            emulator.declare(f"{GROUP}/{VERSION}/{PLURAL}", kind="S3Exporter", status=True,
                             shortnames={"s3x"}, categories={"capture"})
            emulator.declare(f"{GROUP}/{VERSION}/retentionpolicies", kind="RetentionPolicy", status=True,
                             categories={"capture"})
            emulator.declare("v1/secrets", kind="Secret")
            emulator.declare("v1/events", kind="Event")
            emulator.declare("v1/namespaces", kind="Namespace", namespaced=False)
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> EmulatedCluster:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def without_crd_validation(self) -> None:
        """From now on, admit our kinds as a cluster whose CRDs carry no schema does (an old or hand-made
        CRD): whatever the operator must refuse on its own then reaches it."""
        assert self.emulator is not None
        self.emulator.schemas = {}

    @property
    def faults(self) -> ApiFaults | None:
        return self.emulator.faults if self.emulator is not None else None

    @faults.setter
    def faults(self, faults: ApiFaults | None) -> None:
        assert self.emulator is not None
        self.emulator.faults = faults

    def configuration(self) -> kubernetes.client.Configuration:
        config = kubernetes.client.Configuration(host=self.url)
        config.verify_ssl = False
        return config


class Kube:
    """kubectl, more or less: the official client against the emulator."""

    def __init__(self, cluster: ApiEndpoint, namespace: str = "default") -> None:
        self.namespace = namespace
        self.client = kubernetes.client.ApiClient(cluster.configuration())
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)

    # S3Exporters
    def apply_exporter(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "S3Exporter",
                "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, body)

    def patch_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, name,
                                                                 {"status": status})

    def annotate(self, name: str, **annotations: str) -> dict[str, Any]:
        return self.patch(name, {"metadata": {"annotations": annotations}})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), {})

    def wait_condition(self, name: str, type_: str, status: str, reason: str | None = None,
                       timeout: float = 20.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            cond = self.condition(name, type_)
            if cond.get("status") == status and (reason is None or cond.get("reason") == reason):
                return cond
            return None

        return wait_for(check, timeout, what=f"{name} {type_}={status} {reason or ''} "
                        f"(now {self.condition(name, type_)})")

    def wait_status(self, name: str, predicate: Callable[[dict[str, Any]], Any], timeout: float = 20.0,
                    what: str = "") -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(name)
            return status if predicate(status) else None

        try:
            return wait_for(check, timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstatus: {self.status(name)}") from None

    # Secrets and Events
    def create_secret(self, name: str, data: dict[str, str]) -> None:
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}
        self.core.create_namespaced_secret(self.namespace, body)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events about ``name``, oldest first."""
        items = self.core.list_namespaced_event(self.namespace).items
        return [(e.type, e.reason, e.message) for e in items if e.involved_object.name == name]

    def close(self) -> None:
        self.client.close()


class Policies(Kube):
    """The harness's kubectl, pointed at RetentionPolicies (its condition and status waits work as they are)."""

    def apply_policy(self, name: str, spec: dict[str, Any]) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RetentionPolicy", "metadata": {"name": name},
                "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, POLICIES, body)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, POLICIES, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, POLICIES, name, body)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, POLICIES, name)


class OperatorThread:
    """The operator, as ``capture-export operator`` runs it, in a thread of its own."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.runtime = Runtime(config)
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._operate())
        except BaseException as exc:
            self.error = self.error or exc

    async def _operate(self) -> None:
        # The error is recorded here, inside the loop: once kopf has failed (a startup handler refused), the
        # loop's shutdown waits for an executor thread parked on stop_flag, so asyncio.run would only return
        # after stop() and start() could not tell a failure from a slow start.
        try:
            await operate(self.config, runtime=self.runtime, stop_flag=self.stop_flag, ready_flag=self.ready_flag)
        except BaseException as exc:
            self.error = exc
            raise

    def start(self, *, wait: bool = True) -> OperatorThread:
        """Start the operator's thread; unless ``wait`` is false, return once kopf says it started."""
        self._thread.start()
        if not wait:
            return self
        wait_for(lambda: self.ready_flag.is_set() or self.error, 30, what="operator ready")
        if self.error is not None:
            raise self.error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_flag.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the operator did not stop")


def operator_config(cluster: ApiEndpoint, store: Path, **overrides: Any) -> OperatorConfig:
    values: dict[str, Any] = dict(store=str(store), liveness_port=free_port(), readiness_port=free_port(),
                                  metrics_port=0, concurrency=4, cycle_max_seconds=5.0, retry_cap=0.5,
                                  kube=cluster.configuration())
    values.update(overrides)
    return OperatorConfig(**values)


@contextmanager
def running_operator(config: OperatorConfig) -> Iterator[OperatorThread]:
    operator = OperatorThread(config).start()
    try:
        yield operator
    finally:
        operator.stop()


def assert_exported_exactly_once(store: SQLiteStore, objects: S3ObjectStore, prefix: str = "exports") -> None:
    """``verify`` finds every record of ``store`` in the bucket under ``prefix`` exactly once."""
    report = verify_export(store, objects, prefix)
    assert report.ok, report.summary()
    assert report.exported_records == store.count()
