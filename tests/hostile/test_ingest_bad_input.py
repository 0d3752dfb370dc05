"""The buggy gateway and the hostile client at the ingest server's door: every bad request gets its status
code and a message naming what was wrong, and nothing of a refused request is stored."""

from __future__ import annotations

import gzip
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
import zstandard

from capture_export.ingest import IngestLimits
from tests.support.ingest import TOKEN, RunningIngest, ingest_server, stored_count

LIMITS = IngestLimits(max_body_bytes=64_000, max_decoded_bytes=256_000, max_records=50, max_pending_records=10_000)


def record(n: int, **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"timestamp": f"2026-11-24T12:00:{n % 60:02d}.000001Z", "capture_id": f"c-{n}",
                           "model": "gpt-4o", "usage": {"input_tokens": 3, "output_tokens": 4}, "status_code": 200,
                           "capture": {"request": {"headers": {"content-type": "application/json"}, "body": {}}}}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def lines(*records: Any) -> str:
    return "\n".join(json.dumps(r) for r in records)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


@pytest.fixture
def ingest(store_path: Path, tmp_path: Path) -> Iterator[RunningIngest]:
    with ingest_server(store_path, tmp_path, limits=LIMITS) as server:
        yield server


def refused(response: httpx.Response, status: int, *phrases: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    for phrase in phrases:
        assert phrase in body["error"], body
    return body


GOOD = lines(*(record(n) for n in range(10)))


@pytest.mark.parametrize(("body", "content_type", "index", "field", "phrase"), [
    ("{not json", "application/x-ndjson", 0, None, "not valid JSON"),
    (lines(record(0), record(1)) + "\n{\"timestamp\": ", "application/x-ndjson", 2, None, "not valid JSON"),
    ("[1, 2", "application/json", None, None, "not valid JSON"),
    (lines(record(0), record(1, timestamp=None)), "application/x-ndjson", 1, "timestamp", "required"),
    (lines(record(0, timestamp="yesterday")), "application/x-ndjson", 0, "timestamp", "RFC 3339"),
    (lines(record(0, timestamp="2026-11-24T12:00:00")), "application/x-ndjson", 0, "timestamp", "time zone"),
    (lines(record(0), record(1), record(2, capture_id=None)), "application/x-ndjson", 2, "capture_id", "required"),
    (lines(record(0, capture_id="x" * 300)), "application/x-ndjson", 0, "capture_id", "longer than"),
    (lines(record(0, status_code="200")), "application/x-ndjson", 0, "status_code", "HTTP status"),
    (lines(record(0, usage={"input_tokens": -5})), "application/x-ndjson", 0, "usage.input_tokens", "non-negative"),
    (lines(record(0, duration_ms=1.5)), "application/x-ndjson", 0, "duration_ms", "integer"),
    (lines(record(0, identity={"tags": "prod"})), "application/x-ndjson", 0, "identity.tags", "list of strings"),
    (lines(record(0, estimated_cost=12)), "application/x-ndjson", 0, "estimated_cost", "map"),
    (lines(record(0, ver=3)), "application/x-ndjson", 0, "ver", "not supported"),
    (lines(record(0, capture="text")), "application/x-ndjson", 0, "capture", "map"),
    # What CBOR can carry and no column can hold: the export's rules for foreign rows (store/record_types.py)
    (cbor2.dumps(record(0, usage={"input_tokens": 2**64})), "application/cbor-seq", 0, "usage.input_tokens",
     "below 2^63"),
    (cbor2.dumps(record(0, estimated_cost={"total": float("nan")})), "application/cbor-seq", 0,
     "estimated_cost.total", "finite"),
    (cbor2.dumps(record(0, duration_ms=2**70)), "application/cbor-seq", 0, "duration_ms", "below 2^63"),
    (lines(record(0, capture={"request": {"raw_body": {"$base64": "@@@"}}})), "application/x-ndjson", 0, None,
     "base64"),
    (json.dumps([record(0), "a string"]), "application/json", 1, None, "map of fields"),
    (b"\xff\xfe", "application/x-ndjson", None, None, "UTF-8"),
    (b"\x1f\xff\xff", "application/cbor-seq", 0, None, "CBOR"),
    (b"\x01", "application/cbor-seq", 0, None, "map of fields"),
    ("", "application/x-ndjson", None, None, "no records"),
])
def test_malformed_records_get_400_naming_the_record_and_field(
    ingest: RunningIngest, store_path: Path, body: Any, content_type: str, index: int | None, field: str | None,
    phrase: str,
) -> None:
    answer = refused(ingest.post("/v1/records", body, content_type=content_type), 400, phrase)
    assert answer.get("index") == index and answer.get("field") == field
    if index is not None:
        assert f"record {index}" in answer["error"]
    assert stored_count(store_path) == 0


@pytest.mark.parametrize(("payload", "field", "phrase"), [
    ({"startTime": 1.0}, "id", "required"),
    ({"id": "abc"}, "startTime", "required"),
    ({"id": "abc", "startTime": "soon"}, "startTime", "RFC 3339"),
    ({"id": "abc", "startTime": 1.0, "metadata": "x"}, "metadata", "object"),
])
def test_malformed_litellm_payloads_get_400(ingest: RunningIngest, store_path: Path, payload: dict[str, Any],
                                            field: str, phrase: str) -> None:
    good = {"id": "good-1", "startTime": 1_800_000_000.0, "model": "gpt-4o", "status": "success"}
    answer = refused(ingest.post("/v1/litellm", json.dumps([good, payload])), 400, phrase)
    assert answer["index"] == 1 and answer["field"] == field
    refused(ingest.post("/v1/litellm", json.dumps(["not an object"])), 400, "StandardLoggingPayload")
    assert stored_count(store_path) == 0


def test_a_request_is_all_or_nothing(ingest: RunningIngest, store_path: Path) -> None:
    body = lines(*(record(n) for n in range(20)), record(20, usage={"output_tokens": "many"}))
    refused(ingest.post("/v1/records", body, content_type="application/x-ndjson"), 400, "record 20")
    assert stored_count(store_path) == 0
    ok = ingest.post("/v1/records", GOOD, content_type="application/x-ndjson")
    assert ok.json() == {"received": 10, "new": 10, "duplicates": 0}


def test_tokens(ingest: RunningIngest, store_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = ingest.url + "/v1/records"
    headers = {"Content-Type": "application/x-ndjson"}
    for auth in (None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"bearer {TOKEN}x"):
        sent = {**headers, **({"Authorization": auth} if auth else {})}
        response = httpx.post(url, content=GOOD, headers=sent)
        refused(response, 401, "bearer token")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert stored_count(store_path) == 0
    # The scheme is case-insensitive; the token is not.
    assert httpx.post(url, content=GOOD, headers={**headers, "Authorization": f"bearer {TOKEN}"}).status_code == 200
    # Rotation: the Secret's file changes; the new token works within a second or two, the old one stops.
    (tmp_path / "ingest-token").write_text("rotated-token-2\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rotated = {**headers, "Authorization": "Bearer rotated-token-2"}
        if httpx.post(url, content=GOOD, headers=rotated).status_code == 200:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the rotated token was never accepted")
    refused(httpx.post(url, content=GOOD, headers={**headers, "Authorization": f"Bearer {TOKEN}"}), 401, "bearer")
    assert TOKEN not in caplog.text and "rotated-token-2" not in caplog.text and "wrong-token" not in caplog.text


def test_limits_give_413(ingest: RunningIngest, store_path: Path) -> None:
    big = lines(*(record(n, model="m" * 2000) for n in range(40)))
    assert len(big) > LIMITS.max_body_bytes
    refused(ingest.post("/v1/records", big, content_type="application/x-ndjson"), 413, "larger than the limit")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(20):
            yield b" " * 10_000

    refused(httpx.post(ingest.url + "/v1/records", content=chunks(),
                       headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}),
            413, "larger than the limit")
    many = lines(*(record(n) for n in range(LIMITS.max_records + 1)))
    refused(ingest.post("/v1/records", many, content_type="application/x-ndjson"), 413, "more than 50 records")
    refused(ingest.post("/v1/records", "[" + ",".join([json.dumps(record(n)) for n in range(51)]) + "]"),
            413, "more than 50 records")
    # A small compressed body that would decompress past the limit (a zip bomb) is cut off, not inflated.
    bomb = b"[" + b" " * 5_000_000 + b"]"
    for encoding, packed in (("gzip", gzip.compress(bomb)), ("zstd", zstandard.ZstdCompressor().compress(bomb))):
        assert len(packed) < LIMITS.max_body_bytes
        refused(ingest.post("/v1/records", packed, headers={"Content-Encoding": encoding}), 413, "decompressed")
    assert stored_count(store_path) == 0


def test_encodings_and_media_types(ingest: RunningIngest, store_path: Path) -> None:
    refused(ingest.post("/v1/records", GOOD, content_type="text/csv"), 415, "text/csv")
    refused(ingest.post("/v1/records", GOOD, content_type="application/x-ndjson", headers={"Content-Encoding": "br"}),
            415, "br")
    refused(ingest.post("/v1/records", b"\x1f\x8b\x08garbage", content_type="application/x-ndjson",
                        headers={"Content-Encoding": "gzip"}), 400, "gzip")
    refused(ingest.post("/v1/records", gzip.compress(GOOD.encode())[:-12], content_type="application/x-ndjson",
                        headers={"Content-Encoding": "gzip"}), 400, "truncated")
    assert stored_count(store_path) == 0
    for encoding, packed in (("gzip", gzip.compress(GOOD.encode())),
                             ("zstd", zstandard.ZstdCompressor().compress(GOOD.encode()))):
        response = ingest.post("/v1/records", packed, content_type="application/x-ndjson",
                               headers={"Content-Encoding": encoding})
        assert response.status_code == 200, response.text
    assert stored_count(store_path) == 10


def test_credential_headers_are_stripped_before_anything_is_stored(ingest: RunningIngest, store_path: Path) -> None:
    native = record(1, capture={
        "request": {"headers": {"Authorization": "Bearer sk-live-111", "X-API-Key": "sk-live-222",
                                "content-type": "application/json"}, "body": {"q": 1}},
        "response": {"headers": [["Set-Cookie", "session=sk-live-333"], ["x-request-id", "r1"]]},
        "retries": [{"headers": {"proxy-authorization": "Basic sk-live-444", "Cookie": "a=sk-live-555"}}],
    })
    assert ingest.post("/v1/records", lines(native), content_type="application/x-ndjson").status_code == 200
    payload = {"id": "ll-1", "startTime": 1_800_000_000.0, "endTime": 1_800_000_001.0, "model": "gpt-4o",
               "status": "success", "metadata": {"requester_custom_headers": {"x-api-key": "sk-live-666",
                                                                              "x-tenant": "blue"}},
               "hidden_params": {"additional_headers": {"api-key": "sk-live-777", "x-ratelimit-remaining": "9"}}}
    assert ingest.post("/v1/litellm", json.dumps(payload)).status_code == 200
    conn = sqlite3.connect(store_path)
    bodies = [bytes(row[0]) for row in conn.execute("SELECT body FROM captures")]
    conn.close()
    assert len(bodies) == 2
    assert not any(b"sk-live" in body for body in bodies)
    assert b"x-request-id" in bodies[0] and b"x-tenant" in bodies[1] and b"x-ratelimit-remaining" in bodies[1]


def _hold_write_lock(store_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(store_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_concurrent_requests_share_a_transaction(ingest: RunningIngest, store_path: Path) -> None:
    assert ingest.post("/v1/records", lines(record(0)), content_type="application/x-ndjson").status_code == 200
    commits_before = _metric(ingest, "capture_export_ingest_commits_total")
    blocker = _hold_write_lock(store_path)  # the gateway's own long write, say
    answers: list[httpx.Response] = []

    def post(n: int) -> None:
        answers.append(ingest.post("/v1/records", lines(*(record(100 * n + i) for i in range(5))),
                                   content_type="application/x-ndjson"))

    threads = [threading.Thread(target=post, args=(n,)) for n in range(1, 21)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while ingest.server.writer.pending_records < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not answers, "answered before the commit"
    blocker.execute("COMMIT")
    blocker.close()
    for thread in threads:
        thread.join(60)
    assert [a.status_code for a in answers] == [200] * 20
    assert stored_count(store_path) == 101
    # 20 requests, at most 2 transactions (the one that waited for the lock, and all the others).
    assert _metric(ingest, "capture_export_ingest_commits_total") - commits_before <= 2


def test_overload_gives_503_with_retry_after(store_path: Path, tmp_path: Path) -> None:
    limits = IngestLimits(max_pending_records=12)
    with ingest_server(store_path, tmp_path, limits=limits) as ingest:
        ingest.post("/v1/records", lines(record(0)), content_type="application/x-ndjson")
        blocker = _hold_write_lock(store_path)
        first: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: first.append(
            ingest.post("/v1/records", lines(*(record(n) for n in range(1, 11))), content_type="application/x-ndjson")))
        waiting.start()
        deadline = time.monotonic() + 10
        while ingest.server.writer.pending_records < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        response = ingest.post("/v1/records", lines(*(record(n) for n in range(20, 25))),
                               content_type="application/x-ndjson")
        refused(response, 503, "waiting to be committed")
        assert response.headers["Retry-After"] == "1"
        blocker.execute("COMMIT")
        blocker.close()
        waiting.join(60)
        assert first[0].status_code == 200
        # Once the backlog is committed, the client's retry goes through.
        retry = ingest.post("/v1/records", lines(*(record(n) for n in range(20, 25))),
                            content_type="application/x-ndjson")
        assert retry.json() == {"received": 5, "new": 5, "duplicates": 0}
    assert stored_count(store_path) == 16


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_an_unreachable_store_gives_503_with_retry_after(where: str, tmp_path: Path) -> None:
    from capture_export.local_s3 import free_port

    # A directory is no SQLite file; nothing listens on the PostgreSQL port.
    url = str(tmp_path) if where == "sqlite" else f"postgresql://capture@127.0.0.1:{free_port()}/none"
    with ingest_server(url, tmp_path) as ingest:
        response = ingest.post("/v1/records", GOOD, content_type="application/x-ndjson")
        refused(response, 503, "unavailable")
        assert response.headers["Retry-After"] == "5"
        assert "password" not in response.text


def _metric(ingest: RunningIngest, name: str) -> float:
    text = httpx.get(ingest.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_absurd_numbers_from_a_gateway_are_stored_within_the_schema(ingest: RunningIngest, store_path: Path) -> None:
    """LiteLLM and OpenTelemetry payloads are mapped, never refused for a bad number (a gateway's callback
    would lose the record): a count past any column (1e30 or 2^70 tokens), a duration of 1e300
    seconds and an infinite cost are stored as unknown or 0, so that the sealed row, which the export ships
    unchecked, still has the types every reader's column needs (store/record_types.py)."""
    from capture_export.store.record_types import type_problem

    litellm = {"id": "absurd-1", "startTime": 1_800_000_000.0, "endTime": 1e300, "model": "gpt-4o",
               "status": "success", "prompt_tokens": 1e30, "completion_tokens": 2**70, "response_cost": 1e400}
    assert ingest.post("/v1/litellm", json.dumps([litellm]).replace("Infinity", "1e400")).status_code == 200
    span = {"traceId": "1" * 32, "spanId": "2" * 16, "name": "chat", "kind": 3,
            "startTimeUnixNano": "1800000000000000000", "endTimeUnixNano": "1800000000250000000",
            "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                           {"key": "gen_ai.usage.input_tokens", "value": {"doubleValue": 1e30}},
                           {"key": "gen_ai.usage.cost", "value": {"doubleValue": "Infinity"}}]}
    otlp = {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "s"},
                                                                              "spans": [span]}]}]}
    answer = ingest.post("/v1/traces", json.dumps(otlp))
    assert answer.status_code == 200 and answer.json() == {}, answer.text
    with sqlite3.connect(store_path) as conn:
        bodies = [cbor2.loads(body) for (body,) in conn.execute("SELECT body FROM captures ORDER BY id")]
    assert len(bodies) == 2
    assert [type_problem(body) for body in bodies] == [None, None]
