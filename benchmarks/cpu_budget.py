"""CPU time per record, for benchmarks run on a shared machine.

Wall-clock throughput on a machine that other people load says more about them than about the code. CPU
time per record says what the code costs: it is what a stage or a process burns for each record, whatever
else runs beside it. On a busy machine even CPU time is inflated (shared caches, a hyperthread sibling,
frequency), so each figure is also scaled to the machine's *quiet* speed, measured the same way: the CPU
time zstd-3 takes to compress seeded records, against ``REFERENCE_SPEED``, what the export benchmark
measured on this machine when it was quiet (docs/benchmarks.md). That scaling, and the throughput an idle
2-core machine would reach within its CPU budget, are estimates, and are printed as such.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterable

from bench_support import require

require("psutil")  # before the import: what to install, not a traceback, for every benchmark using this

import psutil  # noqa: E402

__all__ = ["REFERENCE_SPEED", "SpeedProbe", "cpu_seconds", "idle_estimate", "load", "measure_stage", "stage_table"]

# zstd-3 of seeded ~3.5 KB records, records per CPU-second, on the quiet development machine (load ~0.9,
# 2026-11-25: the export benchmark of docs/benchmarks.md, "zstd-3 compress 116k/s").
REFERENCE_SPEED = 116_000.0
CORES = 2


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _speed_once() -> float:
    import zstandard

    from capture_export.seed import generate_records
    from capture_export.store.records import encode_body

    data = b"".join(encode_body(r)[1] for r in generate_records(2000, seed=1))
    compressor = zstandard.ZstdCompressor(level=3)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        compressor.compress(data)
        best = min(best, time.process_time() - started)
    return 2000 / best


class SpeedProbe:
    """The machine's CPU speed now, as a fraction of its quiet speed; sampled around each measurement."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> float:
        speed = _speed_once()
        self.samples.append(speed)
        return speed

    @property
    def speed(self) -> float:
        return statistics.median(self.samples) if self.samples else REFERENCE_SPEED

    @property
    def factor(self) -> float:
        """Multiply CPU µs measured now by this to estimate them on the quiet machine."""
        return min(1.0, self.speed / REFERENCE_SPEED)

    def describe(self) -> str:
        return (f"CPU speed now {self.speed / 1000:,.0f}k zstd-3 records per CPU-second, "
                f"{self.factor:.0%} of the quiet machine's {REFERENCE_SPEED / 1000:,.0f}k")


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds of a process (and its children, e.g. the ingest server's parsing processes)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        times = process.cpu_times()
        total += times.user + times.system
        if children:
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    times = child.cpu_times()
                    total += times.user + times.system
    return total


def measure_stage(work: Callable[[], object], records: int, *, rounds: int = 7,
                  setup: Callable[[], object] | None = None) -> float:
    """CPU µs per record of ``work`` (which handles ``records`` records): the median of ``rounds`` runs, so
    that one run slowed by a neighbour does not decide. ``setup`` runs untimed before each round."""
    samples = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        started = time.process_time()
        work()
        samples.append((time.process_time() - started) / records * 1e6)
    return statistics.median(samples)


def stage_table(rows: Iterable[tuple[str, float]], probe: SpeedProbe) -> str:
    lines = [f"{'stage':<58} {'CPU µs/record':>13} {'quiet (est.)':>13}"]
    for name, micros in rows:
        lines.append(f"{name:<58} {micros:>13.1f} {micros * probe.factor:>13.1f}")
    return "\n".join(lines)


def idle_estimate(micros_per_record: float, probe: SpeedProbe) -> float:
    """Records/s that ``CORES`` idle cores could sustain if ``micros_per_record`` (measured now) were all the
    CPU each record costs and the work spread over both cores: an estimate from the CPU budget."""
    quiet = micros_per_record * probe.factor
    return CORES * 1e6 / quiet if quiet > 0 else float("inf")
