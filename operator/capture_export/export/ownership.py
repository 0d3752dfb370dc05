"""One writer per destination: the claim an exporter makes before it writes anything.

Two runners of one exporter, or two exporters on one bucket and prefix, each sweeping what it takes for
its own leftovers, lose and duplicate records. Three layers keep a destination to one writer:

(a) **The store lock**: a lock that dies with its process, keyed by store and exporter (PostgreSQL: an
    advisory lock on a session of its own; SQLite: ``flock`` on a lock file beside the database). It is
    held for the worker's whole life; a second process exporting the same exporter from the same store is
    refused at once. Its *scope* (which server, which file) says which other processes it excludes.
(b) **The lease**: an object in the destination's control folder, written with S3 conditional writes
    (``If-None-Match: *`` to create it, ``If-Match: <etag>`` to renew or take it over), naming the
    exporter, the store identity, the writer instance and the lock scope. It is renewed at most every
    ``ttl / 3`` while the holder writes (a run checks before each batch: no extra request per record;
    a cycle with nothing to write never claims),
    and a holder that could not renew within ``ttl`` re-claims before it writes again. A contender takes
    it over only after it has seen the same ETag, unchanged, for a whole ``ttl`` of its own monotonic
    clock (no clock-skew assumption), except when the lease names the same exporter, the same store and
    the same lock scope: the store lock, which it now holds, proves that holder dead, so a restart after
    ``kill -9`` resumes at once. It covers what the store lock cannot see: a copy of the store (a restored
    backup, the file on another machine), a store reached through another server.
(c) **Other exporters' checkpoints**: a destination whose control folder holds another exporter's
    checkpoint is refused unless the path templates keep the two apart (see :func:`layouts_apart`).

The loser of any layer gets ``DestinationInUse`` naming the other writer (never a secret) and writes
nothing. A server that ignores conditional writes (found once, at the connection test) leaves (a) and (c):
the condition says so.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..api.vocabulary import Domain, Reason
from ..clock import Clock
from ..objectstore import PRECONDITION_FAILED, ObjectStore, ObjectStoreError
from ..store import StoreLock
from .checkpoint import peek_layout
from .layout import CONTROL_DIR, ObjectLayout, layouts_apart
from .model import ExporterId, ExportFailure, Requests

__all__ = [
    "DEFAULT_LEASE_TTL",
    "LEASE_TTL_ENV",
    "RELEASE_SECONDS",
    "DestinationLease",
    "Holder",
    "Ownership",
    "destination_in_use",
    "lease_ttl_from_env",
    "probe_conditional_writes",
    "writer_instance",
]

DEFAULT_LEASE_TTL = 60.0
LEASE_TTL_ENV = "CAPTURE_EXPORT_LEASE_TTL"
LEASE_VERSION = 1
# The most a clean stop waits for S3 to answer the release of a lease (a HEAD and a DELETE, normally a few
# milliseconds); the daemon's share of the operator's stop budget (handlers/settings.DAEMON_CANCEL_SECONDS)
# must cover it.
RELEASE_SECONDS = 2.0
log = logging.getLogger(__name__)
_INSTANCE = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def writer_instance() -> str:
    """This process's writer instance (host, pid and a random tag): in leases and checkpoints."""
    return _INSTANCE


def lease_ttl_from_env(default: float = DEFAULT_LEASE_TTL) -> float:
    raw = os.environ.get(LEASE_TTL_ENV)
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default


def destination_in_use(message: str) -> ExportFailure:
    return ExportFailure(Reason.DESTINATION_IN_USE, message, domain=Domain.BUCKET, transient=False)


@dataclass(frozen=True)
class Holder:
    """Who holds (or wants) a destination."""

    exporter: str  # "namespace/name"
    store_id: str
    instance: str
    lock_scope: str  # what the holder's store lock covers: equal scopes exclude each other

    def describe(self) -> str:
        return f"S3Exporter {self.exporter} (writer {self.instance})"

    def to_json(self) -> dict[str, str]:
        return {"exporter": self.exporter, "storeId": self.store_id, "instance": self.instance,
                "lockScope": self.lock_scope}

    @classmethod
    def from_json(cls, data: Any) -> Holder | None:
        if not isinstance(data, dict):
            return None
        exporter, store_id, instance, lock_scope = (data.get(k) for k in ("exporter", "storeId", "instance",
                                                                          "lockScope"))
        if not (isinstance(exporter, str) and isinstance(store_id, str) and isinstance(instance, str)
                and isinstance(lock_scope, str)):
            return None
        return cls(exporter, store_id, instance, lock_scope)


class DestinationLease:
    """The lease object of one data area, for one holder (layer b)."""

    def __init__(self, objects: ObjectStore, key: str, holder: Holder, *, ttl: float, clock: Clock,
                 requests: Requests) -> None:
        self.objects = objects
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self.clock = clock
        self.requests = requests
        self.etag: str | None = None  # the ETag of the lease as we last wrote it
        self.renewed_at: float | None = None  # monotonic time of that write
        self._renewals = 0
        # Someone else's lease: the ETag we saw and since when (our monotonic clock) it stayed unchanged.
        self._watching: tuple[str, float] | None = None

    def _body(self) -> bytes:
        self._renewals += 1  # a new body every time: S3 ETags are content hashes
        return json.dumps({"version": LEASE_VERSION, **self.holder.to_json(), "ttlSeconds": self.ttl,
                           "renewals": self._renewals, "writtenAt": self.clock.now().isoformat()}).encode()

    def _write(self, *, if_match: str | None) -> bool:
        """Write our lease (create it, or replace the version ``if_match``); False when the precondition
        failed (someone else wrote in between)."""
        body = self._body()
        started = self.clock.monotonic()
        try:
            etag = self.requests(lambda: self.objects.put_conditional(
                self.key, body, if_match=if_match, if_none_match=if_match is None, content_type="application/json"))
        except ExportFailure as failure:
            if failure.reason == PRECONDITION_FAILED:
                self.etag = self.renewed_at = None
                return False
            raise
        self.etag, self.renewed_at, self._watching = etag, started, None
        return True

    def claim(self) -> None:
        """Hold the lease, or raise DestinationInUse. Two rounds at most: a precondition that fails means
        someone wrote the lease in between, which the second round judges. A lease we wrote less than a
        third of its TTL ago is still ours (a contender waits a whole TTL): no request then."""
        if self.renewed_at is not None and self.clock.monotonic() - self.renewed_at < self.ttl / 3:
            return
        for _ in range(2):
            current = self.requests(lambda: self.objects.fetch(self.key))
            if current is None:
                if self._write(if_match=None):
                    return
                continue
            body, etag = current.data, current.etag
            try:
                other = Holder.from_json(json.loads(body))
            except ValueError:
                other = None
            if etag == self.etag or (other is not None and other.instance == self.holder.instance):
                if self._write(if_match=etag):
                    return
                continue
            if other is not None and (other.exporter, other.store_id, other.lock_scope) == (
                    self.holder.exporter, self.holder.store_id, self.holder.lock_scope):
                # Our store lock, which we hold, excludes that holder: it is gone (killed, restarted).
                if self._write(if_match=etag):
                    return
                continue
            now = self.clock.monotonic()
            if self._watching is None or self._watching[0] != etag:
                self._watching = (etag, now)
            waited = now - self._watching[1]
            if waited >= self.ttl:
                if self._write(if_match=etag):
                    return
                continue
            who = other.describe() if other is not None else "an unreadable lease"
            raise destination_in_use(
                f"{who} holds the destination (lease {self.key}); this one writes nothing until that lease "
                f"has gone unrenewed for {self.ttl:.0f}s (watched for {waited:.0f}s so far)")
        raise destination_in_use(f"another writer keeps rewriting the lease {self.key}; not writing")

    def hold(self) -> None:
        """Before a write: renew the lease when a third of its TTL has passed; re-claim it when we could not
        renew within its TTL (someone may have taken it over meanwhile)."""
        if self.renewed_at is None or self.etag is None:
            self.claim()
            return
        age = self.clock.monotonic() - self.renewed_at
        if age < self.ttl / 3:
            return
        if age >= self.ttl or not self._write(if_match=self.etag):
            self.claim()

    def release(self) -> None:
        """Best effort, at a clean stop: delete the lease if it is still ours, so that a successor need not
        wait (one that holds the same store lock would not wait anyway)."""
        if self.etag is None:
            return
        try:
            current = self.objects.head(self.key)
            if current is not None and current.etag == self.etag:
                self.objects.delete(self.key)
        except ObjectStoreError:
            pass
        self.etag = self.renewed_at = None


def probe_conditional_writes(objects: ObjectStore, layout: ObjectLayout, requests: Requests) -> bool:
    """Whether the server honours ``If-None-Match: *``: a second conditional create of one probe object
    must fail with 412. Three or four requests, once per worker and destination."""
    key = f"{layout.control_root()}{CONTROL_DIR}/leases/.probe-{uuid.uuid4().hex}"
    try:
        requests(lambda: objects.put_conditional(key, b"probe", if_none_match=True))
    except ExportFailure as failure:  # a retried first write whose first attempt landed: fine
        if failure.reason != PRECONDITION_FAILED:
            raise
    try:
        requests(lambda: objects.put_conditional(key, b"probe again", if_none_match=True))
        honoured = False
    except ExportFailure as failure:
        if failure.reason != PRECONDITION_FAILED:
            raise
        honoured = True
    requests(lambda: objects.delete(key))
    return honoured


class Ownership:
    """The three layers for one exporter's worker: ``begin`` at the start of each cycle (the store lock),
    ``hold`` before each write (the first one of a cycle claims the destination)."""

    def __init__(
        self,
        exporter: ExporterId,
        *,
        clock: Clock,
        ttl: float | None = None,
    ) -> None:
        self.exporter = exporter
        self.clock = clock
        self.ttl = lease_ttl_from_env() if ttl is None else ttl
        self.lock: StoreLock | None = None
        self._lock_owner: object = None
        self.lease: DestinationLease | None = None
        self._lease_for: tuple[object, ...] | None = None
        # Other exporters' checkpoints seen in the control folder: key -> ETag and whether apart.
        self._neighbours: dict[str, tuple[str, str | None]] = {}
        self.conditional_writes = True
        self._checked_at = float("-inf")
        self._target: tuple[str, ObjectStore, ObjectLayout, Requests, StoreLock] | None = None
        self._claimed = False
        self._mutex = threading.RLock()

    # -- (a) the store lock ---------------------------------------------------------------------------

    def _lock(self, store: Any) -> StoreLock:
        if self.lock is not None and self._lock_owner is store and self.lock.alive():
            return self.lock
        self.release_lock()
        lock: StoreLock | None = store.lock_exporter(str(self.exporter))
        if lock is None:
            raise destination_in_use(
                f"another capture-export process is exporting S3Exporter {self.exporter} from this store "
                "(it holds the store's exporter lock); this one writes nothing while it runs")
        self.lock, self._lock_owner = lock, store
        return lock

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
        self.lock = self._lock_owner = None

    # -- (c) other exporters in the control folder -----------------------------------------------------

    def _check_neighbours(self, objects: ObjectStore, layout: ObjectLayout, requests: Requests) -> None:
        folder = layout.checkpoints_folder()
        own = layout.checkpoint_key()
        found = requests(lambda: [info for info in objects.list(folder) if info.key.endswith(".json")])
        for info in found:
            if info.key == own:
                continue
            known = self._neighbours.get(info.key)
            if known is None or known[0] != info.etag:
                raw = requests(partial(objects.get, info.key))
                verdict = None
                if raw is not None:
                    other, other_layout = peek_layout(raw, layout.prefix, info.key[len(folder):])
                    if not layouts_apart(layout, other_layout):
                        verdict = other
                self._neighbours[info.key] = (info.etag, verdict)
            blocking = self._neighbours[info.key][1]
            if blocking is not None:
                raise destination_in_use(
                    f"S3Exporter {blocking} already exports to this bucket and prefix (its checkpoint "
                    f"{info.key}); two exporters there would sweep each other's objects. Give this one another "
                    "prefix, or put {exporter} in both pathTemplates before any time variable")

    # -- a cycle: the lock at its start, the claim before its first write ------------------------------

    def begin(self, store: Any, store_id: str, objects: ObjectStore, layout: ObjectLayout,
              requests: Requests) -> None:
        """At the start of a cycle: take (or check) the store lock, DestinationInUse if another process
        holds it, and remember the destination for the claim that ``hold`` makes before the cycle's first
        write. A cycle with nothing to write makes no request for the destination at all."""
        with self._mutex:
            lock = self._lock(store)
            self._target = (store_id, objects, layout, requests, lock)
            self._claimed = False

    def claim(self, store: Any, store_id: str, objects: ObjectStore, layout: ObjectLayout,
              requests: Requests) -> None:
        """``begin`` and the claim at once: this worker may write ``layout``'s destination from ``store``."""
        self.begin(store, store_id, objects, layout, requests)
        self.hold()

    def _claim(self) -> None:
        if self._target is None:
            raise AssertionError("Ownership.hold before Ownership.begin")
        store_id, objects, layout, requests, lock = self._target
        self._check_neighbours(objects, layout, requests)
        holder = Holder(str(self.exporter), store_id, writer_instance(), lock.scope)
        identity = (layout.lease_key(), holder)
        if self.lease is None or self._lease_for != identity:
            self.conditional_writes = probe_conditional_writes(objects, layout, requests)
            self.lease = DestinationLease(objects, layout.lease_key(), holder, ttl=self.ttl, clock=self.clock,
                                          requests=requests)
            self._lease_for = identity
        # A new client (rotated credentials) for the same destination keeps what the lease has watched.
        self.lease.objects, self.lease.requests = objects, requests
        if self.conditional_writes:
            self.lease.claim()

    def hold(self) -> None:
        """Before each write: the first one of a cycle claims the destination (other exporters' checkpoints,
        the lease); later ones, at most every ttl/3, check that the store lock is still held (a PostgreSQL
        session may have ended) and renew the lease. Otherwise free: no request per batch."""
        now = self.clock.monotonic()
        with self._mutex:
            if not self._claimed:
                self._claim()
                self._claimed, self._checked_at = True, now
                return
            if now - self._checked_at < self.ttl / 3:
                return
            self._checked_at = now
            if self.lock is not None and not self.lock.alive():
                raise destination_in_use(f"the store lock of S3Exporter {self.exporter} was lost; not writing")
            if self.lease is not None and self.conditional_writes:
                self.lease.hold()

    def release(self, timeout: float = RELEASE_SECONDS) -> bool:
        """Give the destination up (the worker is done, no cycle of it runs): delete the lease, then the store
        lock. The lease's requests get ``timeout`` seconds, since an S3 server may accept them and never
        answer, and a clean stop must end within its budget whatever S3 does. Past it they go on, on a daemon
        thread that gives the store lock up only once they end (or the process does, as after a kill): the
        lease is left to expire, and no other runner of this store takes over while its DELETE may still land.
        False when the lease was left so."""
        with self._mutex:
            lease, lock = self.lease, self.lock
            self.lease = self._lease_for = self._target = None
            self._claimed = False
            self.lock = self._lock_owner = None

        def give_up() -> None:
            try:
                if lease is not None:
                    lease.release()
            finally:
                if lock is not None:
                    lock.release()

        if lease is None or lease.etag is None:
            give_up()
            return True
        releasing = threading.Thread(target=give_up, name=f"release-lease-{self.exporter}", daemon=True)
        releasing.start()
        releasing.join(timeout)
        if not releasing.is_alive():
            return True
        log.warning("S3Exporter %s: S3 did not answer the release of its lease %s in the %.1fs the stop left for "
                    "it; the lease is left to expire (another writer may take the destination over once it has gone "
                    "unrenewed for %.0fs)", self.exporter, lease.key, timeout, lease.ttl)
        return False

