"""Privacy mode, redactFields and filter, on realistic records of every API type the seed generates."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import cbor2
import pytest

from capture_export.api import S3ExporterSpec
from capture_export.api.s3exporter import ExportFilter
from capture_export.export.formats import CborZstdEncoder, JsonLinesEncoder
from capture_export.export.transform import RecordFilter, RecordTransform, peek_fields, privacy_scrub, redact
from capture_export.seed import generate_records
from capture_export.store.records import encode_body, with_id
from tests.support.records import make_record
from tests.support.trust import Raw, build, text

KEPT_TOP_LEVEL = ("id", "ver", "timestamp", "identity", "model", "api_type", "usage", "estimated_cost",
                  "duration_ms", "capture_id", "session_id", "path", "status_code")


def records(count: int = 1500, seed: int = 9) -> list[dict[str, Any]]:
    return [cbor2.loads(with_id(i, encode_body(r)[1])) for i, r in enumerate(generate_records(count, seed=seed), 1)]


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def content_of(record: dict[str, Any]) -> list[str]:
    """Prompt and completion text, tool arguments and results of a record, as the seed builds them."""
    capture = record["capture"]
    found: list[str] = []
    request, response = capture["request"].get("body", {}), capture["response"].get("body", {})
    for key in ("messages", "input", "instructions", "system", "contents", "systemInstruction", "tools"):
        found += strings(request.get(key))
    for key in ("choices", "content", "output", "candidates"):
        found += [s for s in strings(response.get(key)) if len(s) > 30]
    for call in capture.get("tool_use", []):
        found += strings(call.get("input"))
    tool_names = {call["name"] for call in capture.get("tool_use", [])}  # kept by design: which tool was called
    return [s for s in found if len(s) > 12 and s not in tool_names]


def test_privacy_mode_drops_content_and_keeps_what_describes_the_call() -> None:
    sample = records()
    assert {r["api_type"] for r in sample} == {"oai_completions", "oai_responses", "ant_messages", "gemini_generate"}
    assert any("tool_use" in r["capture"] for r in sample) and any("raw_body" in r["capture"]["request"]
                                                                   for r in sample)
    for record in sample:
        original = copy.deepcopy(record)
        scrubbed = privacy_scrub(record)
        assert record == original, "the input record is not modified"
        for key in KEPT_TOP_LEVEL:
            assert scrubbed.get(key) == original.get(key), key
        capture = scrubbed["capture"]
        text = set(strings(capture))
        leaked = [s for s in content_of(original) if s in text]
        assert not leaked, (original["api_type"], leaked[:2])
        for side in ("request", "response"):
            assert "raw_body" not in capture[side]
            assert capture[side]["headers"] == original["capture"][side]["headers"]
            if "raw_content_type" in original["capture"][side]:
                assert capture[side]["raw_content_type"] == original["capture"][side]["raw_content_type"]
        for call in capture.get("tool_use", []):
            assert set(call) <= {"id", "name", "type"} and call["name"]
        request, response = capture["request"]["body"], capture["response"]["body"]
        assert request.get("model", original["model"]) == original["capture"]["request"]["body"].get(
            "model", original["model"])
        if "usage" in original["capture"]["response"]["body"]:
            assert response["usage"] == original["capture"]["response"]["body"]["usage"]
        for choice in response.get("choices", []):
            assert set(choice) <= {"index", "finish_reason"}


def test_privacy_mode_keeps_request_metadata_and_unknown_bodies_go() -> None:
    record = make_record(1)
    record["capture"]["request"]["body"]["metadata"] = {"user_id": "u-1", "team": "search"}
    record["capture"]["request"]["body"]["prompt"] = "secret legacy completion prompt"
    record["capture"]["response"]["body"] = "a plain-text streamed completion"
    record["capture"]["notes"] = "free text the gateway added"
    scrubbed = privacy_scrub(record)
    assert scrubbed["capture"]["request"]["body"] == {"metadata": {"user_id": "u-1", "team": "search"}}
    assert "body" not in scrubbed["capture"]["response"] and "notes" not in scrubbed["capture"]


STAMP = datetime(2026, 11, 24, 12, 0, 1, 250000, tzinfo=UTC)
DATES = {  # a request's or response's own values that are dates, in each form CBOR stores them
    "aware": STAMP,  # tag 0 "2026-11-24T12:00:01.250000Z", which JSON Lines' decoding keeps as its text
    "naive": STAMP.replace(tzinfo=None),
    "offset": STAMP.astimezone(timezone(timedelta(hours=3))),
    "whole_second": STAMP.replace(microsecond=0),
    "day": date(2026, 11, 24),
    "zero_fraction": Raw(b"\xc0" + text("2026-11-24T12:00:01.000000Z")),
    "epoch": Raw(b"\xc1" + cbor2.dumps(1_795_000_000.25)),
    "days": Raw(b"\xd8\x64" + cbor2.dumps(20416)),
}


@pytest.mark.parametrize("decode", [cbor2.loads, CborZstdEncoder.decode_record, JsonLinesEncoder.decode_record],
                         ids=["cbor2", "cbor-zstd", "jsonl"])
def test_privacy_mode_keeps_a_requests_dates_under_every_decoding(decode: Any) -> None:
    """Each format decodes a stored record its own way (the CBOR format keeps a timestamp as its tag, JSON
    Lines as its text) before privacy mode: every one keeps the same dates, written as that format writes
    them (CBOR: read back as dates, here as their RFC 3339 text; JSON Lines: the text)."""
    record = make_record(1)
    for side in ("request", "response"):
        record["capture"][side].update(DATES, note="free text")
    scrubbed = privacy_scrub(decode(build(record)))
    for side in ("request", "response"):
        assert set(DATES) <= set(scrubbed["capture"][side]) and "note" not in scrubbed["capture"][side], side
    if decode is JsonLinesEncoder.decode_record:
        written = json.loads(JsonLinesEncoder.line(scrubbed))["capture"]["request"]
    else:
        written = {key: value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(value, datetime)
                   else value.isoformat() for key, value in
                   cbor2.loads(cbor2.dumps(scrubbed, timezone=UTC))["capture"]["request"].items() if key in DATES}
    assert {key: written[key] for key in DATES} == {
        "aware": "2026-11-24T12:00:01.250000Z", "naive": "2026-11-24T12:00:01.250000Z",
        "offset": "2026-11-24T12:00:01.250000Z", "whole_second": "2026-11-24T12:00:01.000000Z",
        "day": "2026-11-24", "zero_fraction": "2026-11-24T12:00:01.000000Z", "epoch": "2026-11-18T11:06:40.250000Z",
        "days": "2025-11-24"}


SECRET = "the user's secret prompt"


@pytest.mark.parametrize("shape", [
    pytest.param(lambda r: r.update(capture=f'{{"request": {{"body": {{"messages": "{SECRET}"}}}}}}'),
                 id="capture as JSON text"),
    pytest.param(lambda r: r.update(capture=[{"request": {"messages": SECRET}}]), id="capture as a list"),
    pytest.param(lambda r: r.update(capture=SECRET.encode()), id="capture as bytes"),
    pytest.param(lambda r: r["capture"].update(request=f"POST /v1/messages {SECRET}"), id="request as text"),
    pytest.param(lambda r: r["capture"].update(response=[{"content": SECRET}]), id="response as a list"),
])
def test_privacy_mode_drops_a_capture_of_a_shape_it_does_not_know(shape: Any) -> None:
    """A foreign writer's capture (or request, response) that is not a map is content privacy mode cannot
    sort: it is dropped whole, as an unknown body key is, never exported as it is; the rest stays."""
    record = make_record(1)
    shape(record)
    scrubbed = privacy_scrub(record)
    assert not any(SECRET in text for text in strings(scrubbed)), scrubbed.get("capture")
    assert not any(SECRET.encode() in value for value in scrubbed.values() if isinstance(value, bytes))
    for key in KEPT_TOP_LEVEL[1:]:
        assert scrubbed.get(key) == record.get(key), key


def test_redact_fields_by_path_through_lists_and_wildcards() -> None:
    record = make_record(2)
    record["capture"]["request"]["body"]["metadata"] = {"user_id": "u-2"}
    record["capture"]["tool_use"] = [{"id": "t1", "name": "get_weather", "input": {"city": "Oslo"}},
                                     {"id": "t2", "name": "run_sql", "input": {"sql": "select 1"}}]
    original = copy.deepcopy(record)
    out = redact(record, [p.split(".") for p in (
        "capture.request.body.metadata", "identity.login_name", "capture.tool_use.input",
        "capture.*.headers.content-type", "capture.request.body.messages.content", "estimated_cost",
        "capture.no.such.path",
    )])
    assert record == original
    assert "metadata" not in out["capture"]["request"]["body"] and "login_name" not in out["identity"]
    assert out["capture"]["tool_use"] == [{"id": "t1", "name": "get_weather"}, {"id": "t2", "name": "run_sql"}]
    assert "content-type" not in out["capture"]["request"]["headers"]
    assert out["capture"]["request"]["body"]["messages"] == [{"role": "user"}]
    assert "estimated_cost" not in out and out["usage"] == original["usage"]


def test_transform_from_spec_runs_privacy_then_redaction() -> None:
    spec = S3ExporterSpec(bucket="exports", region="r", privacy_mode=True,
                          redact_fields=["capture.request.body.metadata", "identity.login_name"])
    transform = RecordTransform(spec)
    assert transform.rewrites and not transform.identity
    record = make_record(3)
    record["capture"]["request"]["body"]["metadata"] = {"user_id": "u-3"}
    out = transform.rewrite(record)
    assert out["capture"]["request"]["body"] == {} and "login_name" not in out["identity"]
    assert RecordTransform(S3ExporterSpec(bucket="exports", region="r")).identity


@pytest.mark.parametrize(
    ("filter_", "passes"),
    [
        ({"models": ["gpt-4o"]}, True),
        ({"models": ["claude-*"]}, False),
        ({"models": ["gpt-?o"]}, True),
        ({"apiTypes": ["oai_completions", "ant_messages"]}, True),
        ({"apiTypes": ["ant_messages"]}, False),
        ({"tags": ["tag:dev", "tag:prod"]}, True),
        ({"tags": ["tag:dev"]}, False),
        ({"statusCodes": [200, 429]}, True),
        ({"statusCodes": [500]}, False),
        ({"models": ["gpt-4o"], "statusCodes": [500]}, False),  # every list must match
        ({"models": ["gpt-4o"], "tags": ["tag:prod"], "apiTypes": ["oai_completions"], "statusCodes": [200]}, True),
    ],
)
def test_filter_matches_every_list_given(filter_: dict, passes: bool) -> None:
    assert RecordFilter(ExportFilter.model_validate(filter_))(make_record(1)) is passes


def test_filter_tolerates_records_without_the_fields() -> None:
    accepts = RecordFilter(ExportFilter(models=["gpt-4o"], tags=["tag:prod"], status_codes=[200]))
    assert not accepts({"id": 1})
    assert not accepts({"model": 3, "identity": "x", "status_code": "200"})


def test_peek_reads_the_filters_fields_without_decoding_the_rest() -> None:
    wanted = frozenset({"model", "api_type", "status_code", "identity"})
    for record in records(200, seed=4):
        raw = cbor2.dumps(record, timezone=UTC)
        assert peek_fields(raw, wanted) == {k: record[k] for k in wanted}
        assert peek_fields(raw, frozenset({"timestamp", "model"})) == {"timestamp": record["timestamp"],
                                                                     "model": record["model"]}
    # Another writer's field order, capture first: still right (it just decodes more).
    shuffled = {"capture": {"x": 1}, "status_code": 500, "model": "m"}
    assert peek_fields(cbor2.dumps(shuffled), frozenset({"model", "status_code"})) == {"model": "m",
                                                                                      "status_code": 500}
    indefinite = b"\xbf" + cbor2.dumps("model") + cbor2.dumps("m") + b"\xff"
    assert peek_fields(indefinite, frozenset({"model"})) == {"model": "m"}
    assert peek_fields(cbor2.dumps({"model": "m"}), frozenset({"model", "api_type"})) == {"model": "m"}
    assert RecordFilter(ExportFilter(models=["a"], tags=["t"])).fields == {"model", "identity"}
