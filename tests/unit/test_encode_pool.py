"""Batches encoded by the encode pool's worker processes: the same objects as in-process, committed
strictly in order, a bounded number in flight whatever the pool size, and a worker that dies costs a retry,
never a record."""

from __future__ import annotations

import os
import sqlite3
import threading
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest

from capture_export.api import S3ExporterSpec
from capture_export.audit import decode_object
from capture_export.export import Cursor, ExportEngine, ExporterId
from capture_export.export.pipeline import MAX_IN_FLIGHT
from capture_export.export.pool import EncodePool
from capture_export.objectstore import MemoryObjectStore
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore

EXPORTER = ExporterId("ns", "pooled")

# ts_us of a foreign row timed 2026-11-24T00:00:00Z (its body's timestamp, as the store contract wants)
NOV_24_US = int(datetime(2026, 11, 24, tzinfo=UTC).timestamp()) * 1_000_000


@pytest.fixture(scope="module")
def pool() -> Any:
    pool = EncodePool(2)
    yield pool
    pool.shutdown()


@pytest.fixture
def seeded(tmp_path: Path) -> Any:
    store = SQLiteStore(tmp_path / "store.sqlite")
    seed_store(store, 1200, seed=4)
    yield store
    store.close()


def spec(**fields: Any) -> S3ExporterSpec:
    return S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": "p", "limit": 200,
                                          **fields})


def exported(objects: MemoryObjectStore) -> dict[str, list[dict[str, Any]]]:
    return {key: list(decode_object(data, key)) for key, data in sorted(objects.objects.items())
            if "_capture-export" not in key}


@pytest.mark.parametrize("fields", [{"format": "jsonl", "compression": "zstd"}, {"format": "parquet"},
                                    {"format": "parquet", "privacyMode": True},
                                    {"format": "cbor-zstd", "redactFields": ["identity.login_name"]}])
def test_the_pool_writes_what_the_exporting_process_would(seeded: SQLiteStore, pool: EncodePool,
                                                          fields: dict[str, Any]) -> None:
    in_pool, in_process = MemoryObjectStore(), MemoryObjectStore()
    first = ExportEngine(spec(**fields), EXPORTER, seeded, in_pool, pool=pool).run(Cursor())
    second = ExportEngine(spec(**fields), EXPORTER, seeded, in_process, pool=None).run(Cursor())
    assert first.failure is None and second.failure is None and first.rows == second.rows == 1200
    assert first.objects == 6
    assert exported(in_pool) == exported(in_process)


class CountingPool(EncodePool):
    """A pool that counts the batches handed to it; ``work`` may change what the n-th one runs."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.submitted = 0

    def submit(self, function: Any, *args: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(*self.work(self.submitted, function, *args))

    def work(self, n: int, function: Any, *args: Any) -> tuple[Any, ...]:
        return (function, *args)


class SlowFirstPool(CountingPool):
    """A pool whose first batch takes longest, so later batches are ready first."""

    def work(self, n: int, function: Any, *args: Any) -> tuple[Any, ...]:
        return (_slowly, function, *args) if n == 1 else (function, *args)


def _slowly(function: Any, *args: Any) -> Any:
    import time

    time.sleep(1.0)
    return function(*args)


def test_batches_commit_in_order_and_only_a_few_are_in_flight_whatever_the_pool(seeded: SQLiteStore) -> None:
    pool = SlowFirstPool(8)
    reads: list[int] = []
    commits: list[int] = []
    most_in_flight = 0
    lock = threading.Lock()

    class CountingStore:
        """The store, counting the batches read ahead of the commits."""

        def __getattr__(self, name: str) -> Any:
            return getattr(seeded, name)

        def read_batch(self, after: int, limit: int, horizon: int | None = None) -> Any:
            nonlocal most_in_flight
            rows = seeded.read_batch(after, limit, horizon)
            with lock:
                if rows:
                    reads.append(rows[0].id)
                most_in_flight = max(most_in_flight, len(reads) - len(commits))
            return rows

    def committed(done: Any) -> None:
        with lock:
            commits.append(done.first_id)

    try:
        # Compressed: uncompressed JSON Lines of our own rows is written in this process, without the pool.
        engine = ExportEngine(spec(format="jsonl", compression="zstd", limit=100), EXPORTER,
                              CountingStore(), MemoryObjectStore(), pool=pool)  # type: ignore[arg-type]
        result = engine.run(Cursor(), on_batch=committed)
    finally:
        pool.shutdown()
    assert result.failure is None and result.rows == 1200
    assert commits == sorted(commits) == reads  # strictly in id order, every batch once
    assert most_in_flight <= MAX_IN_FLIGHT < pool.workers


class DyingPool(CountingPool):
    """A pool whose worker dies (as one killed by the kernel) while it encodes the second batch."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.die = True

    def work(self, n: int, function: Any, *args: Any) -> tuple[Any, ...]:
        if self.die and n == 2:
            self.die = False
            return (os._exit, 9)
        return (function, *args)


def test_a_worker_that_dies_costs_a_retry_never_a_record(seeded: SQLiteStore) -> None:
    pool = DyingPool(2)
    objects = MemoryObjectStore()
    engine = ExportEngine(spec(format="parquet"), EXPORTER, seeded, objects, pool=pool)
    try:
        first = engine.run(Cursor())
        assert first.failure is not None and first.failure.transient
        assert first.failure.reason == "EncodeFailed" and "died" in first.failure.message
        assert first.cursor.position in (0, 200)  # nothing past the batch that failed
        second = engine.run(first.cursor)  # a new pool replaces the broken one
    finally:
        pool.shutdown()
    assert second.failure is None and second.cursor.position == 1200
    ids = [record["id"] for records in exported(objects).values() for record in records]
    assert sorted(ids) == ids == list(range(1, 1201))


def test_a_corrupt_row_holds_the_export_before_it_in_a_worker_too(tmp_path: Path, pool: EncodePool) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    seed_store(store, 250, seed=4)
    store.append_encoded([(0, b"\xa1\x63bad")])  # a map whose value is missing
    seed_store(store, 10, seed=5)
    objects = MemoryObjectStore()
    engine = ExportEngine(spec(format="jsonl", limit=300), EXPORTER, store, objects, pool=pool)
    result = engine.run(Cursor())
    store.close()
    assert result.failure is not None and result.failure.reason == "CorruptRecord"
    # onCorruptRecord Hold: the 250 records before it are committed, the corrupt one and those after are not.
    assert "record 251" in result.failure.message and result.cursor.position == 250
    ids = [record["id"] for records in exported(objects).values() for record in records]
    assert ids == list(range(1, 251))


def test_each_record_is_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows another writer stored with credential headers: the full check of a foreign row decodes it once,
    and that decoded record (credentials stripped) is the one the format writes, not decoded again."""

    from capture_export.store.base import StoredRecord

    rows = []
    for n in range(1, 41):
        record = {"ver": 2, "timestamp": datetime(2026, 11, 24, tzinfo=UTC), "model": "m",
                  "capture": {"request": {"headers": {"Authorization": f"Bearer sk-{n}"}, "body": {"n": n}}}}
        rows.append(StoredRecord(n, NOV_24_US, cbor2.dumps(record, timezone=UTC), None))
    calls = 0
    real_loads = cbor2.loads

    def counting_loads(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_loads(*args, **kwargs)

    real_decoder = cbor2.CBORDecoder

    def counting_decoder(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_decoder(*args, **kwargs)

    monkeypatch.setattr(cbor2, "loads", counting_loads)
    monkeypatch.setattr(cbor2, "CBORDecoder", counting_decoder)
    store = SQLiteStore(tmp_path / "store.sqlite")
    store.append_encoded([(row.timestamp_us, row.body) for row in rows])
    objects = MemoryObjectStore()
    result = ExportEngine(spec(format="jsonl", limit=100), EXPORTER, store, objects).run(Cursor())
    store.close()
    assert result.rows == 40 and calls == 40
    payload = next(data for key, data in objects.objects.items() if key.endswith(".jsonl"))
    assert b"sk-" not in payload and b"Authorization" not in payload


def test_quarantine_works_in_a_worker_and_credentials_of_foreign_rows_are_stripped(tmp_path: Path,
                                                                                  pool: EncodePool) -> None:
    """onCorruptRecord: Quarantine on a batch a worker encodes: the worker checks seals with the store's key
    (sent in the recipe), checks the foreign rows in full, and the exporting process moves the corrupt one
    aside before it commits the batch."""

    store = SQLiteStore(tmp_path / "store.sqlite")
    seed_store(store, 250, seed=4)
    store.append_encoded([(0, b"\xa1\x63bad")])  # a map whose value is missing: 251
    leaky = {"ver": 2, "timestamp": datetime(2026, 11, 24, tzinfo=UTC), "model": "m",
             "capture": {"request": {"headers": {"X-Goog-Api-Key": "sk-leak"}}}}
    store.append_encoded([(NOV_24_US, cbor2.dumps(leaky, timezone=UTC))])  # foreign, unsealed: 252
    seed_store(store, 10, seed=5)
    objects = MemoryObjectStore()
    result = ExportEngine(spec(format="jsonl", limit=300, onCorruptRecord="Quarantine"), EXPORTER, store, objects,
                          pool=pool).run(Cursor())
    quarantined = [row.id for row in store.quarantined()]
    store.close()
    assert result.failure is None and result.cursor.position == 262
    assert [record_id for record_id, _ in result.quarantined] == [251] and quarantined == [251]
    ids = [record["id"] for records in exported(objects).values() for record in records]
    assert ids == [*range(1, 251), *range(252, 263)]
    assert not any(b"sk-leak" in data for data in objects.objects.values())


def test_sealed_rows_skip_the_full_check_in_a_worker_and_the_key_never_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a worker receives (the recipe and the packed rows, pickled) still trusts our own rows, and the
    recipe's repr does not show the store's key."""
    import pickle

    from capture_export.export import batch

    store = SQLiteStore(tmp_path / "store.sqlite")
    seed_store(store, 120, seed=4)
    seal = store.record_seal()
    rows = store.read_batch(0, 200)
    store.close()
    recipe = batch.BatchRecipe.from_spec(spec(format="jsonl"), seal)
    assert seal._key_hex not in repr(recipe) and seal._key_hex not in repr(seal)
    sent_recipe, sent_rows = pickle.loads(pickle.dumps((recipe, batch.PackedRows.pack(rows))))
    monkeypatch.setattr(batch, "check_foreign_record", lambda *a: pytest.fail("checked a sealed row in full"))
    encoded = batch.encode_in_worker(sent_recipe, sent_rows, keep=0)
    assert encoded.rows == 120 and encoded.quarantined == [] and encoded.held is None


def _die_after(seconds: float) -> None:
    """A worker killed (out of memory, say) in the middle of a batch."""
    import time

    time.sleep(seconds)
    os._exit(9)


def test_a_batch_let_go_while_a_worker_dies_leaves_no_other_batch_waiting(seeded: SQLiteStore) -> None:
    """A run that stops lets its read-ahead batches go while a worker of the shared pool dies: every other
    batch still ends (an encode failure, retried) instead of waiting for ever, and the process can exit."""
    from concurrent.futures import ThreadPoolExecutor

    from capture_export.export import ExportFailure
    from capture_export.export.pipeline import start_encode

    pool = EncodePool(1)
    engine = ExportEngine(spec(format="parquet"), EXPORTER, seeded, MemoryObjectStore(), pool=pool)
    rows = seeded.read_batch(0, 1200)
    threads = ThreadPoolExecutor(1)
    try:
        pool.submit(_die_after, 1.0)
        batches = [start_encode(engine, rows[first:first + 200], 0.0, 0.0, threads) for first in range(0, 1200, 200)]
        batches[2][1]()  # its run stopped: the batch is let go before a worker took it
        outcomes: list[str] = []

        def wait_for_every_batch() -> None:
            for finish, _, _ in batches:
                try:
                    finish()
                    outcomes.append("encoded")
                except ExportFailure as failure:
                    outcomes.append(failure.reason)

        waiter = threading.Thread(target=wait_for_every_batch, daemon=True)
        waiter.start()
        waiter.join(timeout=30)
        assert not waiter.is_alive(), f"batches still waiting after the worker died: {len(outcomes)} of 6 ended"
        assert set(outcomes) <= {"encoded", "EncodeFailed"} and "EncodeFailed" in outcomes
    finally:
        threads.shutdown(wait=False)
        pool.shutdown()


@pytest.mark.parametrize("fields", [
    pytest.param({"filter": {"models": ["gpt-4o"]}}, id="a filter"),
    pytest.param({"privacyMode": True}, id="privacy mode"),
    pytest.param({"redactFields": ["identity.user"]}, id="a redaction"),
    pytest.param({"stripHeaders": ["x-tenant"]}, id="more headers stripped"),
    pytest.param({"compression": "zstd"}, id="compressed"),
])
def test_json_lines_that_decode_or_compress_still_go_to_the_pool(seeded: SQLiteStore, fields: dict[str, Any]) -> None:
    """Only uncompressed JSON Lines with nothing to filter, rewrite or strip is written in this process: each of
    those decodes (or compresses) every record, which is the pool's work."""
    pool = CountingPool(1)
    try:
        result = ExportEngine(spec(format="jsonl", **fields), EXPORTER, seeded, MemoryObjectStore(), pool=pool).run(
            Cursor())
    finally:
        pool.shutdown()
    assert result.failure is None and pool.submitted == result.objects > 0


def _insert_with_forged_seals(store: SQLiteStore, record: dict[str, Any], count: int) -> None:
    """``count`` rows of ``record`` (models m0, m1, ...), written by a gateway that fills the seal column with
    16 bytes of its own."""
    with sqlite3.connect(store.path) as conn:
        conn.executemany("INSERT INTO captures (ts_us, body, seal) VALUES (?, ?, ?)",
                         [(NOV_24_US, cbor2.dumps({**record, "model": f"m{n}"}, timezone=UTC), b"\0" * 16)
                          for n in range(count)])


def test_json_lines_of_our_own_rows_are_written_without_the_pool(seeded: SQLiteStore) -> None:
    """Uncompressed JSON Lines of rows our own append sealed are written straight from their stored CBOR by
    the native extension: handing them to a worker cost more than the writing itself (a third more CPU per
    record and 70 MB more PSS, docs/benchmarks.md). A batch with a foreign row, whose full check decodes it,
    still goes to the pool; every record is exported once either way."""
    pool = CountingPool(1)
    objects = MemoryObjectStore()
    try:
        engine = ExportEngine(spec(format="jsonl"), EXPORTER, seeded, objects, pool=pool)
        ours = engine.run(Cursor())
        assert ours.failure is None and ours.rows == 1200 and ours.objects == 6
        assert pool.submitted == 0
        foreign = {"ver": 2, "timestamp": datetime(2026, 11, 24, tzinfo=UTC), "model": "m"}
        seeded.append_encoded([(NOV_24_US, cbor2.dumps(foreign, timezone=UTC))])
        seed_store(seeded, 150, seed=5)
        mixed = engine.run(ours.cursor)
        assert mixed.failure is None and mixed.rows == 151 and pool.submitted == 1
        # A gateway that fills the seal column with bytes of its own: foreign rows all the same, to the pool.
        _insert_with_forged_seals(seeded, foreign, 150)
        forged = engine.run(mixed.cursor)
        assert forged.failure is None and forged.rows == 150 and pool.submitted == 2
    finally:
        pool.shutdown()
    ids = [record["id"] for records in exported(objects).values() for record in records]
    assert ids == list(range(1, 1502))


def test_forged_seals_behind_a_valid_first_row_are_checked_in_this_process(seeded: SQLiteStore) -> None:
    """The in-process JSON Lines path looks at the first row's seal only, to choose where the batch is written;
    a gateway that puts one row of ours first and forged seal bytes on the rest keeps the batch here, and each
    forged row still gets the full check: its credentials stripped, every id exported once."""
    pool = CountingPool(1)
    objects = MemoryObjectStore()
    secret = "Bearer sk-forged-0123456789"
    try:
        engine = ExportEngine(spec(format="jsonl"), EXPORTER, seeded, objects, pool=pool)
        ours = engine.run(Cursor())
        seed_store(seeded, 1, seed=6)  # the next batch's first row: sealed by our append
        forged = {"ver": 2, "timestamp": datetime(2026, 11, 24, tzinfo=UTC), "model": "m",
                  "capture": {"request": {"headers": {"authorization": secret, "x-trace": "t"}}}}
        _insert_with_forged_seals(seeded, forged, 150)
        mixed = engine.run(ours.cursor)
        assert mixed.failure is None and mixed.rows == 151 and pool.submitted == 0
    finally:
        pool.shutdown()
    records = [record for records in exported(objects).values() for record in records]
    assert [record["id"] for record in records] == list(range(1, 1352))
    assert secret not in repr(records)
    assert all(record["capture"]["request"]["headers"] == {"x-trace": "t"} for record in records[-150:])
