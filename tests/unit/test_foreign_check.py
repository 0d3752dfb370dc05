"""The full check of foreign rows (store/check.py), the credential rules (store/credentials.py), the seal
(store/seal.py) and the quarantine outline, without a store or a bucket (the hostile tier drives them end
to end)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture_export.store.check import CorruptRecord, check_foreign, outline
from capture_export.store.credentials import DEFAULT_POLICY, CredentialPolicy, normalise_header_name
from capture_export.store.record_types import FIELDS
from capture_export.store.seal import RecordSeal, new_seal_key
from tests.support.malformed_rows import MALFORMED
from tests.support.trust import Raw, bstr, build, good_record, text_chunks

CANARY = "cnryUnitCheck0a1b2c3d4e5f"


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_row_is_corrupt_with_a_reason_that_holds_none_of_its_bytes(case: str) -> None:
    with pytest.raises(CorruptRecord) as caught:
        check_foreign(4, MALFORMED[case](4))
    message = str(caught.value)
    assert message.startswith("record 4 is corrupt: ") and caught.value.record_id == 4
    assert "cnry" not in message.lower() and "gpt-4o" not in message


def test_a_canonical_row_without_credentials_comes_out_byte_for_byte() -> None:
    body = cbor2.dumps(good_record(1), timezone=UTC)
    assert check_foreign(1, body) is body


def test_an_indefinite_length_row_is_re_encoded_canonically() -> None:
    record = good_record(2)
    body = build({**record, "model": Raw(text_chunks("gpt", "-4o"))}, indefinite=True)
    out = check_foreign(2, body)
    assert out == cbor2.dumps(record, timezone=UTC)


@pytest.mark.parametrize("name", [
    Raw(text_chunks("Au", "thorization")), Raw(bstr(b"X-Api-Key")), "HTTP_AUTHORIZATION", " cookie ",
    "x-goog-api-key", "Ocp-Apim-Subscription-Key", "X-Amz-Security-Token", "cf-aig-authorization",
    "x-portkey-api-key",
])
def test_credential_header_names_are_found_whatever_their_encoding(name: object) -> None:
    record = good_record(3)
    record["capture"]["request"]["headers"] = {name: CANARY, "accept": "*/*"}
    out = cbor2.loads(check_foreign(3, build(record)))
    assert out["capture"]["request"]["headers"] == {"accept": "*/*"}


def test_header_shapes_urls_and_raw_lines() -> None:
    record = good_record(4, path=f"/v1/models?alt=sse&key={CANARY}")
    record["capture"]["request"] = {
        "headers": [["Authorization", CANARY], [b"accept", "*/*"]],
        "har": {"headers": [{"name": "x-api-key", "value": CANARY}, {"name": "a", "value": "b"}]},
        "lines": {"headers": [f"Cookie: {CANARY}", "Accept: */*"]},
        "url": f"https://user:{CANARY}@api.test/v1?api_key={CANARY}&user=u",
        "raw_body": b"POST / HTTP/1.1\r\nauthorization: Bearer " + CANARY.encode() + b"\r\nHost: x\r\n\r\n{}",
    }
    out = cbor2.loads(check_foreign(4, build(record)))
    assert CANARY not in repr(out)
    request = out["capture"]["request"]
    assert request["headers"] == [["accept", "*/*"]]
    assert request["har"]["headers"] == [{"name": "a", "value": "b"}]
    assert request["lines"]["headers"] == ["Accept: */*"]
    assert request["url"] == "https://user:REDACTED@api.test/v1?api_key=REDACTED&user=u"
    assert request["raw_body"] == b"POST / HTTP/1.1\r\nauthorization: REDACTED\r\nHost: x\r\n\r\n{}"
    assert out["path"] == "/v1/models?alt=sse&key=REDACTED"


def test_prose_and_token_counts_are_left_alone() -> None:
    record = good_record(5)
    record["capture"]["request"]["body"]["messages"][0]["content"] = "see https://x.test/?q=1 and key=value"
    record["usage"]["max_tokens"] = 5
    body = cbor2.dumps(record, timezone=UTC)
    assert check_foreign(5, body) is body


def test_strip_headers_adds_names() -> None:
    record = good_record(6)
    record["capture"]["request"]["headers"]["X_My_Token"] = CANARY
    policy = CredentialPolicy(["x-my-token"])
    assert CANARY in repr(cbor2.loads(check_foreign(6, build(record))))
    assert CANARY not in repr(cbor2.loads(check_foreign(6, build(record), policy)))


def test_normalised_names() -> None:
    assert normalise_header_name(b" HTTP_X_API_KEY: ") == "x-api-key"
    assert normalise_header_name(b"\xff") is None and normalise_header_name(7) is None


def test_the_seal_covers_the_body_and_the_key() -> None:
    key = new_seal_key()
    seal = RecordSeal(key)
    body = cbor2.dumps(good_record(1), timezone=UTC)
    mark = seal.seal(body)
    assert seal.valid(body, mark)
    assert not seal.valid(body + b"\x00", mark)
    assert not RecordSeal(new_seal_key()).valid(body, mark)
    assert not seal.valid(body, None) and not seal.valid(body, b"x" * 16) and not seal.valid("text", mark)


def test_all_valid_needs_every_row_s_seal_to_match_its_bytes() -> None:
    # The default export's check of a whole batch at once (export/batch.py): one row that is not ours,
    # wherever it is, makes the answer False, and the batch then takes the row-by-row check.
    from capture_export.store.base import StoredRecord

    seal = RecordSeal(new_seal_key())
    bodies = [cbor2.dumps(good_record(n), timezone=UTC) for n in range(1, 6)]
    rows = [StoredRecord(n, 0, body, seal.seal(body)) for n, body in enumerate(bodies, 1)]
    assert seal.all_valid(rows) and seal.all_valid([])
    assert seal.all_valid([row._replace(body=memoryview(row.body)) for row in rows])  # as a worker's rows are
    for index in range(len(rows)):
        row = rows[index]
        for bad in (row._replace(body=row.body + b"\x00"), row._replace(seal=None), row._replace(seal=b"x" * 16),
                    row._replace(seal=row.seal[:8]), row._replace(seal=bytearray(row.seal)),
                    row._replace(body=memoryview(row.body)[1:]), row._replace(body="text"),
                    row._replace(seal=RecordSeal(new_seal_key()).seal(row.body))):
            assert not seal.all_valid([*rows[:index], bad, *rows[index + 1:]])


def test_the_outline_never_shows_a_credential() -> None:
    record = good_record(7)
    record["capture"]["request"]["headers"] = {Raw(text_chunks("Author", "ization")): f"Bearer {CANARY}",
                                               "x-request-id": "req-7"}
    record["capture"]["request"]["har"] = [{"value": CANARY, "name": "x-api-key"}]
    record["capture"]["request"]["raw_body"] = b"Authorization: " + CANARY.encode()
    record["capture"]["request"]["token_note"] = f"Bearer {CANARY}"
    body = build(record)
    broken = bytes([0xA0 | (len(record) + 1)]) + body[1:]  # claims one pair more than it holds
    for row in (body, broken, broken[:-9]):
        text = "\n".join(outline(row))
        assert CANARY not in text and "x-request-id" in text and "req-7" in text
    assert "stops parsing" in "\n".join(outline(broken))


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False),
                     st.text(max_size=20), st.binary(max_size=20),
                     st.datetimes(timezones=st.just(UTC), min_value=datetime(1, 1, 2),
                                  max_value=datetime(9999, 12, 30)))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.one_of(st.text(max_size=12), st.binary(max_size=6), st.integers(0, 9)), inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | _values.map(lambda v: cbor2.dumps(v, timezone=UTC)))
def test_anything_is_either_corrupt_or_one_safe_map(data: bytes) -> None:
    try:
        out = check_foreign(9, data)
    except CorruptRecord:
        return
    stream = io.BytesIO(out)
    record = cbor2.CBORDecoder(stream).decode()
    assert stream.tell() == len(out) and isinstance(record, dict) and "id" not in record
    assert all(isinstance(k, str) for k in record)
    assert check_foreign(9, out) == out  # canonical: checking again changes nothing


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), _values, max_size=6), st.sampled_from(
    ["Authorization", "x-api-key", "COOKIE", "x-goog-api-key"]))
def test_a_credential_header_anywhere_in_a_headers_map_is_removed(extra: dict, name: str) -> None:
    record = {**{k: v for k, v in extra.items() if k != "id" and k not in FIELDS},
              "timestamp": datetime(2026, 11, 24, tzinfo=UTC), "capture": {"headers": {name: CANARY}}}
    out = check_foreign(9, cbor2.dumps(record, timezone=UTC))
    assert CANARY.encode() not in out
    assert DEFAULT_POLICY.might_hold(name.lower().encode())
