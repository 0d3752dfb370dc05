"""OTLP ingest throughput: concurrent OpenTelemetry SDK exporters -> `capture-export ingest` -> SQLite.

    .venv/bin/python benchmarks/otlp_throughput.py [--exporters 4] [--batch 512] [--spans 80000]
    .venv/bin/python benchmarks/otlp_throughput.py --stages [--batch 512]

Builds ``--spans`` GenAI spans with the OpenTelemetry SDK up front (chat spans in the v1.37 conventions:
models, usage, conversation id, input and output messages; one plain HTTP span per ten), then runs
``--exporters`` OTLP/HTTP protobuf exporters of the SDK (``OTLPSpanExporter``), each in its own thread,
exporting its share in batches of ``--batch`` (the BatchSpanProcessor's default) to `capture-export
ingest`. Prints GenAI spans/s committed, export call latency (p50, p99), the server's peak RSS, the load,
and the CPU each side spent per GenAI span (the exporters' own protobuf encoding runs in this process, on
the same two cores).

``--stages`` runs no server: CPU µs per GenAI span of the SDK's encoding (the client's cost), and of the
server's protobuf decoding, mapping and CBOR encoding, its parsing process's whole work and the SQLite
insert-or-ignore, each on its own (see cpu_budget.py).

Needs the OpenTelemetry SDK and its OTLP/HTTP exporter and psutil (the test extra: `scripts/bootstrap.sh
test`), checked up front. The work directory is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_support import add_keep_argument, require, work_directory

if __name__ == "__main__":
    require("psutil", "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")

import psutil

from capture_export.local_s3 import free_port

sys.path.insert(0, str(Path(__file__).parent))
from cpu_budget import SpeedProbe, cpu_seconds, idle_estimate, load, measure_stage, stage_table
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


def stages(args: argparse.Namespace, workdir: Path) -> None:
    """CPU µs per GenAI span of each stage on its own (no server, no exporters)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from capture_export.ingest.otlp import _attributes, decode_request, is_genai, span_record
    from capture_export.ingest.parsing import IngestLimits, cyclic_gc_paused, prepare_by_name, warm
    from capture_export.ingest.server import store_opener
    from capture_export.store.records import encode_ordered

    warm()
    probe = SpeedProbe()
    probe.sample()
    spans = build_spans(args.batch * 8)
    batches = [spans[i:i + args.batch] for i in range(0, len(spans), args.batch)]
    genai = sum(1 for s in spans if s.attributes and "gen_ai.operation.name" in s.attributes)
    bodies = [encode_spans(batch).SerializeToString() for batch in batches]
    limits = IngestLimits()
    state: dict[str, list] = {}

    def paused(work):
        def run():
            with cyclic_gc_paused():
                return work()
        return run

    def decoded() -> None:
        state["requests"] = [decode_request(body, "application/x-protobuf") for body in bodies]

    def mapped_all() -> list:
        records = []
        for request in state["requests"]:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attrs = _attributes(span.attributes)
                        if is_genai(attrs):
                            records.append(span_record(span, attrs, resource, scope_spans.scope))
        return records

    def mapped() -> None:
        decoded()
        state["records"] = mapped_all()

    results = [
        ("the SDK's OTLP protobuf encoding (client side: encode_spans)", measure_stage(
            lambda: [encode_spans(batch).SerializeToString() for batch in batches], genai)),
        ("protobuf decode (ExportTraceServiceRequest)", measure_stage(paused(decoded), genai)),
        ("GenAI span mapping (attributes, span_record)", measure_stage(paused(mapped_all), genai, setup=decoded)),
        ("CBOR encoding + credential scan (encode_ordered)", measure_stage(
            paused(lambda: [encode_ordered(r) for r in state["records"]]), genai, setup=mapped)),
        ("parsing process, all of a request (prepare_by_name)", measure_stage(
            lambda: [prepare_by_name("otlp", body, "", "application/x-protobuf", limits) for body in bodies], genai)),
    ]
    store = store_opener(str(workdir / "store.sqlite"))()
    rows = [prepare_by_name("otlp", body, "", "application/x-protobuf", limits)[2] for body in bodies]
    generation = iter(range(1_000_000))

    def fresh_rows() -> None:  # new span ids each round, so that every row is new
        n = next(generation)
        state["rows"] = [[(ts, body, f"{capture_id}-{n}") for ts, body, capture_id in group] for group in rows]

    try:
        results.append(("SQLite insert-or-ignore, 4 requests a transaction (append_unique)", measure_stage(
            lambda: [store.append_unique(state["rows"][i:i + 4]) for i in range(0, len(state["rows"]), 4)],
            genai, rounds=5, setup=fresh_rows)))
    finally:
        store.close()
    probe.sample()
    print(f"stages, CPU µs per GenAI span ({len(spans):,} spans, {genai:,} GenAI, batches of {args.batch}; median of "
          f"rounds); load {load()}; {probe.describe()}:")
    print(stage_table(results, probe))
    server = results[4][1] + results[5][1]
    print(f"the server's parsing process and insert: {server:.1f} µs now; with the SDK's encoding on the same cores "
          f"{server + results[0][1]:.1f} µs: an idle 2-core machine would take "
          f"{idle_estimate(server + results[0][1], probe):,.0f} spans/s (estimate)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exporters", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--spans", type=int, default=80_000)
    parser.add_argument("--stages", action="store_true", help="time each stage on its own, in CPU µs per span")
    add_keep_argument(parser)
    args = parser.parse_args()
    if args.stages:
        with work_directory("capture-export-otlp-stages-", keep=args.keep) as workdir:
            stages(args, workdir)
        return
    with work_directory("capture-export-otlp-bench-", keep=args.keep) as workdir:
        measure(args, workdir)


def measure(args: argparse.Namespace, workdir: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    started = time.monotonic()
    spans = build_spans(args.spans)
    genai = sum(1 for s in spans if s.attributes and "gen_ai.operation.name" in s.attributes)
    print(f"built {len(spans):,} spans ({genai:,} GenAI) in {time.monotonic() - started:.1f}s", flush=True)

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
        probe = SpeedProbe()
        probe.sample()
        server_before, client_before = cpu_seconds(server.pid), time.process_time()
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_with_children(process))
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_before, time.process_time() - client_before
        load_now = load()
        latencies.sort()
        if failures:
            raise SystemExit(f"{len(failures)} exports failed")

        def pct(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        print(f"{genai:,} GenAI spans committed in {elapsed:.1f}s: {genai / elapsed:,.0f} spans/s "
              f"({len(spans) / elapsed:,.0f} spans/s received; {args.exporters} exporters, batches of {args.batch}; "
              f"export p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms)")
        print(f"ingest peak RSS (with parsers) {peak / 2**20:.0f} MB; load average {load_now}")
        probe.sample()
        server_us, client_us = server_cpu / genai * 1e6, client_cpu / genai * 1e6
        print(f"CPU µs per GenAI span (measured now; {probe.describe()}; quiet estimate in brackets): ingest server "
              f"{server_us:.1f} [{server_us * probe.factor:.1f}], the exporters' threads (the SDK's encoding, HTTP) "
              f"{client_us:.1f} [{client_us * probe.factor:.1f}]")
        print(f"idle 2-core estimate from the CPU budget (not a measurement): the server alone "
              f"{idle_estimate(server_us, probe):,.0f} spans/s; with the SDK exporters on the same cores "
              f"{idle_estimate(server_us + client_us, probe):,.0f} spans/s")
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
