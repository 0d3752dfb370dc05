"""The purge: delete (or soft-delete) what the gate allows, in short chunks, so the gateway keeps writing.

Each chunk is one store transaction of at most ``batch_size`` records (``CaptureStore.expire_chunk`` and
friends). Two things keep a concurrent writer's stall short:

* Chunk length. A chunk that takes longer than ``max_chunk_seconds`` halves the next chunk (records with
  large bodies delete slowly); chunks under half of it grow back up to ``batch_size``.
* A pause between chunks. SQLite has one writer at a time and no queue: a writer that finds the table
  locked sleeps in its busy handler, polling after 1, 2, 5, 10, 15, 20 and then every 25 ms. If the purge
  took the lock again at once, the writer would wake to find it taken, again and again. So the purge
  pauses after every chunk: 15 ms after a short chunk (at most 30 ms: the writer's first polls, at most
  15 ms apart, land in the pause) and 25 ms after a longer one (the writer's poll interval by then).
  PostgreSQL locks rows, not the table, and barely needs it; the pause costs little there.

Between chunks the purge can also re-check the gate (``recheck``): when an exporter is reset or its
checkpoint becomes unreadable during a long purge, the bound drops at once for the chunks that follow.
After every chunk it tells ``on_chunk`` what the chunk did (progress reports, retention/cycle.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..clock import Clock, SystemClock
from ..store import RetentionStore

__all__ = ["PurgeStats", "Purger"]

MIN_CHUNK = 100
SHORT_CHUNK = 0.030
SHORT_PAUSE = 0.015
LONG_PAUSE = 0.025


@dataclass
class PurgeStats:
    expired: int = 0  # visible records deleted for good by age (no softDelete)
    soft_deleted: int = 0  # visible records marked and hidden (softDelete)
    purged_soft: int = 0  # soft-deleted records removed after their grace period
    chunks: int = 0
    longest_chunk_seconds: float = 0.0
    seconds: float = 0.0
    stopped: bool = False  # stopped early (time budget or shutdown): more may remain
    bound: int = 0  # the bound in force at the end (a re-check may have lowered it)

    @property
    def purged(self) -> int:
        """Records removed for good."""
        return self.expired + self.purged_soft

    def add(self, other: PurgeStats) -> None:
        self.expired += other.expired
        self.soft_deleted += other.soft_deleted
        self.purged_soft += other.purged_soft
        self.chunks += other.chunks
        self.longest_chunk_seconds = max(self.longest_chunk_seconds, other.longest_chunk_seconds)
        self.seconds += other.seconds
        self.stopped |= other.stopped


class Purger:
    """Chunked purges on one store."""

    def __init__(
        self,
        store: RetentionStore,
        *,
        batch_size: int,
        clock: Clock | None = None,
        max_chunk_seconds: float = 0.05,
        pause_seconds: float | None = None,
        recheck_seconds: float = 10.0,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> None:
        """``pause_seconds``: fixed pause between chunks; None for the adaptive pause described above,
        0 for none (tests). ``on_chunk(removed, soft_deleted)`` is called after every chunk with the
        records that chunk removed for good and hid."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.store = store
        self.batch_size = batch_size
        self.clock = clock or SystemClock()
        self.max_chunk_seconds = max_chunk_seconds
        self.pause_seconds = pause_seconds
        self.recheck_seconds = recheck_seconds
        self.on_chunk = on_chunk
        self._size = batch_size

    # -- pacing ------------------------------------------------------------------------------------------

    def _after_chunk(self, seconds: float, stats: PurgeStats) -> None:
        stats.chunks += 1
        stats.longest_chunk_seconds = max(stats.longest_chunk_seconds, seconds)
        if seconds > self.max_chunk_seconds:
            self._size = max(min(MIN_CHUNK, self.batch_size), self._size // 2)
        elif seconds < self.max_chunk_seconds / 2:
            self._size = min(self.batch_size, self._size * 2)
        pause = self.pause_seconds
        if pause is None:
            pause = SHORT_PAUSE if seconds <= SHORT_CHUNK else LONG_PAUSE
        if pause > 0:
            self.clock.sleep(pause)

    def _report(self, removed: int, soft_deleted: int) -> None:
        if self.on_chunk is not None:
            self.on_chunk(removed, soft_deleted)

    def _out_of_time(self, should_stop: Callable[[], bool], deadline: float | None) -> bool:
        return should_stop() or (deadline is not None and self.clock.monotonic() >= deadline)

    # -- the purges --------------------------------------------------------------------------------------

    def expire(
        self,
        bound: int,
        older_than_us: int,
        *,
        mark_at_us: int | None = None,
        purge_after_us: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        deadline: float | None = None,
        recheck: Callable[[], int] | None = None,
    ) -> PurgeStats:
        """Delete (``mark_at_us`` None) or soft-delete (until ``purge_after_us``) every visible record with
        ``id <= bound`` and ``ts_us < older_than_us``. ``recheck`` returns the gate's current bound (0 when
        it closed); it is called every ``recheck_seconds`` and only ever lowers the bound. ``deadline`` is
        on the clock's monotonic scale."""
        stats = PurgeStats(bound=bound)
        started = self.clock.monotonic()
        last_check = started
        after: tuple[int, int] | None = None
        while stats.bound > 0:
            if self._out_of_time(should_stop, deadline):
                stats.stopped = True
                break
            if recheck is not None and self.clock.monotonic() - last_check >= self.recheck_seconds:
                stats.bound = min(stats.bound, recheck())
                last_check = self.clock.monotonic()
                if stats.bound <= 0:
                    break
            t0 = time.perf_counter()
            chunk = self.store.expire_chunk(stats.bound, older_than_us, self._size, after=after, mark_at_us=mark_at_us,
                                            purge_after_us=purge_after_us)
            seconds = time.perf_counter() - t0
            if mark_at_us is None:
                stats.expired += chunk.count
                self._report(chunk.count, 0)
            else:
                stats.soft_deleted += chunk.count
                self._report(0, chunk.count)
            if chunk.resume_after is None:
                stats.chunks += 1
                stats.longest_chunk_seconds = max(stats.longest_chunk_seconds, seconds)
                break
            after = chunk.resume_after
            self._after_chunk(seconds, stats)
        stats.seconds = self.clock.monotonic() - started
        return stats

    def purge_soft_deleted(
        self,
        now_us: int,
        *,
        max_id: int | None = None,
        undated_marked_before_us: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        deadline: float | None = None,
    ) -> PurgeStats:
        """Remove for good every soft-deleted record whose grace period is over at ``now_us`` (and with an id
        at most ``max_id``, when given); see ``RetentionStore.purge_soft_deleted_chunk``."""
        stats = PurgeStats()
        started = self.clock.monotonic()
        while True:
            if self._out_of_time(should_stop, deadline):
                stats.stopped = True
                break
            size = self._size
            t0 = time.perf_counter()
            count = self.store.purge_soft_deleted_chunk(now_us, size, max_id=max_id,
                                                        undated_marked_before_us=undated_marked_before_us)
            seconds = time.perf_counter() - t0
            stats.purged_soft += count
            self._report(count, 0)
            if count < size:
                stats.chunks += 1
                stats.longest_chunk_seconds = max(stats.longest_chunk_seconds, seconds)
                break
            self._after_chunk(seconds, stats)
        stats.seconds = self.clock.monotonic() - started
        return stats

    def restore(self, *, deleted_since_us: int | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Bring back every soft-deleted record (only those marked at or after ``deleted_since_us``);
        ``progress`` is called with the count restored so far after every chunk."""
        restored = 0
        while True:
            size = self._size
            t0 = time.perf_counter()
            count = self.store.restore_chunk(size, deleted_since_us=deleted_since_us)
            restored += count
            if progress is not None:
                progress(restored)
            if count < size:
                return restored
            self._after_chunk(time.perf_counter() - t0, PurgeStats())
