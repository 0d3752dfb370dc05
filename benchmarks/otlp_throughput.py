"""OTLP ingest throughput: concurrent OpenTelemetry SDK exporters -> `capture-export ingest` -> SQLite.

    .venv/bin/python benchmarks/otlp_throughput.py [--exporters 4] [--batch 512] [--spans 80000]

Builds ``--spans`` GenAI spans with the OpenTelemetry SDK up front (chat spans in the v1.37 conventions:
models, usage, conversation id, input and output messages; one plain HTTP span per ten), then runs
``--exporters`` OTLP/HTTP protobuf exporters of the SDK (``OTLPSpanExporter``), each in its own thread,
exporting its share in batches of ``--batch`` (the BatchSpanProcessor's default) to `capture-export
ingest`. Prints GenAI spans/s committed, export call latency (p50, p99), the server's peak RSS, the load.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from capture_export.local_s3 import free_port

sys.path.insert(0, str(Path(__file__).parent))
from ingest_throughput import rss_with_children

CLI = [sys.executable, "-m", "capture_export.cli"]
TOKEN = "bench-token"


def build_spans(count: int) -> list:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "gateway", "service.instance.id": "gw-1"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    question = "Summarise the export cycle: read a batch, encode it, write one object and a checkpoint. " * 4
    answer = "The exporter reads past its cursor, writes the object, then the checkpoint, then moves on. " * 6
    for n in range(count):
        if n % 10 == 9:
            with tracer.start_as_current_span("GET /healthz") as span:
                span.set_attribute("http.response.status_code", 200)
            continue
        with tracer.start_as_current_span("chat gpt-4o") as span:
            span.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.response.id": f"chatcmpl-{n}", "gen_ai.usage.input_tokens": 300 + n % 500,
                "gen_ai.usage.output_tokens": 80 + n % 200, "gen_ai.conversation.id": f"conv-{n // 5}",
                "gen_ai.request.temperature": 0.2, "user.id": f"user{n % 97}@example.com",
                "gen_ai.input.messages": f'[{{"role":"user","parts":[{{"type":"text","content":"{question} {n}"}}]}}]',
                "gen_ai.output.messages": f'[{{"role":"assistant","parts":[{{"type":"text","content":"{answer}"}}],'
                                          '"finish_reason":"stop"}]',
                "gen_ai.response.finish_reasons": ["stop"], "server.address": "api.openai.com",
            })
    return list(memory.get_finished_spans())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exporters", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--spans", type=int, default=80_000)
    args = parser.parse_args()

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    started = time.monotonic()
    spans = build_spans(args.spans)
    genai = sum(1 for s in spans if s.attributes and "gen_ai.operation.name" in s.attributes)
    print(f"built {len(spans):,} spans ({genai:,} GenAI) in {time.monotonic() - started:.1f}s", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="capture-export-otlp-bench-"))
    (workdir / "token").write_text(TOKEN + "\n")
    port = free_port()
    log = (workdir / "ingest.log").open("ab")
    server = subprocess.Popen([*CLI, "ingest", "--store", str(workdir / "store.sqlite"), "--listen",
                               f"127.0.0.1:{port}", "--token-file", str(workdir / "token")],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"ingest server on" not in (workdir / "ingest.log").read_bytes():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit((workdir / "ingest.log").read_text())
            time.sleep(0.1)
        batches = [spans[i:i + args.batch] for i in range(0, len(spans), args.batch)]
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def run(number: int) -> None:
            exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces",
                                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            for batch in batches[number::args.exporters]:
                began = time.monotonic()
                result = exporter.export(batch)
                with lock:
                    latencies.append(time.monotonic() - began)
                    if result != SpanExportResult.SUCCESS:
                        failures.append(str(result))
            exporter.shutdown()

        process = psutil.Process(server.pid)
        peak = 0
        threads = [threading.Thread(target=run, args=(n,)) for n in range(args.exporters)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_with_children(process))
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        load = os.getloadavg()
        latencies.sort()
        if failures:
            raise SystemExit(f"{len(failures)} exports failed")

        def pct(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        print(f"{genai:,} GenAI spans committed in {elapsed:.1f}s: {genai / elapsed:,.0f} spans/s "
              f"({len(spans) / elapsed:,.0f} spans/s received; {args.exporters} exporters, batches of {args.batch}; "
              f"export p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms)")
        print(f"ingest peak RSS (with parsers) {peak / 2**20:.0f} MB; "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    from ingest_throughput import machine_speed

    print(machine_speed())


if __name__ == "__main__":
    main()
