"""Credentials inside text: JSON text (at any level of a record, nested in JSON text, in a byte string),
text that is not JSON but quotes header lines or ``"name": "value"`` pairs, and the pre-scan that lets
records with no credential marker skip the walk (store/credentials.py)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import cbor2
import orjson

from capture_export.ingest.native import check_record
from capture_export.store.check import check_foreign
from capture_export.store.credentials import DEFAULT_POLICY, REDACTED, CredentialPolicy
from capture_export.store.records import encode_ordered

SECRET = "sk-live-SECRET123"
HEADERS = {"Authorization": f"Bearer {SECRET}", "x-request-id": "req-1"}
REQUEST = {"headers": HEADERS, "body": {"messages": [{"role": "user", "content": "hello"}]}}


def _stripped(record: dict[str, Any], policy: CredentialPolicy = DEFAULT_POLICY) -> tuple[dict[str, Any], bool]:
    record = copy.deepcopy(record)
    return record, policy.strip(record)


def test_a_capture_that_is_json_text_loses_its_credential_and_keeps_the_rest() -> None:
    record, changed = _stripped({"capture": json.dumps({"request": REQUEST, "response": {"status": 200}})})
    assert changed
    assert SECRET not in record["capture"]
    assert json.loads(record["capture"]) == {"request": {"headers": {"x-request-id": "req-1"}, "body": REQUEST["body"]},
                                             "response": {"status": 200}}
    # Re-serialised compactly, as orjson writes it.
    assert record["capture"] == orjson.dumps(json.loads(record["capture"])).decode()


def test_a_request_response_or_headers_that_is_json_text_is_stripped() -> None:
    request_text, _ = _stripped({"capture": {"request": json.dumps(REQUEST)}})
    assert json.loads(request_text["capture"]["request"])["headers"] == {"x-request-id": "req-1"}
    response_text, _ = _stripped({"capture": {"response": json.dumps({"headers": {"Set-Cookie": f"s={SECRET}"}})}})
    assert json.loads(response_text["capture"]["response"]) == {"headers": {}}
    headers_map, _ = _stripped({"capture": {"request": {"headers": json.dumps(HEADERS, indent=2)}}})
    assert json.loads(headers_map["capture"]["request"]["headers"]) == {"x-request-id": "req-1"}
    pairs = json.dumps([["X-Api-Key", SECRET], ["accept", "*/*"]])
    headers_pairs, _ = _stripped({"capture": {"request": {"request_headers": pairs}}})
    assert json.loads(headers_pairs["capture"]["request"]["request_headers"]) == [["accept", "*/*"]]
    top, _ = _stripped({"headers": json.dumps({"cookie": f"a={SECRET}", "accept": "x"})})
    assert json.loads(top["headers"]) == {"accept": "x"}


def test_json_text_inside_json_text_is_stripped_at_every_level() -> None:
    inner = json.dumps({"headers": {"x-api-key": SECRET, "accept": "keep"}})
    middle = json.dumps({"request": inner, "note": "keep-middle"})
    record, changed = _stripped({"capture": json.dumps({"attempts": [middle]})})
    assert changed and SECRET not in json.dumps(record)
    outer = json.loads(record["capture"])
    assert json.loads(json.loads(outer["attempts"][0])["request"]) == {"headers": {"accept": "keep"}}
    assert json.loads(outer["attempts"][0])["note"] == "keep-middle"


def test_json_in_a_byte_string_is_stripped_and_stays_bytes() -> None:
    record, changed = _stripped({"capture": {"body": json.dumps({"request": REQUEST}).encode()}})
    assert changed and isinstance(record["capture"]["body"], bytes)
    assert json.loads(record["capture"]["body"])["request"]["headers"] == {"x-request-id": "req-1"}


def test_json_text_without_a_credential_is_kept_byte_for_byte() -> None:
    # Formatted, with escapes orjson would write differently: any re-serialisation would show.
    text = json.dumps({"request": {"headers": {"accept": "*/*"}, "body": "caf\u00e9 \u2013 /"}}, indent=4)
    # A credential elsewhere in the record makes the record walked; this text must come back unchanged.
    record = {"capture": {"request": text, "response": {"headers": {"Authorization": f"Bearer {SECRET}"}}}}
    stripped, changed = _stripped(record)
    assert changed
    assert stripped["capture"]["request"] == text
    assert stripped["capture"]["request"] is record["capture"]["request"] or stripped["capture"]["request"] == text


def test_text_that_is_not_json_is_left_alone_unless_it_quotes_a_credential() -> None:
    for text in ("{not json", "[1, 2", "{ \"model\": \"gpt-4o\" ", "[authorization is needed]"):
        record, changed = _stripped({"capture": {"note": text, "x": {"headers": {"Cookie": "c"}}}})
        assert record["capture"]["note"] == text, text
    # Truncated JSON (a gateway cut the body): no longer parses, yet the key's value goes.
    cut = json.dumps({"request": REQUEST})[:-3]
    record, changed = _stripped({"capture": cut})
    assert changed and SECRET not in record["capture"]
    assert f'"Authorization": "{REDACTED}"' in record["capture"]
    assert record["capture"].replace(REDACTED, f"Bearer {SECRET}") == cut


def test_text_holding_header_lines_loses_the_credential_values() -> None:
    message = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer {SECRET}\r\n"
               "Content-Type: application/json\r\n\r\n{\"model\": \"gpt-4o\"}")
    record, changed = _stripped({"capture": message})
    assert changed
    assert record["capture"] == message.replace(f"Bearer {SECRET}", REDACTED)
    # A prompt quoting a header line loses the value too: a lost example beats a leaked key.
    prompt = {"capture": {"request": {"body": {"messages": [
        {"role": "user", "content": f"Why does this fail?\nx-api-key: {SECRET}\nThanks"}]}}}}
    record, changed = _stripped(prompt)
    assert changed
    assert record["capture"]["request"]["body"]["messages"][0]["content"] == (
        f"Why does this fail?\nx-api-key: {REDACTED}\nThanks")


def test_a_json_escaped_credential_name_is_found() -> None:
    text = json.dumps({"headers": HEADERS}).replace('"Authorization"', '"\\u0041uthorization"')
    body = cbor2.dumps({"capture": text})
    assert DEFAULT_POLICY.might_hold(body)
    record, changed = _stripped({"capture": text})
    assert changed and SECRET not in record["capture"]
    assert json.loads(record["capture"]) == {"headers": {"x-request-id": "req-1"}}


def test_records_with_no_marker_still_skip_the_walk() -> None:
    text = json.dumps({"request": {"headers": {"accept": "*/*"}, "body": "caf\u00e9 \u00fc"}})
    assert not DEFAULT_POLICY.might_hold(cbor2.dumps({"capture": text, "note": "Content-Type: text/plain"}))
    assert DEFAULT_POLICY.might_hold(cbor2.dumps({"capture": json.dumps({"request": REQUEST})}))


def test_extra_strip_headers_apply_inside_json_text() -> None:
    policy = CredentialPolicy(["X-My-Token"])
    record, changed = _stripped({"capture": json.dumps({"headers": {"x-my-token": SECRET, "accept": "a"}})}, policy)
    assert changed and json.loads(record["capture"]) == {"headers": {"accept": "a"}}


def test_a_foreign_row_and_a_native_ingest_record_with_json_text_are_stripped() -> None:
    timestamp = datetime(2026, 11, 24, 12, tzinfo=UTC)
    row = cbor2.dumps({"ver": 2, "timestamp": timestamp, "capture": json.dumps({"request": REQUEST})}, timezone=UTC)
    exported = cbor2.loads(check_foreign(1, row))
    assert SECRET not in json.dumps(exported, default=str)
    assert json.loads(exported["capture"])["request"]["headers"] == {"x-request-id": "req-1"}

    posted = {"timestamp": "2026-11-24T12:00:01Z", "capture_id": "c-1", "capture": {"request": json.dumps(REQUEST)}}
    _, stored = encode_ordered(check_record(posted, 0))
    assert SECRET.encode() not in stored
    assert json.loads(cbor2.loads(stored)["capture"]["request"])["headers"] == {"x-request-id": "req-1"}


def test_json_text_orjson_refuses_is_stripped_too() -> None:
    # An integer beyond 64 bits (orjson will not parse it) and nesting past 255 levels (orjson will not
    # write it): the standard library's json takes over, the credential still goes.
    big = '{"n": 123456789012345678901234567890, "headers": {"Authorization": "Bearer ' + SECRET + '"}}'
    record, changed = _stripped({"capture": big})
    assert changed and json.loads(record["capture"]) == {"n": 123456789012345678901234567890, "headers": {}}
    deep: Any = {"headers": {"x-api-key": SECRET, "accept": "a"}}
    for _ in range(300):
        deep = {"d": deep}
    record, changed = _stripped({"capture": json.dumps(deep)})
    assert changed and SECRET not in record["capture"] and '"accept":"a"' in record["capture"]


def test_stripped_json_text_with_a_lone_surrogate_escape_still_encodes() -> None:
    text = '{"note": "\\ud800 half", "headers": {"Authorization": "Bearer ' + SECRET + '"}}'
    record, changed = _stripped({"capture": text})
    assert changed and SECRET not in record["capture"]
    assert json.loads(record["capture"]) == {"note": "\ud800 half", "headers": {}}
    cbor2.dumps(record)  # valid text: the record can still be stored and exported
