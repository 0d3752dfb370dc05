"""Poison requests at the ingest server: bodies built to make the server fail rather than merely to be
wrong. Each must get a 4xx that names the problem (a retryable 503 "internal error" would have the
client resend the same poison for ever, a 500 is a crash), must not cost unbounded memory, and must not
fail the other clients' requests committed beside it."""

from __future__ import annotations

import json
import socket
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
from capture_export.local_s3 import LocalS3
from tests.support.ingest import TOKEN, RunningIngest, export_all, ingest_server, stored_count

LIMITS = IngestLimits(max_body_bytes=1 << 20, max_decoded_bytes=4 << 20, max_records=50)
TIMESTAMP = "2026-11-24T12:00:00Z"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


@pytest.fixture
def ingest(store_path: Path, tmp_path: Path) -> Iterator[RunningIngest]:
    with ingest_server(store_path, tmp_path, limits=LIMITS) as server:
        yield server


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def native(capture: str, capture_id: str = "poison-1", timestamp: str = TIMESTAMP) -> str:
    return f'[{{"timestamp": "{timestamp}", "capture_id": "{capture_id}", "capture": {capture}}}]'


def litellm(**fields: str) -> str:
    """One LiteLLM payload; ``fields`` are raw JSON text (JSON's own dumps cannot write every poison)."""
    raw = {"id": '"ll-poison"', "startTime": "1800000000.0", "model": '"gpt-4o"', "status": '"success"', **fields}
    return "[{" + ", ".join(f'"{k}": {v}' for k, v in raw.items()) + "}]"


# (route, body, phrase the 400 must hold)
POISON = {
    "json nested 100000 deep": ("/v1/records", nested(100_000), "nested too deeply"),
    "json nested 600 deep (within orjson's limit)": ("/v1/records", native(f'{{"x": {nested(600)}}}'),
                                                      "nested too deeply"),
    "an integer of 5000 digits": ("/v1/records", native('{"n": ' + "9" * 5000 + "}"), "digits"),
    "a timestamp in year 1 with an offset": ("/v1/records", native("{}", timestamp="0001-01-01T00:00:00+01:00"),
                                             "timestamp"),
    "litellm body nested 100000 deep": ("/v1/litellm", litellm(response=nested(100_000)),
                                        "nested too deeply"),
}


@pytest.mark.parametrize("case", list(POISON))
def test_poison_bodies_get_400_naming_the_problem(ingest: RunningIngest, store_path: Path, case: str) -> None:
    route, body, phrase = POISON[case]
    response = ingest.post(route, body, content_type="application/json")
    assert response.status_code in (400, 413), f"{case}: {response.status_code} {response.text}"
    assert phrase in response.json()["error"], response.text
    # The server is none the worse: a good request right after goes through.
    good = native("{}", capture_id=f"after-{case}")
    assert ingest.post("/v1/records", good).json() == {"received": 1, "new": 1, "duplicates": 0}
    assert stored_count(store_path) == 1


def test_a_litellm_payload_with_odd_but_harmless_values_is_stored(ingest: RunningIngest, store_path: Path) -> None:
    """Values LiteLLM never sends but a buggy gateway might: kept as sent (in capture.litellm), not refused."""
    odd = {
        "endTime past float range": {"startTime": "1.0", "endTime": "1" + "0" * 400},
        "endTime 1e308": {"endTime": "1e308"},
        "response_time 1e308": {"startTime": '"2026-11-24T12:00:00Z"', "response_time": "1e308"},
        "prompt_tokens Infinity": {"prompt_tokens": "Infinity"},
        "request_tags a number": {"request_tags": "5"},
        "error_code Infinity": {"status": '"failure"', "error_information": '{"error_code": Infinity}'},
        "tool-call arguments nested past any limit": {"response": json.dumps(
            {"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": nested(5000)}}]}}]})},
    }
    for n, (case, fields) in enumerate(odd.items()):
        response = ingest.post("/v1/litellm", litellm(id=f'"odd-{n}"', **fields))
        assert response.status_code == 200, f"{case}: {response.status_code} {response.text}"
    assert stored_count(store_path) == len(odd)


def _otlp_span(n: int, *attributes: dict[str, Any], **changes: Any) -> dict[str, Any]:
    span = {"traceId": f"{n + 1:032x}", "spanId": f"{n + 1:016x}", "name": "chat", "kind": 3,
            "startTimeUnixNano": "1800000000000000000", "endTimeUnixNano": "1800000000250000000",
            "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                           {"key": "gen_ai.system", "value": {"stringValue": "openai"}}, *attributes]}
    span.update(changes)
    return span


def _string(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def test_odd_genai_spans_are_stored_and_never_fail_their_batch(ingest: RunningIngest, store_path: Path) -> None:
    spans = [
        _otlp_span(0),
        _otlp_span(1, kind=99),  # an enum value newer than our protobuf definitions
        _otlp_span(2, status={"code": 7}),
        _otlp_span(3, _string("gen_ai.usage.input_tokens", "\u00b2")),  # str.isdigit, yet no int
        _otlp_span(4, _string("http.response.status_code", "9" * 5000)),
        _otlp_span(5, _string("gen_ai.prompt", nested(100_000))),  # looks like JSON, nests past any limit
    ]
    body = json.dumps({"resourceSpans": [{"resource": {"attributes": []},
                                          "scopeSpans": [{"scope": {"name": "s"}, "spans": spans}]}]})
    response = ingest.post("/v1/traces", body)
    assert response.status_code == 200, response.text
    assert response.json() == {}  # no span rejected
    assert stored_count(store_path) == len(spans)


def test_otlp_refusal_in_protobuf_survives_a_header_that_is_not_utf8(ingest: RunningIngest) -> None:
    """The google.rpc.Status answer quotes the bad Content-Encoding; raw bytes there made it a 500."""
    response = httpx.post(ingest.url + "/v1/traces", content=b"\x0a\x00",
                          headers={"Authorization": f"Bearer {TOKEN}".encode(),
                                   "Content-Type": b"application/x-protobuf", "Content-Encoding": b"br\xff"})
    assert response.status_code == 415, response.text
    assert b"Content-Encoding" in response.content


def test_a_token_that_is_not_utf8_is_refused_with_401(ingest: RunningIngest, store_path: Path) -> None:
    response = httpx.post(ingest.url + "/v1/records", content=native("{}"),
                          headers={"Authorization": b"Bearer \xff\xfe" + TOKEN.encode(),
                                   "Content-Type": b"application/json"})
    assert response.status_code == 401, response.text
    assert "bearer token" in response.json()["error"]
    assert stored_count(store_path) == 0


def _shared_bomb(levels: int) -> bytes:
    """CBOR value sharing (tags 28/29): each level an array holding the next one twice, by reference.
    ~30 bytes per level on the wire; 2**levels copies of the innermost string once written out."""
    inner = b"\xd8\x1c" + cbor2.dumps("a" * 1000)
    for index in range(levels - 1, -1, -1):
        inner = b"\xd8\x1c\x82" + inner + b"\xd8\x1d" + cbor2.dumps(index + 1)
    head = cbor2.dumps({"timestamp": TIMESTAMP, "capture_id": "bomb"})
    return bytes([head[0] + 1]) + head[1:] + cbor2.dumps("capture") + b"\xa1" + cbor2.dumps("x") + inner


def test_cbor_value_sharing_is_refused_not_expanded(ingest: RunningIngest, store_path: Path) -> None:
    # 16 levels: a 1 KiB body that was stored as a 65 MB record (at 30 levels: a terabyte, and an OOM kill).
    body = _shared_bomb(16)
    assert len(body) < 2_000
    response = ingest.post("/v1/records", body, content_type="application/cbor-seq")
    assert response.status_code == 400, response.text[:300]
    assert "shar" in response.json()["error"]
    cycle = cbor2.dumps({"timestamp": TIMESTAMP, "capture_id": "cycle"})
    cycle = bytes([cycle[0] + 1]) + cycle[1:] + cbor2.dumps("capture") + bytes.fromhex("a16178d81c81d81d00")
    response = ingest.post("/v1/records", cycle, content_type="application/cbor-seq")
    assert response.status_code == 400, response.text[:300]
    assert stored_count(store_path) == 0
    conn = sqlite3.connect(store_path)
    assert conn.execute("SELECT coalesce(max(length(body)), 0) FROM captures").fetchone()[0] < 1_000_000
    conn.close()


def test_a_nul_in_a_capture_id_fails_no_one_elses_request(pg_dsn: str, tmp_path: Path) -> None:
    """PostgreSQL text cannot hold NUL: the poisoned record must be refused alone, not fail the group
    commit that carries other clients' records (and have them all retry it for ever)."""
    with ingest_server(pg_dsn, tmp_path, limits=LIMITS) as ingest:
        answers: dict[str, httpx.Response] = {}

        def post(name: str, body: str) -> None:
            answers[name] = ingest.post("/v1/records", body)

        threads = [threading.Thread(target=post, args=(f"good-{n}", native("{}", capture_id=f"good-{n}")))
                   for n in range(10)]
        threads.append(threading.Thread(target=post, args=("nul", native("{}", capture_id="nul\\u0000id"))))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(answers[f"good-{n}"].status_code == 200 for n in range(10)), \
            [(name, a.status_code, a.text) for name, a in answers.items() if a.status_code != 200]
        assert answers["nul"].status_code == 400, answers["nul"].text
        assert answers["nul"].json()["field"] == "capture_id"


@pytest.mark.parametrize("fmt", ["cbor-zstd", "jsonl"])
def test_what_is_accepted_however_deep_is_exported(fmt: str, tmp_path: Path, s3_server: LocalS3, bucket: str) -> None:
    """JSON nests to 1024 levels (orjson), CBOR readers stop at 400 (cbor2's default): a record accepted
    deeper could never be read from the bucket, and held the jsonl export of every record after it.
    A payload nested too deeply is refused; JSON text inside a field (tool-call arguments, OTLP message
    attributes) nested too deeply stays text."""
    store_path = tmp_path / "store.sqlite"
    tool_call = {"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": nested(800)}}]}}]}
    span = _otlp_span(0, _string("gen_ai.prompt", nested(800)))
    with ingest_server(store_path, tmp_path, limits=LIMITS) as ingest:
        for n, response in enumerate((json.dumps({"extra": json.loads(nested(300))}), json.dumps(tool_call))):
            answer = ingest.post("/v1/litellm", litellm(id=f'"deep-{n}"', response=response))
            assert answer.status_code == 200, answer.text
        refused = ingest.post("/v1/litellm", litellm(id='"deeper"', response='{"extra": ' + nested(800) + "}"))
        assert refused.status_code == 400 and "nested more than 400 levels" in refused.json()["error"], refused.text
        answer = ingest.post("/v1/traces", json.dumps({"resourceSpans": [{"resource": {"attributes": []},
                             "scopeSpans": [{"scope": {"name": "s"}, "spans": [span]}]}]}))
        assert answer.status_code == 200 and answer.json() == {}, answer.text
    records, _ = export_all(s3_server, bucket, store_path, tmp_path, fmt=fmt)
    assert len(records) == stored_count(store_path) == 3


def test_credential_headers_captured_as_otel_attributes_never_reach_the_store(ingest: RunningIngest,
                                                                              store_path: Path) -> None:
    """OpenTelemetry's HTTP conventions capture headers as ``http.request.header.<name>`` and
    ``http.response.header.<name>`` attributes (string arrays), on spans and resources alike."""
    def header(key: str, value: str) -> dict[str, Any]:
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": value}]}}}

    span = _otlp_span(0, header("http.request.header.authorization", "Bearer sk-live-otel-1"),
                      header("http.request.header.x-api-key", "sk-live-otel-2"),
                      header("http.response.header.set-cookie", "session=sk-live-otel-3"),
                      header("http.request.header.x-portkey-api-key", "sk-live-otel-4"),
                      header("http.request.header.x-request-id", "req-kept"))
    resource = {"attributes": [header("http.request.header.proxy-authorization", "Basic sk-live-otel-5")]}
    body = json.dumps({"resourceSpans": [{"resource": resource,
                                          "scopeSpans": [{"scope": {"name": "s"}, "spans": [span]}]}]})
    assert ingest.post("/v1/traces", body).status_code == 200
    conn = sqlite3.connect(store_path)
    bodies = [bytes(row[0]) for row in conn.execute("SELECT body FROM captures")]
    conn.close()
    assert len(bodies) == 1
    assert b"sk-live" not in bodies[0], bodies[0]
    assert b"req-kept" in bodies[0]


def test_a_truncated_zstd_body_is_refused_not_stored_in_part(ingest: RunningIngest, store_path: Path) -> None:
    """A gzip body cut short is refused; a zstd one was decoded as far as it went and the records it
    held stored, with a 200 the client took for the whole batch."""
    first = "\n".join(native("{}", capture_id=f"z-{n}")[1:-1] for n in range(10)) + "\n"
    second = "\n".join(native("{}", capture_id=f"z-{n}")[1:-1] for n in range(10, 20)) + "\n"
    packer = zstandard.ZstdCompressor()
    whole = packer.compress(first.encode()) + packer.compress(second.encode())
    for cut in (len(whole) - 9, len(whole) - 3):
        response = ingest.post("/v1/records", whole[:cut], content_type="application/x-ndjson",
                               headers={"Content-Encoding": "zstd"})
        assert response.status_code == 400, response.text
        assert "truncated zstd" in response.json()["error"]
    assert stored_count(store_path) == 0
    answer = ingest.post("/v1/records", whole, content_type="application/x-ndjson",
                         headers={"Content-Encoding": "zstd"})
    assert answer.json() == {"received": 20, "new": 20, "duplicates": 0}


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_body_of_countless_tiny_members_is_refused_at_once(encoding: str, tmp_path: Path) -> None:
    """Concatenated gzip members / zstd frames are allowed; 200,000 empty ones in 4 MB cost the parser
    minutes (the rest of the body was copied after each member), while its other requests waited."""
    import gzip
    import time

    one = gzip.compress(b"") if encoding == "gzip" else zstandard.ZstdCompressor().compress(b"")
    body = one * ((4 << 20) // len(one))
    with ingest_server(tmp_path / "store.sqlite", tmp_path) as ingest:
        started = time.monotonic()
        response = ingest.post("/v1/records", body, headers={"Content-Encoding": encoding})
        elapsed = time.monotonic() - started
    assert response.status_code == 400, response.text
    assert f"more than 20000 {encoding} members" in response.json()["error"]
    assert elapsed < 5, f"{elapsed:.1f} s"


def test_records_acknowledged_after_the_store_file_is_deleted_are_in_the_store(tmp_path: Path) -> None:
    """Someone deletes the SQLite store under a running ingest server (a reset by hand, a volume swapped).
    Its open connection went on writing into the deleted file and answering 200: acknowledged, and gone."""
    store_path = tmp_path / "data" / "store.sqlite"

    def post_until_acknowledged(ingest: RunningIngest, capture_id: str) -> None:
        for _ in range(3):  # as a client does: a 503 is retried
            answer = ingest.post("/v1/records", native("{}", capture_id=capture_id))
            if answer.status_code == 200:
                return
            assert answer.status_code == 503, answer.text
        raise AssertionError(f"{capture_id} was never acknowledged")

    with ingest_server(store_path, tmp_path, limits=LIMITS) as ingest:
        post_until_acknowledged(ingest, "before")
        for path in store_path.parent.iterdir():
            path.unlink()
        post_until_acknowledged(ingest, "after")
        assert store_path.exists()
        conn = sqlite3.connect(store_path)
        ids = [row[0] for row in conn.execute("SELECT capture_id FROM captures")]
        conn.close()
        assert ids == ["after"]


def test_big_records_waiting_for_a_locked_store_are_bounded_in_bytes(tmp_path: Path) -> None:
    """While the gateway holds the SQLite write lock, requests wait for the group commit. Their number
    of records was bounded, not their size: one-record requests of 16 MiB each piled up without limit."""
    store_path = tmp_path / "store.sqlite"
    limits = IngestLimits(max_body_bytes=1 << 20, max_pending_bytes=1 << 20)
    big = "x" * 200_000
    with ingest_server(store_path, tmp_path, limits=limits) as ingest:
        assert ingest.post("/v1/records", native("{}", capture_id="first")).status_code == 200
        blocker = sqlite3.connect(store_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        answers: list[httpx.Response] = []

        def post(n: int) -> None:
            answers.append(ingest.post("/v1/records", native(f'{{"big": "{big}"}}', capture_id=f"big-{n}")))

        threads = [threading.Thread(target=post, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(answers) < 12 - 5 and time.monotonic() < deadline:  # at most 5 fit in 1 MiB
            time.sleep(0.05)
        refused = [a for a in answers if a.status_code == 503]
        assert len(refused) >= 12 - 5, [a.status_code for a in answers]
        assert all("waiting to be committed" in a.json()["error"] and a.headers["Retry-After"] == "1"
                   for a in refused)
        blocker.execute("COMMIT")
        blocker.close()
        for thread in threads:
            thread.join(60)
        waited = [a for a in answers if a.status_code == 200]
        assert len(waited) + len(refused) == 12 and waited
    assert stored_count(store_path) == 1 + len(waited)


def _stalled_upload(port: int, sent: int, declared: int) -> socket.socket:
    """A client that declares ``declared`` bytes, sends ``sent`` of them, and goes quiet."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(f"POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode() + b" " * sent)
    return conn


def test_bodies_held_at_once_are_bounded_in_bytes(tmp_path: Path) -> None:
    """Each body is bounded by max_body_bytes; bodies of many slow clients at once were not (each
    connection held up to 16 MiB). Past max_inflight_bytes a request gets 503 with Retry-After."""
    store_path = tmp_path / "store.sqlite"
    limits = IngestLimits(max_body_bytes=1 << 20, max_inflight_bytes=1 << 20)
    with ingest_server(store_path, tmp_path, limits=limits) as ingest:
        port = int(ingest.url.rsplit(":", 1)[1])
        first = _stalled_upload(port, 600_000, 900_000)
        # The server holds its 600 kB before the second one comes (a fixed 0.5 s was not always enough for a
        # server starved of CPU: it read part of the first, took the second, and the first was refused).
        deadline = time.monotonic() + 30
        while ingest.server.bodies.held < 600_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ingest.server.bodies.held == 600_000
        second = _stalled_upload(port, 600_000, 900_000)
        head = second.recv(200)
        assert head.startswith(b"HTTP/1.1 503"), head
        assert b"Retry-After: 1" in head
        second.close()
        # Small requests still fit beside the stalled one; once it is gone, big ones do again.
        assert ingest.post("/v1/records", native("{}", capture_id="small")).status_code == 200
        first.close()
        big = native(f'{{"big": "{"x" * 800_000}"}}', capture_id="big")
        deadline = time.monotonic() + 10
        while (answer := ingest.post("/v1/records", big)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answer.status_code == 200, answer.text
    assert stored_count(store_path) == 2


@pytest.mark.parametrize("route", ["records", "litellm"])
def test_too_many_json_lines_are_refused_before_they_are_all_parsed(route: str) -> None:
    """64 KiB of gzip inflate to 64 MiB of '{}' lines: all 21 million were parsed (2.7 GB in a parsing
    process, 35 s) before the count was checked against max_records."""
    import tracemalloc

    from capture_export.ingest.parsing import PARSERS, IngestLimits, prepare

    body = b"{}\n" * (2 << 20)  # 6 MiB
    parse, allow_empty = PARSERS[route]
    tracemalloc.start()
    try:
        with pytest.raises(Exception, match="more than 50 records") as refused:
            prepare(parse, allow_empty, body, "", "application/x-ndjson", IngestLimits(max_records=50))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.type.__name__ == "TooLarge"
    assert peak < 16 << 20, f"{peak >> 20} MiB to refuse a 6 MiB body"
