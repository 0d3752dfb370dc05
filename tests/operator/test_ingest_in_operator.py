"""`capture-export operator --ingest-port`: the ingest server runs inside the operator, writing to the
default store, and what gateways post is exported by the operator's own exporters, exactly once."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import httpx

from capture_export.local_s3 import free_port
from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.ingest import AUTH, token_file
from tests.support.operator_harness import Kube, OperatorThread, assert_exported_exactly_once


def test_the_operator_serves_ingest_and_exports_what_it_took(
    kube: Kube, start_operator: Callable[..., OperatorThread], exporter_spec: Callable[..., dict],
    s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore, tmp_path: Path,
) -> None:
    port = free_port()
    operator = start_operator(metrics_port=free_port(), ingest_port=port,
                              ingest_token_file=str(token_file(tmp_path)))
    url = f"http://127.0.0.1:{port}/v1/litellm"
    payloads = [{"id": f"op-{n}", "startTime": 1_800_000_000.0 + n, "endTime": 1_800_000_000.5 + n,
                 "model": "gpt-4o", "call_type": "acompletion", "status": "success", "prompt_tokens": n}
                for n in range(150)]
    assert httpx.post(url, content=json.dumps(payloads), headers=AUTH).json() == {
        "received": 150, "new": 150, "duplicates": 0}
    assert httpx.post(url, content=json.dumps(payloads[:10]), headers=AUTH).json()["duplicates"] == 10
    assert httpx.post(url, content=json.dumps(payloads)).status_code == 401

    kube.apply_exporter("usage", exporter_spec())
    kube.wait_status("usage", lambda s: s.get("cursor") == "150", what="cursor 150")
    assert_exported_exactly_once(sqlite_store, object_store)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{operator.runtime.metrics_port}/metrics").read().decode()
    assert 'capture_export_ingest_records_total{code="200",source="litellm"} 160.0' in metrics
    assert 'capture_export_ingest_duplicates_total{source="litellm"} 10.0' in metrics
    assert 'capture_export_ingest_requests_total{code="401",source="litellm"} 1.0' in metrics
