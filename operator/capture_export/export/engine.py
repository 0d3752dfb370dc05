"""The export engine: one run drains the backlog batch by batch, exactly once. No Kubernetes here.

A batch goes read -> check (rows our own append did not seal are checked in full and stripped of
credentials, store/check.py) -> [filter, privacy, redact] -> encode -> PUT data object -> PUT
checkpoint -> advance cursor. A row that fails the check is never exported: with ``onCorruptRecord:
Hold`` the batch ends before it and the run fails naming it (the records before it are committed);
with ``Quarantine`` it is moved into the store's quarantine and the batch goes on without it.

The next batch is read and encoded on a helper thread while the current one uploads, but batches are
committed strictly in order, and nothing advances the cursor before both objects are in the bucket.

Records are decoded only when the spec asks for it (a filter, privacy mode, redactions, or a format other
than cbor-zstd); the default ships the stored CBOR bytes as they are. A batch whose records the filter
all excludes writes no data object, but still sweeps and checkpoints: its records are handled. With a
dated ``pathTemplate``, a batch is cut where the folder of its records would change.
"""

from __future__ import annotations

import hmac
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC
from typing import Any

import cbor2

from ..api import S3ExporterSpec
from ..api.vocabulary import Domain, ExportOutcome, Reason
from ..clock import Clock, SystemClock
from ..objectstore import ObjectStore
from ..store import CorruptRecord, RecordReader, StoredRecord, StoreError
from ..store.check import check_foreign
from ..store.credentials import DEFAULT_POLICY, CredentialPolicy
from ..store.records import with_id
from ..store.seal import RecordSeal
from .checkpoint import Checkpoints
from .connection import ConnectionReport, run_connection_test
from .formats import BatchEncoder, FormatUnavailable, encoder_for, record_ids
from .layout import ObjectLayout, parse_range
from .model import BatchResult, Cursor, ExporterId, ExportFailure, PreparedBatch, Requests, RetryPolicy, RunResult
from .transform import RecordTransform, peek_fields

__all__ = ["ExportEngine", "SynchronousPipeline", "encode_batch"]


class ExportEngine:
    """Exports one S3Exporter's records. Holds no state between runs except the need to sweep."""

    def __init__(
        self,
        spec: S3ExporterSpec,
        exporter: ExporterId,
        store: RecordReader,
        objects: ObjectStore,
        *,
        encoder: BatchEncoder | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.spec = spec
        self.exporter = exporter
        self.store = store
        self.objects = objects
        if encoder is None:
            try:
                encoder = encoder_for(spec.format, spec.compression)
            except FormatUnavailable as exc:
                raise ExportFailure(Reason.FORMAT_UNAVAILABLE, str(exc), domain=Domain.FORMAT,
                                    transient=False) from None
        self.encoder = encoder
        self.transform = RecordTransform(spec)
        self.policy = CredentialPolicy(spec.strip_headers)
        # Rows whose seal this checks are our own append's and go out unchecked; the others are checked.
        self.seal = store.record_seal()
        self.clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self.layout = ObjectLayout(spec.prefix, exporter.namespace, exporter.name, self.encoder.extension,
                                   spec.path_template, spec.hive_partitioning)
        # Until one batch has been written cleanly, objects left by a killed or failed attempt may sit
        # at the cursor with other bounds; the first batch sweeps them away.
        self._sweep_pending = True
        # Keys of objects found to hold records the store no longer has: kept through re-exports.
        self._preserved: set[str] = set()
        # Every object-store request of this engine, its checkpoint's included, retried and counted here.
        self._call = Requests(self.clock, self.retry)
        self.checkpoints = Checkpoints(objects, self.layout, exporter, self.clock, requests=self._call)

    @property
    def requests(self) -> int:
        """Object-store requests made so far (every attempt)."""
        return self._call.count

    # -- checkpoint ---------------------------------------------------------------------------------

    def recover(self, saved: Cursor | None) -> Cursor:
        """The cursor to resume from: the newest of the saved state and the bucket's checkpoint."""
        return self.checkpoints.recover(saved)

    def reset(self, current: Cursor) -> Cursor:
        """Start again from the beginning: a new epoch, recorded in the checkpoint at once so that the
        retention gate closes and a restart does not jump back to the old position."""
        cursor = Cursor(epoch=current.epoch + 1, position=0, high_water=max(current.high_water, current.position))
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
            for batch in pipeline:
                done = self._commit(batch, result.cursor)
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
                if on_batch is not None:
                    on_batch(done)
                if batch.held is not None:
                    raise batch.held  # the records before the corrupt one are committed; it is not
            if pipeline.interrupted and should_stop():
                result.outcome = ExportOutcome.STOPPED
        except ExportFailure as failure:
            result.outcome = ExportOutcome.FAILED
            result.failure = failure
            self._sweep_pending = True
        finally:
            pipeline.close()
        result.requests = self.requests - requests_before
        try:
            result.backlog = self.store.backlog(result.cursor.position)
        except StoreError:
            result.backlog = None
        result.end = self.clock.now()
        return result

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
        start, end = self.layout.partition_span(rows[0].timestamp_us)
        for index, row in enumerate(rows):
            if not start <= row.timestamp_us < end:
                return rows[:index], rows[index:]
        return rows, []

    def _encode(self, rows: list[StoredRecord], read_seconds: float) -> PreparedBatch:
        t0 = time.perf_counter()
        prepared, bad = _prepare_rows(rows, self.seal, self.policy)
        kept_rows: list[StoredRecord] = rows
        records: list[bytes] = prepared  # type: ignore[assignment]  # no CorruptRecord in it (checked below)
        quarantined: list[tuple[int, str]] = []
        held: ExportFailure | None = None
        if bad and self.spec.on_corrupt_record == "Quarantine":
            for index in bad:
                corrupt: CorruptRecord = prepared[index]  # type: ignore[assignment]
                self._quarantine(corrupt)
                quarantined.append((corrupt.record_id, corrupt.reason))
            moved = set(bad)
            good = [index for index in range(len(rows)) if index not in moved]
            kept_rows, records = [rows[i] for i in good], [prepared[i] for i in good]  # type: ignore[misc]
        elif bad:
            # Hold: the batch ends before the first corrupt record; the run fails once it is committed.
            held = ExportFailure(Reason.CORRUPT_RECORD, f"{prepared[bad[0]]}; the export holds before it until "
                                 "it is fixed in the store (or set onCorruptRecord: Quarantine)",
                                 domain=Domain.STORE, transient=False)
            if bad[0] == 0:
                raise held
            rows = kept_rows = rows[:bad[0]]
            records = records[:bad[0]]
        try:
            kept = self._transform(kept_rows, records)
        except CorruptRecord as exc:
            raise ExportFailure(Reason.CORRUPT_RECORD, f"{exc}; export holds before it until it is fixed",
                                domain=Domain.STORE, transient=False) from None
        first, last = rows[0], rows[-1]  # the range handled, quarantined records included
        payload: bytes | None = None
        try:
            if kept is None:
                exported = len(records)
                if records:
                    payload = self.encoder.encode(records)  # the default: stored bytes as they are
            else:
                exported = len(kept)
                if kept:
                    if self.encoder.decoded:
                        payload = self.encoder.encode_records([record for record, _ in kept])
                    else:
                        payload = self.encoder.encode(
                            [raw if raw is not None else cbor2.dumps(record, timezone=UTC) for record, raw in kept]
                        )
        except Exception as exc:  # an encoder that cannot represent a record
            culprit = self._first_unencodable(kept) if kept else None
            which = f"record {culprit}" if culprit is not None else f"records {first.id}-{last.id}"
            raise ExportFailure(Reason.ENCODE_FAILED, f"{which} could not be written as {self.spec.format}: "
                                f"{exc.__class__.__name__}: {str(exc)[:200]}; export holds before it",
                                domain=Domain.FORMAT, transient=False) from None
        return PreparedBatch(
            first_id=first.id,
            last_id=last.id,
            first_timestamp_us=first.timestamp_us,
            rows=exported,
            raw_bytes=sum(map(len, records)),
            payload=payload,
            # Named by the range of records it holds: quarantined records at the edges are left out, so
            # a reader (and verify) sees a name that matches its first and last record.
            key=self.layout.data_key(kept_rows[0].id, kept_rows[-1].id, first.timestamp_us)
            if payload is not None else None,
            read_seconds=read_seconds,
            encode_seconds=time.perf_counter() - t0,
            filtered=len(records) - exported,
            quarantined=quarantined,
            held=held,
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

    def _first_unencodable(self, kept: list[tuple[dict[str, Any], bytes | None]]) -> Any:
        """The id of the first record the encoder cannot write on its own (to name it in the failure)."""
        for record, _ in kept:
            try:
                self.encoder.encode_records([record])
            except Exception:
                return record.get("id")
        return None

    def _transform(
        self, rows: list[StoredRecord], records: list[bytes]
    ) -> list[tuple[dict[str, Any], bytes | None]] | None:
        """None when records go out as stored (no filter, no rewrite, a CBOR format); else the records
        that pass the filter, decoded and rewritten, each with its CBOR bytes when they are unchanged."""
        transform = self.transform
        if transform.identity and not self.encoder.decoded:
            return None
        kept: list[tuple[dict[str, Any], bytes | None]] = []
        rewrites = transform.rewrites
        # Only a filter, and a CBOR format: read just the fields the filter needs, ship the bytes as stored.
        peek = transform.filter.fields if transform.filter is not None and not rewrites and not \
            self.encoder.decoded else None
        for row, raw in zip(rows, records, strict=True):
            try:
                record = cbor2.loads(raw) if peek is None else peek_fields(raw, peek)
            except Exception as exc:
                raise CorruptRecord(row.id, f"undecodable CBOR ({exc.__class__.__name__})") from None
            if not isinstance(record, dict):
                raise CorruptRecord(row.id, "not a CBOR map")
            if not transform.accepts(record):
                continue
            kept.append((transform.rewrite(record), None) if rewrites else (record, raw))
        return kept

    def _commit(self, batch: PreparedBatch, cursor: Cursor) -> BatchResult:
        t0 = time.perf_counter()
        key, payload = batch.key, batch.payload
        if key is not None and payload is not None:
            self._call(lambda: self.objects.put(key, payload, content_type=self.encoder.content_type))
        # Also for a batch the filter emptied: an object an earlier attempt (another filter, another
        # epoch) left in its range must go, or its records would be exported twice.
        if self._sweep_pending or batch.first_id <= cursor.high_water:
            self._sweep_overlapping(batch, cursor.high_water)
        new_cursor = Cursor(cursor.epoch, batch.last_id, max(cursor.high_water, batch.last_id))
        self.checkpoints.write(new_cursor, key)
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
            upload_seconds=time.perf_counter() - t0,
            filtered=batch.filtered,
            quarantined=tuple(batch.quarantined),
        )

    def _sweep_overlapping(self, batch: PreparedBatch, high_water: int) -> None:
        """Delete data objects other than ``batch.key`` whose range starts inside this batch: written by
        an attempt that died before its checkpoint, or by an earlier epoch with other batch bounds."""
        marker = self.layout.batch_start_marker(batch.first_id, batch.first_timestamp_us)
        directory = self.layout.data_dir(batch.first_timestamp_us)

        def stale_keys() -> list[tuple[str, tuple[int, int]]]:
            found = []
            for info in self.objects.list(directory, start_after=marker):
                bounds = parse_range(info.key)
                if bounds is None or "/" in info.key[len(directory):]:
                    continue
                if bounds[0] > batch.last_id:
                    break
                if info.key != batch.key and self.layout.is_data_key(info.key):
                    found.append((info.key, bounds))
            return found

        for key, (first, last) in self._call(stale_keys):
            if first <= high_water and self._holds_records_gone_from_store(key, first, last):
                continue  # the only copy of records purged since: never delete it
            self._call(lambda key=key: self.objects.delete(key))

    def _holds_records_gone_from_store(self, key: str, first: int, last: int) -> bool:
        """Whether an object written earlier holds records the store no longer has (purged by retention
        since, or soft-deleted). Such an object is the only copy of them: a re-export after a reset must
        neither delete nor overwrite it. Cheap when the store still has every id of the range."""
        if key in self._preserved:
            return True
        try:
            if self.store.backlog(first - 1, last) == last - first + 1:
                return False
            data = self._call(lambda: self.objects.get(key))
            if data is None:
                return False
            live = {row.id for row in self.store.read_batch(first - 1, last - first + 1, last)}
        except StoreError as exc:
            raise ExportFailure(Reason.STORE_UNAVAILABLE, str(exc), domain=Domain.STORE, transient=True) from None
        try:
            ids = record_ids(data, key)
        except Exception:
            return True  # unreadable: keep it rather than guess
        if all(record_id in live for record_id in ids):
            return False
        self._preserved.add(key)
        return True

    def _first_preserved_object(self, after: int, rows: list[StoredRecord]) -> tuple[int, int] | None:
        """In a re-export (ids at or below the high-water mark), the first object whose range starts in
        ``(after, last row]`` and that holds records gone from the store, as ``(first, last)``."""
        directory = self.layout.data_dir(rows[0].timestamp_us)
        marker = self.layout.batch_start_marker(after + 1, rows[0].timestamp_us)

        def overlapping() -> list[tuple[str, tuple[int, int]]]:
            found = []
            for info in self.objects.list(directory, start_after=marker):
                bounds = parse_range(info.key)
                if bounds is None or "/" in info.key[len(directory):]:
                    continue
                if bounds[0] > rows[-1].id:
                    break
                if self.layout.is_data_key(info.key):
                    found.append((info.key, bounds))
            return found

        for key, bounds in self._call(overlapping):
            if self._holds_records_gone_from_store(key, *bounds):
                return bounds
        return None

    def _skip_batch(self, after: int, last: int, timestamp_us: int) -> PreparedBatch:
        """A batch that writes nothing and moves the cursor past an object that is kept as it is."""
        return PreparedBatch(first_id=after + 1, last_id=last, first_timestamp_us=timestamp_us, rows=0,
                             raw_bytes=0, payload=None, key=None, read_seconds=0.0, encode_seconds=0.0)


def _plan_batches(engine: ExportEngine, cursor: Cursor, stop: threading.Event) -> Iterator[
        list[StoredRecord] | PreparedBatch]:
    """The batches of one run, in id order: rows to encode, or a ready batch that only moves the cursor
    past an object kept as it is (see ExportEngine._first_preserved_object)."""
    limit = engine.spec.limit
    after = cursor.position
    # Rows read but left for the next batch because their folder differs (dated path templates).
    pending: list[StoredRecord] = []
    while not stop.is_set():
        rows, rest = engine._cut(pending)
        if not rest and len(pending) < limit:
            more = engine._read(pending[-1].id if pending else after, limit - len(pending))
            rows, rest = engine._cut(pending + more if pending else more)
        if not rows:
            return
        if rows[0].id <= cursor.high_water and (kept := engine._first_preserved_object(after, rows)):
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


class _PreparePipeline:
    """Reads batches in order on one thread and encodes them on two more, so that reading, encoding and
    compressing (which releases the GIL) overlap with the upload on the caller's thread. Batches come out
    in id order; at most ``depth`` prepared batches wait, which bounds memory."""

    def __init__(self, engine: ExportEngine, cursor: Cursor, keep_going: Callable[[], bool], depth: int = 2) -> None:
        self.engine = engine
        self.keep_going = keep_going
        self.interrupted = False
        self._stop = threading.Event()
        self._queue: queue.Queue[Future[PreparedBatch] | BaseException | None] = queue.Queue(maxsize=depth)
        self._encoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="export-encode")
        self._reader = threading.Thread(target=self._read_loop, args=(cursor,), name="export-read", daemon=True)
        self._reader.start()

    def _put(self, item: Future[PreparedBatch] | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read_loop(self, cursor: Cursor) -> None:
        try:
            t0 = time.perf_counter()
            for item in _plan_batches(self.engine, cursor, self._stop):
                if isinstance(item, PreparedBatch):
                    future: Future[PreparedBatch] = Future()
                    future.set_result(item)
                else:
                    future = self._encoders.submit(self.engine._encode, item, time.perf_counter() - t0)
                if not self._put(future):
                    return
                t0 = time.perf_counter()
            self._put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def __iter__(self) -> Iterator[PreparedBatch]:
        first = True
        while True:
            # At least one batch per run, so that a short time budget still makes progress.
            if not first and not self.keep_going():
                self.interrupted = True
                return
            first = False
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item.result()

    def close(self) -> None:
        self._stop.set()
        self._reader.join()
        self._encoders.shutdown(wait=True, cancel_futures=True)


class SynchronousPipeline:
    """The same batches as _PreparePipeline, prepared on the caller's thread: for tests that run
    thousands of tiny exports, where threads would cost more than the work."""

    def __init__(self, engine: ExportEngine, cursor: Cursor, keep_going: Callable[[], bool], depth: int = 2) -> None:
        self.engine, self.cursor, self.keep_going, self.interrupted = engine, cursor, keep_going, False
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[PreparedBatch]:
        for index, item in enumerate(_plan_batches(self.engine, self.cursor, self._stop)):
            if index and not self.keep_going():
                self.interrupted = True
                return
            yield item if isinstance(item, PreparedBatch) else self.engine._encode(item, 0.0)

    def close(self) -> None:
        self._stop.set()


def encode_batch(rows: list[StoredRecord], seal: RecordSeal | None = None,
                 policy: CredentialPolicy = DEFAULT_POLICY) -> list[bytes | CorruptRecord]:
    """Stored rows as exported CBOR records (``id`` spliced in), or the CorruptRecord of each row that is
    not one well-formed record."""
    return _prepare_rows(rows, seal, policy)[0]


def _prepare_rows(rows: list[StoredRecord], seal: RecordSeal | None,
                  policy: CredentialPolicy) -> tuple[list[bytes | CorruptRecord], list[int]]:
    """``encode_batch``, and the indexes of the corrupt rows.

    A row whose seal is valid was written by our own append (one canonical map, credentials stripped)
    and goes out as stored, unless the exporter strips more header names (``spec.stripHeaders``), which
    its bytes are then scanned for. Every other row is foreign and checked in full (store/check.py)."""
    sealed = seal.seal if seal is not None else None
    same = hmac.compare_digest
    rescan = bool(policy.extra_headers)
    out: list[bytes | CorruptRecord] = []
    corrupt: list[int] = []
    for row in rows:
        body, mark = row.body, row.seal
        if mark is not None and sealed is not None and type(body) is bytes and same(sealed(body), mark):
            if rescan and policy.might_hold(body):
                body = _strip_sealed(body, policy)
            out.append(with_id(row.id, body))
            continue
        try:
            out.append(with_id(row.id, check_foreign(row.id, body, policy)))
        except CorruptRecord as exc:
            corrupt.append(len(out))
            out.append(exc)
    return out, corrupt


def _strip_sealed(body: bytes, policy: CredentialPolicy) -> bytes:
    """A sealed (canonical, well-formed) body stripped by the exporter's own header names too."""
    record = cbor2.loads(body)
    return cbor2.dumps(record, timezone=UTC) if policy.strip(record) else body
