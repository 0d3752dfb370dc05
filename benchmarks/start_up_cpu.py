"""The CPU of a `capture-export run --once` that has (almost) nothing to export: start-up and the fixed work of
a run (the connection test, the checkpoint, the state file), against a local S3 server and a SQLite store.

    .venv/bin/python benchmarks/start_up_cpu.py [--records 0] [--pairs 3] [--compare DIR] [--keep]

Each run is the command as a user starts it (``python -m capture_export.cli``), with a prefix of its own,
on a fresh copy of the store; its CPU is the user + system time of the process and of the children it
waited for (``os.wait4``). ``--compare DIR`` runs the capture_export package found in DIR as well
(``git archive <commit> operator | tar -x -C DIR``, then pass DIR/operator), alternating which goes first,
so that a change is measured against its base at the same minutes. The machine's CPU speed
(cpu_budget.SpeedProbe) is sampled before each pair: multiply by its factor to estimate the quiet machine.
Both versions are byte-compiled first (bench_support.cache_bytecode), as an installed package or the image is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench_support import add_keep_argument, cache_bytecode, require, seed_sqlite, work_directory
from cpu_budget import SpeedProbe

MANIFEST = """\
apiVersion: v1
kind: Secret
metadata: {{name: s3, namespace: default}}
stringData: {{access_key_id: {key}, access_secret: {secret}}}
---
apiVersion: capture.dev/v1alpha1
kind: S3Exporter
metadata: {{name: start-up, namespace: default}}
spec: {{bucket: start-up, region: us-east-1, endpoint: "{endpoint}", secretRef: {{name: s3}}, prefix: {prefix}}}
"""


def run_once(store: Path, s3: object, run_dir: Path, code_path: str | None) -> float:
    """CPU seconds of one `run --once` in ``run_dir`` (the installed capture_export, or ``code_path``'s)."""
    run_dir.mkdir()
    shutil.copy(store, run_dir / "store.sqlite")
    (run_dir / "exporter.yaml").write_text(MANIFEST.format(
        key=s3.access_key_id, secret=s3.secret_access_key, endpoint=s3.endpoint,  # type: ignore[attr-defined]
        prefix=run_dir.name))
    environment = dict(os.environ)
    if code_path is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, (code_path, environment.get("PYTHONPATH"))))
    process = subprocess.Popen([sys.executable, "-m", "capture_export.cli", "run", "--once",
                                "-f", str(run_dir / "exporter.yaml"), "--store", str(run_dir / "store.sqlite"),
                                "--state", str(run_dir / "state.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment)
    _, status, usage = os.wait4(process.pid, 0)
    assert process.stderr is not None
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run --once failed:\n{process.stderr.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=0, help="records in the store (default: none)")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each version")
    parser.add_argument("--compare", metavar="DIR", help="also run the capture_export package found in DIR")
    add_keep_argument(parser)
    args = parser.parse_args()
    require("weed")
    cache_bytecode(args.compare)

    from capture_export.local_s3 import LocalS3

    versions: list[tuple[str, str | None]] = [("installed", None)]
    if args.compare:
        versions.append((args.compare, args.compare))
    seconds: dict[str, list[float]] = {label: [] for label, _ in versions}
    probe = SpeedProbe()
    with work_directory("capture-export-start-up-", keep=args.keep) as workdir:
        store = workdir / "store.sqlite"
        seed_sqlite(store, args.records)
        with LocalS3(workdir / "s3", die_with_parent=True) as s3:
            s3.create_bucket("start-up")
            for number in range(args.pairs):
                speed = probe.sample()
                load = os.getloadavg()[0]
                # Alternate which version goes first, so that neither always runs on the warmer machine.
                order = versions if number % 2 == 0 else versions[::-1]
                line = []
                for index, (label, code_path) in enumerate(order):
                    cpu = run_once(store, s3, workdir / f"run-{number}-{index}", code_path)
                    seconds[label].append(cpu)
                    line.append(f"{label} {cpu:.3f} s")
                print(f"pair {number + 1}: {', '.join(line)} (CPU); load {load:.2f}; CPU speed {speed / 1000:,.0f}k "
                      f"zstd-3 records/CPU-s", flush=True)
    for label, values in seconds.items():
        print(f"median {label}: {statistics.median(values):.3f} s of CPU per run ({len(values)} runs)")
    print(f"{probe.describe()} (median of {len(probe.samples)} samples): multiply by {probe.factor:.2f} to estimate "
          "the quiet machine")


if __name__ == "__main__":
    main()
