"""What the operator's memory model assumes, checked against what the process really allocates: the S3
clients of many buckets, and a real batch of ``limit: 10000``-sized records on its way through the
encode pool. Each measurement runs in a fresh process (no other test's allocations in it) and counts
bytes allocated, not time."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

MiB = 1 << 20


def _in_fresh_process(function: Any, *args: Any) -> Any:
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1) as pool:
        return pool.apply(function, args)


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
    first, each_more = _in_fresh_process(_python_bytes_of_s3_clients, 4)
    assert first > 2 * MiB  # the first client does load them (a sanity check of the measurement)
    assert each_more < 2 * MiB, f"each further S3 client holds {each_more / MiB:.1f} MiB"
