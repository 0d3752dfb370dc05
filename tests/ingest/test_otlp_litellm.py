"""LiteLLM's own `otel` callback (mock responses: no provider, no network) exports its spans over OTLP/HTTP
to a running ingest server; exported to SeaweedFS, each call's span is in the bucket exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from capture_export.local_s3 import LocalS3
from tests.ingest.litellm_support import recorder, use_callbacks
from tests.support.ingest import TOKEN, export_all, ingest_server

CALLS = 12


def test_litellm_otel_callback_spans_become_records(tmp_path: Path, s3_server: LocalS3, bucket: str) -> None:
    import litellm
    from litellm.integrations.opentelemetry import OpenTelemetry, OpenTelemetryConfig

    store = tmp_path / "store.sqlite"
    with ingest_server(store, tmp_path) as ingest:
        async def main() -> list[dict]:
            config = OpenTelemetryConfig(exporter="otlp_http", endpoint=ingest.url + "/v1/traces",
                                         headers=f"Authorization=Bearer {TOKEN}")
            otel = OpenTelemetry(config=config)
            seen = recorder()
            use_callbacks(otel, seen)
            try:
                for n in range(CALLS):
                    await litellm.acompletion(model="gpt-4o", messages=[{"role": "user", "content": f"q {n}"}],
                                              mock_response=f"a {n}", user=f"user-{n % 2}")
                await asyncio.sleep(0.5)
                from opentelemetry import trace

                trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
            finally:
                use_callbacks()
            return seen.payloads

        payloads = asyncio.run(main())
    records, _ = export_all(s3_server, bucket, store, tmp_path)
    assert len(payloads) == CALLS
    response_ids = Counter(r["capture"]["response"]["body"]["id"] for r in records)
    assert set(response_ids) == {p["id"] for p in payloads} and max(response_ids.values()) == 1
    assert len({r["capture_id"] for r in records}) == CALLS
    for record in records:
        assert record["model"] == "gpt-4o" and record["api_type"] == "oai_completions"
        assert record["usage"]["input_tokens"] > 0 and record["estimated_cost"]["total"] > 0
        question = record["capture"]["request"]["body"]["messages"][0]["parts"][0]["content"]
        answer = record["capture"]["response"]["body"]["messages"][0]["parts"][0]["content"]
        assert question.replace("q ", "a ") == answer
        assert record["identity"]["login_name"] in ("user-0", "user-1")
