"""The process's memory for batches in flight: one byte budget that every exporter's batches share.

A batch holds memory from the moment its rows are read until its objects are committed: the stored rows,
what the encoder makes of them (in this process or in a worker of the encode pool), the payload waiting
for its upload. Eight exporters catching up a backlog at ``limit: 10000`` would hold dozens of such
batches at once, and a pod would be OOM-killed and crash-loop on the same backlog. So every batch
reserves its estimated size (``batch_cost``) from the process's ``MemoryBudget`` before its rows are
read, and gives it back once committed (or dropped); a cycle whose batch does not fit waits, in arrival
order, until others commit.

Sizing (README, "Memory"): the operator takes the budget from its container's memory limit (the cgroup's
``memory.max``), keeping ``RESERVED_BYTES`` for itself (the interpreter, kopf, the S3 clients, the encode
pool's processes); ``--memory-budget`` overrides it. One batch never needs more than half the budget: the
engine reads fewer records than ``limit`` when the records are so large that a batch would (see
``ExportEngine.batch_limit``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from collections import deque
from collections.abc import Callable

from .cgroup import memory_limit as container_memory_limit

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "MIN_BUDGET_BYTES",
    "RESERVED_BYTES",
    "MemoryBudget",
    "Reservation",
    "batch_cost",
    "budget_for_memory_limit",
    "configure_memory_budget",
    "container_memory_limit",
    "memory_budget",
    "parse_size",
    "release_freed_memory",
    "share_fewer_malloc_arenas",
]

MiB = 1 << 20
# What the operator needs besides its batches (measured): Python with kopf, the Kubernetes client and the
# API models (~110 MiB), an S3 client per bucket (~12.5 MiB each: 100 MiB for eight), and the encode pool's
# fork server and two workers with their libraries, pyarrow for Parquet (~100 MiB), and some headroom.
RESERVED_BYTES = 336 * MiB
MIN_BUDGET_BYTES = 64 * MiB
# Without a container memory limit (a laptop, `capture-export run`): enough for a few full batches.
DEFAULT_BUDGET_BYTES = 256 * MiB

# Memory a batch takes, per byte of its stored records, from its read to its encoding (calibrated with
# benchmarks/memory_backlog.py, allocator overhead included): the default format holds its rows and the
# compressed frame (the stored bytes are streamed into the compressor, never copied); a format that decodes
# holds the rows packed for the encode pool here, the pickled copy on its way and the copy in a worker, plus
# what the encoder builds there (FormatInfo.working_memory). Once encoded, a batch holds only its payload
# until it is committed (Reservation.resize).
PASS_THROUGH_FACTOR = 2.0
POOLED_FACTOR = 3.0


def batch_cost(stored_bytes: int, *, decoded: bool, working: float = 1.0) -> int:
    """The budget a batch of ``stored_bytes`` of stored records reserves until it is encoded; ``working``:
    what the encoder of a format that decodes builds per stored byte."""
    return int(stored_bytes * (POOLED_FACTOR + working if decoded else PASS_THROUGH_FACTOR))


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
    starved by small ones. A request larger than the whole budget is granted when nothing else is held,
    so a lone oversized batch still makes progress. ``high_water`` is the most ever held at once.
    """

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("a memory budget must be positive")
        self.total = total
        self.used = 0
        self.high_water = 0
        self._lock = threading.Condition()
        self._queue: deque[object] = deque()

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

    def _fits(self, size: int) -> bool:
        return self.used + size <= self.total or self.used == 0

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

def budget_for_memory_limit(memory_limit: int | None) -> int:
    """The batch budget for a container memory limit: the limit less what the operator itself needs."""
    if memory_limit is None:
        return DEFAULT_BUDGET_BYTES
    return max(MIN_BUDGET_BYTES, memory_limit - RESERVED_BYTES)


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


def configure_memory_budget(total: int | None = None, *, memory_limit: int | None = None) -> MemoryBudget:
    """Set the process's budget: ``total`` bytes, or derived from ``memory_limit`` (default: the
    container's). Batches already in flight keep the budget they reserved from."""
    global _budget
    if total is None:
        total = budget_for_memory_limit(memory_limit if memory_limit is not None else container_memory_limit())
    with _budget_lock:
        _budget = MemoryBudget(total)
        return _budget


def memory_budget() -> MemoryBudget:
    """The process's budget (configured from the container's memory limit on first use)."""
    global _budget
    with _budget_lock:
        if _budget is None:
            _budget = MemoryBudget(budget_for_memory_limit(container_memory_limit()))
        return _budget


# -- giving freed memory back ---------------------------------------------------------------------------
#
# A batch's rows are thousands of small objects that glibc's malloc carves from its arenas; once freed, the
# memory stays in the arena for reuse. With a dozen threads (cycles, readers, encoders) each filling its own
# arena, the process's RSS grows to the sum of every arena's high-water mark, far above what the batches in
# flight hold. Two glibc calls keep the RSS near what is live: fewer arenas, and trimming after each batch.
# Elsewhere (musl, macOS) both do nothing.

_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
_libc: ctypes.CDLL | bool | None = None


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
            except (OSError, AttributeError):
                pass
    return _libc if isinstance(_libc, ctypes.CDLL) else None


def share_fewer_malloc_arenas(arenas: int = 2) -> None:
    """Let the process's threads share ``arenas`` malloc arenas (glibc's default is 8 per CPU); call it
    before the export threads start."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)


def release_freed_memory() -> None:
    """Give memory freed by a finished batch back to the operating system (malloc's arenas, and Arrow's
    memory pool in a worker that wrote Parquet)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
