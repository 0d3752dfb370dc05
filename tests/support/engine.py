"""Pieces for driving the export engine in unit tests: no waiting between retries, a clock whose sleeps
return at once (and are recorded), and the data objects of an in-memory bucket."""

from __future__ import annotations

from datetime import datetime

from capture_export.clock import SystemClock
from capture_export.export import RetryPolicy
from capture_export.objectstore import MemoryObjectStore

__all__ = ["NO_WAIT", "InstantClock", "data_keys"]

NO_WAIT = RetryPolicy(attempts=3, base_delay=0.0, throttle_delay=0.0)


class InstantClock:
    def __init__(self) -> None:
        self._system = SystemClock()
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self._system.now()

    def monotonic(self) -> float:
        return self._system.monotonic()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def data_keys(objects: MemoryObjectStore) -> list[str]:
    return sorted(k for k in objects.objects if k.endswith(".cbor.zstd"))
