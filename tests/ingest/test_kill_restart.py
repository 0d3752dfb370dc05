"""The ingest server killed with SIGKILL and restarted while LiteLLM's GenericAPILogger keeps sending and
retries: no payload that got a 2xx is lost, none is stored twice, from the gateway to the bucket."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from capture_export.local_s3 import LocalS3
from tests.ingest.litellm_support import drain, generic_logger, make_calls, use_callbacks
from tests.support.ingest import IngestProcess, export_all

CALLS = 400
KILLS = 3


def _acknowledging_client() -> Any:
    """LiteLLM's HTTP client, keeping each request it got a 2xx for (a failed one raises inside ``post``)."""
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    class Acknowledged(AsyncHTTPHandler):
        def __init__(self) -> None:
            super().__init__(timeout=10)
            self.acknowledged: list[tuple[list[str], dict[str, Any]]] = []

        async def post(self, url: str, data: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
            response = await super().post(url, data=data, **kwargs)
            ids = [payload["id"] for payload in json.loads(data)]
            self.acknowledged.append((ids, response.json()))
            return response

    return Acknowledged()


def test_kill_9_mid_stream_loses_no_acknowledged_payload_and_stores_none_twice(
    tmp_path: Path, s3_server: LocalS3, bucket: str
) -> None:
    store = tmp_path / "store.sqlite"
    server = IngestProcess(store, tmp_path).start()
    rng = random.Random(12)
    kills: list[float] = []
    stop = threading.Event()

    def killer() -> None:
        for _ in range(KILLS):
            if stop.wait(rng.uniform(0.8, 2.0)):
                return
            server.kill9()
            kills.append(time.monotonic())
            server.start()

    async def gateway() -> tuple[list[str], Any]:
        client = _acknowledging_client()
        logger = generic_logger(server.url + "/v1/litellm", "json_array", batch_size=8, max_retries=12,
                                retry_delay=0.1)
        logger.async_httpx_client = client
        ids: list[str] = []

        from tests.ingest.litellm_support import recorder

        seen = recorder()
        use_callbacks(logger, seen)
        try:
            for chunk in range(CALLS // 20):
                await make_calls(20, tag="kill", start=chunk * 20)
                await asyncio.sleep(0.05)
            await drain(logger)
        finally:
            use_callbacks()
        ids = [payload["id"] for payload in seen.payloads]
        return ids, client

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        sent, client = asyncio.run(gateway())
    finally:
        stop.set()
        thread.join()
        server.stop()
    assert len(kills) == KILLS, "the stream ended before every kill"
    acknowledged = [i for ids, _ in client.acknowledged for i in ids]
    assert len(sent) == CALLS
    # With its retries, every batch got through in the end.
    assert set(acknowledged) == set(sent)

    records, _ = export_all(s3_server, bucket, store, tmp_path)
    in_bucket = Counter(record["capture_id"] for record in records)
    assert set(in_bucket) == set(sent)
    assert max(in_bucket.values()) == 1
    # Some retry re-sent a batch the killed server had already committed: told apart, not stored again.
    answers = [answer for _, answer in client.acknowledged]
    assert sum(a["new"] for a in answers) == CALLS
    print(f"kills at {[round(k - kills[0], 2) for k in kills]}; duplicates answered: "
          f"{sum(a['duplicates'] for a in answers)}")
