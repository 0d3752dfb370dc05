"""The encode pool: worker processes that decode and encode batches, one per CPU the process may use.

Decoding CBOR and writing JSON or Parquet is Python work that holds the GIL, so in one process it uses one
core whatever the machine has. The formats that decode (``jsonl``, ``parquet``, and any format with
privacy mode, redactions or a filter) therefore hand each batch's rows to a worker of this pool and get the
payload back; the engine still commits batches strictly in order. The default pass-through path
(``cbor-zstd`` as stored) never comes here: it only splices ids and compresses, which is cheaper than the
trip to another process.

The pool is shared by every exporter of the process and sized to the CPUs the process may use
(``available_cpus``: the scheduler affinity, and in a pod the cgroup's CPU quota, ``resources.limits.cpu``).
Workers are forked from a fork server (never from the operator's process, whose threads a fork would copy
mid-flight) that has imported the encoding code once, so they start in milliseconds and share its pages.
A worker that dies (killed, out of memory) breaks the pool: the batch fails with a transient error and the
next batch gets a new pool. Nothing submitted here is ever cancelled (``cancel_futures`` included): CPython
3.11's pool, breaking while one of its futures is cancelled, leaves the futures after it pending and the
other workers running, so that batches wait and the process waits at exit for ever.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from typing import TYPE_CHECKING, Any, TypeVar

from ..lifetime import end_with, leave_interrupts_to_the_parent
from .cgroup import available_cpus
from .cgroup import memory_limit as container_memory_limit

if TYPE_CHECKING:  # multiprocessing is imported when a pool starts: a run of the default format never does
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["BrokenPool", "EncodePool", "available_cpus", "configure_encode_pool", "encode_pool",
           "workers_for_memory"]

# What a broken pool raises: concurrent.futures.process.BrokenProcessPool, caught by its base class so that
# catching it does not import multiprocessing.
BrokenPool = BrokenExecutor

T = TypeVar("T")

# What the fork server imports before it forks workers: the batch code and its codecs, and the script
# the process runs (the workers would otherwise each import it again; CPython 3.11 and 3.12 skip
# "__main__" here, python/cpython#126631, so there each worker runs the `capture-export` script again,
# about 4 ms); then the libraries of the formats the process's exporters write (``EncodePool.load_library``),
# and last ``export/freeze.py``.
PRELOAD = ["__main__", "capture_export.export.batch"]
FREEZE = "capture_export.export.freeze"


class EncodePool:
    """A process pool for batch encoding; replaced by a new one when a worker dies."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("an encode pool needs at least one worker")
        self.workers = workers
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._libraries: list[str] = []
        self._memory_bounded_tightly = False

    def bound_memory_tightly(self) -> None:
        """An exporter of a format whose memory is bounded tightly (``FormatInfo.keeps_batch_memory`` False:
        Parquet) sends its batches here, for good: see ``pipeline.memory_kept_after_batch``."""
        self._memory_bounded_tightly = True

    @property
    def memory_bounded_tightly(self) -> bool:
        """Whether any exporter of this process has sent a format bounded tightly here (``bound_memory_tightly``).
        A worker encodes one batch at a time and follows each batch's recipe; the exporting process holds the
        batches of every exporter at once, and malloc's setting is the process's: measured with 4 JSON Lines and
        4 Parquet exporters catching up at ``limit: 10000``, following each batch's recipe there instead held
        33-40 MiB more at the peak (docs/benchmarks.md)."""
        return self._memory_bounded_tightly

    def load_library(self, modules: tuple[str, ...]) -> None:
        """Have the fork server import ``modules`` (a format's library, such as pyarrow) before it forks
        the workers: each worker then shares the fork server's copy instead of importing its own (pyarrow:
        ~46 MiB per worker, measured; docs/benchmarks.md). Takes effect if the process's fork server has not
        started yet (it starts with the first batch a pool encodes); a library registered later is
        imported by each worker itself, as before."""
        with self._lock:
            self._libraries.extend(module for module in modules if module not in self._libraries)

    def _start(self) -> ProcessPoolExecutor:
        import multiprocessing.util
        from concurrent.futures import ProcessPoolExecutor

        # This process now packs, pickles and receives batches: buffers of megabytes, which malloc serves as
        # ``pipeline.memory_kept_after_batch`` says (``serve_batches``, called before each batch is packed).
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([*PRELOAD, *self._libraries, FREEZE])
        # The workers' parent is the fork server, which lives as long as they do: each watches this process.
        executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker,
                                       initargs=(os.getpid(),))
        # Stop the workers when the process exits, also when it is itself a multiprocessing child (which
        # exits without the interpreter's shutdown hooks, and would wait for its idle workers for ever);
        # before the finalizers of the pool's own queues (priority 10), which it still needs.
        multiprocessing.util.Finalize(executor, executor.shutdown, exitpriority=100)
        return executor

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:
            if self._executor is None:
                self._executor = self._start()
            try:
                return self._executor.submit(function, *args)
            except BrokenPool:
                self._executor.shutdown(wait=False)
                self._executor = self._start()
                return self._executor.submit(function, *args)

    def shutdown(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


def _start_worker(parent: int) -> None:
    """First thing in each worker: end with the exporting process ``parent`` and leave Ctrl-C to it; large
    blocks freed by a batch go back to the operating system at once (export/budget.py)."""
    from .budget import return_large_blocks_at_once

    leave_interrupts_to_the_parent()
    end_with(parent)
    return_large_blocks_at_once()


_pool: EncodePool | None = None
_configured = False
_pool_lock = threading.Lock()


def workers_for_memory(memory_limit: int | None) -> int | None:
    """The most workers a container memory limit affords by default: a worker that writes Parquet keeps
    ~116 MiB (itself idle, pyarrow and the encoder's fixed working memory: export/budget.py), and the
    workers together take at most a third of the limit, so that batches keep room (at 512Mi: one worker).
    None: no limit."""
    if memory_limit is None:
        return None
    from .budget import WORKER_RESERVED_BYTES
    from .formats import FORMATS

    per_worker = WORKER_RESERVED_BYTES + max(info.library_memory + info.fixed_working_memory
                                             for info in FORMATS.values())
    return max(1, memory_limit // 3 // per_worker)


def configure_encode_pool(workers: int | None = None) -> EncodePool | None:
    """Set the process's pool: ``workers`` processes (0: encode in-process), by default one per available
    CPU (no more than the container's memory limit affords: ``workers_for_memory``), and none on a single
    CPU (a worker could only take turns with the process itself)."""
    global _pool, _configured
    if workers is None:
        cpus = available_cpus()
        workers = cpus if cpus > 1 else 0
        affordable = workers_for_memory(container_memory_limit())
        if affordable is not None:
            workers = min(workers, affordable)
    with _pool_lock:
        old, _pool, _configured = _pool, (EncodePool(workers) if workers > 0 else None), True
    if old is not None:
        old.shutdown()
    return _pool


def encode_pool() -> EncodePool | None:
    """The process's pool (configured on first use), or None when batches are encoded in-process."""
    with _pool_lock:
        if _configured:
            return _pool
    return configure_encode_pool()
