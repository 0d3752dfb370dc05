"""The ingest server's fast path stores exactly what ``encode_body`` would: each source's mapper builds its
records in their stored shape and ``encode_ordered`` encodes them with no copy, with the same bytes
(field order, credentials stripped, unknown cost left out) as the general encoder."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from capture_export.ingest.litellm import litellm_record
from capture_export.ingest.native import check_record
from capture_export.store.records import FIELD_ORDER, encode_body, encode_ordered, strip_credentials
from tests.support.records import make_record


def _litellm_payloads() -> list[dict[str, Any]]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from ingest_throughput import litellm_payload

    rng = random.Random(11)
    payloads = []
    for n in range(12):
        payload = litellm_payload(rng, n)
        payload["id"] = f"chatcmpl-{n}"
        payloads.append(payload)
    # Credentials in both header maps, a tool call, a failure, no metadata: each path of the mapper.
    payloads[1]["metadata"]["requester_custom_headers"] = {"Authorization": "Bearer sk-1", "x-trace": "t"}
    payloads[2]["hidden_params"]["additional_headers"] = {"set-cookie": "s=1", "x-ratelimit-remaining": "9"}
    payloads[3]["response"]["choices"][0]["message"]["tool_calls"] = [
        {"id": "call-1", "function": {"name": "lookup", "arguments": '{"q": "capture"}'}}]
    payloads[4].update(status="failure", error_information={"error_code": "429"}, response_cost=None)
    payloads[5].update(metadata=None, hidden_params=None, cache_hit=True, litellm_call_id="call-5")
    payloads[6]["model_parameters"] = {"model": "ignored", "top_p": 0.9, "user": "end-user-6"}
    payloads[7]["response"] = {"headers": {"Cookie": "c=1"}, "raw": [{"headers": [["X-Api-Key", "k"]]}]}
    return payloads


def test_litellm_records_are_stored_as_encode_body_stores_them() -> None:
    for payload in _litellm_payloads():
        fast = encode_ordered(litellm_record(copy.deepcopy(payload), 0))
        general = encode_body(litellm_record(copy.deepcopy(payload), 0))
        assert fast == general
        assert b"sk-1" not in fast[1] and b"s=1" not in fast[1] and b"c=1" not in fast[1]
        assert list(cbor2.loads(fast[1]))[:3] == ["ver", "timestamp", "identity"]


def test_native_records_are_stored_as_encode_body_stores_them() -> None:
    records = [make_record(n) for n in range(6)]
    records[1]["estimated_cost"] = None  # unknown cost: left out
    del records[2]["ver"]  # schema version 2 is implied
    records[3] = {k: records[3][k] for k in reversed(list(records[3]))}  # any field order
    records[4]["id"] = 17  # the store assigns ids
    records[5]["extra"] = {"note": "kept"}  # unknown fields are kept
    records[5]["capture"]["extra"] = {"headers": {"Proxy-Authorization": "Basic x"}}
    for index, record in enumerate(records):
        fast = encode_ordered(check_record(copy.deepcopy(record), index))
        assert fast == encode_body(copy.deepcopy(record))
        assert b"sk-secret" not in fast[1] and b"Basic x" not in fast[1]


_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
            | st.text(max_size=20))
_header_names = st.sampled_from(["Authorization", "x-api-key", "Cookie", "content-type", "x-request-id", "API-KEY"])
_headers = st.dictionaries(_header_names, st.text(max_size=8), max_size=4) | st.lists(
    st.tuples(_header_names, st.text(max_size=8)).map(list), max_size=4)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.just("headers"), inner, max_size=4), max_leaves=20)
_capture = st.dictionaries(st.sampled_from(["request", "response", "litellm", "otel"]), st.fixed_dictionaries(
    {"headers": _headers}, optional={"body": _json}), max_size=4)


@st.composite
def stored_shape_records(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ver": 2,
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=draw(st.integers(0, 10**15))),
        "identity": {"login_name": draw(st.text(max_size=8)), "tags": draw(st.lists(st.text(max_size=5)))},
        "model": draw(st.text(max_size=8)),
        "estimated_cost": {"total": draw(st.floats(0, 10)), "currency": "USD"},
        "duration_ms": draw(st.integers(0, 10**6)),
        "capture_id": draw(st.text(min_size=1, max_size=10)),
        "status_code": 200,
        "capture": draw(_capture),
    }
    kept = [k for k in FIELD_ORDER if k in fields and (k in ("ver", "timestamp") or draw(st.booleans()))]
    record = {k: fields[k] for k in kept}
    record.update(draw(st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda k: k not in FIELD_ORDER and
                                                                            k != "id"), _json, max_size=2)))
    return record


@settings(max_examples=200, deadline=None)
@given(stored_shape_records())
def test_encode_ordered_is_encode_body_for_records_in_stored_shape(record: dict[str, Any]) -> None:
    timestamp_us, body = encode_ordered(copy.deepcopy(record))
    assert (timestamp_us, body) == encode_body(copy.deepcopy(record))
    # The record itself, its fields in the order given, every credential header gone.
    expected = copy.deepcopy(record)
    strip_credentials(expected)
    stored = cbor2.loads(body)
    assert stored == expected and list(stored) == list(expected)
    assert timestamp_us == int(record["timestamp"].timestamp() * 1_000_000)
