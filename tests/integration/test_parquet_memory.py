"""The memory a user's pod is charged for a Parquet export at ``limit: 10000``: the exporting process and
its encode pool (fork server, workers, multiprocessing's resource tracker), exporting a backlog from a
SQLite store to SeaweedFS, as ``benchmarks/format_throughput.py`` measures it. The issue's goal (issue
13): at most 200 MB PSS for the whole process tree at its peak."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.fresh_process import in_fresh_process

pytest.importorskip("pyarrow")
psutil = pytest.importorskip("psutil")

MiB = 1 << 20
RECORDS = 20_000
PEAK_LIMIT = 200 * MiB


def _tree_pss() -> int:
    total = 0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_full_info().pss
    return total


def _export_parquet(store_path: str, endpoint: str, keys: tuple[str, str], bucket: str) -> tuple[int, str, int, int]:
    """In a fresh process (as the operator's, with two encode workers whatever this machine has): export the
    store as Parquet at ``limit: 10000``: the rows exported, the failure if any and the tree's peak PSS, sampled
    every 0.05 s."""
    from capture_export.api import S3ExporterSpec
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.export.pool import configure_encode_pool
    from capture_export.objectstore import Credentials, S3Location, S3ObjectStore

    configure_encode_pool(2)  # the goal's pod of 2 CPUs, whatever this machine has

    spec = S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": endpoint,
                                          "prefix": "mem", "limit": 10_000, "format": "parquet"})
    store = SQLiteStore(store_path)
    objects = S3ObjectStore(S3Location(bucket, "us-east-1", endpoint), Credentials(*keys))
    engine = ExportEngine(spec, ExporterId("ns", "parquet"), store, objects)
    peak = _tree_pss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, _tree_pss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = engine.run(Cursor())
    finally:
        done.set()
        sampler.join()
    peak = max(peak, _tree_pss())
    store.close()
    return result.rows, str(result.failure or ""), peak, engine.pool.workers if engine.pool else 0


def test_a_parquet_export_at_limit_10000_stays_within_200_mb(tmp_path: Path, s3_server: LocalS3,
                                                              bucket: str) -> None:
    """A user exporting a backlog as Parquet with ``limit: 10000`` in a pod of 2 CPUs: the exporting process
    and its encode pool together are charged at most 200 MB at their peak (measured before: 243-248 MB,
    pyarrow's memory pool and each worker's batch the difference)."""
    store_path = tmp_path / "store.sqlite"
    store = SQLiteStore(store_path)
    seed_store(store, RECORDS, seed=1)
    store.close()
    answer = in_fresh_process(_export_parquet, str(store_path), s3_server.endpoint,  # its own fork server, pool
                              (s3_server.access_key_id, s3_server.secret_access_key), bucket, timeout=600)
    rows, failure, peak, workers = answer
    assert (rows, failure) == (RECORDS, "")
    assert peak <= PEAK_LIMIT, (f"exporting {RECORDS:,} records as Parquet at limit 10000 with {workers} encode "
                                f"workers peaked at {peak / MiB:.0f} MiB PSS")
