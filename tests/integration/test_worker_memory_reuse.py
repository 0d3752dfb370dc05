"""What an encode worker does with the memory of a batch it has encoded: a JSON Lines batch at ``limit: 1000``
is ~3.5 MB of rows, the records decoded from them and their JSON text; giving all of it back to the operating
system after every batch only for the next batch to fault the same pages in again cost the worker CPU on
every record (issue 13), as it did the exporting process (tests/integration/test_batch_memory_reuse.py).
A worker that writes Parquet keeps memory for its next batch too when its batches are small (the default
``limit: 1000``), and gives everything back after a big one: a Parquet export's memory at ``limit: 10000`` is
bounded tightly (tests/integration/test_parquet_memory.py)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.fresh_process import in_fresh_process

RECORDS = 10_000


def _export_and_count_worker_faults(store_path: str, format: str, compression: str) -> tuple[int, int]:
    """Export the store as ``format`` with ``compression`` (``limit: 1000``) through an encode pool of one
    worker to an in-memory bucket: the records exported and the minor page faults the worker took meanwhile."""
    from capture_export.api import S3ExporterSpec
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.export.pool import EncodePool
    from capture_export.objectstore import MemoryObjectStore

    def worker_faults() -> int:
        # Asked of the worker itself: the pool has one, and nothing else runs there meanwhile.
        usage = pool.submit(resource.getrusage, resource.RUSAGE_SELF).result()
        return int(usage.ru_minflt)

    pool = EncodePool(1)
    spec = S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": "p", "limit": 1000,
                                          "format": format, "compression": compression})
    store = SQLiteStore(store_path)
    try:
        # One batch first: the worker's start, the codecs.
        warm_up = ExportEngine(spec, ExporterId("ns", "warm-up"), store, MemoryObjectStore(), pool=pool)
        warm_up.run(Cursor(), max_seconds=0)
        engine = ExportEngine(spec, ExporterId("ns", "reuse"), store, MemoryObjectStore(), pool=pool)
        before = worker_faults()
        result = engine.run(Cursor())
        faults = worker_faults() - before
    finally:
        pool.shutdown()
        store.close()
    assert result.failure is None
    return result.rows, faults


def test_an_encode_worker_reuses_the_memory_of_its_last_json_batch(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, RECORDS, seed=1)
    store.close()
    rows, faults = in_fresh_process(_export_and_count_worker_faults, str(path), "jsonl", "zstd")
    assert rows == RECORDS
    # Giving every batch back: ~5.8 faults per record (the batch's message, its rows, the records decoded,
    # their JSON, the payload and its pickle, every batch in fresh pages). Reused: ~0.02.
    assert faults / rows < 0.6, f"{faults / rows:.2f} minor page faults per record in the encode worker"


def test_an_encode_worker_reuses_the_memory_of_its_last_small_parquet_batch(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, RECORDS, seed=1)
    store.close()
    rows, faults = in_fresh_process(_export_and_count_worker_faults, str(path), "parquet", "zstd")
    assert rows == RECORDS
    # Giving every batch back: ~7 faults per record (Arrow's buffers, grown by doubling, and the writer's pages
    # in fresh pages every batch; docs/benchmarks.md). Reused: ~0.04 (BatchRecipe.reused_memory_in_worker).
    assert faults / rows < 2.0, f"{faults / rows:.2f} minor page faults per record in the encode worker"


def test_a_parquet_worker_gives_back_everything_after_a_big_batch_or_one_the_budget_cut() -> None:
    from capture_export.export.batch import BatchRecipe
    from capture_export.export.budget import BATCH_REUSE_BYTES

    parquet = BatchRecipe("parquet", "zstd")
    assert parquet.reused_memory == 0  # the exporting process's rule (EncodePool.batch_memory_kept)
    # A batch at limit 1000 (~3.6 MB stored) that the memory budget did not cut keeps; one of limit 10000
    # (~36 MB), or a smaller one because the budget had no room for the whole limit, keeps nothing
    # (tests/integration/test_parquet_memory.py: batches of ~1,300-1,500 records there).
    assert parquet.reused_memory_in_worker(stored_bytes=3_600_000, full_batches=True) == BATCH_REUSE_BYTES
    assert parquet.reused_memory_in_worker(stored_bytes=36_000_000, full_batches=True) == 0
    assert parquet.reused_memory_in_worker(stored_bytes=4_600_000, full_batches=False) == 0
    json_lines = BatchRecipe("jsonl", "zstd")
    assert json_lines.reused_memory == BATCH_REUSE_BYTES
    assert json_lines.reused_memory_in_worker(stored_bytes=36_000_000, full_batches=False) == BATCH_REUSE_BYTES
    assert BatchRecipe("cbor-zstd", "zstd", privacy_mode=True).reused_memory == BATCH_REUSE_BYTES
