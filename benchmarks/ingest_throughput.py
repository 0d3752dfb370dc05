"""Ingest throughput: concurrent LiteLLM clients -> `capture-export ingest` -> store, while an exporter drains it.

    .venv/bin/python benchmarks/ingest_throughput.py [--store sqlite|postgres|postgresql://…] [--clients 8]
        [--batch 100] [--seconds 20] [--no-exporter]
    .venv/bin/python benchmarks/ingest_throughput.py --stages [--store sqlite|postgres] [--prefill 50000]

Starts SeaweedFS, `capture-export ingest` (its own process) and `capture-export run` (the exporter, its
own process, every 1 s, limit 1000) on the same store (``postgres``: a throwaway cluster, tests/support/pg.py),
then runs ``--clients`` concurrent HTTP clients in this process, each posting batches of ``--batch``
LiteLLM StandardLoggingPayloads (json_array, ~3.5-4 KB each, every id new) to /v1/litellm as fast as
they are answered. Prints records/s committed, request latency (p50, p99, max), the ingest server's
peak RSS, how far the exporter got, the load average and a machine-speed figure; and the CPU time each
process spent per record (the ingest server's main process and its parsing processes, the exporter,
SeaweedFS, the clients), with what an idle 2-core machine would sustain within that CPU budget (an
estimate: see cpu_budget.py).

Needs SeaweedFS and psutil (the test extra: `scripts/bootstrap.sh test`); ``--store postgres`` also
PostgreSQL (scripts/ensure-postgres.sh). They are checked up front. The work directory is deleted at the
end unless ``--keep``.

``--stages`` runs no server: it times each stage of a LiteLLM record's way into the store on its own, in
CPU µs per record (JSON parse, mapping, CBOR encoding, the parsing process's whole work, the hand-off to
and from a parsing process, the insert-or-ignore into a store already holding ``--prefill`` records), so
that the next person sees where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench_support import add_keep_argument, require, work_directory

if __name__ == "__main__":
    require("weed", "psutil", *(["pytest", "postgres"] if "postgres" in sys.argv else []))

import aiohttp
import psutil

from capture_export.local_s3 import LocalS3, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_budget import SpeedProbe, cpu_seconds, idle_estimate, load, measure_stage, stage_table

CLI = [sys.executable, "-m", "capture_export.cli"]
TOKEN = "bench-token"
PLACEHOLDER = b"@@ID@@"

_TEXT = ("the export of each batch writes one object and a checkpoint so that a retried run overwrites its own "
         "object rather than a second one while the gateway keeps writing records into the store at its own "
         "pace and the operator drains the backlog")
_WORDS = _TEXT.split(" ")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def litellm_payload(rng: random.Random, n: int) -> dict:
    """A StandardLoggingPayload shaped as LiteLLM's proxy sends it (~3.5 KB as JSON)."""
    start = 1_796_000_000 + n * 0.01
    prompt, completion = rng.randint(200, 2000), rng.randint(20, 600)
    model = rng.choice(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash"])
    metadata = {k: None for k in (
        "user_api_key_spend", "user_api_key_max_budget", "user_api_key_budget_reset_at", "user_api_key_user_spend",
        "user_api_key_user_max_budget", "user_api_key_team_spend", "user_api_key_team_max_budget",
        "user_api_key_org_alias", "user_api_key_project_id", "user_api_key_project_alias", "spend_logs_metadata",
        "requester_metadata", "prompt_management_metadata", "mcp_tool_call_metadata",
        "vector_store_request_metadata", "routing_decision", "cold_storage_object_key", "kubernetes_pod_routing",
        "used_client_oauth_token", "user_api_key_auth_metadata")}
    metadata.update({
        "user_api_key_hash": f"{rng.getrandbits(128):032x}", "user_api_key_alias": f"key-{n % 40}",
        "user_api_key_team_id": f"team-{n % 7}", "user_api_key_team_alias": f"team {n % 7}",
        "user_api_key_user_id": f"user-{n % 160}", "user_api_key_user_email": f"user{n % 160}@example.com",
        "user_api_key_org_id": "org-1", "user_api_key_end_user_id": None,
        "user_api_key_request_route": "/chat/completions", "requester_ip_address": "10.0.0.7",
        "user_agent": "OpenAI/Python 1.109.1", "applied_guardrails": [],
        "requester_custom_headers": {"x-request-source": "bench"},
        "usage_object": {"completion_tokens": completion, "prompt_tokens": prompt,
                         "total_tokens": prompt + completion,
                         "prompt_tokens_details": {"cached_tokens": prompt // 3, "audio_tokens": None},
                         "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": None}},
    })
    answer = _text(rng, rng.randint(30, 70))
    return {
        "id": PLACEHOLDER.decode(), "litellm_call_id": f"{rng.getrandbits(128):032x}",
        "trace_id": f"{rng.getrandbits(128):032x}", "session_id": f"sess-{n // 6}", "call_type": "acompletion",
        "cache_hit": False, "stream": False, "status": "success",
        "status_fields": {"llm_api_status": "success", "guardrail_status": "not_run"},
        "custom_llm_provider": "openai", "saved_cache_cost": 0.0, "startTime": start,
        "endTime": start + rng.uniform(0.3, 4), "completionStartTime": start + 0.2, "response_time": 1.2,
        "model": model, "metadata": metadata, "cache_key": None, "response_cost": prompt * 2.5e-6 + completion * 1e-5,
        "cost_breakdown": {"input_cost": prompt * 2.5e-6, "output_cost": completion * 1e-5, "tool_usage_cost": 0.0,
                           "total_cost": prompt * 2.5e-6 + completion * 1e-5},
        "total_tokens": prompt + completion, "prompt_tokens": prompt, "completion_tokens": completion,
        "request_tags": ["prod", "bench"], "end_user": None, "api_base": "https://api.openai.com",
        "model_group": model, "model_id": f"{rng.getrandbits(64):016x}", "requester_ip_address": "10.0.0.7",
        "user_agent": "OpenAI/Python 1.109.1",
        "messages": [{"role": "system", "content": "You are a helpful assistant. " + _text(rng, 30)},
                     {"role": "user", "content": _text(rng, rng.randint(20, 50))}],
        "response": {"id": f"chatcmpl-{rng.getrandbits(96):024x}", "created": int(start), "model": model,
                     "object": "chat.completion",
                     "choices": [{"finish_reason": "stop", "index": 0,
                                  "message": {"content": answer, "role": "assistant", "tool_calls": None}}],
                     "usage": metadata["usage_object"]},
        "model_parameters": {"temperature": 0.2, "max_tokens": 1024},
        "hidden_params": {"model_id": None, "cache_key": None, "api_base": "https://api.openai.com",
                          "response_cost": prompt * 2.5e-6, "additional_headers": {"x-ratelimit-remaining": "99"},
                          "litellm_overhead_time_ms": 2.1, "litellm_model_name": model},
        "model_map_information": {"model_map_key": model, "model_map_value": None},
        "error_str": None, "error_information": None, "response_cost_failure_debug_info": None,
        "guardrail_information": None, "standard_built_in_tools_params": None,
    }


def batch_templates(count: int, batch: int) -> list[list[bytes]]:
    """JSON array bodies split at each payload's id, so that every request gets fresh ids cheaply."""
    rng = random.Random(7)
    templates = []
    for t in range(count):
        body = json.dumps([litellm_payload(rng, t * batch + i) for i in range(batch)]).encode()
        templates.append(body.split(PLACEHOLDER))
    return templates


async def client(url: str, templates: list[list[bytes]], number: int, stop_at: float, latencies: list[float],
                 counts: list[int]) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    sequence = 0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop_at:
            parts = templates[sequence % len(templates)]
            ids = [f"c{number}-{sequence}-{i}".encode() for i in range(len(parts) - 1)]
            body = b"".join(part + ident for part, ident in zip(parts, ids, strict=False)) + parts[-1]
            sequence += 1
            started = time.monotonic()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                if response.status != 200:
                    raise SystemExit(f"HTTP {response.status}: {answer[:300]!r}")
                counts[0] += json.loads(answer)["new"]
            latencies.append(time.monotonic() - started)


def rss_with_children(process: psutil.Process) -> int:
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


def machine_speed() -> str:
    """How fast this machine is right now, to compare figures taken under different loads: zstd-3 of seeded
    records (the export benchmark of docs/benchmarks.md measured 116k records/s at load 0.9)."""
    import zstandard

    from capture_export.seed import generate_records
    from capture_export.store.records import encode_body

    data = b"".join(encode_body(r)[1] for r in generate_records(3000, seed=1))
    started = time.perf_counter()
    zstandard.ZstdCompressor(level=3).compress(data)
    return f"machine speed now: zstd-3 {3000 / (time.perf_counter() - started):,.0f} records/s (116k at load 0.9)"


def postgres_server_pid(dsn: str) -> int | None:
    """The postmaster of the PostgreSQL server behind ``dsn`` (its children are the backends, the WAL writer,
    the checkpointer…), to count the server's CPU too; None when it is not on this machine."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with contextlib.suppress(psutil.Error):
        return psutil.Process(backend).ppid()
    return None


def exported_rows(workdir: Path) -> int:
    """Rows the standalone exporter has exported so far (its state file's totals)."""
    path = workdir / "state.json"
    try:
        state = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:  # caught mid-write
        return 0
    return sum(v.get("totals", {}).get("rows", 0) for v in state.values() if isinstance(v, dict))


def print_cpu_budget(cpu: dict[str, float], client_cpu: float, committed: int, exported: int,
                     probe: SpeedProbe) -> None:
    """CPU µs per record of each process, and what an idle 2-core machine would sustain within that budget."""
    if not committed:
        return

    def per(seconds: float, count: int) -> float:
        return seconds / count * 1e6 if count else 0.0

    server = per(cpu["server"], committed)
    main = per(cpu["main"], committed)
    exporter = per(cpu["exporter"], exported)
    s3 = per(cpu["s3"], exported)
    client = per(client_cpu, committed)
    postgres = per(cpu["postgres"], committed)
    print(f"CPU µs per record (measured now; {probe.describe()}; quiet estimate in brackets):")
    for name, micros in (("ingest server", server), ("  main process (HTTP, hand-offs, SQLite/PostgreSQL client)",
                                                      main),
                         ("  parsing processes", server - main), ("exporter (per record exported)", exporter),
                         ("SeaweedFS (per record exported)", s3), ("the 8 clients (this process)", client),
                         *([("the PostgreSQL server (all its processes)", postgres)] if postgres else [])):
        print(f"  {name:<60} {micros:7.1f}  [{micros * probe.factor:6.1f}]")
    ingest_and_export = server + exporter + postgres
    parts = "ingest + exporter" + (" + PostgreSQL" if postgres else "")
    print(f"idle 2-core estimate from the CPU budget (not a measurement): {parts} "
          f"{ingest_and_export * probe.factor:.1f} µs quiet -> "
          f"{idle_estimate(ingest_and_export, probe):,.0f} records/s; "
          f"with SeaweedFS and the clients on the same cores "
          f"{idle_estimate(ingest_and_export + s3 + client, probe):,.0f} records/s")


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)


def request_bodies(templates: list[list[bytes]], prefix: str) -> list[bytes]:
    """One JSON array body per template, every payload id unique (``prefix``-n-i)."""
    return [b"".join(part + f"{prefix}-{n}-{i}".encode() for i, part in enumerate(parts[:-1])) + parts[-1]
            for n, parts in enumerate(templates)]


def stages(args: argparse.Namespace, workdir: Path) -> None:
    """CPU µs per record of each stage on its own (no server, no clients)."""
    import gc
    import pickle

    from capture_export.ingest.litellm import litellm_record
    from capture_export.ingest.native import json_values
    from capture_export.ingest.parsing import IngestLimits, cyclic_gc_paused, prepare_by_name, warm
    from capture_export.ingest.server import store_opener
    from capture_export.store.records import encode_ordered

    warm()
    probe = SpeedProbe()
    probe.sample()
    templates = batch_templates(24, args.batch)
    records = len(templates) * args.batch
    limits = IngestLimits()
    rounds = iter(range(1_000_000))
    state: dict[str, list] = {}

    def fresh_bodies() -> None:
        state["bodies"] = request_bodies(templates, f"s{next(rounds)}")

    def parsed() -> None:
        fresh_bodies()
        state["payloads"] = [json_values(body, limits.max_records) for body in state["bodies"]]

    def mapped() -> None:
        parsed()
        state["records"] = [[litellm_record(p, i) for i, p in enumerate(ps)] for ps in state["payloads"]]

    def prepared() -> None:
        fresh_bodies()
        state["rows"] = [prepare_by_name("litellm", body, "", "application/json", limits)
                         for body in state["bodies"]]

    def as_in_a_parsing_process(work: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with cyclic_gc_paused():
                return work()

        return run

    results: list[tuple[str, float]] = []
    # What a parsing process runs for each request, stage by stage, then all of it at once.
    gc.collect()
    results.append(("JSON parse (orjson, json_values)", measure_stage(as_in_a_parsing_process(
        lambda: [json_values(body, limits.max_records) for body in state["bodies"]]), records, setup=fresh_bodies)))
    results.append(("LiteLLM mapping (litellm_record)", measure_stage(as_in_a_parsing_process(
        lambda: [[litellm_record(p, i) for i, p in enumerate(ps)] for ps in state["payloads"]]), records,
        setup=parsed)))
    results.append(("CBOR encoding + credential scan (encode_ordered)", measure_stage(as_in_a_parsing_process(
        lambda: [[encode_ordered(r) for r in rs] for rs in state["records"]]), records, setup=mapped)))
    results.append(("parsing process, all of a request (prepare_by_name)", measure_stage(
        lambda: [prepare_by_name("litellm", body, "", "application/json", limits) for body in state["bodies"]],
        records, setup=fresh_bodies)))
    # What the main process and a parsing process spend handing a request over and the rows back.
    prepared()
    results.append(("hand-off to a parsing process and back (pickling)", measure_stage(
        lambda: [pickle.loads(pickle.dumps(("litellm", body, "", "application/json", limits)))
                 and pickle.loads(pickle.dumps(rows)) for body, rows in zip(state["bodies"], state["rows"],
                                                                            strict=True)], records)))
    probe.sample()

    # The insert-or-ignore, in groups of 8 requests (what 8 clients make of the group commit).
    url = str(workdir / "store.sqlite") if args.store == "sqlite" else args.store
    store = store_opener(url)()
    try:
        filled = 0
        while filled < args.prefill:
            prepared()
            groups = [r[2] for r in state["rows"]]
            for i in range(0, len(groups), 8):
                store.append_unique(groups[i:i + 8])
            filled += records

        def insert() -> None:
            groups = [r[2] for r in state["rows"]]
            for i in range(0, len(groups), 8):
                store.append_unique(groups[i:i + 8])

        kind = "SQLite" if args.store == "sqlite" else "PostgreSQL"
        server = postgres_server_pid(url) if kind == "PostgreSQL" else None
        server_before = cpu_seconds(server) if server else 0.0
        results.append((f"{kind} insert-or-ignore, 8 requests a transaction (append_unique)",
                        measure_stage(insert, records, rounds=5, setup=prepared)))
        if server:
            results.append(("  the PostgreSQL server's CPU meanwhile (its processes)",
                            (cpu_seconds(server) - server_before) / (5 * records) * 1e6))
    finally:
        store.close()
    probe.sample()
    size = sum(len(p) for p in templates[0]) / args.batch
    print(f"stages, CPU µs per LiteLLM record (~{size:,.0f} bytes of JSON, {args.batch} payloads a request; median "
          f"of rounds; the store held {args.prefill:,} records first); load {load()}; {probe.describe()}:")
    print(stage_table(results, probe))
    alone = sum(micros for _, micros in results[3:])
    print(f"parsing process, hand-off and insert alone: {alone:.1f} µs now, {alone * probe.factor:.1f} µs quiet "
          "(est.); the end-to-end run adds HTTP, the group commit's hand-offs and the exporter")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="sqlite",
                        help="sqlite (a new file), postgres (a throwaway cluster) or a postgresql:// DSN")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--no-exporter", action="store_true")
    parser.add_argument("--parse-workers", type=int, default=None,
                        help="the ingest server's parsing processes (default: its own default)")
    parser.add_argument("--stages", action="store_true", help="time each stage on its own, in CPU µs per record")
    parser.add_argument("--prefill", type=int, default=50_000, help="--stages: records in the store before the "
                        "insert is timed")
    add_keep_argument(parser)
    args = parser.parse_args()
    go = run_stages if args.stages else run
    if args.store == "postgres":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support.pg
        from tests.support.pg import TempPostgres

        with TempPostgres() as cluster:
            args.store = cluster.create_database("bench")
            go(args)
        return
    go(args)


def run(args: argparse.Namespace) -> None:
    with work_directory("capture-export-ingest-bench-", keep=args.keep) as workdir:
        measure(args, workdir)


def run_stages(args: argparse.Namespace) -> None:
    with work_directory("capture-export-ingest-stages-", keep=args.keep) as workdir:
        stages(args, workdir)


def measure(args: argparse.Namespace, workdir: Path) -> None:
    store = str(workdir / "store.sqlite") if args.store == "sqlite" else args.store
    (workdir / "token").write_text(TOKEN + "\n")
    port = free_port()
    templates = batch_templates(24, args.batch)
    size = sum(len(p) for p in templates[0]) / args.batch
    print(f"payloads: {args.batch} per request, {size:,.0f} bytes each as JSON; {args.clients} clients; "
          f"store {'SQLite' if args.store == 'sqlite' else 'PostgreSQL'}", flush=True)

    with LocalS3(workdir / "s3", die_with_parent=True) as s3:
        s3.create_bucket("bench")
        workers = [] if args.parse_workers is None else ["--parse-workers", str(args.parse_workers)]
        ingest = _start([*CLI, "ingest", "--store", store, "--listen", f"127.0.0.1:{port}", "--token-file",
                         str(workdir / "token"), *workers], workdir / "ingest.log")
        exporter = None
        try:
            deadline = time.monotonic() + 60
            while b"ingest server on" not in (workdir / "ingest.log").read_bytes():
                if time.monotonic() > deadline or ingest.poll() is not None:
                    raise SystemExit((workdir / "ingest.log").read_text())
                time.sleep(0.1)
            if not args.no_exporter:
                manifest = workdir / "exporter.yaml"
                manifest.write_text(f"""\
apiVersion: v1
kind: Secret
metadata: {{name: s3, namespace: default}}
stringData: {{access_key_id: {s3.access_key_id}, access_secret: {s3.secret_access_key}}}
---
apiVersion: capture.dev/v1alpha1
kind: S3Exporter
metadata: {{name: drain, namespace: default}}
spec: {{bucket: bench, region: us-east-1, endpoint: "{s3.endpoint}", secretRef: {{name: s3}}, prefix: bench,
        limit: 1000, every: 1}}
""")
                exporter = _start([*CLI, "run", "-f", str(manifest), "--store", store, "--state",
                                   str(workdir / "state.json")], workdir / "exporter.log")
            process = psutil.Process(ingest.pid)
            peak_rss = 0
            probe = SpeedProbe()
            probe.sample()
            exporter_pid = exporter.pid if exporter is not None else None
            s3_pid = s3._process.pid if s3._process is not None else None
            pg_pid = postgres_server_pid(store) if args.store != "sqlite" else None
            cpu_before = {"postgres": cpu_seconds(pg_pid) if pg_pid else 0.0,
                          "main": cpu_seconds(ingest.pid, children=False), "server": cpu_seconds(ingest.pid),
                          "exporter": cpu_seconds(exporter_pid) if exporter_pid else 0.0,
                          "s3": cpu_seconds(s3_pid) if s3_pid else 0.0}
            exported_before = exported_rows(workdir)
            client_before = time.process_time()

            async def run() -> tuple[list[float], int, float]:
                nonlocal peak_rss
                latencies: list[float] = []
                counts = [0]
                started = time.monotonic()
                stop_at = started + args.seconds
                url = f"http://127.0.0.1:{port}/v1/litellm"
                tasks = [asyncio.create_task(client(url, templates, n, stop_at, latencies, counts))
                         for n in range(args.clients)]
                while not all(t.done() for t in tasks):
                    peak_rss = max(peak_rss, rss_with_children(process))
                    await asyncio.sleep(0.2)
                await asyncio.gather(*tasks)
                return latencies, counts[0], time.monotonic() - started

            latencies, committed, elapsed = asyncio.run(run())
            client_cpu = time.process_time() - client_before
            cpu = {"main": cpu_seconds(ingest.pid, children=False) - cpu_before["main"],
                   "server": cpu_seconds(ingest.pid) - cpu_before["server"],
                   "exporter": (cpu_seconds(exporter_pid) if exporter_pid else 0.0) - cpu_before["exporter"],
                   "s3": (cpu_seconds(s3_pid) if s3_pid else 0.0) - cpu_before["s3"],
                   "postgres": (cpu_seconds(pg_pid) if pg_pid else 0.0) - cpu_before["postgres"]}
            exported = exported_rows(workdir) - exported_before
            load_now = load()
            latencies.sort()

            def pct(q: float) -> float:
                return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

            print(f"committed {committed:,} records in {elapsed:.1f}s: {committed / elapsed:,.0f} records/s "
                  f"({len(latencies):,} requests; latency p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, "
                  f"max {latencies[-1] * 1000:.0f} ms)")
            print(f"ingest peak RSS (with parsers) {peak_rss / 2**20:.0f} MB; load average {load_now}")
            if exporter is not None:
                print(f"exporter drained {exported:,} records meanwhile (every 1 s, limit 1000)")
            probe.sample()
            print_cpu_budget(cpu, client_cpu, committed, exported, probe)
        finally:
            for proc in (exporter, ingest):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    print(machine_speed())


if __name__ == "__main__":
    main()
