"""The process's memory for batches in flight: one byte budget that every exporter's batches share.

A batch holds memory from the moment its rows are read until its objects are committed: the stored rows,
what the encoder makes of them (in this process or in a worker of the encode pool), the payload waiting
for its upload. Eight exporters catching up a backlog at ``limit: 10000`` would hold dozens of such
batches at once, and a pod would be OOM-killed and crash-loop on the same backlog. So every batch
reserves its estimated size (``BatchCost``) from the process's ``MemoryBudget`` before its rows are
read, and gives it back once committed (or dropped); a cycle whose batch does not fit waits, in arrival
order, until others commit.

Sizing (docs/operations.md, "Sizing: memory"): the operator takes the budget from its container's memory
limit (the cgroup's ``memory.max``) less what it needs besides batches (``reserved_bytes``: the process
with kopf and its clients, the encode pool's fork server and idle workers), divided by 1 +
``ALLOCATOR_OVERHEAD`` for the freed memory malloc keeps beside batches; ``--memory-budget`` overrides it.
A format whose encoder needs a large library and fixed working memory (Parquet: pyarrow, a chunk of
records decoded, Arrow's memory pool) takes that once per process that encodes it, as a *standing*
charge on the budget, when its first exporter starts. One batch never needs more than half the budget:
the engine reads fewer records than ``limit`` when a batch would (see ``ExportEngine.batch_limit``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .cgroup import memory_limit as container_memory_limit

__all__ = [
    "ALLOCATOR_OVERHEAD",
    "BATCH_REUSE_BYTES",
    "DEFAULT_BUDGET_BYTES",
    "MIN_BUDGET_BYTES",
    "POOL_RESERVED_BYTES",
    "PROCESS_RESERVED_BYTES",
    "SMALL_PARQUET_BATCH_BYTES",
    "WORKER_RESERVED_BYTES",
    "BatchCost",
    "MemoryBudget",
    "Reservation",
    "batch_cost_for",
    "budget_for_memory_limit",
    "configure_memory_budget",
    "container_memory_limit",
    "memory_budget",
    "parse_size",
    "release_freed_memory",
    "reserved_bytes",
    "return_large_blocks_at_once",
    "serve_batches",
    "share_fewer_malloc_arenas",
]

MiB = 1 << 20
# What the operator needs besides its batches, measured (PSS, the pod's cgroup charge; docs/benchmarks.md):
# the interpreter with kopf, the Kubernetes client and the API models, 116 MiB; the S3 clients, ~14 MiB
# for the first and under 1 MiB for each further bucket (they share botocore's service descriptions); the
# threads of the cycles, readers and encoders, SQLite's page cache and malloc's arenas; the default format's
# idle zstd contexts (at most two, ~7 MiB: export/formats.py); some headroom.
PROCESS_RESERVED_BYTES = 160 * MiB
# The encode pool: its fork server and multiprocessing's resource tracker (~22 MiB), and each worker idle
# (~14 MiB; what a worker builds for a batch is the batch's cost, its format's library a standing charge).
POOL_RESERVED_BYTES = 24 * MiB
WORKER_RESERVED_BYTES = 16 * MiB
# Memory freed by batches that malloc still holds in its arenas (between trims, and pages pinned by blocks
# still in use), per byte of batches in flight: measured with benchmarks/memory_backlog.py, 103-213 MiB held
# beside ~200 MiB of batches. The budget is what remains of the limit divided by 1 + this.
ALLOCATOR_OVERHEAD = 0.5
MIN_BUDGET_BYTES = 64 * MiB
# Without a container memory limit (a laptop, `capture-export run`): enough for a few full batches.
DEFAULT_BUDGET_BYTES = 256 * MiB

# Memory a batch takes, per byte of its stored records, besides what its encoder builds (measured with
# benchmarks/memory_backlog.py's breakdown, allocator overhead included): the rows as read (1.13 x: each
# row is a tuple of Python objects). The default format holds its rows and the compressed frame (the
# stored bytes are streamed into the compressor: 1.8 x in all); a batch of it small enough to be compressed
# in one call (``formats.ZSTD_ONE_SHOT_BYTES``: the default ``limit``) also holds its records joined into one
# buffer while zstd reads them, ``JOINED_FACTOR`` more. A batch for the encode pool is packed into
# one buffer and pickled (3.2 x in this process for a moment); while it waits for a worker this process
# holds the packed rows and their pickled message in the pool's call queue, and the worker its own copy
# while the encoder works (3 x plus the encoder's working memory); the payload comes back. A format that
# decodes in this process holds the rows and what its encoder builds (CBOR with privacy mode: the records
# written again, joined to be compressed in one call, within the same 2.8 x; JSON Lines compressed is fed to
# its compressor in runs, never joined: formats._compress).
PASS_THROUGH_FACTOR = 2.0
# The joined copy of a batch compressed in one call: as long as its records (and their ids' heads, a few
# bytes each); zstd's output buffer is sized for the worst case but only the frame's pages are touched.
JOINED_FACTOR = 1.0
POOLED_FACTOR = 3.0
POOLED_MINIMUM_FACTOR = 3.2
IN_PROCESS_FACTOR = 1.2


@dataclass(frozen=True)
class BatchCost:
    """What a batch reserves until it is encoded: ``per_byte`` per stored byte of its records, and
    ``joined_per_byte`` more for a batch of at most ``joined_up_to`` stored bytes (the default format's,
    joined to be compressed in one call); a larger batch costs at least as much as such a batch did, so that
    the cost grows with the batch. Once encoded, a batch holds only its payload until it is committed
    (Reservation.resize)."""

    per_byte: float
    joined_up_to: int = 0
    joined_per_byte: float = 0.0

    @property
    def _most_joined(self) -> float:
        return self.joined_up_to * (self.per_byte + self.joined_per_byte)

    def of(self, stored_bytes: int) -> int:
        if stored_bytes <= self.joined_up_to:
            return int(stored_bytes * (self.per_byte + self.joined_per_byte))
        return int(max(stored_bytes * self.per_byte, self._most_joined))

    def stored_bytes_within(self, size: int) -> int:
        """The most stored bytes a batch may hold to cost at most ``size``."""
        if size < self._most_joined:
            return max(0, int(size / (self.per_byte + self.joined_per_byte)))
        return max(0, int(size / self.per_byte))


def batch_cost_for(*, decoded: bool, pooled: bool, working: float = 1.0, joined_up_to: int = 0) -> BatchCost:
    """The cost of a batch: ``decoded`` (a format or an option that decodes records), encoded by the
    encode pool (``pooled``) or in this process; ``working``: what the encoder builds per stored byte;
    ``joined_up_to``: the default format's batches up to this many stored bytes are joined to be compressed
    in one call (``formats.ZSTD_ONE_SHOT_BYTES``), a copy they hold besides (``JOINED_FACTOR``).
    What an encoder builds whatever the batch's size is not a batch's: it is a standing charge per encoder
    (``MemoryBudget.charge_standing``)."""
    if not decoded:
        return BatchCost(PASS_THROUGH_FACTOR, joined_up_to, JOINED_FACTOR if joined_up_to else 0.0)
    if pooled:
        return BatchCost(max(POOLED_MINIMUM_FACTOR, POOLED_FACTOR + working))
    return BatchCost(IN_PROCESS_FACTOR + working)


class Reservation:
    """One batch's share of the budget, held until ``release`` (idempotent)."""

    def __init__(self, budget: MemoryBudget, size: int) -> None:
        self.budget = budget
        self.size = size
        self.released = False

    def resize(self, size: int) -> None:
        """The batch's real cost, once its rows are read. Never waits: a batch whose rows are larger
        than estimated already holds them, so the difference is taken at once (later batches wait)."""
        self.budget._resize(self, size)

    def release(self) -> None:
        self.budget._release(self)


class MemoryBudget:
    """Bytes of batches in flight across every exporter of the process, at most ``total``.

    ``reserve`` waits until the bytes are free, first come first served, so that a large batch is not
    starved by small ones. A request larger than the whole budget is granted when no other batch is held,
    so a lone oversized batch still makes progress. ``high_water`` is the most ever held at once.
    ``standing`` holds what encoders keep for good once they have worked (``charge_standing``).
    """

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("a memory budget must be positive")
        self.total = total
        self.used = 0
        self.high_water = 0
        self.standing = 0
        self._standing: dict[str, int] = {}
        self._lock = threading.Condition()
        self._queue: deque[object] = deque()

    def charge_standing(self, name: str, size: int) -> None:
        """Hold ``size`` bytes for good under ``name`` (once per name; a larger size for the same name takes
        the difference): memory the process keeps once an encoder has worked, such as a library loaded in
        every encode worker. Never waits: the first batch to need it is about to take it anyway."""
        with self._lock:
            more = max(0, size - self._standing.get(name, 0))
            if more:
                self._standing[name] = self._standing.get(name, 0) + more
                self.standing += more
                self._take(more)

    def reserve(self, size: int, *, should_stop: Callable[[], bool] = lambda: False,
                poll: float = 0.2) -> Reservation | None:
        """Wait until ``size`` bytes are free and take them; None when ``should_stop`` turned true first."""
        size = max(0, size)
        ticket = object()
        with self._lock:
            self._queue.append(ticket)
            try:
                while not (self._queue[0] is ticket and self._fits(size)):
                    if should_stop():
                        return None
                    self._lock.wait(poll)
                self._take(size)
            finally:
                self._queue.remove(ticket)
                self._lock.notify_all()
        return Reservation(self, size)

    @property
    def contended(self) -> bool:
        """Whether batches wait for memory, or hold more than half of what standing charges leave: many
        exporters catching up at once (then the exporting process keeps no freed batch memory:
        ``pipeline.memory_kept_after_batch``)."""
        with self._lock:
            return bool(self._queue) or 2 * (self.used - self.standing) > self.total - self.standing

    def _fits(self, size: int) -> bool:
        return self.used + size <= self.total or self.used == self.standing

    def _take(self, size: int) -> None:
        self.used += size
        self.high_water = max(self.high_water, self.used)

    def _resize(self, reservation: Reservation, size: int) -> None:
        with self._lock:
            if reservation.released:
                return
            self.used += size - reservation.size
            reservation.size = size
            self.high_water = max(self.high_water, self.used)
            self._lock.notify_all()

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation.released:
                return
            reservation.released = True
            self.used -= reservation.size
            self._lock.notify_all()


# -- the process's budget ----------------------------------------------------------------------------

def reserved_bytes(workers: int) -> int:
    """What the operator needs besides batches with an encode pool of ``workers`` processes (0: none)."""
    return PROCESS_RESERVED_BYTES + (POOL_RESERVED_BYTES + workers * WORKER_RESERVED_BYTES if workers else 0)


def budget_for_memory_limit(memory_limit: int | None, workers: int = 0) -> int:
    """The batch budget for a container memory limit: the limit less what the operator itself needs with
    an encode pool of ``workers`` processes."""
    if memory_limit is None:
        return DEFAULT_BUDGET_BYTES
    return max(MIN_BUDGET_BYTES, int((memory_limit - reserved_bytes(workers)) / (1 + ALLOCATOR_OVERHEAD)))


_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000, "M": 1000**2, "G": 1000**3}


def parse_size(text: str) -> int:
    """A size as Kubernetes writes memory: ``512Mi``, ``1Gi``, ``300M`` or plain bytes."""
    text = text.strip()
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


_budget: MemoryBudget | None = None
_budget_lock = threading.Lock()


def _pool_workers() -> int:
    from .pool import encode_pool

    pool = encode_pool()
    return pool.workers if pool is not None else 0


def configure_memory_budget(total: int | None = None, *, memory_limit: int | None = None,
                            workers: int | None = None) -> MemoryBudget:
    """Set the process's budget: ``total`` bytes, or derived from ``memory_limit`` (default: the
    container's) and the encode pool's ``workers`` (default: the process's pool, configured first).
    Batches already in flight keep the budget they reserved from."""
    global _budget
    if total is None:
        total = budget_for_memory_limit(memory_limit if memory_limit is not None else container_memory_limit(),
                                        _pool_workers() if workers is None else workers)
    with _budget_lock:
        _budget = MemoryBudget(total)
        return _budget


def memory_budget() -> MemoryBudget:
    """The process's budget (configured from the container's memory limit on first use)."""
    global _budget
    with _budget_lock:
        if _budget is None:
            _budget = MemoryBudget(budget_for_memory_limit(container_memory_limit(), _pool_workers()))
        return _budget


# -- giving freed memory back ---------------------------------------------------------------------------
#
# A batch's rows are thousands of small objects that glibc's malloc carves from its arenas; once freed, the
# memory stays in the arena for reuse. With a dozen threads (cycles, readers, encoders) each filling its own
# arena, the process's RSS grows to the sum of every arena's high-water mark, far above what the batches in
# flight hold. Two glibc calls keep the RSS near what is live: fewer arenas, and trimming after batches.
# The exporting process keeps up to ``BATCH_REUSE_BYTES`` of freed memory for its next batch: trimming
# every batch only for the next to fault the same pages in again cost the default export 10-14% of its CPU
# (1.2-1.35 minor page faults per record; docs/benchmarks.md). What the processes of a batch sent to the
# encode pool keep, its large blocks included (``serve_batches``), is decided in one place with its rules:
# ``pipeline.memory_kept_after_batch``. Measured: a JSON Lines worker keeping its batch memory, at ``limit: 1000``,
# 5.8 minor page faults per record down to 0.02 for ``jsonl.zst`` (uncompressed ``jsonl``, whose batches free
# more than that, 5.5 down to 3.4); the exporting process serving the large blocks of the batches it sends the
# same way, ``jsonl.zst`` at ``limit: 1000``, 2.2 minor page faults per record down to 0.5 there.
# Elsewhere (musl, macOS) all of this does nothing.

_M_ARENA_MAX = -8  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
_DEFAULT_TRIM_THRESHOLD = 128 << 10  # glibc's
_LARGE_BLOCK = 256 << 10
_libc: ctypes.CDLL | bool | None = None
# Freed memory a process keeps for its next batch: a few batches of the default limit (~3.5 MB of rows and
# their frame each), within the headroom of PROCESS_RESERVED_BYTES (the exporting process) and of
# ALLOCATOR_OVERHEAD (an encode worker: what it keeps is what its last batch, counted in the budget, freed).
# An exporting process whose exporters write JSON Lines, not Parquet, keeps their pooled batches' large blocks
# in it too and peaks higher by about as much between its trims (measured at ``limit: 1000``: 8-9 MiB for
# ``jsonl.zst``, 18-21 for ``jsonl``): freed memory beside the batches in flight, which ALLOCATOR_OVERHEAD
# counts (four such batches in flight: ~40 MiB). Only while the budget is not contended
# (``MemoryBudget.contended``, ``pipeline.memory_kept_after_batch``): with many exporters' batches in flight, the
# payloads freed between live ones stayed in its heap well beyond that (a dozen JSON Lines exporters catching up
# with a 64 MiB budget: 35-40 MiB more, 2026-12-03; tests/integration/test_json_lines_backlog_memory.py).
BATCH_REUSE_BYTES = 16 * MiB
# An encode worker keeps ``BATCH_REUSE_BYTES`` after a Parquet batch whose stored records take at most this
# much (the default ``limit: 1000`` of ~3.6 KB records: ~3.6 MB) when the budget let the export read batches
# of its whole ``limit`` (``pipeline.memory_kept_after_batch``, decided in the exporting process); none
# after any other. Measured 2026-12-03 (shared 2-vCPU dev box, load 2.3-3.5, SpeedProbe factor 0.74-0.75;
# docs/benchmarks.md): such a batch frees 12-15.5 MB in its worker (Arrow's buffers, grown by doubling, and the
# writer's pages), so keeping less saves little (minor page faults per record, one worker, 10,000 records:
# nothing kept 8.0, 8 MiB 3.3, 12 MiB 3.4, 14 MiB 2.2, 16 MiB 0.04-0.4); the workers' CPU per record fell
# 17-25% (`profile_run_once.py`, interleaved). The price: the tree at ``limit: 1000`` peaks 20-24 MiB higher
# (186-188 -> 208-210 MiB PSS, two workers). That is inside what the budget counts: Parquet's standing charge
# holds each worker's fixed working memory (64 MiB, ``FormatInfo.fixed_working_memory``) for good, and such a
# worker keeps at most 16 MiB of it between batches. Batches the budget cuts below ``limit`` keep nothing: that
# is where memory is tight, as in tests/integration/test_parquet_memory.py (``limit: 10000``, no container
# limit: batches of ~1,300-1,500 records, 4.5-5.2 MB stored, which keeping 16 MiB took to 212-213 MiB); nor
# do bigger batches (``limit: 10000`` in a larger budget: ~36 MB stored, each freeing far more than is kept).
SMALL_PARQUET_BATCH_BYTES = 8 * MiB
# What ``serve_batches`` (or ``return_large_blocks_at_once``: 0) last set; None: nothing yet, glibc's own
# thresholds (the exporting process until it sends its first batch to the encode pool).
_serving_keep: int | None = None
_serving_lock = threading.Lock()
# Freed memory malloc held right after the last trim: pages a trim has already given back (glibc's
# malloc_trim returns free pages inside the heap but still counts them as free).
_held_after_trim = 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.malloc_trim  # noqa: B018 - glibc only
                libc.mallopt  # noqa: B018
                _libc = libc
                libc.mallinfo2.restype = _MallInfo2  # glibc 2.33 and later; before, every release trims
            except (OSError, AttributeError):
                pass
    return _libc if isinstance(_libc, ctypes.CDLL) else None


def share_fewer_malloc_arenas(arenas: int = 2) -> None:
    """Let the process's threads share ``arenas`` malloc arenas (glibc's default is 8 per CPU); call it
    before the export threads start."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)


def return_large_blocks_at_once(threshold: int = _LARGE_BLOCK) -> None:
    """Have malloc map every block of ``threshold`` bytes or more on its own, so that freeing it gives it
    back to the operating system at once. glibc otherwise raises this threshold (up to 32 MiB) each time
    such a block is freed, and a batch's large buffers (Arrow's columns and pages, a payload and its pickle)
    then come from the arenas, where they fragment the heap until the trim after the batch: measured, an
    encode worker's peak for a Parquet batch of 1,300 records 4-6 MiB lower, the exporting process's 7
    (docs/benchmarks.md). For the processes of the encode pool, whose batches are all such buffers (a batch's
    packed rows, its pickle, the payload), and the process that sends them there when one of its exporters
    writes Parquet (``serve_batches``)."""
    global _serving_keep
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        _serving_keep = 0


def serve_batches(keep: int) -> None:
    """How this process's malloc serves batches from now on: an encode worker's (the next batch's message
    arrives in it too), or the exporting process's for the batch it is about to pack for the pool.
    ``keep`` 0, as a Parquet batch needs (but a small one: ``SMALL_PARQUET_BATCH_BYTES``): every block of
    256 KiB or more mapped on its own and given back when freed (``return_large_blocks_at_once``, which a worker
    starts with), the free top of the heap given back soon. Otherwise blocks up to ``keep / 2`` (the batch's
    message, its packed rows, the payload, its pickle: most of a JSON Lines worker's page faults; a small Parquet
    batch's Arrow buffers) come from the heap too, and the heap keeps up to ``keep`` bytes free at its top, for
    the next batch to reuse rather than fault in again; ``release_freed_memory(keep)`` after each batch bounds
    what stays. Changes nothing while ``keep`` is what it was: a worker that only ever writes big Parquet batches
    stays as it started, and so does an exporting process that only ever sends Parquet batches (its first batch
    for the pool: ``return_large_blocks_at_once`` alone, as before)."""
    global _serving_keep
    libc = _glibc()
    if libc is None or keep == _serving_keep:
        return
    # The exporting process's readers (one per exporter) call this at once: what is recorded is what is set.
    with _serving_lock:
        if keep == _serving_keep:
            return
        if not keep and _serving_keep is None:
            return_large_blocks_at_once()
            return
        _serving_keep = keep
        # A block larger than half of what is kept still gets a mapping of its own: a batch with two of them
        # (its message and its packed rows) frees more than is kept anyway. Measured: served from the heap,
        # those of a JSON Lines batch at ``limit: 10000`` took two workers ~40 MiB more at their peak.
        libc.mallopt(_M_MMAP_THRESHOLD, max(_LARGE_BLOCK, keep // 2) if keep else _LARGE_BLOCK)
        # keep 0: glibc's default trim threshold (the one the worker inherited, which glibc raised from it in
        # the fork server, cannot be read back).
        libc.mallopt(_M_TRIM_THRESHOLD, keep or _DEFAULT_TRIM_THRESHOLD)


def _freed_memory_held() -> int | None:
    """Bytes freed but held by malloc, in all its arenas (None where glibc cannot tell)."""
    libc = _glibc()
    try:
        return libc.mallinfo2().fordblks if libc is not None else None
    except AttributeError:
        return None


def release_freed_memory(keep: int = 0) -> None:
    """Give memory freed by a finished batch back to the operating system (malloc's arenas, and Arrow's
    memory pool in a worker that wrote Parquet), unless malloc holds at most ``keep`` bytes more of it than
    after the last trim (then Arrow's pool, malloc itself unless the user chose another, is left alone too)."""
    global _held_after_trim
    libc = _glibc()
    trimmed = libc is None
    if libc is not None:
        held = _freed_memory_held() if keep else None
        if held is not None and held - _held_after_trim <= keep:
            _held_after_trim = min(_held_after_trim, held)
        else:
            libc.malloc_trim(0)
            _held_after_trim = _freed_memory_held() or 0
            trimmed = True
    # Only once pyarrow is fully imported (another thread may be importing it right now).
    pyarrow = sys.modules.get("pyarrow")
    pool = getattr(pyarrow, "default_memory_pool", None)
    # Arrow's "system" pool (export/arrow.py) is malloc, and its release_unused is a malloc_trim(0): called
    # while keeping, it gave back what was kept (a Parquet worker keeping 16 MiB, measured: 3.2 minor page faults
    # per record instead of 0.4; so too a JSON Lines worker whose fork server had imported pyarrow).
    if pool is not None and (trimmed or pool().backend_name != "system"):
        pool().release_unused()
