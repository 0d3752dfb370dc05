"""Where the CPU of `capture-export run --once` goes, per process and per thread of the exporting process.

    .venv/bin/python benchmarks/profile_run_once.py [--records 30000] [--formats cbor-zstd,jsonl,parquet]
                                                    [--limit 1000] [--rounds 1] [--compare DIR] [--keep]

Seeds the standard records (seed 1, ~3.5 KB each) into SQLite once, starts a local S3 server (LocalS3), then
for each format runs `capture-export run --once` as a user would (in a subprocess, start-up included)
against a fresh copy of the store and its own prefix, through a small wrapper that records the CPU seconds
of each thread of the exporting process when it ends. Printed per format:

* wall seconds and records/s;
* CPU per record (µs) and minor page faults per record of every process of the tree, sampled every 50 ms
  until it exits (the exporting process, multiprocessing's resource tracker, the encode pool's fork server
  and workers);
* the exporting process's user and system CPU and minor page faults (getrusage at exit), the CPU of its
  imports, of its main thread (start-up, the S3 probes, the commits: uploads, checkpoints, state file) and
  of its reader thread (store reads, packing rows for the pool, malloc trims); what is left is the encode
  threads (the default format is encoded in-process) and the pool's manager and feeder threads, which
  are still alive at exit (handing batches to the workers and taking their payloads back);
* the 1-minute load average before and after: read the figures against it;
* the machine's CPU speed (cpu_budget.SpeedProbe: zstd-3 records per CPU-second, sampled before every run)
  as a fraction of its quiet speed: CPU µs measured now, times that factor, estimate them on the quiet
  machine (a busy or throttled machine inflates CPU time too).

A case is a format, optionally the compression part of its extension, and ``+privacy`` (``jsonl.zst``,
``jsonl.zst+privacy``).
``--rounds N`` runs every case N times, interleaved, and prints the medians; ``--compare DIR`` runs each case
also with the code in DIR (``git archive <commit> operator | tar -x -C DIR``, then pass DIR/operator),
alternating with the installed code, so that a change is measured against its base on the same machine at
the same time.

For a function-level view of one process, py-spy works on the same command (``pip install py-spy`` into
your own venv; ``py-spy record -r 100 -f raw --subprocesses -o out.txt -- capture-export run --once ...``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_support import add_keep_argument, cache_bytecode, require, seed_sqlite, work_directory
from cpu_budget import SpeedProbe

# Run as the exporting process: capture-export's main, with each thread's CPU recorded when it ends.
WRAPPER = r'''
import collections, resource, sys, threading, time

def run():
    totals = collections.Counter()
    lock = threading.Lock()
    original = threading.Thread.run

    def timed(self):
        try:
            original(self)
        finally:
            with lock:
                totals["thread " + self.name.rstrip("0123456789_")] += time.thread_time()

    threading.Thread.run = timed
    started = time.thread_time()
    from capture_export.cli import main
    totals["imports (main thread)"] = time.thread_time() - started
    code = main(sys.argv[1:])
    totals["main thread (imports included)"] = time.thread_time() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"PROFILE user {usage.ru_utime:.3f} sys {usage.ru_stime:.3f} minflt {usage.ru_minflt}", file=sys.stderr)
    for name, seconds in totals.items():
        print(f"PROFILE {name}={seconds:.3f}", file=sys.stderr)
    sys.exit(code)

# The encode pool's fork server imports __main__ (this file) too: only the exporting process runs.
if __name__ == "__main__":
    run()
'''

MANIFEST = """\
apiVersion: v1
kind: Secret
metadata: {{name: s3, namespace: default}}
stringData: {{access_key_id: {key}, access_secret: {secret}}}
---
apiVersion: capture.dev/v1alpha1
kind: S3Exporter
metadata: {{name: bench, namespace: default}}
spec: {{bucket: {bucket}, region: us-east-1, endpoint: "{endpoint}", secretRef: {{name: s3}}, prefix: {prefix},
        limit: {limit}, format: {format}, compression: {compression}, privacyMode: {privacy}}}
"""


def _case(name: str) -> tuple[str, str, bool]:
    """(format, compression, privacy mode) of a case: a format, its object extension (``jsonl.zst``,
    ``jsonl.gz``) telling the compression, ``+privacy``."""
    from capture_export import api  # noqa: F401 - before export.formats, which the API models import
    from capture_export.export.formats import FORMATS

    base, privacy = name.removesuffix("+privacy"), name.endswith("+privacy")
    fmt, _, extension = base.partition(".")
    info = FORMATS[fmt]
    compression = info.default_compression
    if extension:
        compression = next(c for c, e in info.extensions.items() if e == f".{fmt}.{extension}")
    return fmt, compression, privacy


def _minor_faults(pid: int) -> int:
    """The minor page faults process ``pid`` has taken so far (Linux; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[7])  # field 10, minflt
    except (OSError, IndexError, ValueError):
        return 0


def _sample_tree(pid: int, seen: dict[int, tuple[str, float]], done: threading.Event,
                 faults: dict[int, int] | None = None) -> None:
    """Every 50 ms until ``done``: each process's role and CPU seconds into ``seen``, its minor page faults
    into ``faults``."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not done.is_set():
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                times = process.cpu_times()
                name = _role(process.cmdline(), process.pid == pid, process.ppid() == pid)
            except psutil.Error:
                continue
            seen[process.pid] = (name, times.user + times.system)
            if faults is not None:
                faults[process.pid] = max(faults.get(process.pid, 0), _minor_faults(process.pid))
        time.sleep(0.05)


_EXPORTING = "exporting process (sampled until it exits)"


def _role(cmdline: list[str], exporting: bool, child: bool) -> str:
    text = " ".join(cmdline)
    if exporting:
        return _EXPORTING
    if "resource_tracker" in text:
        return "resource tracker"
    if "forkserver" in text and child:
        return "fork server"
    return "encode worker"  # forked by the fork server: its command line is the fork server's


def profile(case: str, store: str, s3: object, workdir: Path, limit: int, records: int,
            code_path: str | None = None, label: str = "", probe: SpeedProbe | None = None) -> dict[str, float] | None:
    """Run one case; the tree's CPU seconds per role (summed), or None when it failed. ``code_path``: run
    the capture_export found there instead of the installed one (PYTHONPATH), e.g. an older commit's."""
    fmt, compression, privacy = _case(case)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{case}-", dir=workdir))
    shutil.copy(store, run_dir / "store.sqlite")
    # A valid bucket name: mkdtemp's random part may end in "_", and a name may not end in "-".
    bucket = re.sub(r"[^a-z0-9]+", "-", run_dir.name.lower()).strip("-")
    s3.create_bucket(bucket)  # type: ignore[attr-defined]
    (run_dir / "exporter.yaml").write_text(MANIFEST.format(
        key=s3.access_key_id, secret=s3.secret_access_key, endpoint=s3.endpoint,  # type: ignore[attr-defined]
        bucket=bucket, prefix="profile", limit=limit, format=fmt,
        compression=compression, privacy=str(privacy).lower()))
    wrapper = run_dir / "profiled_capture_export.py"
    wrapper.write_text(WRAPPER)
    log = run_dir / "output.log"
    environment = dict(os.environ)
    if code_path is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, (code_path, environment.get("PYTHONPATH"))))
    speed = probe.sample() if probe is not None else None
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, str(wrapper), "run", "--once", "-f", str(run_dir / "exporter.yaml"),
                                    "--store", str(run_dir / "store.sqlite"), "--state", str(run_dir / "state.json")],
                                   stdout=output, stderr=subprocess.STDOUT, env=environment)
        seen: dict[int, tuple[str, float]] = {}
        faults: dict[int, int] = {}
        done = threading.Event()
        sampler = threading.Thread(target=_sample_tree, args=(process.pid, seen, done, faults), daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    text = log.read_text()
    name = f"{case}{label}"
    if code != 0:
        print(f"{name}: FAILED (exit {code}):\n{text[-2000:]}")
        return None
    totals: dict[str, float] = {"wall": wall}
    for pid, (role, seconds) in seen.items():
        totals[role] = totals.get(role, 0.0) + seconds
        totals["tree"] = totals.get("tree", 0.0) + seconds
        if role == "encode worker":
            totals["worker faults"] = totals.get("worker faults", 0.0) + faults.get(pid, 0)
    speed_text = f"; CPU speed {speed / 1000:,.0f}k zstd-3 records/CPU-s" if speed is not None else ""
    print(f"{name}: {records:,} records in {wall:.2f}s ({records / wall:,.0f} records/s); "
          f"load {load_before:.2f}/{os.getloadavg()[0]:.2f}{speed_text}")
    for pid, (name, seconds) in sorted(seen.items()):
        print(f"  {name:<44} {seconds:6.2f}s {seconds / records * 1e6:7.1f} µs/record; "
              f"{faults.get(pid, 0) / records:.2f} minor page faults/record (sampled)")
    for line in text.splitlines():
        if line.startswith("PROFILE user"):
            fields = line.split()
            user, system, faults = float(fields[2]), float(fields[4]), int(fields[6])
            print(f"  exporting process at the end of main: user {user:.2f}s + sys {system:.2f}s = "
                  f"{(user + system) / records * 1e6:.1f} µs/record; {faults:,} minor page faults")
        elif line.startswith("PROFILE "):
            name, seconds_text = line[len("PROFILE "):].rsplit("=", 1)
            seconds = float(seconds_text)
            print(f"    {name:<42} {seconds:6.2f}s {seconds / records * 1e6:7.1f} µs/record")
    return totals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--formats", default="cbor-zstd,jsonl,parquet")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="run every case this many times, interleaved")
    parser.add_argument("--compare", metavar="DIR", help="also run every case with the capture_export package "
                        "found in DIR (e.g. `git archive <commit> operator | tar -x -C DIR`, then DIR/operator), "
                        "alternating with the installed one")
    add_keep_argument(parser)
    args = parser.parse_args()
    formats = args.formats.split(",")
    require("weed", "psutil", *(["pyarrow"] if any(f.startswith("parquet") for f in formats) else []))
    cache_bytecode(args.compare)

    from capture_export.local_s3 import LocalS3

    with work_directory("capture-export-profile-", keep=args.keep) as workdir:
        store = str(workdir / "store.sqlite")
        seconds = seed_sqlite(store, args.records)
        print(f"seeded {args.records:,} records in {seconds:.1f}s; {os.cpu_count()} CPUs; limit {args.limit:,}",
              flush=True)
        versions: list[tuple[str | None, str]] = [(None, "")]
        if args.compare:
            versions.append((args.compare, f" [{args.compare}]"))
        results: dict[str, list[dict[str, float]]] = {}
        probe = SpeedProbe()
        with LocalS3(workdir / "s3", die_with_parent=True) as s3:
            for round_number in range(args.rounds):
                for fmt in formats:
                    # Alternate which version goes first, so that neither always runs on the warmer machine.
                    for code_path, label in versions if round_number % 2 == 0 else versions[::-1]:
                        totals = profile(fmt, store, s3, workdir, args.limit, args.records, code_path, label, probe)
                        if totals is not None:
                            results.setdefault(fmt + label, []).append(totals)
        if args.rounds > 1 or args.compare:
            print("\nmedian of the runs, µs per record (CPU of the whole tree; of the exporting process; of the "
                  "encode workers) and records/s:")
            for name, runs in results.items():
                def median(key: str, runs: list[dict[str, float]] = runs) -> float:
                    return statistics.median(run.get(key, 0.0) for run in runs) / args.records * 1e6
                rate = statistics.median(args.records / run["wall"] for run in runs)
                worker_faults = statistics.median(run.get("worker faults", 0.0) for run in runs) / args.records
                print(f"  {name:<44} tree {median('tree'):6.1f}  exporting {median(_EXPORTING):6.1f}  "
                      f"workers {median('encode worker'):6.1f} ({worker_faults:.2f} faults/record)  "
                      f"{rate:8,.0f} records/s  ({len(runs)} runs)")
        print(f"\n{probe.describe()} (median of {len(probe.samples)} samples, one before each run): multiply "
              f"the CPU µs above by {probe.factor:.2f} to estimate them on the quiet machine")


if __name__ == "__main__":
    main()
