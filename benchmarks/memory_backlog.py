"""Memory of the operator's export cycles catching up a backlog: 8 exporters at ``limit: 10000`` at once.

    .venv/bin/python benchmarks/memory_backlog.py [--records 40000] [--exporters 8] [--formats cbor-zstd,parquet]
                                                 [--limit 10000] [--memory-limit 512Mi] [--keep]

The situation after an outage: the operator comes back after an outage and every exporter has a backlog.
The store is seeded once (SQLite, the standard ~3.5 KB records); each exporter has its own bucket on
one SeaweedFS and alternates between the given formats. The exporters run as the operator runs them:
each cycle is ``ExporterWorker.cycle`` on a thread of a pool of ``--concurrency`` (the operator's
``--concurrency``, default 8) threads, slices of 30 s, until every backlog is drained, sharing one
store connection and one S3 client per endpoint, with the memory budget the operator derives from a
container memory limit of ``--memory-limit`` (the chart's default ``resources.limits.memory``).

A sampler reads the memory of the exporting process and its children (the encode pool) every 0.1 s:
the sum of their PSS (what the pod's cgroup is charged: pages shared between the processes are
counted once) and the sum of their RSS (shared pages counted in every process). The run fails (exit 1)
when the peak PSS passes the memory limit. Needs SeaweedFS, psutil and, for Parquet, pyarrow (checked
first); the work directory is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench_support import add_keep_argument, child_result, require, seed_sqlite, work_directory


def parse_size(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000, "M": 1000**2, "G": 1000**3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _malloc_info() -> tuple[int, int, int] | None:
    """glibc's view of this process's heap: bytes in use, bytes free but held in its arenas, bytes mmapped."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return info.uordblks, info.fordblks, info.hblkhd


class TreeSampler(threading.Thread):
    """Peak memory of this process and its descendants, sampled."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="memory-sampler")
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.stop = threading.Event()
        self.peak_pss = 0
        self.peak_rss = 0
        self.peak_processes = 1
        self.peak_own_pss = 0  # this process alone (the pool's processes are the rest)
        self.malloc_at_peak: tuple[int, int, int] | None = None

    def sample(self) -> None:
        import psutil

        pss = rss = 0
        processes = [self.me, *self.me.children(recursive=True)]
        for process in processes:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss += info.pss
            rss += info.rss
            if process is self.me and info.pss > self.peak_own_pss:
                self.peak_own_pss = info.pss
                self.malloc_at_peak = _malloc_info()
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_processes = max(self.peak_processes, len(processes))

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()


def _catch_up(store_path: str, endpoint: str, keys: tuple[str, str], buckets: list[tuple[str, str]], limit: int,
              concurrency: int, memory_limit: int, out: Any) -> None:
    from capture_export.api import S3ExporterSpec, S3ExporterStatus
    from capture_export.export import ExporterId
    from capture_export.export.cycle import ExporterWorker
    from capture_export.handlers.settings import SharedObjectStores
    from capture_export.store import StoreOpener

    try:  # the operator's own settings: the batch memory budget sized from the container's memory limit
        from capture_export.export.budget import configure_memory_budget, share_fewer_malloc_arenas

        share_fewer_malloc_arenas()
        try:  # the encode pool as large as that memory limit affords (the default under it)
            from capture_export.export.pool import available_cpus, configure_encode_pool, workers_for_memory

            cpus = available_cpus()
            configure_encode_pool(min(cpus, workers_for_memory(memory_limit) or cpus) if cpus > 1 else 0)
        except ImportError:  # code from before the pool was sized by memory
            pass
        budget = configure_memory_budget(memory_limit=memory_limit)
    except ImportError:  # code from before the budget existed
        budget = None

    sampler = TreeSampler()
    sampler.start()
    secrets = {("default", "s3"): {"access_key_id": keys[0], "access_secret": keys[1]}}

    class Secrets:
        def get(self, namespace: str, name: str) -> dict[str, str] | None:
            return secrets.get((namespace, name))

    stores = StoreOpener(store_path, lambda namespace, name: None)
    object_stores = SharedObjectStores()
    exporters = []
    for index, (bucket, case) in enumerate(buckets):
        fmt, _, extension = case.partition(".")  # jsonl.zst: the format, and its compression by extension
        content = {"format": fmt}
        if extension:
            from capture_export.export.formats import FORMATS

            content["compression"] = next(compression for compression, ext in FORMATS[fmt].extensions.items()
                                          if ext == f".{case}")
        spec = S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": endpoint,
                                              "prefix": "bench", "limit": limit, **content,
                                              "secretRef": {"name": "s3"}})
        worker = ExporterWorker(ExporterId("default", f"e{index}"), open_store=stores, secrets=Secrets(),
                                object_store_factory=object_stores)
        exporters.append([worker, spec, S3ExporterStatus()])

    def drain(entry: list[Any]) -> tuple[int, float, str]:
        worker, spec, status = entry
        rows, started = 0, time.perf_counter()
        while True:
            outcome = worker.cycle(spec, status, max_seconds=30.0)
            status = outcome.status
            if outcome.result is None or outcome.result.failure is not None:
                return rows, time.perf_counter() - started, str(outcome.result.failure if outcome.result else
                                                                outcome.status.conditions)
            rows += outcome.result.rows
            if outcome.due_in > 0:
                return rows, time.perf_counter() - started, ""

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="export-cycle") as cycles:
        results = list(cycles.map(drain, exporters))
    elapsed = time.perf_counter() - started
    sampler.sample()
    sampler.stop.set()
    stores.close()
    out.send({
        "results": results, "seconds": elapsed, "peak_pss": sampler.peak_pss, "peak_rss": sampler.peak_rss,
        "processes": sampler.peak_processes, "own_pss": sampler.peak_own_pss,
        "pyarrow_here": "pyarrow" in sys.modules, "malloc": sampler.malloc_at_peak,
        "budget": None if budget is None else {"total": budget.total, "high_water": budget.high_water,
                                               "standing": getattr(budget, "standing", 0)},
    })


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--exporters", type=int, default=8)
    parser.add_argument("--formats", default="cbor-zstd,parquet")
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--memory-limit", default="512Mi", help="the container memory limit (chart default)")
    add_keep_argument(parser)
    args = parser.parse_args()
    memory_limit = parse_size(args.memory_limit)
    formats = args.formats.split(",")
    require("weed", "psutil", *(["pyarrow"] if "parquet" in formats else []))

    from capture_export.local_s3 import LocalS3

    spawn = multiprocessing.get_context("spawn")
    with work_directory("capture-export-memory-", keep=args.keep) as workdir:
        store_path = str(workdir / "store.sqlite")
        seed_sqlite(store_path, args.records)
        buckets = [(f"backlog-{index}", formats[index % len(formats)]) for index in range(args.exporters)]
        print(f"{args.exporters} exporters ({', '.join(f for _, f in buckets)}) at limit {args.limit:,}, "
              f"{args.records:,} records each behind, concurrency {args.concurrency}, memory limit "
              f"{memory_limit / 2**20:.0f} MiB; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
              flush=True)
        with LocalS3(workdir / "s3", die_with_parent=True) as s3:
            for bucket, _ in buckets:
                s3.create_bucket(bucket)
            figures = child_result(spawn, _catch_up, (store_path, s3.endpoint, (s3.access_key_id,
                                   s3.secret_access_key), buckets, args.limit, args.concurrency, memory_limit),
                                   "catch-up")
            if "failure" in figures:
                print(f"FAILED: {figures['failure']}")
                return 1
    failures = [f"{bucket}: {failure}" for (bucket, _), (_, _, failure) in zip(buckets, figures["results"],
                                                                               strict=True) if failure]
    exported = sum(rows for rows, _, _ in figures["results"])
    print(f"exported {exported:,} records in {figures['seconds']:.1f}s; load average {os.getloadavg()[0]:.2f}")
    print(f"peak memory of the exporting process and its {figures['processes'] - 1} children: "
          f"PSS {figures['peak_pss'] / 2**20:.0f} MiB, RSS {figures['peak_rss'] / 2**20:.0f} MiB "
          f"(limit {memory_limit / 2**20:.0f} MiB); the exporting process alone: PSS "
          f"{figures['own_pss'] / 2**20:.0f} MiB{' (pyarrow loaded there)' if figures.get('pyarrow_here') else ''}")
    if figures.get("malloc"):
        used, held, mapped = (value / 2**20 for value in figures["malloc"])
        print(f"the exporting process's malloc at its peak: {used:.0f} MiB in use, {held:.0f} MiB freed but held "
              f"in its arenas, {mapped:.0f} MiB in blocks of their own")
    if figures["budget"]:
        print(f"batch memory budget {figures['budget']['total'] / 2**20:.0f} MiB, high-water "
              f"{figures['budget']['high_water'] / 2**20:.0f} MiB, of which standing (encoders' libraries) "
              f"{figures['budget']['standing'] / 2**20:.0f} MiB")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures or exported != args.records * args.exporters or figures["peak_pss"] > memory_limit else 0


if __name__ == "__main__":
    sys.exit(main())
