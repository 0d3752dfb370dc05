"""LiteLLM's own GenericAPILogger posts to a running ingest server in each of its log formats; the store is
exported to SeaweedFS and every payload is in the bucket exactly once, with its fields mapped."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from capture_export.local_s3 import LocalS3
from tests.ingest.litellm_support import drain, generic_logger, make_calls, recorder, use_callbacks
from tests.support.ingest import export_all, ingest_server

CALLS = 60


def _run_litellm(endpoint: str, log_format: str, tag: str) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        logger = generic_logger(endpoint, log_format, batch_size=16)
        seen = recorder()
        use_callbacks(logger, seen)
        try:
            await make_calls(CALLS, tag=tag)
            await drain(logger)
        finally:
            use_callbacks()
        return seen.payloads

    return asyncio.run(main())


@pytest.mark.parametrize("log_format", ["json_array", "ndjson", "single"])
def test_every_litellm_payload_lands_in_the_bucket_once_with_its_fields(
    log_format: str, tmp_path: Path, s3_server: LocalS3, bucket: str
) -> None:
    store = tmp_path / "store.sqlite"
    with ingest_server(store, tmp_path) as ingest:
        payloads = _run_litellm(ingest.url + "/v1/litellm", log_format, tag=f"fmt-{log_format}")
    assert len(payloads) == CALLS
    records, _ = export_all(s3_server, bucket, store, tmp_path)
    by_id = Counter(record["capture_id"] for record in records)
    assert set(by_id) == {p["id"] for p in payloads}
    assert max(by_id.values()) == 1
    records_by_id = {record["capture_id"]: record for record in records}
    for payload in payloads:
        record = records_by_id[payload["id"]]
        assert record["model"] == payload["model"]
        assert record["api_type"] == "oai_completions" and record["path"] == "/v1/chat/completions"
        assert abs(record["timestamp"].timestamp() - payload["startTime"]) < 1e-5
        assert record["duration_ms"] == round((payload["endTime"] - payload["startTime"]) * 1000)
        assert record["usage"]["input_tokens"] == payload["prompt_tokens"]
        assert record["usage"]["output_tokens"] == payload["completion_tokens"]
        assert record["session_id"] == (payload["session_id"] or payload["trace_id"])
        identity = record["identity"]
        assert identity["login_name"] == payload["metadata"]["user_api_key_user_email"]
        assert identity["node_id"] == payload["metadata"]["user_api_key_hash"]
        assert "key:ci-key" in identity["tags"] and "team:ml" in identity["tags"]
        assert set(payload["request_tags"]) <= set(identity["tags"])
        request, response = record["capture"]["request"], record["capture"]["response"]
        assert request["body"]["messages"] == payload["messages"]
        assert request["body"]["temperature"] == 0.2
        assert response["body"] == payload["response"]
        if payload["status"] == "success":
            assert record["status_code"] == 200
            assert record["estimated_cost"]["total"] == pytest.approx(payload["response_cost"])
            assert record["estimated_cost"]["currency"] == "USD"
        else:
            assert record["status_code"] == 429
            assert record["capture"]["litellm"]["error_information"]["error_class"] == "RateLimitError"
        # Nothing of the payload is dropped: the header maps moved to request and response, the rest is
        # kept as LiteLLM sent it.
        rest = record["capture"]["litellm"]
        additional = payload["hidden_params"].get("additional_headers")
        if isinstance(additional, dict):
            assert response["headers"] == additional
            rest["hidden_params"]["additional_headers"] = response["headers"]
        for key, value in payload.items():
            if key not in ("messages", "response"):
                assert _plain(rest[key]) == _plain(value), key


def _plain(value: Any) -> Any:
    """JSON-equal form (tuples and lists alike)."""
    import json

    return json.loads(json.dumps(value, default=str))
