"""What the exporting process does with the memory of a batch it sends to the encode pool: a JSON Lines batch at
``limit: 1000`` is ~3.5 MB of rows, packed into one buffer, pickled, written to a worker, and its payload
received and unpickled; with every such buffer mapped on its own and given back when freed, the exporting
process faulted each of them in afresh, every batch (issue 13: ~2.2 minor page faults per record for
``jsonl.zst``). It keeps them for the next batch, as the encode workers do (tests/integration/
test_worker_memory_reuse.py) and as it does for the default format (tests/integration/test_batch_memory_reuse.py).
A process with a Parquet exporter still serves every batch as before: a Parquet export's memory is bounded
tightly (tests/integration/test_parquet_memory.py)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.fresh_process import in_fresh_process

RECORDS = 10_000


def _export_and_count_faults(store_path: str, format: str, compression: str) -> tuple[int, int]:
    """Export the store as ``format`` with ``compression`` (``limit: 1000``) through an encode pool of one
    worker to an in-memory bucket: the records exported and the minor page faults the exporting process (this
    one) took meanwhile."""
    from capture_export.api import S3ExporterSpec
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.export.pool import EncodePool
    from capture_export.objectstore import MemoryObjectStore

    pool = EncodePool(1)
    spec = S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": "p", "limit": 1000,
                                          "format": format, "compression": compression})
    store = SQLiteStore(store_path)
    try:
        # One batch first: the pool's start, the codecs, the threads.
        warm_up = ExportEngine(spec, ExporterId("ns", "warm-up"), store, MemoryObjectStore(), pool=pool)
        warm_up.run(Cursor(), max_seconds=0)
        engine = ExportEngine(spec, ExporterId("ns", "reuse"), store, MemoryObjectStore(), pool=pool)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        result = engine.run(Cursor())
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    finally:
        pool.shutdown()
        store.close()
    assert result.failure is None
    return result.rows, faults


def test_the_exporting_process_reuses_the_memory_of_its_last_pooled_json_batch(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, RECORDS, seed=1)
    store.close()
    rows, faults = in_fresh_process(_export_and_count_faults, str(path), "jsonl", "zstd")
    assert rows == RECORDS
    # Every large buffer mapped on its own: 2.4-2.6 faults per record (the packed rows and their pickle,
    # multiprocessing's receive buffers, the payload, every batch in fresh pages). Reused: 0.65-0.8, and up to
    # 1.3 on a machine busy elsewhere (more memory freed between two trims, so more trims): the bound leaves
    # room for a busier CI runner and still fails the old way by a margin.
    assert faults / rows < 1.8, f"{faults / rows:.2f} minor page faults per record in the exporting process"


def test_a_process_with_a_parquet_exporter_keeps_no_batch_memory_for_any_batch(tmp_path: Path) -> None:
    """The exporting process holds the batches of every exporter at once, and malloc's setting is the process's:
    once a Parquet exporter sends batches to the pool, no batch's freed memory is kept there (a JSON Lines
    one's included), as before; a process with JSON Lines exporters only keeps it."""
    pytest.importorskip("pyarrow")
    from capture_export.api import S3ExporterSpec
    from capture_export.export import ExportEngine, ExporterId
    from capture_export.export.budget import BATCH_REUSE_BYTES, MemoryBudget
    from capture_export.export.pool import EncodePool
    from capture_export.objectstore import MemoryObjectStore

    def engine(format: str, pool: EncodePool) -> ExportEngine:
        spec = S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": format,
                                              "format": format})
        return ExportEngine(spec, ExporterId("ns", format), store, MemoryObjectStore(), pool=pool,
                            budget=MemoryBudget(1 << 30))

    store = SQLiteStore(tmp_path / "store.sqlite")
    pool = EncodePool(1)  # never started
    json_lines = engine("jsonl", pool)
    assert pool.batch_memory_kept(json_lines.recipe.reused_memory) == BATCH_REUSE_BYTES
    engine("parquet", pool)
    assert pool.batch_memory_kept(json_lines.recipe.reused_memory) == 0
    store.close()
