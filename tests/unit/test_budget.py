"""The memory budget of batches in flight: cycles wait for it, it is shared by every exporter
of the process, and it is sized from the container's memory limit."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capture_export.api import S3ExporterSpec
from capture_export.export import Cursor, ExportEngine, ExporterId
from capture_export.export.budget import (
    MemoryBudget,
    batch_cost_for,
    budget_for_memory_limit,
    configure_memory_budget,
    memory_budget,
    parse_size,
    reserved_bytes,
)
from capture_export.export.cgroup import available_cpus, cpu_quota, memory_limit
from capture_export.objectstore import MemoryObjectStore
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore

MiB = 1 << 20


def eventually(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_reservation_waits_until_others_give_memory_back() -> None:
    budget = MemoryBudget(100)
    first = budget.reserve(70)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(budget.reserve(50)))
    waiter.start()
    eventually(lambda: len(budget._queue) == 1)  # parked, waiting for memory
    assert got == [] and budget.used == 70
    assert first is not None
    first.release()
    waiter.join(5)
    assert got and budget.used == 50 and budget.high_water == 70


def test_first_come_first_served_so_a_large_batch_is_not_starved() -> None:
    budget = MemoryBudget(100)
    held = budget.reserve(60)
    order: list[str] = []

    def take(name: str, size: int) -> None:
        reservation = budget.reserve(size)
        order.append(name)
        assert reservation is not None
        reservation.release()

    large = threading.Thread(target=take, args=("large", 90))
    large.start()
    eventually(lambda: len(budget._queue) == 1)
    small = threading.Thread(target=take, args=("small", 10))  # would fit now, but arrived later
    small.start()
    eventually(lambda: len(budget._queue) == 2)
    time.sleep(0.2)
    assert order == []
    assert held is not None
    held.release()
    large.join(5)
    small.join(5)
    assert order == ["large", "small"]


def test_a_batch_larger_than_the_budget_goes_alone() -> None:
    budget = MemoryBudget(100)
    alone = budget.reserve(500)
    assert alone is not None and budget.used == 500
    assert budget.reserve(1, should_stop=lambda: True) is None  # nothing else while it is held
    alone.release()
    assert budget.used == 0


def test_a_waiting_cycle_can_be_stopped_and_release_is_idempotent() -> None:
    budget = MemoryBudget(100)
    held = budget.reserve(100)
    stop = threading.Event()
    result: list[object] = []
    waiter = threading.Thread(target=lambda: result.append(budget.reserve(10, should_stop=stop.is_set, poll=0.05)))
    waiter.start()
    stop.set()
    waiter.join(5)
    assert result == [None] and budget.used == 100 and not budget._queue
    assert held is not None
    held.release()
    held.release()
    assert budget.used == 0


def test_resizing_takes_what_the_rows_really_need_without_waiting() -> None:
    budget = MemoryBudget(100)
    reservation = budget.reserve(40)
    assert reservation is not None
    reservation.resize(130)  # the rows are already read: the overdraft is taken, later batches wait
    assert budget.used == 130 and budget.high_water == 130
    assert budget.reserve(1, should_stop=lambda: True) is None
    reservation.resize(20)
    assert budget.reserve(80) is not None and budget.used == 100


def test_a_default_format_batch_small_enough_to_be_joined_is_charged_its_copy(tmp_path: Path) -> None:
    """A batch of the default format at the default ``limit`` is joined into one buffer to be compressed in
    one call (formats.ZSTD_ONE_SHOT_BYTES): the budget counts that copy, as long as its records, on top of
    the rows and the frame (2x); a batch streamed into zstd (``limit: 10000``) costs what it always did."""
    from capture_export.export.formats import ZSTD_ONE_SHOT_BYTES

    store = SQLiteStore(tmp_path / "store.sqlite")
    seed_store(store, 1000, seed=2)
    engine = ExportEngine(spec("cbor-zstd", 1000), ExporterId("ns", "small"), store, MemoryObjectStore(), pool=None,
                          budget=MemoryBudget(1 << 30))
    rows = store.read_batch(0, 1000)
    store.close()
    stored = sum(len(row.body) for row in rows)
    assert stored <= ZSTD_ONE_SHOT_BYTES
    assert engine.batch_cost(rows) >= 3 * stored
    assert engine.batch_cost(rows[:10]) >= 3 * sum(len(row.body) for row in rows[:10])

    cost = batch_cost_for(decoded=False, pooled=False, joined_up_to=ZSTD_ONE_SHOT_BYTES)
    assert cost.of(40 * MiB) == 80 * MiB  # streamed: rows and frame
    sizes = [0, 1, MiB, ZSTD_ONE_SHOT_BYTES - 1, ZSTD_ONE_SHOT_BYTES, ZSTD_ONE_SHOT_BYTES + 1,
             int(1.5 * ZSTD_ONE_SHOT_BYTES), 2 * ZSTD_ONE_SHOT_BYTES, 100 * MiB]
    costs = [cost.of(size) for size in sizes]
    assert costs == sorted(costs)  # a larger batch never costs less
    for size in [*sizes, *costs]:  # the largest batch within a budget costs at most that, a larger one more
        within = cost.stored_bytes_within(size)
        assert cost.of(within) <= size < cost.of(within + 2)  # (+2: costs are whole bytes)
    # The formats that decode join in their encoder's working memory, as before.
    assert batch_cost_for(decoded=True, pooled=True, working=2.8).of(MiB) == int(5.8 * MiB)
    assert batch_cost_for(decoded=True, pooled=False, working=2.8).of(MiB) == int(4.0 * MiB)


def test_the_budget_is_contended_when_batches_wait_or_hold_more_than_half_of_it() -> None:
    budget = MemoryBudget(100)
    budget.charge_standing("encoders", 20)  # 80 left for batches
    first = budget.reserve(40)
    assert first is not None and not budget.contended  # one exporter's batches: they may keep freed memory
    second = budget.reserve(10)
    assert second is not None and budget.contended
    second.release()
    assert not budget.contended
    waiter = threading.Thread(target=lambda: budget.reserve(50))
    waiter.start()
    eventually(lambda: len(budget._queue) == 1)
    assert budget.contended  # a batch waits for memory
    first.release()
    waiter.join(5)


def test_sizing_from_the_container_memory_limit(tmp_path: Path) -> None:
    # The limit less the process's own needs and the encode pool's (fork server, idle workers).
    assert budget_for_memory_limit(512 * MiB, workers=2) == int((512 * MiB - reserved_bytes(2)) / 1.5)
    assert reserved_bytes(0) < reserved_bytes(1) < reserved_bytes(2)
    assert budget_for_memory_limit(128 * MiB) == 64 * MiB  # never below the minimum
    assert parse_size("512Mi") == 512 * MiB and parse_size("1Gi") == 1024 * MiB and parse_size("300M") == 300_000_000
    assert parse_size("1048576") == MiB
    (tmp_path / "memory.max").write_text("536870912\n")
    assert memory_limit(tmp_path) == 512 * MiB
    (tmp_path / "memory.max").write_text("max\n")
    assert memory_limit(tmp_path) is None
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1: no limit
    assert memory_limit(tmp_path) is None
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("268435456\n")
    assert memory_limit(tmp_path) == 256 * MiB
    budget = configure_memory_budget(memory_limit=512 * MiB, workers=2)
    try:
        assert memory_budget() is budget and budget.total == int((512 * MiB - reserved_bytes(2)) / 1.5)
    finally:
        configure_memory_budget()


def test_cpus_follow_the_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path) == 1.5 and available_cpus(tmp_path) == min(2, available_cpus())
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1: no quota
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 1.0 and available_cpus(tmp_path) == 1


def spec(fmt: str, limit: int) -> S3ExporterSpec:
    return S3ExporterSpec.model_validate({"bucket": "bkt", "region": "us-east-1", "prefix": "p", "limit": limit,
                                          "format": fmt})


def test_exporters_catching_up_at_once_stay_within_the_budget(tmp_path: Path) -> None:
    """Eight exporters with a backlog, as the operator runs them (one thread each): together they never
    hold more batch memory than the budget, and each exports every record once."""
    store = SQLiteStore(tmp_path / "store.sqlite")
    seed_store(store, 3000, seed=2)
    budget = MemoryBudget(6 * MiB)  # a few batches of 500 records (~3.5 KB each, cost 1.5-4x)
    buckets = [MemoryObjectStore() for _ in range(8)]
    engines = [ExportEngine(spec(("cbor-zstd", "jsonl")[index % 2], 500), ExporterId("ns", f"e{index}"), store,
                            objects, pool=None, budget=budget) for index, objects in enumerate(buckets)]
    held: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.005):
            held.append(budget.used)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(8) as cycles:
        results = list(cycles.map(lambda engine: engine.run(Cursor()), engines))
    sampling.set()
    sampler.join()
    store.close()
    assert [result.rows for result in results] == [3000] * 8
    assert all(result.failure is None for result in results)
    assert budget.used == 0  # every batch gave its memory back
    assert 0 < max(held) <= budget.high_water <= budget.total


def test_records_too_large_for_the_budget_make_smaller_batches(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    seed_store(store, 400, seed=2)
    budget = MemoryBudget(1 * MiB)
    engine = ExportEngine(spec("jsonl", 10_000), ExporterId("ns", "big"), store, MemoryObjectStore(), pool=None,
                          budget=budget)
    sizes: list[int] = []
    result = engine.run(Cursor(), on_batch=lambda done: sizes.append(done.rows))
    store.close()
    assert result.rows == 400 and result.failure is None
    # Half a MiB per batch at 4x ~3.5 KB per record: a few dozen records per object, not 10,000.
    assert len(sizes) > 4 and max(sizes) < 100
    assert budget.high_water <= budget.total


def test_a_cycle_waiting_for_memory_stops_when_asked(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    seed_store(store, 50, seed=2)
    budget = MemoryBudget(1 * MiB)
    hog = budget.reserve(1 * MiB)  # another exporter's batch, uploading for ever
    stop = threading.Event()
    engine = ExportEngine(spec("cbor-zstd", 10), ExporterId("ns", "late"), store, MemoryObjectStore(), pool=None,
                          budget=budget)
    done: list[object] = []
    runner = threading.Thread(target=lambda: done.append(engine.run(Cursor(), should_stop=stop.is_set)))
    runner.start()
    time.sleep(0.5)
    assert not done  # waiting for memory, nothing read
    stop.set()
    runner.join(10)
    assert done and done[0].rows == 0 and done[0].failure is None  # type: ignore[attr-defined]
    assert hog is not None and budget.used == hog.size
    store.close()


@pytest.mark.parametrize("fmt", ["cbor-zstd", "jsonl"])
def test_a_failed_run_gives_its_memory_back(tmp_path: Path, fmt: str) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    seed_store(store, 300, seed=2)
    budget = MemoryBudget(64 * MiB)

    class Failing(MemoryObjectStore):
        def put(self, key: str, data: bytes, *, content_type: str = "") -> None:
            from capture_export.objectstore import ObjectStoreError

            raise ObjectStoreError("AccessDenied", "denied", transient=False, domain="Credentials")

    engine = ExportEngine(spec(fmt, 50), ExporterId("ns", "failing"), store, Failing(), pool=None, budget=budget)
    result = engine.run(Cursor())
    store.close()
    assert result.failure is not None and result.rows == 0
    assert budget.used == 0
