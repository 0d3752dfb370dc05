"""OpenTelemetry GenAI spans sent by the OpenTelemetry Python SDK's OTLP/HTTP exporters (protobuf, with
and without gzip, and JSON) to a running ingest server; exported to SeaweedFS, every GenAI span's record
is in the bucket exactly once with its fields mapped, and other spans are ignored."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture_export.local_s3 import LocalS3
from tests.support.ingest import AUTH, TOKEN, RunningIngest, export_all, ingest_server

SPANS = 40


def _provider(exporter: Any) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": "gateway", "service.instance.id": "gw-7",
                                "deployment.environment.name": "prod"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=16, schedule_delay_millis=50))
    return provider


def _emit(provider: Any, tag: str) -> list[dict[str, Any]]:
    """SPANS GenAI spans in the current conventions and the older ones, plus plain spans; what each
    GenAI span should become."""
    from opentelemetry.trace import Status, StatusCode

    tracer = provider.get_tracer("capture-export-test", "1.0")
    expected = []
    for n in range(SPANS):
        with tracer.start_as_current_span(f"request {n}"):  # a plain HTTP span: ignored
            current = n % 4 != 3
            name = f"chat gpt-4o {tag}" if current else f"anthropic.chat {tag}"
            with tracer.start_as_current_span(name) as span:
                if current:
                    span.set_attributes({
                        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                        "gen_ai.response.id": f"chatcmpl-{tag}-{n}", "gen_ai.usage.input_tokens": 100 + n,
                        "gen_ai.usage.output_tokens": 20 + n, "gen_ai.conversation.id": f"{tag}-conv-{n // 3}",
                        "gen_ai.request.temperature": 0.5, "user.id": f"user{n % 3}@example.com",
                        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                            {"type": "text", "content": f"question {n}"}]}]),
                        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                            {"type": "text", "content": f"answer {n}"}], "finish_reason": "stop"}]),
                        "gen_ai.response.finish_reasons": ["stop"], "server.address": "api.openai.com",
                    })
                    messages = [{"role": "user", "parts": [{"type": "text", "content": f"question {n}"}]}]
                else:  # the older conventions: gen_ai.system, prompt/completion tokens, indexed messages
                    span.set_attributes({
                        "gen_ai.system": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
                        "gen_ai.usage.prompt_tokens": 7, "gen_ai.usage.completion_tokens": 3,
                        "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": f"question {n}",
                        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "no",
                        "gen_ai.operation.name": "chat", "enduser.id": "legacy-user",
                        "http.response.status_code": 429, "error.type": "429",
                    })
                    span.set_status(Status(StatusCode.ERROR, "rate limited"))
                    messages = [{"role": "user", "content": f"question {n}"}]
                context = span.get_span_context()
                expected.append({"capture_id": f"{context.trace_id:032x}-{context.span_id:016x}",
                                 "current": current, "n": n, "messages": messages})
    provider.force_flush()
    return expected


def _check(records: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    counts = Counter(r["capture_id"] for r in records)
    assert set(counts) == {e["capture_id"] for e in expected}
    assert max(counts.values()) == 1
    by_id = {r["capture_id"]: r for r in records}
    for want in expected:
        record, n = by_id[want["capture_id"]], want["n"]
        otel = record["capture"]["otel"]
        assert otel["resource"]["service.name"] == "gateway" and otel["scope"]["name"] == "capture-export-test"
        assert record["identity"]["node_id"] == "gw-7"
        assert set(record["identity"]["tags"]) == {"service:gateway", "env:prod"}
        assert record["capture"]["request"]["body"]["messages"] == want["messages"]
        assert record["duration_ms"] >= 0 and record["timestamp"].tzinfo is not None
        if want["current"]:
            assert record["model"] == "gpt-4o-2024-08-06" and record["api_type"] == "oai_completions"
            assert record["usage"] == {"input_tokens": 100 + n, "output_tokens": 20 + n, "cached_tokens": 0,
                                       "reasoning_tokens": 0}
            assert record["session_id"].endswith(f"-conv-{n // 3}")
            assert record["status_code"] == 200
            assert record["identity"]["login_name"] == f"user{n % 3}@example.com"
            assert record["capture"]["response"]["body"]["messages"][0]["parts"][0]["content"] == f"answer {n}"
            # Attributes with no field of their own are kept.
            assert otel["attributes"]["gen_ai.request.temperature"] == 0.5
            assert otel["attributes"]["server.address"] == "api.openai.com"
            assert "gen_ai.input.messages" not in otel["attributes"]  # moved to the request body, not copied
        else:
            assert record["model"] == "claude-sonnet-4-5" and record["api_type"] == "ant_messages"
            assert record["usage"]["input_tokens"] == 7 and record["usage"]["output_tokens"] == 3
            assert record["status_code"] == 429 and otel["status"]["code"] == "STATUS_CODE_ERROR"
            assert record["identity"]["login_name"] == "legacy-user"
            assert record["capture"]["response"]["body"]["messages"] == [{"role": "assistant", "content": "no"}]


def _metric(ingest: RunningIngest, name: str) -> float:
    text = httpx.get(ingest.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.parametrize("encoding", ["protobuf", "protobuf-gzip", "json"])
def test_sdk_exporters_feed_every_genai_span_once(encoding: str, tmp_path: Path, s3_server: LocalS3,
                                                 bucket: str) -> None:
    store = tmp_path / "store.sqlite"
    with ingest_server(store, tmp_path) as ingest:
        endpoint = ingest.url + "/v1/traces"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if encoding == "json":
            from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter as JsonExporter

            exporter: Any = JsonExporter(endpoint=endpoint, headers=headers)
        else:
            from opentelemetry.exporter.otlp.proto.http import Compression
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            compression = Compression.Gzip if encoding.endswith("gzip") else Compression.NoCompression
            exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers, compression=compression)
        provider = _provider(exporter)
        expected = _emit(provider, encoding)
        provider.shutdown()
        assert _metric(ingest, 'capture_export_ingest_ignored_total') == SPANS
        assert _metric(ingest, 'capture_export_ingest_records_total{code="200",source="otlp"}') == SPANS
    records, _ = export_all(s3_server, bucket, store, tmp_path)
    _check(records, expected)


def test_a_resent_batch_is_not_stored_twice(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for n in range(5):
        with tracer.start_as_current_span(f"chat {n}") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
    spans = memory.get_finished_spans()
    with ingest_server(tmp_path / "store.sqlite", tmp_path) as ingest:
        exporter = OTLPSpanExporter(endpoint=ingest.url + "/v1/traces", headers=AUTH)
        from opentelemetry.sdk.trace.export import SpanExportResult

        assert exporter.export(spans) == SpanExportResult.SUCCESS
        assert exporter.export(spans) == SpanExportResult.SUCCESS  # the retry of a lost answer
        assert _metric(ingest, "capture_export_ingest_duplicates_total") == 5
    from capture_export.store import SQLiteStore

    store = SQLiteStore(tmp_path / "store.sqlite")
    assert store.count() == 5
    store.close()


def _otlp_json(spans: list[dict[str, Any]]) -> str:
    return json.dumps({"resourceSpans": [{"resource": {"attributes": []},
                                          "scopeSpans": [{"scope": {"name": "s"}, "spans": spans}]}]})


def _json_span(n: int, **changes: Any) -> dict[str, Any]:
    span = {"traceId": f"{n + 1:032x}", "spanId": f"{n + 1:016x}", "name": "chat", "kind": 3,
            "startTimeUnixNano": "1800000000000000000", "endTimeUnixNano": "1800000000250000000",
            "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                           {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}}]}
    span.update(changes)
    return span


def test_otlp_answers(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    with ingest_server(tmp_path / "store.sqlite", tmp_path) as ingest:
        # A malformed GenAI span is rejected (partial success); the rest of the request is stored.
        body = _otlp_json([_json_span(0), _json_span(1, traceId=""), _json_span(2)])
        answer = ingest.post("/v1/traces", body)
        assert answer.status_code == 200
        assert answer.json() == {"partialSuccess": {"rejectedSpans": "1", "errorMessage":
                                                    "span 1: a span without a valid 16-byte trace id"}}
        ok = ingest.post("/v1/traces", _otlp_json([_json_span(3)]))
        assert ok.status_code == 200 and ok.json() == {}
        # An empty export is a success too.
        empty = ingest.post("/v1/traces", b"", content_type="application/x-protobuf")
        assert empty.status_code == 200
        assert ExportTraceServiceResponse.FromString(empty.content) == ExportTraceServiceResponse()
        # Undecodable bodies: 400 with a google.rpc.Status in the request's encoding; not retryable.
        bad = ingest.post("/v1/traces", b"\xff\xff\xff", content_type="application/x-protobuf")
        assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/x-protobuf"
        assert b"not a valid OTLP" in bad.content
        bad_json = ingest.post("/v1/traces", "{\"resourceSpans\": 7}")
        assert bad_json.status_code == 400 and bad_json.json()["code"] == 3
        assert ingest.post("/v1/traces", "x", content_type="text/plain").status_code == 415
        assert ingest.post("/v1/traces", _otlp_json([_json_span(4)]), auth=False).status_code == 401
    from capture_export.store import SQLiteStore

    store = SQLiteStore(tmp_path / "store.sqlite")
    assert store.count() == 3
    store.close()


def test_an_unavailable_store_answers_retryable_503(tmp_path: Path) -> None:
    with ingest_server(str(tmp_path), tmp_path) as ingest:  # a directory: no SQLite store can open there
        answer = ingest.post("/v1/traces", _otlp_json([_json_span(0)]))
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
        assert answer.json()["code"] == 14  # UNAVAILABLE
