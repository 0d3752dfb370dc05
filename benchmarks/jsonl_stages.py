"""CPU per record of the decoding formats' stages (JSON Lines, Parquet, privacy mode), in one process, without S3
(issue 13).

    .venv/bin/python benchmarks/jsonl_stages.py [--records 10000] [--limit 1000] [--repeat 3]
                                                [--formats jsonl,jsonl.zst,jsonl.zst+privacy,parquet]

Seeds the standard records (seed 1, ~3.5 KB each) into a temporary SQLite store, reads them in batches of
``--limit`` and times, per record (µs of ``time.process_time()``, best of ``--repeat``):

* ``encode``: ``encode_rows`` alone (check, decode, rewrite, encode, compress), as in a worker;
* ``worker``: what a worker does with a batch besides: unpickling the packed rows, ``encode_in_worker``
  (``encode_rows``, the malloc trim) and pickling the result, as ``concurrent.futures`` does;
* ``parent``: what the exporting process does with a batch: packing and pickling the rows, unpickling the
  result, and its own malloc trim.

Pipes and the pool's threads are not in it (``profile_run_once.py`` measures the whole run); it is for
comparing encoders quickly, on a shared machine (the 1-minute load average is printed).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

from bench_support import seed_sqlite

CASES = {
    "jsonl": {"format": "jsonl", "compression": "none"},
    "jsonl.zst": {"format": "jsonl", "compression": "zstd"},
    "jsonl.zst+privacy": {"format": "jsonl", "compression": "zstd", "privacy_mode": True},
    "parquet": {"format": "parquet", "compression": "zstd"},
    "cbor-zstd+privacy": {"format": "cbor-zstd", "compression": "zstd", "privacy_mode": True},
    "parquet+privacy": {"format": "parquet", "compression": "zstd", "privacy_mode": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--formats", default=",".join(CASES))
    args = parser.parse_args()

    from capture_export.export.batch import BatchRecipe, PackedRows, encode_in_worker, encode_rows
    from capture_export.export.budget import BATCH_REUSE_BYTES, release_freed_memory
    from capture_export.store import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="jsonl-stages-") as work:
        path = Path(work) / "store.db"
        seed_sqlite(path, args.records)
        store = SQLiteStore(str(path))
        batches, after = [], 0
        while rows := store.read_batch(after, args.limit):
            batches.append(rows)
            after = rows[-1].id
        seal = store.record_seal()
        count = sum(len(rows) for rows in batches)
        print(f"{count} records, batches of {args.limit}, load {os.getloadavg()[0]:.2f}")
        for name in args.formats.split(","):
            recipe = BatchRecipe(seal=seal, **CASES[name])
            packed = [pickle.dumps(PackedRows.pack(rows), protocol=pickle.HIGHEST_PROTOCOL) for rows in batches]
            best: dict[str, float] = {}
            for _ in range(args.repeat):
                started = time.process_time()
                for rows in batches:
                    encode_rows(recipe, rows)
                release_freed_memory()
                encode = time.process_time() - started
                started = time.process_time()
                results = []
                for data in packed:
                    results.append(pickle.dumps(encode_in_worker(recipe, pickle.loads(data), BATCH_REUSE_BYTES),
                                                protocol=pickle.HIGHEST_PROTOCOL))
                worker = time.process_time() - started
                started = time.process_time()
                for rows, result in zip(batches, results, strict=True):
                    pickle.dumps(PackedRows.pack(rows), protocol=pickle.HIGHEST_PROTOCOL)
                    pickle.loads(result)
                    release_freed_memory()
                parent = time.process_time() - started
                for key, value in (("encode", encode), ("worker", worker), ("parent", parent)):
                    best[key] = min(best.get(key, value), value)
            print(f"{name:20} " + "  ".join(f"{key} {value / count * 1e6:6.1f} µs" for key, value in best.items())
                  + f"  (load {os.getloadavg()[0]:.2f})", flush=True)
        store.close()


if __name__ == "__main__":
    sys.exit(main())
