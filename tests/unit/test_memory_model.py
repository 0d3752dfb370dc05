"""What the operator's memory model assumes, checked against what the process really allocates: the S3
clients of many buckets, and a real batch of ``limit: 10000``-sized records on its way through the
encode pool. Each measurement runs in a fresh process (no other test's allocations in it) and counts
bytes allocated, not time."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.fresh_process import in_fresh_process

MiB = 1 << 20


def _python_bytes_of_s3_clients(count: int) -> tuple[int, int]:
    """Python memory (tracemalloc) taken by the first S3 client, and by each of ``count`` more."""
    import tracemalloc

    from capture_export.objectstore import Credentials, S3Access, S3Location, S3ObjectStore

    def client(index: int) -> S3ObjectStore:
        return S3ObjectStore(S3Location(bucket=f"bucket-{index}", region="us-east-1", endpoint="http://127.0.0.1:9"),
                             S3Access(Credentials(f"AKIDEXAMPLE{index}", f"secret-{index}")))

    tracemalloc.start()
    clients = [client(0)]
    first = tracemalloc.get_traced_memory()[0]
    clients += [client(index) for index in range(1, count + 1)]
    total = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(clients) == count + 1
    return first, (total - first) // count


def test_each_more_bucket_costs_little_memory() -> None:
    """Eight exporters on eight buckets build eight S3 clients (credentials differ per bucket): each client
    must not load botocore's service descriptions again (~12 MiB each), or the clients alone take a fifth of
    a 512Mi pod."""
    first, each_more = in_fresh_process(_python_bytes_of_s3_clients, 4)
    assert first > 2 * MiB  # the first client does load them (a sanity check of the measurement)
    assert each_more < 2 * MiB, f"each further S3 client holds {each_more / MiB:.1f} MiB"


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _peak_growth_of_a_batch(store_path: str, fmt: str, records: int, pooled: bool) -> tuple[int, int]:
    """In a fresh process, as an encode worker (``pooled``) or the exporting process: the stored bytes of a
    batch of ``records`` and the growth of the process's peak RSS while it reads (in-process) or unpickles
    (pooled) and encodes it, after a warm-up batch loaded the format's library (the default format's: sized
    its compression context)."""
    import pickle

    from capture_export.export.batch import BatchRecipe, PackedRows, encode_in_worker, encode_rows
    from capture_export.export.budget import release_freed_memory, share_fewer_malloc_arenas
    from capture_export.export.formats import FORMATS
    from capture_export.export.pipeline import memory_kept_after_batch
    from capture_export.store import SQLiteStore

    share_fewer_malloc_arenas()
    store = SQLiteStore(store_path)
    recipe = BatchRecipe(fmt, FORMATS[fmt].default_compression, seal=store.record_seal())
    encode_rows(recipe, store.read_batch(0, 20))  # the codec and the format's library loaded
    if pooled:
        rows = store.read_batch(0, records)
        stored = sum(len(row.body) for row in rows)
        message = pickle.dumps(PackedRows.pack(rows))  # what a worker receives
        del rows
        release_freed_memory()
        before = _rss()
        packed = pickle.loads(message)
        size, message = len(message), b""  # a worker lets the message go once unpickled
        # What the worker keeps after it, as the exporting process decides (a Parquet batch: as the budget cut it).
        keep = memory_kept_after_batch(recipe, stored_bytes=stored, budget_cut=True, parquet_in_process=False,
                                       budget_contended=False).worker
        result = pickle.dumps(encode_in_worker(recipe, packed, keep))  # and sends the result back
        assert result
        before -= size  # the worker's growth counts the message it received
    else:
        if fmt == "cbor-zstd":
            # The compression context the process keeps idle, sized for such a batch (PROCESS_RESERVED_BYTES
            # counts it, not the batch: ~3.6 MiB, as much as a whole batch's copy at ``limit: 1000``).
            assert encode_rows(recipe, store.read_batch(0, records)).payload
        release_freed_memory()
        before = _rss()
        rows = store.read_batch(0, records)
        stored = sum(len(row.body) for row in rows)
        assert encode_rows(recipe, rows).payload
    # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's, kept across exec).
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    return stored, peak - before


@pytest.fixture(scope="module")
def limit_sized_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("memory") / "store.sqlite"
    store = SQLiteStore(path)
    seed_store(store, 10_000, seed=1)
    store.close()
    return path


@pytest.mark.parametrize(("fmt", "pooled", "records"), [("cbor-zstd", False, 10_000), ("cbor-zstd", False, 1_000),
                                                        ("jsonl", True, 10_000),
                                                        # sealed rows, uncompressed: written in this process
                                                        ("jsonl", False, 10_000),
                                                        ("parquet", True, 10_000), ("parquet", True, 2_000)])
def test_a_limit_sized_batch_costs_no_more_than_the_budget_counts(limit_sized_store: Path, fmt: str,
                                                                   pooled: bool, records: int) -> None:
    """A batch of ``limit: 10000`` real records (or fewer, as the budget cuts it): the memory it really
    takes (the peak growth of the process that encodes it; for the encode pool also the packed rows the
    exporting process keeps meanwhile) is no more than what the engine reserves for it, with the encoder's
    standing charge (per worker) for what it builds whatever the batch's size. Counting less is how eight
    exporters ran a 512Mi pod out of memory."""
    from capture_export.api import S3ExporterSpec
    from capture_export.export import ExportEngine, ExporterId
    from capture_export.export.budget import MemoryBudget
    from capture_export.export.pool import EncodePool
    from capture_export.objectstore import MemoryObjectStore

    stored, growth = in_fresh_process(_peak_growth_of_a_batch, str(limit_sized_store), fmt, records, pooled)
    held_meanwhile = stored if pooled else 0  # the exporting process's packed copy
    store = SQLiteStore(limit_sized_store)
    budget = MemoryBudget(1 << 40)
    workers = 2
    spec = S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": "p", "limit": 10_000,
                                          "format": fmt})
    engine = ExportEngine(spec, ExporterId("ns", fmt), store, MemoryObjectStore(), budget=budget,
                          pool=EncodePool(workers) if pooled else None)  # the pool is never started
    counted = engine.batch_cost(store.read_batch(0, records)) + getattr(budget, "standing", 0) // workers
    store.close()
    assert growth + held_meanwhile <= counted, (
        f"{fmt}: a batch of {stored / MiB:.1f} MiB stored took {(growth + held_meanwhile) / MiB:.1f} MiB, "
        f"the budget counts {counted / MiB:.1f} MiB")


def _python_peak_of_a_parquet_batch(store_path: str, records: int) -> tuple[int, int, int]:
    """In a fresh process, as an encode worker: the stored bytes of a Parquet batch of ``records``, the
    most Python memory (tracemalloc) the worker's encoding of it held at once beyond the rows it received,
    and the payload's size (which it holds at the end, twice while the result is pickled)."""
    import pickle
    import tracemalloc

    from capture_export.export.batch import BatchRecipe, PackedRows, encode_in_worker, encode_rows

    store = SQLiteStore(store_path)
    recipe = BatchRecipe("parquet", "zstd", seal=store.record_seal())
    encode_rows(recipe, store.read_batch(0, 20))  # pyarrow loaded
    rows = store.read_batch(0, records)
    stored = sum(len(row.body) for row in rows)
    packed = pickle.loads(pickle.dumps(PackedRows.pack(rows)))  # what a worker receives
    del rows
    store.close()
    tracemalloc.start()
    payload = encode_in_worker(recipe, packed, keep=0).payload
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert payload
    return stored, peak, len(payload)


def test_a_parquet_worker_holds_a_few_hundred_records_decoded_at_once(limit_sized_store: Path) -> None:
    """Decoded, a record takes several times its stored size in Python objects; written to Parquet, a
    fraction of it. An encode worker building a row group of 1,000 records from all 1,000 decoded at once
    held 26 MiB of Python memory besides the payload for a batch of 2,000 (6.8 MiB stored), and each of a
    pod's workers does; decoding a few hundred at a time into Arrow columns holds 7 MiB."""
    stored, peak, payload = in_fresh_process(_python_peak_of_a_parquet_batch, str(limit_sized_store), 2_000)
    working = peak - payload
    assert working < 1.5 * stored, (f"a Parquet batch of {stored / MiB:.1f} MiB stored held {working / MiB:.1f} "
                                     "MiB of Python memory besides its payload")


def _pool_memory(store_path: str, conn: Any) -> None:
    """A process with an encode pool of two workers, as an exporting process with a Parquet exporter
    starts it: the memory (PSS, what a pod is charged) of the pool's processes (fork server, workers,
    multiprocessing's resource tracker) once both workers have encoded Parquet batches."""
    import psutil

    from capture_export.api import S3ExporterSpec
    from capture_export.export import ExportEngine, ExporterId
    from capture_export.export.batch import PackedRows, encode_in_worker
    from capture_export.export.budget import MemoryBudget
    from capture_export.export.pool import EncodePool
    from capture_export.objectstore import MemoryObjectStore

    store = SQLiteStore(store_path)
    pool = EncodePool(2)
    spec = S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": "p", "limit": 1000,
                                          "format": "parquet"})
    engine = ExportEngine(spec, ExporterId("ns", "parquet"), store, MemoryObjectStore(),
                          budget=MemoryBudget(1 << 30), pool=pool)
    packed = PackedRows.pack(store.read_batch(0, 1000))
    try:
        futures = [pool.submit(encode_in_worker, engine.recipe, packed, 0) for _ in range(6)]
        assert all(future.result().payload for future in futures)
        conn.send([child.memory_full_info().pss for child in psutil.Process().children(recursive=True)])
    finally:
        pool.shutdown()
        store.close()


def test_parquet_encode_workers_share_one_copy_of_pyarrow(limit_sized_store: Path) -> None:
    """pyarrow takes ~46 MiB in a process that imports it. The encode pool's workers are forked from a
    fork server: when the fork server has imported pyarrow (an exporter of the process writes Parquet),
    the workers share its copy instead of each loading its own, and the pool of a 2-CPU pod takes ~70 MiB
    less."""
    spawn = multiprocessing.get_context("spawn")  # a fresh process: its own fork server, not this one's
    receiving, sending = spawn.Pipe(duplex=False)
    process = spawn.Process(target=_pool_memory, args=(str(limit_sized_store), sending))
    process.start()
    try:
        charged = receiving.recv() if receiving.poll(300) else None
    finally:
        process.join(60)
    assert process.exitcode == 0 and charged is not None and len(charged) >= 3  # the fork server, two workers
    # Measured (2 CPUs, pyarrow 26): 145 MiB with each worker importing pyarrow, 115 MiB sharing it.
    assert sum(charged) < 130 * MiB, f"the encode pool's processes take {[round(pss / MiB) for pss in charged]} MiB"
