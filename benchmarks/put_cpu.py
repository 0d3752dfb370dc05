"""CPU of one PUT through S3ObjectStore (botocore), as the export makes two per batch: the checkpoint (~1 KB)
and the data object (~700 KB at `limit: 1000`), against a local S3 server (LocalS3, plain HTTP).

    .venv/bin/python benchmarks/put_cpu.py [--rounds 7] [--puts 200] [--variants store,botocore-body,...] [--keep]

Variants, each an S3ObjectStore on a bucket of its own:

* ``store``: as the export builds it;
* ``botocore-body``: with botocore's own PutObject body handling put back (a bytes body wrapped in a file
  object: sent in 16 KB pieces, after ``Expect: 100-continue`` and the server's interim answer);
* ``no-validation``: the store's client made again with ``Config(parameter_validation=False)``.

The CPU is the main thread's (``time.thread_time``: the request, signing, the socket, the response's
parse; not SeaweedFS). The variants take turns in blocks of 10 PUTs so that a neighbour's load falls on all
of them alike; per round each variant's mean, then the medians over the rounds and in how many rounds each
was cheaper than the first variant. The machine's CPU speed (cpu_budget.SpeedProbe) is sampled every round:
multiply by its factor to estimate the quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench_support import add_keep_argument, bucket_objects, require, work_directory

if __name__ == "__main__":
    require("psutil", "weed")

from cpu_budget import SpeedProbe, load  # psutil: checked above

BLOCK = 10
SIZES = {"1 KB": 1_000, "700 KB": 700_000}


def _botocore_body(store: Any) -> None:
    import botocore.handlers

    store._client.meta.events.register_last(  # as botocore.handlers.BUILTIN_HANDLERS has it
        "before-parameter-build.s3.PutObject", botocore.handlers.convert_body_to_file_like_object)


def _no_validation(store: Any) -> None:
    from botocore.config import Config

    from capture_export.objectstore.s3 import _send_put_bodies_whole

    config = store._client.meta.config.merge(Config(parameter_validation=False))
    store._client = store.session.create_client("s3", config=config, endpoint_url=store.location.endpoint)
    _send_put_bodies_whole(store._client)


VARIANTS: dict[str, Callable[[Any], None]] = {
    "store": lambda store: None,
    "botocore-body": _botocore_body,
    "no-validation": _no_validation,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--puts", type=int, default=200, help="PUTs per variant, size and round")
    parser.add_argument("--variants", default="store,botocore-body,no-validation",
                        help=f"comma-separated, the first is the reference: {', '.join(VARIANTS)}")
    add_keep_argument(parser)
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    from capture_export.local_s3 import LocalS3

    bodies = {size: os.urandom(length) for size, length in SIZES.items()}
    with work_directory("put-cpu-", keep=args.keep) as work, LocalS3(work / "s3") as s3:
        stores = {}
        for index, name in enumerate(names):
            stores[name] = bucket_objects(s3, f"put-cpu-{index}")
            VARIANTS[name](stores[name])
            for body in bodies.values():  # connections open, the bucket's volume assigned
                for n in range(3):
                    stores[name].put(f"warm-up/{n}", body)
        probe = SpeedProbe()
        print(f"load before: {load()}", flush=True)
        spent: dict[tuple[str, str], list[float]] = {(name, size): [] for name in names for size in SIZES}
        for round_number in range(args.rounds):
            probe.sample()
            for size, body in bodies.items():
                totals = dict.fromkeys(names, 0.0)
                for block in range(args.puts // BLOCK):
                    turn = block % len(names)
                    for name in names[turn:] + names[:turn]:
                        store = stores[name]
                        started = time.thread_time()
                        for n in range(BLOCK):
                            store.put(f"put/{n}", body, content_type="application/cbor")
                        totals[name] += time.thread_time() - started
                for name in names:
                    spent[(name, size)].append(totals[name] / (args.puts // BLOCK * BLOCK) * 1e3)
            print(f"round {round_number + 1}: " + "  ".join(
                f"{name} {size} {values[-1]:.3f}" for (name, size), values in spent.items()), flush=True)
        print(f"load after: {load()}; {probe.describe()} (factor {probe.factor:.2f})")
        print(f"{'variant':<15} {'body':>7} {'ms CPU/PUT':>10} {'quiet (est.)':>12} {'vs ' + names[0]:>18}")
        for size in SIZES:
            reference = spent[(names[0], size)]
            for name in names:
                values = spent[(name, size)]
                median = statistics.median(values)
                cheaper = sum(value < base for value, base in zip(values, reference, strict=True))
                change = median / statistics.median(reference) - 1
                print(f"{name:<15} {size:>7} {median:>10.3f} {median * probe.factor:>12.3f} "
                      f"{change:>+8.1%} ({cheaper}/{len(values)} lower)")


if __name__ == "__main__":
    main()
