"""The export engine: one run drains the backlog batch by batch, exactly once. No Kubernetes here.

A batch goes read -> check (rows our own append did not seal are checked in full and stripped of
credentials, store/check.py) -> [filter, privacy, redact] -> encode -> PUT data object -> PUT
checkpoint -> advance cursor. A row that fails the check is never exported: with ``onCorruptRecord:
Hold`` the batch ends before it and the run fails naming it (the records before it are committed);
with ``Quarantine`` it is moved into the store's quarantine before the batch is committed, and the
batch goes on without it.

The next batches are read and encoded ahead (export/pipeline.py: on helper threads, or by the process's
encode pool for the formats that decode) while two data objects upload at once (export/uploads.py: why
that keeps exactly once). Batches are committed strictly in order, and nothing advances the cursor before
both objects are in the bucket. What happens to a batch's rows before upload is export/batch.py.

Before it writes, a run proves it may: the cycle claims the destination (export/ownership.py) and the
engine calls ``hold`` before each batch (a lease renewal at most every ttl/3). Data objects carry
metadata naming the exporter and the store (export/provenance.py); the sweep (export/sweep.py) deletes
only such objects of this exporter (or, from before that metadata, objects that hold exactly the store's records) and
reports any other object it finds where it sweeps. ``recover`` refuses a checkpoint written from another
store, a cursor above any id the store assigned, and a checkpoint that vanished under a saved cursor.

Records are decoded only when the spec asks for it (a filter, privacy mode, redactions, or a format other
than cbor-zstd); the default ships the stored CBOR bytes as they are. A batch whose records the filter
all excludes writes no data object, but still sweeps and checkpoints: its records are handled. With a
dated ``pathTemplate``, a batch is cut where the folder of its records would change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from ..api import S3ExporterSpec
from ..api.vocabulary import Domain, ExportOutcome, Reason
from ..clock import Clock, SystemClock
from ..objectstore import ObjectStore
from ..store import CorruptRecord, RecordReader, StoredRecord, StoreError
from .batch import BatchRecipe, EncodedBatch, encode_batch
from .budget import MemoryBudget, batch_cost_for, memory_budget
from .checkpoint import Checkpoint, Checkpoints, reused_ids
from .connection import ConnectionReport, run_connection_test
from .formats import FORMATS, ZSTD_ONE_SHOT_BYTES, FormatUnavailable
from .layout import ObjectLayout
from .model import (
    BatchResult,
    Cursor,
    ExporterId,
    ExportFailure,
    PreparedBatch,
    Requests,
    RetryPolicy,
    RunResult,
    unexpected_failure,
)
from .ownership import writer_instance
from .pipeline import POOL_MIN_ROWS, PreparePipeline, SynchronousPipeline, Taken
from .pool import EncodePool, encode_pool
from .provenance import object_metadata
from .sweep import BucketSweep
from .uploads import Upload, Uploads

__all__ = ["POOL_MIN_ROWS", "ExportEngine", "SynchronousPipeline", "encode_batch"]

# The stored size of a record the engine assumes until it has read some (the seed's average is ~3.5 KB).
ASSUMED_RECORD_BYTES = 4096
ESTIMATE_MARGIN = 1.25
# The old name of the pipeline, kept for tests that replace it with SynchronousPipeline.
_PreparePipeline = PreparePipeline


class ExportEngine:
    """Exports one S3Exporter's records. Holds no state between runs except the need to sweep."""

    def __init__(
        self,
        spec: S3ExporterSpec,
        exporter: ExporterId,
        store: RecordReader,
        objects: ObjectStore,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        pool: EncodePool | Literal["shared"] | None = "shared",
        budget: MemoryBudget | None = None,
        store_id: str | None = None,
        hold: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self.exporter = exporter
        self.store = store
        self.objects = objects
        # Rows whose seal the store's key checks are our own append's and go out unchecked; the others are
        # checked in full, wherever the batch is encoded (the seal travels in the recipe).
        self.recipe = BatchRecipe.from_spec(spec, store.record_seal())
        info = FORMATS[self.recipe.format]
        try:
            info.check_available()
        except FormatUnavailable as exc:
            raise ExportFailure(Reason.FORMAT_UNAVAILABLE, str(exc), domain=Domain.FORMAT, transient=False) from None
        self.extension, self.content_type = info.object_type(self.recipe.compression)
        # The formats that decode go to the encode pool (the process's, unless one is given); None: in-process.
        self.pool = (encode_pool() if pool == "shared" else pool) if self.recipe.decodes else None
        self.budget = budget or memory_budget()
        # A format with a library of its own (Parquet: pyarrow) is written only by the pool's workers when
        # there is a pool, so that this process never loads it. Each encoder (worker, or this process) keeps
        # the library and the encoder's fixed working memory once it has written a batch: a standing charge.
        self._library_in_pool = self.pool is not None and info.library_memory > 0
        if self._library_in_pool and self.pool is not None:
            self.pool.load_library(info.library_modules)
        if self.pool is not None and not info.keeps_batch_memory:
            self.pool.bound_memory_tightly()
        if self.recipe.decodes and (info.library_memory or info.fixed_working_memory):
            encoders = self.pool.workers if self.pool is not None else 1
            self.budget.charge_standing(f"{self.recipe.format} encoders",
                                        encoders * (info.library_memory + info.fixed_working_memory))
        self._cost = batch_cost_for(decoded=self.recipe.decodes, pooled=self.pool is not None,
                                    working=info.working_memory, joined_up_to=ZSTD_ONE_SHOT_BYTES)
        self.clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self.layout = ObjectLayout(spec.prefix, exporter.namespace, exporter.name, self.extension,
                                   spec.path_template, spec.hive_partitioning)
        # Until one batch has been written cleanly, objects left by a killed or failed attempt may sit
        # at the cursor with other bounds; the first batch sweeps them away.
        self._sweep_pending = True
        # Stored bytes per record, a running average of what this engine read (sizes the memory estimates).
        self._record_bytes = float(ASSUMED_RECORD_BYTES)
        # Every object-store request of this engine, its checkpoint's included, retried and counted here.
        self._call = Requests(self.clock, self.retry)
        self.store_id = store_id if store_id is not None else store.identity()
        # Called before each batch is written: raises when this worker may no longer write the destination.
        self.hold = hold or (lambda: None)
        self._metadata = object_metadata(str(exporter), self.store_id)
        self.checkpoints = Checkpoints(objects, self.layout, exporter, self.clock, requests=self._call,
                                       store_id=self.store_id, instance=writer_instance())
        self.sweep = BucketSweep(objects, self.layout, store, exporter, self.store_id, self._call)

    @property
    def requests(self) -> int:
        """Object-store requests made so far (every attempt)."""
        return self._call.count

    # -- checkpoint ---------------------------------------------------------------------------------

    def recover(self, saved: Cursor | None, *, saved_store_id: str | None = None, resetting: bool = False) -> Cursor:
        """The cursor to resume from: the bucket's checkpoint, or the saved state (status or state file,
        written from the store ``saved_store_id``) when there is no checkpoint, after checking that they
        belong to this store; a saved state ahead of the checkpoint goes back to it (see below). Raises
        ExportFailure, writing nothing:

        * ``StoreMismatch``: the checkpoint (or, unless ``resetting``, the saved state) was written from
          another store: the store was recreated or replaced under the exporter; or, unless ``resetting``,
          the store's record at the checkpoint's cursor is not the one exported (ids restarted);
        * ``CheckpointMissing``: the saved cursor is above 0 but the checkpoint is gone (the bucket or the
          prefix was wiped): re-exporting or skipping silently would both be wrong; a reset re-exports;
        * ``CursorAheadOfStore``: the cursor is above any id the store ever assigned (a forged checkpoint,
          a store restored from an older backup); a reset re-exports;
        * ``CheckpointCorrupt``: the checkpoint is not one (a reset re-exports).

        ``resetting``: a reset follows at once, so only a store mismatch in the checkpoint still refuses.
        A checkpoint from before store identities adopts this store's identity here (rewritten at once).
        When neither the checkpoint nor the saved state knows how far earlier runs wrote, the bucket is
        listed for it, so the first batches sweep every overlapping object."""
        saved = saved or Cursor()
        try:
            checkpoint = self.checkpoints.read_full()
        except ExportFailure as failure:
            if not (resetting and failure.reason == Reason.CHECKPOINT_CORRUPT):
                raise
            checkpoint = None
        if checkpoint is not None and checkpoint.store_id and checkpoint.store_id != self.store_id:
            raise ExportFailure(
                Reason.STORE_MISMATCH,
                f"checkpoint {self.checkpoints.key} was written from store {checkpoint.store_id}, but this "
                f"exporter's store is {self.store_id}: the store was recreated or replaced. Nothing is written "
                "(the objects there are the only copy of the other store's records); export this store with "
                "a new S3Exporter or prefix",
                domain=Domain.STORE, transient=False)
        reused = None if checkpoint is None or resetting else self._reused_ids(checkpoint)
        if reused is not None:
            raise ExportFailure(
                Reason.STORE_MISMATCH,
                f"{reused}. Nothing is written (the objects there are the only copy of the old records, and "
                "resuming would skip the new ones up to the cursor); export this store with a new S3Exporter or "
                "prefix", domain=Domain.STORE, transient=False)
        if saved_store_id and saved_store_id != self.store_id and not resetting:
            raise ExportFailure(
                Reason.STORE_MISMATCH,
                f"the saved state (cursor {saved.position}) was written from store {saved_store_id}, but this "
                f"exporter's store is {self.store_id}: the store was recreated or replaced. Nothing is "
                "written; a reset (annotation capture.dev/reset-cursor) exports this store from the beginning",
                domain=Domain.STORE, transient=False)
        if checkpoint is None and saved.position > 0 and not resetting:
            raise ExportFailure(
                Reason.CHECKPOINT_MISSING,
                f"checkpoint {self.checkpoints.key} is gone although the cursor is at {saved.position}: the "
                "bucket or the prefix was wiped or the checkpoint deleted. Nothing is re-exported or skipped; "
                "a reset (annotation capture.dev/reset-cursor, or a new value of it) re-exports from the "
                "beginning",
                domain=Domain.BUCKET, transient=False)
        cursor = saved.newest(checkpoint.cursor if checkpoint is not None else None)
        if resetting:
            return cursor
        highest = self._highest_assigned_id()
        if cursor.position > highest:
            source = "checkpoint" if checkpoint is not None and checkpoint.cursor.order() == cursor.order() else \
                "saved state"
            raise ExportFailure(
                Reason.CURSOR_AHEAD_OF_STORE,
                f"cursor {cursor.position} (from the {source}) is above the highest id this store ever "
                f"assigned ({highest}): a forged checkpoint, or a store restored from an older backup. Nothing "
                "is written; a reset (annotation capture.dev/reset-cursor) re-exports from the beginning",
                domain=Domain.STORE, transient=False)
        if checkpoint is not None and saved.order() > checkpoint.cursor.order():
            # The saved state is written after the checkpoint, so it is never rightly ahead of it: it was
            # edited (anyone with patch on status can), or the bucket was rolled back. Resuming there would
            # skip records and then write that cursor into the checkpoint, where the retention gate takes it
            # as proof that they were exported. The checkpoint wins; the range between is exported again,
            # swept (the high-water mark keeps the saved position).
            cursor = Cursor(checkpoint.cursor.epoch, checkpoint.cursor.position, cursor.high_water)
        if checkpoint is None:
            cursor = Cursor(cursor.epoch, cursor.position, max(cursor.high_water, self.find_high_water()))
        elif checkpoint.store_id is None:
            self.hold()
            # adopt this store's identity (an upgrade)
            self.checkpoints.write(checkpoint.cursor, None, cursor_timestamp_us=checkpoint.cursor_timestamp_us)
        return cursor

    def _reused_ids(self, checkpoint: Checkpoint) -> str | None:
        try:
            return reused_ids(checkpoint, self.store)
        except StoreError as exc:
            raise ExportFailure(Reason.STORE_UNAVAILABLE, str(exc), domain=Domain.STORE, transient=True) from None

    def _highest_assigned_id(self) -> int:
        try:
            return self.store.highest_assigned_id()
        except StoreError as exc:
            raise ExportFailure(Reason.STORE_UNAVAILABLE, str(exc), domain=Domain.STORE, transient=True) from None

    def find_high_water(self) -> int:
        """The highest record id in this exporter's data objects in the bucket (0 when there is none),
        found by listing them: for when neither the checkpoint nor the saved state knows it."""
        return self.sweep.find_high_water()

    def reset(self, current: Cursor) -> Cursor:
        """Start again from the beginning: a new epoch, recorded in the checkpoint at once so that the
        retention gate closes and a restart does not jump back to the old position. The high-water mark
        (below which every batch sweeps) is what the bucket holds, found by listing, so that a forged
        cursor does not make every batch sweep."""
        plausible = current.high_water if current.high_water <= self._highest_assigned_id() else 0
        cursor = Cursor(epoch=current.epoch + 1, position=0, high_water=max(plausible, self.find_high_water()))
        self.checkpoints.write(cursor, None)
        self._sweep_pending = True
        return cursor

    def check_connection(self) -> ConnectionReport:
        """Connection test (as OpenRouter's "Test Connection"): write, read, list and delete a probe object
        under the control folder (export/connection.py)."""
        sse = self.spec.server_side_encryption
        encryption = (sse.algorithm + (f" (key {sse.kms_key_id})" if sse.kms_key_id else "")) if sse else None
        return run_connection_test(self.objects, self.spec.bucket, self.layout.probe_key(), encryption=encryption,
                                   tls_unverified=self.spec.insecure_skip_tls_verify, call=self._call)

    # -- one run ------------------------------------------------------------------------------------

    def run(
        self,
        cursor: Cursor,
        *,
        max_seconds: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> RunResult:
        """Export batches past ``cursor`` until caught up, stopped, out of time, or failed."""
        result = RunResult(start=self.clock.now(), cursor=cursor)
        started = self.clock.monotonic()
        requests_before = self.requests

        def keep_going() -> bool:
            out_of_time = max_seconds is not None and self.clock.monotonic() - started >= max_seconds
            return not out_of_time and not should_stop()

        pipeline = _PreparePipeline(self, cursor, keep_going)
        try:
            self._upload_and_commit(pipeline, result, on_batch)
            if pipeline.interrupted and should_stop():
                result.outcome = ExportOutcome.STOPPED
        except ExportFailure as failure:
            result.outcome = ExportOutcome.FAILED
            result.failure = failure
            self._sweep_pending = True
        except Exception as exc:  # contained: this exporter fails with a reason, the others go on
            result.outcome = ExportOutcome.FAILED
            result.failure = unexpected_failure(exc, f"the cursor stays at {result.cursor.position}")
            self._sweep_pending = True
        finally:
            pipeline.close()
        result.requests = self.requests - requests_before
        result.foreign_objects = self.sweep.take_foreign()
        try:
            result.backlog = self.store.backlog(result.cursor.position)
        except StoreError:
            result.backlog = None
        result.end = self.clock.now()
        return result

    def _upload_and_commit(self, pipeline: PreparePipeline | SynchronousPipeline, result: RunResult,
                           on_batch: Callable[[BatchResult], None] | None) -> None:
        """Take the pipeline's batches in id order, upload their data objects two at a time
        (export/uploads.py) and commit each, in order, once its object is in the bucket."""
        # Objects of earlier runs (killed, failed, an earlier epoch) may lie at or below this mark.
        swept_through = result.cursor.high_water
        # What the last checkpoint this run wrote claims; nothing before it (see Uploads.may_start).
        claimed_through = result.cursor.position
        uploads = Uploads(self._upload, pipeline.wake)
        waiting: Taken | None = None  # taken from the pipeline, not uploading yet
        held = False  # a batch that stops before a corrupt record was taken: take nothing after it
        # A batch that could not be prepared (unencodable, the pool died): the run fails with it once the
        # batches before it, already uploading, are committed.
        unprepared: Exception | None = None
        try:
            while True:
                pipeline.wake.clear()
                if waiting is None and not held and unprepared is None:
                    try:
                        waiting = pipeline.take()
                    except Exception as exc:
                        unprepared = exc
                if waiting is not None and uploads.may_start(waiting.batch, claimed_through):
                    self.hold()
                    uploads.start(waiting)
                    held = waiting.batch.held is not None
                    waiting = None
                    continue
                no_more = held or unprepared is not None or pipeline.finished
                if uploads.oldest_done() or (uploads and (waiting is not None or no_more)):
                    claimed_through = self._commit_oldest(uploads, pipeline, result, on_batch,
                                                          swept_through=swept_through)
                    continue
                if no_more and not uploads and waiting is None:
                    if unprepared is not None:
                        raise unprepared
                    return
                pipeline.wake.wait(0.5)  # for an upload to end or the next batch to be handed over
        finally:
            if waiting is not None:
                waiting.release()
            uploads.close()

    def _commit_oldest(self, uploads: Uploads, pipeline: PreparePipeline | SynchronousPipeline, result: RunResult,
                       on_batch: Callable[[BatchResult], None] | None, *, swept_through: int) -> int:
        """Commit the oldest upload once its object is in the bucket (see ``_commit``), claiming every id the
        pipeline has read by then, and return the high-water mark its checkpoint claims. Its batch is let go
        on return, as its memory is given back to the budget: held until the next commit, a dozen exporters'
        last payloads took the pod past its memory allowance (tests/integration/test_json_lines_backlog_memory.py)."""
        upload = uploads.finish_oldest()
        try:
            done = self._commit(upload, result.cursor, claim=pipeline.read_through, swept_through=swept_through)
            self._add(result, done)
            if on_batch is not None:
                on_batch(done)
        finally:
            upload.taken.release()
        if upload.batch.held is not None:
            raise upload.batch.held  # the records before the corrupt one are committed; it is not
        return done.cursor.high_water

    @staticmethod
    def _add(result: RunResult, done: BatchResult) -> None:
        result.cursor = done.cursor
        result.rows += done.rows
        result.bytes += done.bytes
        result.raw_bytes += done.raw_bytes
        result.filtered += done.filtered
        result.quarantined.extend(done.quarantined)
        if done.key is not None:
            result.objects += 1
            result.last_key = done.key
        result.outcome = ExportOutcome.SUCCEEDED

    def _read(self, after: int, limit: int | None = None) -> list[StoredRecord]:
        try:
            return self.store.read_batch(after, limit or self.spec.limit)
        except StoreError as exc:
            raise ExportFailure(Reason.STORE_UNAVAILABLE, str(exc), domain=Domain.STORE, transient=True) from None

    def _cut(self, rows: list[StoredRecord]) -> tuple[list[StoredRecord], list[StoredRecord]]:
        """Split rows at the first record whose folder differs from the first one's (a batch never spans
        two folders of a dated ``pathTemplate``): the batch, and the rows the next batch starts with."""
        if not rows or not self.layout.time_partitioned:
            return rows, []
        try:
            start, end = self.layout.partition_span(rows[0].timestamp_us)
        except (OverflowError, ValueError):
            # The SQL stores' readers already hand such a row to the check as corrupt (store/columns.py); this
            # guards a store that does not (the in-memory one of the tests, a future one).
            raise ExportFailure(Reason.CORRUPT_RECORD, f"record {rows[0].id} is corrupt: its timestamp "
                                f"({rows[0].timestamp_us} µs since 1970) is outside the years 1-9999 a dated "
                                "pathTemplate can name; export holds before it until it is fixed",
                                domain=Domain.STORE, transient=False) from None
        for index, row in enumerate(rows):
            if not start <= row.timestamp_us < end:
                return rows[:index], rows[index:]
        return rows, []

    # -- memory and encoding (export/pipeline.py calls these) -----------------------------------------

    def batch_cost(self, rows: list[StoredRecord]) -> int:
        """The memory budget a batch of these rows takes while in flight."""
        stored = sum(len(row.body) for row in rows)
        if rows:
            size = stored / len(rows)
            # An average that follows larger records at once and smaller ones slowly.
            self._record_bytes = size if size > self._record_bytes else 0.8 * self._record_bytes + 0.2 * size
        return self._cost.of(stored)

    def estimated_cost(self, records: int) -> int:
        """The budget to reserve before reading a batch of up to ``records`` records: a quarter more than
        the records read so far suggest, so that a batch of larger records than usual still fits."""
        return self._cost.of(int(records * self._record_bytes * ESTIMATE_MARGIN))

    def batch_limit(self) -> int:
        """Records per batch: ``limit``, or fewer when one batch would take more than half of the budget
        that standing charges leave (so that one batch can upload while the next is prepared): a batch of
        ``limit`` records too large for the budget is exported in several smaller ones."""
        share = max(0, self.budget.total - self.budget.standing) // 2
        records = self._cost.stored_bytes_within(share) / (self._record_bytes * ESTIMATE_MARGIN)
        return max(1, min(self.spec.limit, int(records)))

    def _prepared(self, first: StoredRecord, encoded: EncodedBatch, read_seconds: float,
                  read_cpu_seconds: float) -> PreparedBatch:
        """The encoded batch, ready to commit. Runs on the run's own thread, in id order, just before the
        batch is committed: the records that failed the check are moved to the quarantine here, so that
        the cursor never passes a corrupt record still in ``captures`` (retention could purge it)."""
        for record_id, reason in encoded.quarantined:
            self._quarantine(CorruptRecord(record_id, reason))
        held = None if encoded.held is None else ExportFailure(Reason.CORRUPT_RECORD, encoded.held,
                                                               domain=Domain.STORE, transient=False)
        payload = encoded.payload
        return PreparedBatch(
            first_id=encoded.first_id,
            last_id=encoded.last_id,  # the range handled, quarantined records included
            first_timestamp_us=first.timestamp_us,
            rows=encoded.rows,
            raw_bytes=encoded.raw_bytes,
            payload=payload,
            # Named by the range of records it holds: quarantined records at the edges are left out, so a
            # reader (and verify) sees a name that matches its first and last record.
            key=self.layout.data_key(encoded.kept_first_id, encoded.kept_last_id, first.timestamp_us)
            if payload is not None and encoded.kept_first_id is not None and encoded.kept_last_id is not None
            else None,
            read_seconds=read_seconds,
            encode_seconds=encoded.seconds,
            filtered=encoded.filtered,
            read_cpu_seconds=read_cpu_seconds,
            encode_cpu_seconds=encoded.cpu_seconds,
            quarantined=list(encoded.quarantined),
            held=held,
            last_timestamp_us=encoded.last_timestamp_us,
        )

    def _quarantine(self, corrupt: CorruptRecord) -> None:
        """Move a record that failed the check into the store's quarantine (onCorruptRecord: Quarantine)."""
        move = getattr(self.store, "quarantine", None)
        if move is None:
            raise ExportFailure(Reason.CORRUPT_RECORD, f"{corrupt}; this store has no quarantine, so the export "
                                "holds before it", domain=Domain.STORE, transient=False)
        try:
            move(corrupt.record_id, corrupt.reason, str(self.exporter), int(self.clock.now().timestamp() * 1e6))
        except StoreError as exc:
            raise ExportFailure(Reason.STORE_UNAVAILABLE, str(exc), domain=Domain.STORE, transient=True) from None

    def _upload(self, batch: PreparedBatch) -> None:
        """PUT a batch's data object (on an upload thread, export/uploads.py)."""
        key, payload = batch.key, batch.payload
        if key is not None and payload is not None:
            self._call(lambda: self.objects.put(key, payload, content_type=self.content_type,
                                                metadata=self._metadata))

    def _commit(self, upload: Upload, cursor: Cursor, *, claim: int, swept_through: int) -> BatchResult:
        """Commit a batch whose data object is in the bucket: sweep its range if objects of an earlier run
        may lie there, then checkpoint it, claiming every id up to ``claim`` (see export/uploads.py)."""
        batch, cpu0 = upload.batch, time.thread_time()
        key, payload = batch.key, batch.payload
        # Also for a batch the filter emptied: an object an earlier attempt (another filter, another
        # epoch) left in its range must go, or its records would be exported twice.
        if self._sweep_pending or batch.first_id <= swept_through:
            self.sweep.sweep_overlapping(batch, swept_through)
        new_cursor = Cursor(cursor.epoch, batch.last_id, max(cursor.high_water, batch.last_id, claim))
        self.checkpoints.write(new_cursor, key, cursor_timestamp_us=batch.last_timestamp_us)
        self._sweep_pending = False
        return BatchResult(
            key=key,
            first_id=batch.first_id,
            last_id=batch.last_id,
            rows=batch.rows,
            raw_bytes=batch.raw_bytes,
            bytes=len(payload) if payload is not None else 0,
            cursor=new_cursor,
            read_seconds=batch.read_seconds,
            encode_seconds=batch.encode_seconds,
            upload_seconds=time.perf_counter() - upload.started,
            filtered=batch.filtered,
            quarantined=tuple(batch.quarantined),
            read_cpu_seconds=batch.read_cpu_seconds,
            encode_cpu_seconds=batch.encode_cpu_seconds,
            commit_cpu_seconds=time.thread_time() - cpu0 + upload.cpu_seconds,
        )

    def _skip_batch(self, after: int, last: int, timestamp_us: int) -> PreparedBatch:
        """A batch that writes nothing and moves the cursor past an object that is kept as it is."""
        return PreparedBatch(first_id=after + 1, last_id=last, first_timestamp_us=timestamp_us, rows=0,
                             raw_bytes=0, payload=None, key=None, read_seconds=0.0, encode_seconds=0.0)
