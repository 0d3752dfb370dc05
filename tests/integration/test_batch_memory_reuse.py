"""What the exporting process does with the memory of a committed batch: a batch of the default format reads
~3.5 MB of rows at ``limit: 1000``, and giving all of it back to the operating system after every batch
only to fault it in again for the next one cost the default export 10-14% of its CPU (issue 13: minor page
faults and system time, 1.2-1.35 faults per record). Memory is still given back beyond a small reserve, so
that a burst does not stay with the process."""

from __future__ import annotations

import resource
from pathlib import Path

from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.fresh_process import in_fresh_process

MiB = 1 << 20
RECORDS = 20_000


def _export_and_count_faults(store_path: str) -> tuple[int, int]:
    """Export the store in-process (default format, ``limit: 1000``) to an in-memory bucket: the records
    exported and the minor page faults taken meanwhile."""
    from capture_export.api import S3ExporterSpec
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.objectstore import MemoryObjectStore

    spec = S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": "p", "limit": 1000})
    store = SQLiteStore(store_path)
    engine = ExportEngine(spec, ExporterId("ns", "warm-up"), store, MemoryObjectStore(), pool=None)
    engine.run(Cursor(), max_seconds=0)  # one batch: the codec, the threads, the first arenas
    engine = ExportEngine(spec, ExporterId("ns", "reuse"), store, MemoryObjectStore(), pool=None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    result = engine.run(Cursor())
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    store.close()
    assert result.failure is None
    return result.rows, faults


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _rss_growth_after_bursts() -> tuple[int, int]:
    """The process's RSS growth after a burst of freed memory of half ``BATCH_REUSE_BYTES``, then after one of
    four times that, each followed by ``release_freed_memory(keep=BATCH_REUSE_BYTES)`` (blocks the size of
    rows, freed below a block still in use, as a batch's rows are below its payload)."""
    import ctypes

    from capture_export.export.budget import BATCH_REUSE_BYTES, release_freed_memory

    release_freed_memory()
    before, growth, pins = _rss(), [], []
    for burst in (BATCH_REUSE_BYTES // 2, 4 * BATCH_REUSE_BYTES):
        blocks = [ctypes.create_string_buffer(3500) for _ in range(burst // 3500)]
        pins.append(ctypes.create_string_buffer(3500))
        del blocks
        release_freed_memory(keep=BATCH_REUSE_BYTES)
        growth.append(_rss() - before)
    return growth[0], growth[1]


def test_an_export_reuses_the_memory_of_its_last_batch(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, RECORDS, seed=1)
    store.close()
    rows, faults = in_fresh_process(_export_and_count_faults, str(path))
    assert rows == RECORDS
    # Giving every batch back: ~1.35 faults per record (each of the ~3.5 KB rows read, every batch, in fresh
    # pages). Reused: ~0.2 (the payloads, the frame's buffers).
    assert faults / rows < 0.6, f"{faults / rows:.2f} minor page faults per record"


def test_freed_memory_beyond_the_reserve_goes_back_to_the_system() -> None:
    small, large = in_fresh_process(_rss_growth_after_bursts)
    assert small > 4 * MiB, "a batch's freed memory is kept for the next batch"
    assert large < 20 * MiB, f"a burst of 64 MiB left the process {large / MiB:.0f} MiB larger"
