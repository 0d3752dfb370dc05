"""The memory a pod is charged while many exporters catch up a backlog as uncompressed JSON Lines, whose
payloads are the largest of any format: every batch reserves its cost from the process's memory budget
(export/budget.py), so the pod stays within its container memory limit whatever the backlog. Measured as
``benchmarks/memory_backlog.py --formats jsonl`` does, on a smaller scale: the exporting process and its
encode pool (PSS, what the pod's cgroup is charged), exporting from a SQLite store to SeaweedFS.

The promise under test is the one ``budget_for_memory_limit`` makes: the operator's memory besides batches
(here measured, once the pool, the S3 client and the encoders have warmed up) plus the budget and the freed
memory malloc keeps beside it (``ALLOCATOR_OVERHEAD``) is what the container may use."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.fresh_process import in_fresh_process

psutil = pytest.importorskip("psutil")

MiB = 1 << 20
RECORDS = 5_000  # behind, for every exporter (they share one store, as memory_backlog.py's do)
EXPORTERS = 12
BUDGET = 64 * MiB  # the smallest budget the operator ever takes (MIN_BUDGET_BYTES): batches of ~1,200 records


def _pss() -> tuple[int, int]:
    """PSS of this process and its descendants (the encode pool), and of this process alone."""
    total = own = 0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            pss = process.memory_full_info().pss
            total += pss
            own = pss if process is me else own
    return total, own


def _catch_up(store_path: str, endpoint: str, keys: tuple[str, str],
              bucket: str) -> tuple[list[int], tuple[int, int], tuple[int, int], int]:
    """In a fresh process set up as the operator's (two malloc arenas, one encode worker, a budget of
    ``BUDGET``): ``EXPORTERS`` exporters at ``limit: 10000`` export the store as uncompressed JSON Lines at
    once. Returns the rows each exported, the PSS (the tree's, this process's) once warmed up, their peaks
    meanwhile (sampled every 0.05 s) and the budget's total."""
    from capture_export.api import S3ExporterSpec
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.export.budget import configure_memory_budget, share_fewer_malloc_arenas
    from capture_export.export.pool import configure_encode_pool
    from capture_export.objectstore import Credentials, S3Location, S3ObjectStore

    share_fewer_malloc_arenas()
    configure_encode_pool(1)  # what a 512Mi pod affords (pool.workers_for_memory)
    budget = configure_memory_budget(BUDGET)
    objects = S3ObjectStore(S3Location(bucket, "us-east-1", endpoint), Credentials(*keys))
    store = SQLiteStore(store_path)

    def engine(name: str, limit: int) -> ExportEngine:
        spec = S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": endpoint,
                                              "prefix": name, "limit": limit, "format": "jsonl",
                                              "compression": "none"})
        return ExportEngine(spec, ExporterId("ns", name), store, objects)

    # Warm up what the operator holds besides batches: the encode pool's fork server and worker, the S3
    # client, the encoders' threads. Two batches of the pool's size (POOL_MIN_ROWS and more).
    warm = engine("warm-up", 200).run(Cursor(), max_seconds=0)
    assert warm.failure is None, warm.failure
    baseline = _pss()
    peak = list(baseline)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[:] = map(max, peak, _pss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    engines = [engine(f"e{index}", 10_000) for index in range(EXPORTERS)]
    results: list[int] = [0] * EXPORTERS

    def drain(index: int) -> None:
        result = engines[index].run(Cursor())
        assert result.failure is None, result.failure
        results[index] = result.rows

    threads = [threading.Thread(target=drain, args=(index,)) for index in range(EXPORTERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        done.set()
        sampler.join()
    peak[:] = map(max, peak, _pss())
    store.close()
    return results, baseline, (peak[0], peak[1]), budget.total


def test_exporters_catching_up_as_json_lines_stay_within_their_memory_budget(tmp_path: Path, s3_server: LocalS3,
                                                                              bucket: str) -> None:
    """A user who runs a dozen JSON Lines exporters and lets them fall behind (an outage): when they all
    catch up at once, the pod grows by at most its batch budget and the allocator's share beside it, as
    the operator's sizing promises; a pod would otherwise be OOM-killed and crash-loop on the same backlog.
    Measured with main's code (2026-12-03): the readers kept the rows of their last batch while waiting for
    memory for the next one, rows the budget no longer counted once the batch was encoded."""
    from capture_export.export.budget import ALLOCATOR_OVERHEAD

    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    seed_store(store, RECORDS, seed=1)
    store.close()
    rows, baseline, peak, budget = in_fresh_process(
        _catch_up, str(store_path), s3_server.endpoint, (s3_server.access_key_id, s3_server.secret_access_key),
        bucket, timeout=600)
    assert rows == [RECORDS] * EXPORTERS
    allowed = int(budget * (1 + ALLOCATOR_OVERHEAD))
    assert peak[0] - baseline[0] <= allowed, (
        f"{EXPORTERS} JSON Lines exporters catching up {RECORDS:,} records each grew the pod by "
        f"{(peak[0] - baseline[0]) / MiB:.0f} MiB PSS (from {baseline[0] / MiB:.0f} to {peak[0] / MiB:.0f} MiB; "
        f"the exporting process alone from {baseline[1] / MiB:.0f} to {peak[1] / MiB:.0f}), more than the "
        f"{budget / MiB:.0f} MiB budget and its allocator overhead allow ({allowed / MiB:.0f} MiB)")
