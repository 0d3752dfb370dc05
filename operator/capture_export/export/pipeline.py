"""How one run's batches are read and prepared while earlier ones upload, within bounded memory.

A reader thread plans the batches in id order (``plan_batches``) and reads each one's rows; each batch is
then encoded on a thread of the run (the default pass-through path, small batches, and uncompressed JSON
Lines of sealed rows, which the native extension writes from the stored bytes: ``encode_threads``,
``_cheaper_here``) or by a worker of the process's encode pool (export/pool.py: the formats that decode); the
run's own thread takes the prepared batches strictly in id order, uploads them (two at a time) and commits
them (ExportEngine.run). ``read_through`` is the highest record id read for a batch so far: the checkpoint
claims it, so that every batch whose upload may start before the next checkpoint lies within the claim.

Memory is bounded twice. Per run, at most ``MAX_IN_FLIGHT`` batches are between "about to be read" and
"committed", whatever the pool size. Per process, each batch reserves its estimated size from the memory
budget (export/budget.py) before its rows are read and releases it once committed or dropped (the caller
calls the ``release`` it was handed with the batch), so that many exporters catching up at once wait for
each other instead of running the pod out of memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..api.vocabulary import Domain, Reason
from ..store import StoredRecord
from .batch import BatchFailure, BatchRecipe, EncodedBatch, PackedRows, SentOnce, encode_in_worker, encode_rows
from .budget import BATCH_REUSE_BYTES, SMALL_PARQUET_BATCH_BYTES, Reservation, release_freed_memory, serve_batches
from .cgroup import available_cpus
from .formats import FORMATS
from .model import Cursor, ExportFailure, PreparedBatch
from .pool import BrokenPool

if TYPE_CHECKING:
    from .engine import ExportEngine

__all__ = ["MAX_IN_FLIGHT", "POOL_MIN_ROWS", "MemoryKept", "PreparePipeline", "SynchronousPipeline", "Taken",
           "encode_here", "encode_threads", "export_failure", "memory_kept_after_batch", "plan_batches",
           "start_encode"]

# Batches of one run read (or about to be) and not yet committed: up to two uploading, the others read,
# encoding or waiting to upload. A fifth took a dozen exporters catching up past their memory allowance
# (docs/benchmarks.md). A larger pool serves more exporters at once, not more batches of one.
MAX_IN_FLIGHT = 4


def encode_threads(cpus: int | None = None) -> int:
    """Threads a run encodes its in-process batches on, for a process that may use ``cpus`` CPUs
    (``available_cpus``): two from three CPUs on, one below. On two CPUs the reader, the uploads (and the
    local S3 server, or the other exporters) already keep the second busy: a second batch compressed at the
    same time only makes both slower (zstd's tables and window share the caches), and the commits set the
    pace anyway. Measured with the default format on the 2-vCPU dev box (docs/benchmarks.md): ~5 µs of CPU
    per record less with one, records/s the same."""
    return 2 if (available_cpus() if cpus is None else cpus) > 2 else 1


Admit = Callable[[], "int | None"]


def plan_batches(engine: ExportEngine, cursor: Cursor, stop: threading.Event,
                 admit: Admit | None = None) -> Iterator[list[StoredRecord] | PreparedBatch]:
    """The batches of one run, in id order: rows to encode, or a ready batch that only moves the cursor
    past an object kept as it is (see BucketSweep.first_preserved_object).

    Before each batch, ``admit`` is called: it may wait (for memory), and returns how many records the
    batch may hold, or None to stop."""
    after = cursor.position
    # Rows read but left for the next batch because their folder differs (dated path templates).
    pending: list[StoredRecord] = []
    while not stop.is_set():
        limit = engine.batch_limit() if admit is None else admit()
        if limit is None:
            return
        if len(pending) > limit:
            pending, held = pending[:limit], pending[limit:]
        else:
            held = []
        rows, rest = engine._cut(pending)
        if not rest and not held and len(pending) < limit:
            more = engine._read(pending[-1].id if pending else after, limit - len(pending))
            rows, rest = engine._cut(pending + more if pending else more)
            # ``rows`` is this very list when the batch is not cut: holding it here would keep the batch's
            # rows while the next batch waits for memory, rows the budget no longer counts once the batch
            # is encoded (measured: a dozen JSON Lines exporters grew the pod by 164 MiB for a 64 MiB budget).
            del more
        rest += held
        if not rows:
            return
        if rows[0].id <= cursor.high_water and (kept := engine.sweep.first_preserved_object(after, rows)):
            first, last = kept
            if first <= rows[0].id:
                # The kept object already holds every live record of its range: move past it.
                yield engine._skip_batch(after, last, rows[0].timestamp_us)
                after, pending = last, [row for row in rows + rest if row.id > last]
                continue
            rest = [row for row in rows if row.id >= first] + rest
            rows = [row for row in rows if row.id < first]
        yield rows
        after, pending = rows[-1].id, rest
        del rows  # the batch is on its way: do not hold its rows while waiting to admit the next one


# Smaller batches are encoded in-process: the trip to a worker would cost more than it saves.
POOL_MIN_ROWS = 100
_FAILURES = {
    BatchFailure.CORRUPT: (Reason.CORRUPT_RECORD, Domain.STORE),
    BatchFailure.UNAVAILABLE: (Reason.FORMAT_UNAVAILABLE, Domain.FORMAT),
    BatchFailure.UNENCODABLE: (Reason.ENCODE_FAILED, Domain.FORMAT),
}


def export_failure(failure: BatchFailure) -> ExportFailure:
    reason, domain = _FAILURES[failure.kind]
    return ExportFailure(reason, failure.message, domain=domain, transient=False)


def encode_here(engine: ExportEngine, rows: list[StoredRecord], read_seconds: float) -> PreparedBatch:
    """Encode a batch on the calling thread."""
    try:
        encoded = encode_rows(engine.recipe, rows)
    except BatchFailure as failure:
        raise export_failure(failure) from None
    return engine._prepared(rows[0], encoded, read_seconds, 0.0)


@dataclass(frozen=True)
class MemoryKept:
    """Freed memory kept for the next batch once a batch sent to the encode pool is done, in bytes: by the
    exporting process (``serve_batches`` before the batch is packed) and by the worker that encodes it
    (``encode_in_worker``)."""

    exporting_process: int
    worker: int


def memory_kept_after_batch(recipe: BatchRecipe, *, stored_bytes: int, budget_cut: bool, parquet_in_process: bool,
                            budget_contended: bool) -> MemoryKept:
    """How much freed memory the two processes of a pooled batch keep for their next batch, its large blocks
    included (export/budget.py, ``serve_batches`` and ``release_freed_memory``), for a batch of ``recipe``
    whose records take ``stored_bytes``:

    * A format that keeps its batch memory (``FormatInfo.keeps_batch_memory``: JSON Lines, and CBOR with
      privacy mode or redactions): the worker keeps ``BATCH_REUSE_BYTES``. So does the exporting process,
      unless any exporter of the process writes Parquet (``parquet_in_process``: ``EncodePool.bound_memory_tightly``,
      for good: the process's malloc setting serves every exporter's batches at once) or the budget is
      contended (``budget_contended``: ``MemoryBudget.contended``, many exporters catching up, whose freed
      payloads between live batches stayed in the heap; tests/integration/test_json_lines_backlog_memory.py);
      then it keeps nothing.
    * Parquet (memory bounded tightly): the exporting process keeps nothing. The worker keeps
      ``BATCH_REUSE_BYTES`` after a small batch (at most ``SMALL_PARQUET_BATCH_BYTES`` stored: the default
      ``limit``) that the budget did not cut (``budget_cut``: the reader read fewer than ``limit`` records
      for it, ``ExportEngine.batch_limit``), and nothing after any other
      (tests/integration/test_parquet_memory.py).

    The measurements behind each rule are with the constants in export/budget.py."""
    if FORMATS[recipe.format].keeps_batch_memory:
        shared = 0 if parquet_in_process or budget_contended else BATCH_REUSE_BYTES
        return MemoryKept(exporting_process=shared, worker=BATCH_REUSE_BYTES)
    small = not budget_cut and stored_bytes <= SMALL_PARQUET_BATCH_BYTES
    return MemoryKept(exporting_process=0, worker=BATCH_REUSE_BYTES if small else 0)


def start_encode(engine: ExportEngine, rows: list[StoredRecord], read_seconds: float, read_cpu_seconds: float,
                 threads: Executor, on_encoded: Callable[[int], None] = lambda size: None, *,
                 budget_cut: bool = False, on_done: Callable[[], object] = lambda: None,
                 ) -> tuple[Callable[[], PreparedBatch], Callable[[], object], Callable[[], bool]]:
    """Start encoding a batch (in the pool, or on one of ``threads``): a function that waits for it and
    returns the prepared batch, one that cancels it, and one that tells whether it is done (then
    ``on_done`` is called). ``on_encoded`` is told the payload's size as soon
    as it is ready; ``budget_cut``: the reader read fewer than ``limit`` records for this batch because the
    memory budget had no room for more (``ExportEngine.batch_limit``). Only the batch's bounds are kept here,
    so that its rows are let go as soon as the encoder has them."""
    first, last = rows[0], rows[-1]
    future: Future[EncodedBatch]
    # A row stored as anything but bytes (a foreign writer's TEXT) fails the check in-process, where
    # it needs no packing.
    cancel: Callable[[], object]
    if (engine.pool is not None and (len(rows) >= POOL_MIN_ROWS or engine._library_in_pool)
            and all(type(row.body) is bytes for row in rows) and not _cheaper_here(engine.recipe, rows)):
        stored_bytes = sum(len(row.body) for row in rows)
        kept = memory_kept_after_batch(engine.recipe, stored_bytes=stored_bytes, budget_cut=budget_cut,
                                       parquet_in_process=engine.pool.memory_bounded_tightly,
                                       budget_contended=engine.budget.contended)
        # This batch's large blocks (its packed rows and their pickle, then its payload received) come from the
        # heap and are kept for the next batch, or are mapped on their own and given back at once. mallopt is
        # called only when that changes.
        serve_batches(kept.exporting_process)
        # Let go of here once pickled for the worker (SentOnce): the pool would keep it until the result is back.
        packed = PackedRows.pack(rows)
        future = engine.pool.submit(encode_in_worker, engine.recipe, SentOnce(packed), kept.worker)
        del packed
        # A batch in the pool is never cancelled: it is encoded and dropped. CPython 3.11's process pool,
        # when a worker dies while one of its futures is cancelled, stops failing the others half-way: the
        # batches of every exporter behind it would wait for ever, and the process could not exit.
        cancel = _keep_encoding
    else:
        future = threads.submit(encode_rows, engine.recipe, rows)
        cancel = future.cancel
    del rows

    def encoded(done: Future[EncodedBatch]) -> None:
        if not done.cancelled() and done.exception() is None:
            payload = done.result().payload
            on_encoded(len(payload) if payload is not None else 0)
        release_freed_memory(keep=BATCH_REUSE_BYTES)  # the rows and the encoder's working memory, freed now
        on_done()

    future.add_done_callback(encoded)

    def finish() -> PreparedBatch:
        try:
            encoded = future.result()
        except BatchFailure as failure:
            raise export_failure(failure) from None
        except (BrokenPool, CancelledError):
            raise ExportFailure(Reason.ENCODE_FAILED, f"the encoder process of records {first.id}-{last.id} "
                                "died (killed or out of memory); retrying", domain=Domain.FORMAT,
                                transient=True) from None
        return engine._prepared(first, encoded, read_seconds, read_cpu_seconds)

    return finish, cancel, future.done


def _cheaper_here(recipe: BatchRecipe, rows: list[StoredRecord]) -> bool:
    """Whether this process encodes the batch at less cost than handing it to the pool: a format the native
    extension writes straight from the stored bytes, and rows our own append sealed. A foreign row's full check
    decodes it: those go to the pool. Every row must carry a seal and the first one's must hold (one MAC, a few
    µs: the encoding checks every row's anyway), so that a gateway that fills the seal column with bytes of
    its own does not keep a backlog of foreign rows on this process's one core."""
    if not recipe.transcodes_natively or recipe.seal is None or not all(type(row.seal) is bytes for row in rows):
        return False
    return recipe.seal.valid(rows[0].body, rows[0].seal)


def _keep_encoding() -> None:
    """What letting go of a batch in the pool does: nothing (see ``start_encode``)."""


@dataclass(frozen=True)
class Taken:
    """A prepared batch, handed over in id order, and what gives its memory and its slot back once it is
    committed (or dropped): the caller calls ``release`` (once; later calls do nothing)."""

    batch: PreparedBatch
    release: Callable[[], None]


def _nothing_to_release() -> None:
    """What a batch prepared on the caller's thread holds: nothing (see SynchronousPipeline)."""


@dataclass(eq=False)
class _InFlight:
    finish: Callable[[], PreparedBatch]  # waits for the encoding and returns the batch
    reservation: Reservation | None
    cancel: Callable[[], object] = lambda: None
    ready: Callable[[], bool] = lambda: True  # whether the encoding is done (``finish`` would not wait)


class PreparePipeline:
    """Reads and encodes the batches of one run ahead of the caller, who takes them in id order."""

    def __init__(self, engine: ExportEngine, cursor: Cursor, keep_going: Callable[[], bool],
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.engine = engine
        self.keep_going = keep_going
        self.interrupted = False
        self._stop = threading.Event()
        self._slots = threading.Semaphore(max_in_flight)
        self._queue: queue.Queue[_InFlight | BaseException | None] = queue.Queue()
        self._admitted: Reservation | None = None  # the reader's reservation for the batch it reads now
        self._admitted_cut = False  # whether the budget had room for fewer than ``limit`` records for it
        self._threads = ThreadPoolExecutor(max_workers=encode_threads(), thread_name_prefix="export-encode")
        self._taken: list[_InFlight] = []  # handed over, not yet released
        self._taken_one = False
        self._next: _InFlight | BaseException | None = None  # handed over by the reader, still encoding
        self.finished = False  # no batch left to take: the end, a failure, or the run stopped
        self.read_through = cursor.position  # written by the reader thread only
        self.wake = threading.Event()  # set whenever the reader hands a batch (or the end) over
        self._reader = threading.Thread(target=self._read_loop, args=(cursor,), name="export-read", daemon=True)
        self._reader.start()

    def _halted(self) -> bool:
        """Whether to give up waiting for a slot or for memory: the pipeline closes, or the run is stopped
        or out of time (its batches in flight still commit)."""
        if self._stop.is_set():
            return True
        if not self.keep_going():
            self.interrupted = True
            return True
        return False

    def _admit(self) -> int | None:
        """A slot for one more batch, then its memory; the records it may hold, or None when stopped."""
        while not self._slots.acquire(timeout=0.1):
            if self._halted():
                return None
        if self._stop.is_set():
            self._slots.release()
            return None
        limit = self.engine.batch_limit()
        reservation = self.engine.budget.reserve(self.engine.estimated_cost(limit), should_stop=self._halted)
        if reservation is None:
            self._slots.release()
            return None
        self._admitted, self._admitted_cut = reservation, limit < self.engine.spec.limit
        return limit

    def _read_loop(self, cursor: Cursor) -> None:
        try:
            started, cpu_started = time.perf_counter(), time.thread_time()
            for item in plan_batches(self.engine, cursor, self._stop, self._admit):
                reservation, self._admitted = self._admitted, None
                budget_cut, self._admitted_cut = self._admitted_cut, False
                if isinstance(item, PreparedBatch):
                    if reservation is not None:
                        reservation.resize(0)  # it only moves the cursor
                    batch = item
                    in_flight = _InFlight(lambda batch=batch: batch, reservation)  # type: ignore[misc]
                else:
                    if reservation is not None:
                        reservation.resize(self.engine.batch_cost(item))
                    self.read_through = item[-1].id
                    # Once encoded, the batch holds only its payload until it is committed.
                    on_encoded = reservation.resize if reservation is not None else (lambda size: None)
                    finish, cancel, ready = start_encode(
                        self.engine, item, time.perf_counter() - started, time.thread_time() - cpu_started,
                        self._threads, on_encoded, budget_cut=budget_cut, on_done=self.wake.set)
                    in_flight = _InFlight(finish, reservation, cancel, ready)
                del item
                # A pooled batch's rows are packed and gone: ten thousand freed blocks that malloc would keep
                # in its arenas (measured: 213 MiB held with eight exporters) until the next commit trims,
                # beyond what the next batch reuses.
                release_freed_memory(keep=BATCH_REUSE_BYTES)
                self._queue.put(in_flight)
                self.wake.set()
                started, cpu_started = time.perf_counter(), time.thread_time()
            self._queue.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._queue.put(exc)
        finally:
            self.wake.set()
            if self._admitted is not None:  # admitted, then nothing (more) to read
                self._admitted.release()
                self._admitted = None
                self._slots.release()

    def take(self) -> Taken | None:
        """The next batch in id order if it is read and encoded, else None at once: never waits for a
        batch to be read (which may wait for memory that only the caller's commits give back) or encoded
        (while the caller could commit an uploaded batch); ``wake`` is set when either is done.
        ``finished`` turns true at the end, or once the run is stopped or out of time (after at least one
        batch, so that a short time budget still makes progress)."""
        if self.finished:
            return None
        if self._taken_one and not self.keep_going():
            self.interrupted = self.finished = True
            return None
        if self._next is None:
            try:
                self._next = self._queue.get_nowait()
            except queue.Empty:
                return None
        item, self._next = self._next, None
        if isinstance(item, _InFlight) and not item.ready():
            self._next = item
            return None
        if item is None or isinstance(item, BaseException):
            self.finished = True
            if item is not None:
                raise item
            return None
        self._taken_one = True
        try:
            batch = item.finish()
        except BaseException:
            self._done(item)
            raise
        self._taken.append(item)
        return Taken(batch, lambda item=item: self._release(item))  # type: ignore[misc]

    def _release(self, item: _InFlight) -> None:
        if item in self._taken:
            self._taken.remove(item)
            self._done(item)

    def _done(self, item: _InFlight) -> None:
        if item.reservation is not None:
            item.reservation.release()
        self._slots.release()
        release_freed_memory(keep=BATCH_REUSE_BYTES)

    def close(self) -> None:
        self._stop.set()
        self.finished = True
        if isinstance(self._next, _InFlight):
            self._next.cancel()
            self._done(self._next)
        self._next = None
        for taken in list(self._taken):  # handed over and never released: the run failed or stopped
            self._release(taken)
        # Batches read ahead but never taken: let their encoding go and give their memory back. The reader
        # may be waiting for a slot or for memory; it sees the stop within its polling interval.
        while self._reader.is_alive() or not self._queue.empty():
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(item, _InFlight):
                item.cancel()
                self._done(item)
        self._reader.join()
        self._threads.shutdown(wait=True, cancel_futures=True)


class SynchronousPipeline:
    """The same batches as PreparePipeline, prepared on the caller's thread: for tests that run
    thousands of tiny exports, where threads would cost more than the work."""

    def __init__(self, engine: ExportEngine, cursor: Cursor, keep_going: Callable[[], bool],
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.engine, self.cursor, self.keep_going, self.interrupted = engine, cursor, keep_going, False
        self._stop = threading.Event()
        self.read_through = cursor.position
        self.finished = False
        self.wake = threading.Event()  # never waited on for a batch: ``take`` prepares it there and then
        self._planned: Iterator[list[StoredRecord] | PreparedBatch] | None = None

    def take(self) -> Taken | None:
        """The next batch, prepared now; None once finished (see PreparePipeline.take)."""
        if self.finished:
            return None
        if self._planned is None:
            self._planned = plan_batches(self.engine, self.cursor, self._stop)
        elif not self.keep_going():
            self.interrupted = self.finished = True
            return None
        item = next(self._planned, None)
        if item is None:
            self.finished = True
            return None
        if not isinstance(item, PreparedBatch):
            self.read_through = item[-1].id
            item = encode_here(self.engine, item, 0.0)
        return Taken(item, _nothing_to_release)

    def close(self) -> None:
        self._stop.set()
        self.finished = True
