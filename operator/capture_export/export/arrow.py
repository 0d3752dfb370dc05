"""pyarrow as the Parquet encoder loads it: Arrow's buffers from malloc, the writer alone.

Arrow allocates from its own allocator (mimalloc, or jemalloc) unless ``ARROW_DEFAULT_MEMORY_POOL`` names
another; the variable is read once, when pyarrow is first imported, and it is the only way to reach the
pool the Parquet writer's C++ code allocates from (``pyarrow.set_memory_pool`` changes only the pool of
the Python calls). With malloc, a batch's buffers go back to the operating system with the rest of the
batch's memory when it is done (``release_freed_memory``, export/budget.py); mimalloc kept an encode
worker ~15 MiB larger at its peak, which is what keeps a Parquet export at ``limit: 10000`` within 200 MB.
mimalloc is faster, though (measured: ~10% less encode CPU per record, docs/benchmarks.md): a pod with
memory to spare gets it back with ``ARROW_DEFAULT_MEMORY_POOL=mimalloc``. A value the user set is kept.

The encode pool's fork server imports this module (``FormatInfo.library_modules``) so that its workers
share one pyarrow; ``pyarrow._parquet`` is the writer without the file systems' libraries that
``pyarrow.parquet`` loads (S3, GCS, Azure, HDFS: ~9 MiB more per process).
"""

from __future__ import annotations

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import pyarrow

try:
    import pyarrow._parquet
except ImportError:  # a pyarrow that moved it: the public module
    import pyarrow.parquet

__all__ = ["pyarrow"]
