"""A run's data objects upload two at a time; its batches are still committed strictly in id order.

A batch's data PUT is most of its commit's time, and one PUT alone keeps neither the S3 server nor this
process busy (SeaweedFS on the 2-vCPU dev box: 52 ms for a 3.5 MB object alone, 27 ms each with two
under way; docs/benchmarks.md), so the next batch's PUT starts while the last one's is still under way.

Exactly once holds as before because of one rule (``may_start``): a batch's upload starts only when it is
the first batch past the last checkpoint written, or when that checkpoint's high-water mark already
covers it. Each checkpoint claims, as its high-water mark, every record id read for a batch so far
(``PreparePipeline.read_through``). So after a kill, every object above the checkpoint's cursor either
starts right after the cursor or lies at or below the high-water mark; the next run's first batch sweeps
the one, and every batch up to the high-water mark the others (export/sweep.py), whatever bounds the new
batches get. A claim that was never written costs only a sweep (one LIST) per batch below it after a
restart. A failed run waits for its uploads under way before it returns, so none lands after it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from .model import PreparedBatch
from .pipeline import Taken

__all__ = ["UPLOADS_AT_ONCE", "Upload", "Uploads"]

# A third at once gained nothing beyond the dev box's noise (docs/benchmarks.md) and would hold one more
# batch in memory.
UPLOADS_AT_ONCE = 2


class Upload:
    """A batch whose data object is uploading (or uploaded): what it took from the pipeline, when it
    started, and the CPU time its PUT took on the upload thread."""

    def __init__(self, taken: Taken) -> None:
        self.taken = taken
        self.future: Future[None] = Future()
        self.started = time.perf_counter()
        self.cpu_seconds = 0.0

    @property
    def batch(self) -> PreparedBatch:
        return self.taken.batch


class Uploads:
    """One run's uploads under way, oldest first. ``put`` writes a batch's data object (on an upload
    thread); ``wake`` is set whenever one ends, so that the run waits for whichever comes first, an
    upload ending or the next batch being prepared."""

    def __init__(self, put: Callable[[PreparedBatch], None], wake: threading.Event) -> None:
        self._put = put
        self._wake = wake
        self._under_way: deque[Upload] = deque()
        self._threads: ThreadPoolExecutor | None = None  # made with the first object to upload

    def __len__(self) -> int:
        return len(self._under_way)

    def may_start(self, batch: PreparedBatch, claimed_through: int) -> bool:
        """Whether ``batch`` (the next one in id order) may start uploading, given the high-water mark of
        the last checkpoint written: see the module's docstring."""
        if len(self._under_way) >= UPLOADS_AT_ONCE:
            return False
        return not self._under_way or batch.payload is None or batch.last_id <= claimed_through

    def start(self, taken: Taken) -> None:
        upload = Upload(taken)
        if taken.batch.key is None or taken.batch.payload is None:
            upload.future.set_result(None)  # nothing to write: the checkpoint alone moves the cursor past it
        else:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(max_workers=UPLOADS_AT_ONCE, thread_name_prefix="export-upload")
            upload.future = self._threads.submit(self._timed_put, upload)
            upload.future.add_done_callback(lambda _: self._wake.set())
        self._under_way.append(upload)

    def _timed_put(self, upload: Upload) -> None:
        cpu = time.thread_time()
        try:
            self._put(upload.batch)
        finally:
            upload.cpu_seconds = time.thread_time() - cpu

    def oldest_done(self) -> bool:
        return bool(self._under_way) and self._under_way[0].future.done()

    def finish_oldest(self) -> Upload:
        """The oldest upload once its object is in the bucket (waits for it); raises its failure."""
        upload = self._under_way[0]
        upload.future.result()
        self._under_way.popleft()
        return upload

    def close(self) -> None:
        """Wait for every upload still under way (its outcome no longer matters: the run failed or is
        stopping), so that no object lands after the run; give their batches' memory back."""
        wait([upload.future for upload in self._under_way])
        while self._under_way:
            self._under_way.popleft().taken.release()
        if self._threads is not None:
            self._threads.shutdown(wait=True)
