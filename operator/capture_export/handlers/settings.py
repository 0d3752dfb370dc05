"""What every kind's handlers share: the operator's configuration, its runtime (executors, stores, the
Kubernetes API seam, the status writer, metrics) and kopf's startup settings.

kopf's bookkeeping stays out of the way: progress and the diff base live in annotations under
``capture.dev``, the finalizer is ``capture.dev/finalizer``, and handlers return nothing, so ``status``
holds only what the API models define. Events are posted for warnings and for what the handlers emit
explicitly, never one per successful handler run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes.client

from ..api import GROUP
from ..clock import Clock, SystemClock
from ..metrics import OperatorMetrics
from ..objectstore import Credentials, ObjectStore, S3Location, S3ObjectStore
from ..status.writer import StatusWriter
from ..store import StoreOpener
from .kube import ApiSecrets, KubeApi, kopf_event

__all__ = ["FINALIZER", "RESET_CURSOR", "RUN_NOW", "USER_ANNOTATIONS", "OperatorConfig", "ProgressStorage", "Runtime",
           "SharedObjectStores", "apply_settings", "quiet_client_loggers", "register",
           "sleep_until_woken"]

FINALIZER = f"{GROUP}/finalizer"
# Manual actions, set by users; any new value is acted on once.
RUN_NOW = f"{GROUP}/run-now"
RESET_CURSOR = f"{GROUP}/reset-cursor"
USER_ANNOTATIONS = frozenset({RUN_NOW, RESET_CURSOR})
log = logging.getLogger(__name__)


@dataclass
class OperatorConfig:
    store: str | None = None  # default capture store for specs that name none (SQLite path or DSN)
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    liveness_port: int | None = 8080  # kopf's liveness endpoint at /healthz; None: off
    metrics_port: int | None = 9090  # Prometheus /metrics; None: off
    concurrency: int = 8  # export cycles running at once (each is one thread)
    cycle_max_seconds: float = 30.0  # a backlog drains in slices this long, with a status write after each
    retry_cap: float | None = None  # cap on the failure backoff (the worker's own policy when None)
    kube: kubernetes.client.Configuration | None = None  # None: in-cluster, else $KUBECONFIG
    standalone: bool = True  # one replica (Recreate): no kopf peering

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(store=os.environ.get("CAPTURE_EXPORT_STORE") or None)

    @property
    def liveness_endpoint(self) -> str | None:
        return None if self.liveness_port is None else f"http://0.0.0.0:{self.liveness_port}/healthz"


class SharedObjectStores:
    """Object-store factory that shares one client per (bucket, endpoint, credentials).

    A boto3 client built from its own session costs ~13 MB; two hundred exporters writing to one
    bucket need one client, not two hundred. Clients are thread-safe. Rotated credentials make a new
    key; the least recently used clients are dropped beyond ``size``.
    """

    def __init__(self, size: int = 64, factory: Callable[[S3Location, Credentials | None], ObjectStore] | None = None):
        self.size = size
        self.factory = factory or (lambda location, credentials: S3ObjectStore(location, credentials))
        self._clients: OrderedDict[tuple[S3Location, Credentials | None], ObjectStore] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, location: S3Location, credentials: Credentials | None) -> ObjectStore:
        key = (location, credentials)
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                self._clients.move_to_end(key)
                return client
        client = self.factory(location, credentials)
        with self._lock:
            client = self._clients.setdefault(key, client)
            while len(self._clients) > self.size:
                self._clients.popitem(last=False)
            return client


class Runtime:
    """One operator process's shared parts. Kinds keep their per-resource workers in :attr:`workers`."""

    def __init__(self, config: OperatorConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.kube = KubeApi(config.kube)
        self.secrets = ApiSecrets(self.kube)
        self.stores = StoreOpener(config.store, self.secrets.get)
        self.object_stores = SharedObjectStores()
        self.metrics = OperatorMetrics()
        self.cycles = ThreadPoolExecutor(max(1, config.concurrency), thread_name_prefix="export-cycle")
        self.api_calls = ThreadPoolExecutor(4, thread_name_prefix="kube-api")
        self.writer = StatusWriter(self.kube, self.api_calls, emit=kopf_event)
        self.workers: dict[tuple[str, str, str], Any] = {}  # (kind, namespace, name) -> that kind's worker
        self.metrics_port: int | None = None

    def start(self) -> None:
        if self.config.metrics_port is not None and self.metrics_port is None:
            self.metrics_port = self.metrics.serve(self.config.metrics_port)
            log.info("metrics at http://0.0.0.0:%s/metrics", self.metrics_port)

    async def stop(self, timeout: float = 120.0) -> None:
        """Let the batches in flight commit (their threads finish whatever happens), then close."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self.cycles.shutdown, wait=True), timeout)
        except TimeoutError:
            log.warning("export cycles still running after %.0fs; leaving them", timeout)
        self.api_calls.shutdown(wait=False)
        self.stores.close()
        self.kube.close()
        self.metrics.stop()
        self.metrics_port = None


class ProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress in annotations under our prefix, without hiding the users' own annotations there.

    kopf treats every annotation under its storage prefix as its bookkeeping and leaves it out of the
    diffs that trigger handlers, so ``capture.dev/run-now`` would never trigger anything. This keeps
    :data:`USER_ANNOTATIONS` in (field handlers naming them then fire on their changes).
    """

    def __init__(self, *, prefix: str, user_annotations: frozenset[str] = USER_ANNOTATIONS) -> None:
        super().__init__(prefix=prefix)
        self.user_annotations = user_annotations

    def clear(self, *, essence: Any) -> Any:
        annotations = (essence.get("metadata") or {}).get("annotations") or {}
        kept = {key: value for key, value in annotations.items() if key in self.user_annotations}
        essence = super().clear(essence=essence)
        if kept:
            essence.setdefault("metadata", {}).setdefault("annotations", {}).update(kept)
        return essence


# Client libraries log whole responses at DEBUG (a Secret's data, by the kubernetes client) and request
# headers (botocore): whatever the operator's verbosity, they log at INFO and above only.
CLIENT_LOGGERS = ("kubernetes", "urllib3", "botocore", "boto3", "s3transfer")


def quiet_client_loggers() -> None:
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def apply_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    quiet_client_loggers()
    settings.persistence.progress_storage = ProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    # Our Events are explicit (condition transitions, failed runs); kopf's own log lines become Events
    # only from WARNING up, so a successful handler run does not post one.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "capture-export"
    settings.posting.reporting_instance = os.environ.get("POD_NAME", "capture-export")
    settings.posting.event_name_prefix = "capture-export-"
    # Watches: ask the API server to end each watch after ~4.5 min (under its own 5-10 min cap), give up
    # on a silent connection a little later, and reconnect quickly.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.peering.standalone = config.standalone
    # Namespaces named exactly need no namespace list/watch (nor the RBAC for it); CRDs are scanned once.
    if config.namespaces and not any(set(ns) & set("*?[!") for ns in config.namespaces):
        settings.scanning.disabled = True


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    @kopf.on.startup(id="capture-export-startup", registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        apply_settings(settings, runtime.config)
        runtime.start()

    @kopf.on.cleanup(id="capture-export-cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        await runtime.stop()

    @kopf.on.login(id="capture-export-login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return runtime.kube.login(**kwargs)

    @kopf.on.probe(id="workers", registry=registry)
    def workers(**_: Any) -> int:
        return len(runtime.workers)


async def sleep_until_woken(wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float | None) -> None:
    """A daemon's idle wait: until its resource changes (``wake``), the daemon is stopped, or ``timeout``."""
    waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
