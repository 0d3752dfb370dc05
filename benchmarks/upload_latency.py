"""Records/s of one export when the S3 server is some milliseconds away, as a cloud bucket is: a TCP proxy
(tests/support/faultproxy.py, in a process of its own) holds each answer of a local SeaweedFS back by
``--delay-ms`` before passing it on. With the server that far, a run that waits for each PUT before the
next one starts spends most of its time waiting; two uploads at once (export/uploads.py) halve the wait.

    nice .venv/bin/python benchmarks/upload_latency.py [--records 30000] [--limit 1000] [--delay-ms 20]
        [--rounds 2] [--keep]

Each case (the default format, JSON Lines plain and zstd, Parquet when pyarrow is installed) exports the
same seeded store into a bucket of its own, in a child process, ``--rounds`` times in turn. Compare a change
by running the script on both trees (``PYTHONPATH=<other tree>/operator`` runs another tree's code with this
venv) one after the other: the proxy's own CPU and the machine's load move the figures between runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

from bench_support import add_keep_argument, bucket_objects, child_result, require, seed_sqlite, work_directory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support.faultproxy

CASES = {"cbor-zstd": {}, "jsonl": {"format": "jsonl"}, "jsonl.zst": {"format": "jsonl", "compression": "zstd"},
         "parquet": {"format": "parquet"}}


def _proxy(port: int, delay: float, connection: Any) -> None:
    from tests.support.faultproxy import FaultProxy

    with FaultProxy(port) as proxy:
        proxy.delay = delay
        connection.send(proxy.port)
        connection.recv()  # until the benchmark is done


def _export(store_path: str, endpoint: str, keys: tuple[str, str], bucket: str, limit: int, fields: dict[str, Any],
            out: Any) -> None:
    import time

    from capture_export.api import S3ExporterSpec
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
    from capture_export.store import SQLiteStore

    spec = S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": endpoint,
                                          "prefix": "bench", "limit": limit, **fields})
    objects = S3ObjectStore(S3Location(bucket, "us-east-1", endpoint), Credentials(*keys))
    engine = ExportEngine(spec, ExporterId("bench", "bench"), SQLiteStore(store_path), objects)
    started = time.perf_counter()
    result = engine.run(Cursor())
    out.send({"seconds": time.perf_counter() - started, "rows": result.rows, "requests": result.requests,
              "failure": str(result.failure or "")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    add_keep_argument(parser)
    args = parser.parse_args()
    require("weed")
    from capture_export.local_s3 import LocalS3

    cases = {name: fields for name, fields in CASES.items()
             if name != "parquet" or importlib.util.find_spec("pyarrow") is not None}
    if "parquet" not in cases:
        print("parquet: skipped (pyarrow is not installed)")
    spawn = multiprocessing.get_context("spawn")
    with work_directory("upload-latency-", keep=args.keep) as work:
        store_path = str(work / "store.sqlite")
        seeded = seed_sqlite(store_path, args.records)
        print(f"seeded {args.records:,} records in {seeded:.1f}s; {os.cpu_count()} CPUs; limit {args.limit:,}; "
              f"each answer of the S3 server held back {args.delay_ms:g} ms")
        with LocalS3(work / "s3") as s3:
            receiving, sending = spawn.Pipe()
            proxy = spawn.Process(target=_proxy, args=(s3.port, args.delay_ms / 1000, sending), daemon=True)
            proxy.start()
            endpoint = f"http://127.0.0.1:{receiving.recv()}"
            try:
                for round_ in range(1, args.rounds + 1):
                    for name, fields in cases.items():
                        bucket = f"latency-{round_}-{name.replace('.', '-')}"
                        bucket_objects(s3, bucket)
                        load = os.getloadavg()[0]
                        done = child_result(spawn, _export, (store_path, endpoint, (s3.access_key_id,
                                            s3.secret_access_key), bucket, args.limit, fields), name)
                        if done.get("failure"):
                            print(f"{name:10} round {round_}: FAILED {done['failure']}")
                            continue
                        print(f"{name:10} round {round_}: {done['rows'] / done['seconds']:8,.0f} records/s  "
                              f"{done['requests'] / max(done['rows'], 1) * 1000:.2f} requests/1k records  "
                              f"load {load:.2f}", flush=True)
            finally:
                receiving.send("done")
                proxy.join(10)


if __name__ == "__main__":
    main()
