"""What the processes of a pooled export do with the memory of a batch once it is done, so that the next batch
reuses it instead of faulting the same pages in afresh (issue 13: page faults cost CPU on every record).

* An encode worker: a JSON Lines batch at ``limit: 1000`` is ~3.5 MB of rows, the records decoded from them and
  their JSON text. A Parquet worker keeps memory for its next batch too when its batches are small (the
  default ``limit: 1000``), and gives everything back after a big one: a Parquet export's memory at
  ``limit: 10000`` is bounded tightly (tests/integration/test_parquet_memory.py).
* The exporting process: each batch it sends to the pool is packed into one buffer, pickled, written to a
  worker, and its payload received and unpickled. It keeps those buffers for the next batch unless one of its
  exporters writes Parquet.

The default format, encoded in the exporting process, is tests/integration/test_batch_memory_reuse.py."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Literal

import pytest

from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.fresh_process import in_fresh_process

RECORDS = 10_000
Process = Literal["worker", "exporting"]


def _export_and_count_faults(store_path: str, format: str, compression: str, process: Process) -> tuple[int, int]:
    """Export the store as ``format`` with ``compression`` (``limit: 1000``) through an encode pool of one
    worker to an in-memory bucket: the records exported and the minor page faults ``process`` (the worker, or
    the exporting process: this one) took meanwhile."""
    from capture_export.api import S3ExporterSpec
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.export.pool import EncodePool
    from capture_export.objectstore import MemoryObjectStore

    def faults_so_far() -> int:
        if process == "exporting":
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        # Asked of the worker itself: the pool has one, and nothing else runs there meanwhile.
        return int(pool.submit(resource.getrusage, resource.RUSAGE_SELF).result().ru_minflt)

    pool = EncodePool(1)
    spec = S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": "p", "limit": 1000,
                                          "format": format, "compression": compression})
    store = SQLiteStore(store_path)
    try:
        # One batch first: the pool's start, the codecs, the threads.
        warm_up = ExportEngine(spec, ExporterId("ns", "warm-up"), store, MemoryObjectStore(), pool=pool)
        warm_up.run(Cursor(), max_seconds=0)
        engine = ExportEngine(spec, ExporterId("ns", "reuse"), store, MemoryObjectStore(), pool=pool)
        before = faults_so_far()
        result = engine.run(Cursor())
        faults = faults_so_far() - before
    finally:
        pool.shutdown()
        store.close()
    assert result.failure is None
    return result.rows, faults


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, RECORDS, seed=1)
    store.close()
    return str(path)


def faults_per_record(store_path: str, format: str, compression: str, process: Process) -> float:
    rows, faults = in_fresh_process(_export_and_count_faults, store_path, format, compression, process)
    assert rows == RECORDS
    return faults / rows


def test_an_encode_worker_reuses_the_memory_of_its_last_json_batch(seeded: str) -> None:
    faults = faults_per_record(seeded, "jsonl", "zstd", "worker")
    # Giving every batch back: ~5.8 faults per record (the batch's message, its rows, the records decoded,
    # their JSON, the payload and its pickle, every batch in fresh pages). Reused: ~0.02.
    assert faults < 0.6, f"{faults:.2f} minor page faults per record in the encode worker"


def test_an_encode_worker_reuses_the_memory_of_its_last_small_parquet_batch(seeded: str) -> None:
    pytest.importorskip("pyarrow")
    faults = faults_per_record(seeded, "parquet", "zstd", "worker")
    # Giving every batch back: ~7 faults per record (Arrow's buffers, grown by doubling, and the writer's pages
    # in fresh pages every batch; docs/benchmarks.md). Reused: ~0.04 (pipeline.memory_kept_after_batch).
    assert faults < 2.0, f"{faults:.2f} minor page faults per record in the encode worker"


def test_the_exporting_process_reuses_the_memory_of_its_last_pooled_json_batch(seeded: str) -> None:
    faults = faults_per_record(seeded, "jsonl", "zstd", "exporting")
    # Every large buffer mapped on its own: 2.4-2.6 faults per record (the packed rows and their pickle,
    # multiprocessing's receive buffers, the payload, every batch in fresh pages). Reused: 0.65-0.8, and up to
    # 1.3 on a machine busy elsewhere (more memory freed between two trims, so more trims): the bound leaves
    # room for a busier CI runner and still fails the old way by a margin.
    assert faults < 1.8, f"{faults:.2f} minor page faults per record in the exporting process"


def test_a_parquet_worker_gives_back_everything_after_a_big_batch_or_one_the_budget_cut() -> None:
    from capture_export.export.batch import BatchRecipe
    from capture_export.export.budget import BATCH_REUSE_BYTES
    from capture_export.export.pipeline import memory_kept_after_batch

    def kept(recipe: BatchRecipe, stored_bytes: int, budget_cut: bool) -> tuple[int, int]:
        decided = memory_kept_after_batch(recipe, stored_bytes=stored_bytes, budget_cut=budget_cut,
                                          parquet_in_process=False, budget_contended=False)
        return decided.exporting_process, decided.worker

    parquet = BatchRecipe("parquet", "zstd")
    # The exporting process keeps nothing of a Parquet batch. A batch at limit 1000 (~3.6 MB stored) that the
    # memory budget did not cut keeps in its worker; one of limit 10000 (~36 MB), or a smaller one because the
    # budget had no room for the whole limit, keeps nothing (tests/integration/test_parquet_memory.py: batches
    # of ~1,300-1,500 records there).
    assert kept(parquet, 3_600_000, budget_cut=False) == (0, BATCH_REUSE_BYTES)
    assert kept(parquet, 36_000_000, budget_cut=False) == (0, 0)
    assert kept(parquet, 4_600_000, budget_cut=True) == (0, 0)
    json_lines = BatchRecipe("jsonl", "zstd")
    assert kept(json_lines, 36_000_000, budget_cut=True) == (BATCH_REUSE_BYTES, BATCH_REUSE_BYTES)
    assert kept(BatchRecipe("cbor-zstd", "zstd", privacy_mode=True), 3_600_000, budget_cut=False) == (
        BATCH_REUSE_BYTES, BATCH_REUSE_BYTES)


def test_a_process_with_a_parquet_exporter_keeps_no_batch_memory_for_any_batch(tmp_path: Path) -> None:
    """The exporting process holds the batches of every exporter at once, and malloc's setting is the process's:
    once a Parquet exporter sends batches to the pool, no batch's freed memory is kept there (a JSON Lines
    one's included), as before; a process with JSON Lines exporters only keeps it, while the budget is not
    contended."""
    pytest.importorskip("pyarrow")
    from capture_export.api import S3ExporterSpec
    from capture_export.export import ExportEngine, ExporterId
    from capture_export.export.budget import BATCH_REUSE_BYTES, MemoryBudget
    from capture_export.export.pipeline import memory_kept_after_batch
    from capture_export.export.pool import EncodePool
    from capture_export.objectstore import MemoryObjectStore

    def engine(format: str, pool: EncodePool) -> ExportEngine:
        spec = S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": format,
                                              "format": format})
        return ExportEngine(spec, ExporterId("ns", format), store, MemoryObjectStore(), pool=pool,
                            budget=MemoryBudget(1 << 30))

    def kept_here(exporter: ExportEngine, contended: bool = False) -> int:
        assert exporter.pool is not None
        return memory_kept_after_batch(exporter.recipe, stored_bytes=3_600_000, budget_cut=False,
                                       parquet_in_process=exporter.pool.memory_bounded_tightly,
                                       budget_contended=contended).exporting_process

    store = SQLiteStore(tmp_path / "store.sqlite")
    pool = EncodePool(1)  # never started
    json_lines = engine("jsonl", pool)
    assert kept_here(json_lines) == BATCH_REUSE_BYTES
    assert kept_here(json_lines, contended=True) == 0
    engine("parquet", pool)
    assert kept_here(json_lines) == 0
    store.close()
