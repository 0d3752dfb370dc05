"""What every kind's handlers share: the operator's configuration, its runtime (executors, stores, the
Kubernetes API seam, the status writer, metrics) and kopf's startup settings.

kopf's bookkeeping stays out of the way: progress and the diff base live in annotations under
``capture.dev``, the finalizer is ``capture.dev/finalizer``, and handlers return nothing, so ``status``
holds only what the API models define. Events are posted for warnings and for what the handlers emit
explicitly, never one per successful handler run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config

from ..api import GROUP
from ..clock import Clock, SystemClock
from ..export.ownership import RELEASE_SECONDS
from ..metrics import OperatorMetrics
from ..objectstore import ObjectStore, S3Access, S3Location, S3ObjectStore
from ..redact import CLIENT_LOGGERS, install_log_redaction, quiet_client_loggers
from ..status.writer import StatusWriter
from ..store import StoreError, StoreOpener, StoreRefused, open_store_url
from ..store.opener import kind_of_url, sqlite_file
from .kube import ApiSecrets, KubeApi, kopf_event
from .permissions import MissingPermissions, check_permissions
from .readiness import Readiness

__all__ = ["API_CALL_THREADS", "CLIENT_LOGGERS", "DAEMON_CANCEL_SECONDS", "ENDING_THREADS", "EXIT_SECONDS",
           "FINALIZER", "RESET_CURSOR", "RUN_NOW", "SERVED_PLURALS", "USER_ANNOTATIONS", "CycleExecutor",
           "OperatorConfig", "ProgressStorage", "Runtime", "SharedObjectStores", "apply_settings", "check_rbac",
           "quiet_client_loggers", "register"]

# The plurals of the kinds the operator serves (what readiness lists and the chart's RBAC grants).
SERVED_PLURALS = ("s3exporters", "retentionpolicies")
FINALIZER = f"{GROUP}/finalizer"
# Manual actions, set by users; any new value is acted on once.
RUN_NOW = f"{GROUP}/run-now"
RESET_CURSOR = f"{GROUP}/reset-cursor"
USER_ANNOTATIONS = frozenset({RUN_NOW, RESET_CURSOR})
log = logging.getLogger(__name__)


# A worker's daemon ends at the latest at the stop timeout, leaving a cycle that hung; then it gives up its
# destination (a lease release waits at most export/ownership.RELEASE_SECONDS for S3) and ends within this.
# kopf waits that long for each daemon (else leaves it orphaned).
DAEMON_CANCEL_SECONDS = 3.0
# After the batches in flight (stop_timeout), what the operator's exit takes at most: the daemons that left
# a cycle end, the stores close, kopf's teardown ends its own tasks.
EXIT_SECONDS = 8.0
# The status writer's threads (handlers/kube.py: its API calls run apart from the export cycles).
API_CALL_THREADS = 4
# The threads ending workers give their destinations up on (asyncio's default executor, its default size).
ENDING_THREADS = min(32, (os.cpu_count() or 1) + 4)


@dataclass
class OperatorConfig:
    store: str | None = None  # default capture store for specs that name none (SQLite path or DSN)
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    liveness_port: int | None = 8080  # kopf's liveness endpoint at /healthz; None: off
    readiness_port: int | None = 8081  # /readyz: started and the API answers (handlers/readiness.py); None: off
    readiness_interval: float = 5.0  # the API is asked at most this often, however often the probe asks
    metrics_port: int | None = 9090  # Prometheus /metrics; None: off
    concurrency: int = 8  # export cycles running at once (each is one thread)
    cycle_max_seconds: float = 30.0  # a backlog drains in slices this long, with a status write after each
    retry_cap: float | None = None  # cap on the failure backoff (the worker's own policy when None)
    stop_timeout: float = 50.0  # on stop, seconds the batches in flight get to commit
    api_timeout: tuple[float, float] = (10.0, 30.0)  # (connect, answer) of each of our own API calls
    kube: kubernetes.client.Configuration | None = None  # None: in-cluster, else $KUBECONFIG
    standalone: bool = True  # one replica (Recreate): no kopf peering
    ingest_port: int | None = None  # also run the ingest server (writing to ``store``) on this port
    ingest_token_file: str | None = None
    ingest_limits: Any = None  # ingest.IngestLimits; None: its defaults
    # Tenancy. The namespaces whose resources may use the default store (None: every one; "*" too).
    default_store_namespaces: tuple[str, ...] | None = None
    # The directories a spec's store.sqlite.path must lie in; None: the default store's own directory when
    # it is a SQLite file, and none at all otherwise.
    sqlite_directories: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls) -> OperatorConfig:
        namespaces = [n.strip() for n in os.environ.get("CAPTURE_EXPORT_DEFAULT_STORE_NAMESPACES", "").split(",")
                      if n.strip()] or ([os.environ["POD_NAMESPACE"]] if os.environ.get("POD_NAMESPACE") else [])
        directories = [d for d in os.environ.get("CAPTURE_EXPORT_SQLITE_DIRS", "").split(os.pathsep) if d.strip()]
        return cls(store=os.environ.get("CAPTURE_EXPORT_STORE") or None,
                   default_store_namespaces=tuple(namespaces) or None, sqlite_directories=tuple(directories) or None)

    def allowed_sqlite_directories(self) -> tuple[str, ...]:
        """Where specs' SQLite stores may be: the configured directories, else the default store's own."""
        if self.sqlite_directories is not None:
            return self.sqlite_directories
        if self.store:
            with contextlib.suppress(StoreRefused):
                if kind_of_url(self.store).name == "sqlite":
                    return (str(Path(sqlite_file(self.store)).resolve().parent),)
        return ()

    @property
    def api_connections(self) -> int:
        """The most of our own Kubernetes API calls at once: each export or retention cycle (a cycle reads its
        Secret), the status writer's threads and the readiness probe's check. The client keeps as many
        connections, no more: by default it keeps 5 per CPU, whatever the concurrency."""
        return max(1, self.concurrency) + API_CALL_THREADS + 1

    @property
    def s3_connections(self) -> int:
        """The most requests at once through one S3 client, which exporters writing to the same bucket with the
        same credentials share (SharedObjectStores): each cycle, and the workers giving their destinations up
        when the operator stops. Connections are kept per client: a client used by fewer threads opens fewer."""
        return max(1, self.concurrency) + ENDING_THREADS

    @property
    def liveness_endpoint(self) -> str | None:
        return None if self.liveness_port is None else f"http://0.0.0.0:{self.liveness_port}/healthz"

    @property
    def shutdown_seconds(self) -> float:
        """The longest the operator takes to stop once asked: the pod's grace period must cover it."""
        return self.stop_timeout + EXIT_SECONDS

    @property
    def identity(self) -> str:
        """kopf's name for this operator: ``POD_ID``, else the pod's name, else the host. Never kopf's own
        default, which asks ``getpass.getuser()`` and fails for a uid with no passwd entry (OpenShift)."""
        return (os.environ.get("POD_ID") or os.environ.get("POD_NAME")
                or f"capture-export@{socket.gethostname()}")


class SharedObjectStores:
    """Object-store factory that shares one client per (bucket, endpoint, access: credentials, role, encryption, TLS).

    A boto3 client built from its own session costs ~13 MB; two hundred exporters writing to one
    bucket need one client, not two hundred. Clients are thread-safe. Rotated credentials make a new
    key; the least recently used clients are dropped beyond ``size``.
    """

    def __init__(self, size: int = 64, factory: Callable[[S3Location, S3Access], ObjectStore] | None = None, *,
                 connections: int = 16):
        self.size = size
        # ``connections``: the threads that may use one client at once (its pool keeps that many connections).
        self.factory = factory or (lambda location, access: S3ObjectStore(location, access,
                                                                          max_pool_connections=connections))
        self._clients: OrderedDict[tuple[S3Location, S3Access], ObjectStore] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, location: S3Location, access: S3Access) -> ObjectStore:
        key = (location, access)
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                self._clients.move_to_end(key)
                return client
        client = self.factory(location, access)
        with self._lock:
            client = self._clients.setdefault(key, client)
            while len(self._clients) > self.size:
                self._clients.popitem(last=False)
            return client


class CycleExecutor(ThreadPoolExecutor):
    """The threads export and retention cycles run on, counting the cycles in flight, so that a stop can
    wait for them with a deadline and without a thread of its own (a hung upload must not hold the exit)."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers, thread_name_prefix=thread_name_prefix)
        self._in_flight: set[Future[Any]] = set()
        self._in_flight_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        with self._in_flight_lock:
            self._in_flight.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(future)

    @property
    def busy(self) -> int:
        with self._in_flight_lock:
            return len(self._in_flight)


class Runtime:
    """One operator process's shared parts. Kinds keep their per-resource workers in :attr:`workers`."""

    def __init__(self, config: OperatorConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.kube = KubeApi(config.kube, request_timeout=config.api_timeout, connections=config.api_connections)
        self.secrets = ApiSecrets(self.kube)
        self.stores = StoreOpener(config.store, self.secrets.get, default_namespaces=config.default_store_namespaces,
                                  sqlite_directories=config.allowed_sqlite_directories())
        self.object_stores = SharedObjectStores(connections=config.s3_connections)
        self.metrics = OperatorMetrics()
        self.cycles = CycleExecutor(max(1, config.concurrency), thread_name_prefix="export-cycle")
        self.api_calls = ThreadPoolExecutor(API_CALL_THREADS, thread_name_prefix="kube-api")
        self.writer = StatusWriter(self.kube, self.api_calls, emit=kopf_event)
        self.workers: dict[tuple[str, str, str], Any] = {}  # (kind, namespace, name) -> that kind's worker
        self.metrics_port: int | None = None
        self.readiness = Readiness(lambda: self.kube.check_served(SERVED_PLURALS, config.namespaces),
                                   interval=config.readiness_interval)
        self.ingest: Any = None  # the ingest server when config.ingest_port is set
        self.stopping_since: float | None = None  # time.monotonic() when the operator began to stop

    def stopping(self) -> None:
        """The operator has begun to stop (a worker's daemon was told so): the stop timeout runs from now."""
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()

    def release_seconds(self) -> float:
        """How long an ending worker may wait for S3 to answer the release of its destination's lease: at most
        RELEASE_SECONDS and, once the operator stops, no later than RELEASE_SECONDS past the stop timeout.
        Workers end together and queue for threads: with many destinations whose S3 never answers, a
        per-release bound alone would add up past the stop budget."""
        if self.stopping_since is None:
            return RELEASE_SECONDS
        deadline = self.stopping_since + self.config.stop_timeout + RELEASE_SECONDS
        return max(0.0, min(RELEASE_SECONDS, deadline - time.monotonic()))

    def create_default_store(self) -> None:
        """The operator's own default store (``--store``) is the one store it creates, at start-up; a store
        a spec names must already exist (StoreNotFound)."""
        if not self.config.store:
            return
        try:
            open_store_url(self.config.store, create=True).close()
        except StoreError as exc:  # the message names the store without its password
            log.warning("the default capture store could not be opened or created: %s", exc)

    def start(self) -> None:
        if self.config.metrics_port is not None and self.metrics_port is None:
            self.metrics_port = self.metrics.serve(self.config.metrics_port)
            log.info("metrics at http://0.0.0.0:%s/metrics", self.metrics_port)

    async def serve_readiness(self) -> None:
        if self.config.readiness_port is not None:
            port = await self.readiness.serve(self.config.readiness_port)
            log.info("readiness at http://0.0.0.0:%s/readyz", port)
        self.readiness.started()

    async def start_ingest(self) -> None:
        """The ingest server in the operator's loop, with its own connection to the default store (with
        SQLite the operator pod is then the only process that opens the store)."""
        if not self.config.ingest_port or self.ingest is not None or not self.config.store:
            return
        from ..ingest import IngestMetrics, IngestServer, TokenFile, store_opener

        self.ingest = IngestServer(store_opener(self.config.store), TokenFile(self.config.ingest_token_file or ""),
                                   limits=self.config.ingest_limits, metrics=IngestMetrics(self.metrics.registry))
        await self.ingest.start("0.0.0.0", self.config.ingest_port)

    async def stop(self, timeout: float | None = None) -> None:
        """Let the batches in flight commit (their threads finish whatever happens) for at most
        ``timeout`` seconds (the configured stop timeout), then close."""
        timeout = self.config.stop_timeout if timeout is None else timeout
        await self.readiness.stop()
        if self.ingest is not None:
            await self.ingest.stop()
            self.ingest = None
        self.cycles.shutdown(wait=False, cancel_futures=True)  # no new cycle; those in flight go on
        # kopf runs this cleanup once the workers' daemons have ended, which they had the stop timeout for:
        # the cycles they left behind get what remains of it, not as much again.
        deadline = (self.stopping_since or time.monotonic()) + timeout
        while self.cycles.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.cycles.busy
        if left:
            log.warning("%d cycles still running after %.0fs; leaving them (what they had not committed is "
                        "exported again on the next start)", left, timeout)
        self.api_calls.shutdown(wait=False)
        if not left:
            # A cycle left running still holds its store's exporter lock (a PostgreSQL store's lock session
            # would end with the store) and may yet commit: its stores close with the process, not before.
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



def apply_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    quiet_client_loggers()
    install_log_redaction()  # kopf logs request bodies at DEBUG: a spec may hold a URL with userinfo
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
    # On stop, kopf waits this long for each resource's worker (ResourceWorker._finish bounds it), else leaves
    # it orphaned; by default it waits a few loop iterations only, less than any status write takes.
    settings.background.instant_exit_timeout = config.stop_timeout + DAEMON_CANCEL_SECONDS
    # Namespaces named exactly need no namespace list/watch (nor the RBAC for it); CRDs are scanned once.
    if config.namespaces and not any(set(ns) & set("*?[!") for ns in config.namespaces):
        settings.scanning.disabled = True


def check_rbac(config: OperatorConfig) -> None:
    """Raise MissingPermissions unless this identity may do all the operator does where it serves.

    Uses its own client: in a pod, kopf's login handler has not run yet when startup handlers do."""
    configuration = config.kube
    if configuration is None:
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
    api = KubeApi(configuration, request_timeout=config.api_timeout)
    try:
        if check_permissions(api, config.namespaces):
            log.info("RBAC: every permission the operator needs is granted")
    finally:
        api.close()


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    @kopf.on.startup(id="capture-export-startup", registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        apply_settings(settings, runtime.config)
        try:
            await asyncio.to_thread(check_rbac, runtime.config)
        except MissingPermissions as exc:
            raise kopf.PermanentError(str(exc)) from None  # the operator stops here, saying why
        except Exception as exc:  # a check that cannot run must not keep the operator from starting
            log.warning("RBAC not checked: %s", exc)
        await asyncio.to_thread(runtime.create_default_store)
        runtime.start()
        await runtime.serve_readiness()
        await runtime.start_ingest()

    @kopf.on.cleanup(id="capture-export-cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        await runtime.stop()

    @kopf.on.login(id="capture-export-login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return runtime.kube.login(**kwargs)

    @kopf.on.probe(id="workers", registry=registry)
    def workers(**_: Any) -> int:
        return len(runtime.workers)

