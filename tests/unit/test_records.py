from __future__ import annotations

from datetime import UTC, datetime, timedelta

import cbor2
import pytest

from capture_export.store.check import check_foreign
from capture_export.store.records import (
    CREDENTIAL_HEADERS,
    CorruptRecord,
    decode_sequence,
    encode_body,
    timestamp_micros,
    with_id,
)
from tests.support.records import make_record


def test_stored_body_spliced_with_id_decodes_to_the_record_with_id_first() -> None:
    record = make_record(7)
    _, body = encode_body(record)
    decoded = cbor2.loads(with_id(123456789012, body))
    assert list(decoded)[:3] == ["id", "ver", "timestamp"]
    assert decoded["id"] == 123456789012
    assert decoded["timestamp"] == record["timestamp"]
    assert decoded["capture"]["response"]["raw_body"] == bytes([7]) * 8


@pytest.mark.parametrize("fields", [1, 23, 24, 300])
def test_with_id_handles_every_map_header_width(fields: int) -> None:
    body = cbor2.dumps({f"k{i}": i for i in range(fields)})
    decoded = cbor2.loads(with_id(5, body))
    assert decoded["id"] == 5 and len(decoded) == fields + 1


@pytest.mark.parametrize("head", [b"\xbb" + (2).to_bytes(8, "big"), b"\xbf"], ids=["eight-byte", "indefinite"])
def test_with_id_handles_the_rarer_map_heads_cbor_allows(head: bytes) -> None:
    body = head + cbor2.dumps({"a": 1, "b": 2})[1:] + (b"\xff" if head == b"\xbf" else b"")
    assert cbor2.loads(body) == {"a": 1, "b": 2}
    assert cbor2.loads(with_id(5, body)) == {"id": 5, "a": 1, "b": 2}


@pytest.mark.parametrize(("body", "reason"), [
    (b"\xb9\x00", "a map head cut short"),
    (b"\xba", "a map head cut short"),
    (b"\xbb" + b"\xff" * 8 + b"\x01\x02", "a map longer than its body"),  # one more pair would not fit
    (b"\xb9\x01\x00\x01\x02", "a map longer than its body"),
    (b"\xbc\x01\x02", "unsupported map header"),
    (b"\x82\x01\x02", "not a CBOR map"),
])
@pytest.mark.parametrize("record_id", [5, 300, 70_000])  # below 256 and not: id_head has a fast path for the others
def test_with_id_names_a_map_head_it_cannot_splice(body: bytes, reason: str, record_id: int) -> None:
    with pytest.raises(CorruptRecord, match=f"record {record_id} is corrupt: {reason}$"):
        with_id(record_id, body)


@pytest.mark.parametrize("record_id", [5, 300, 70_000])
@pytest.mark.parametrize("body", [b"\xa5", b"\xb6" + b"\x01" * 21], ids=["lone", "wide"])
def test_a_small_map_claiming_more_pairs_than_its_bytes_is_corrupt_whatever_its_id(body: bytes, record_id: int) -> None:
    """Once only ids below 256 were checked: a lone ``0xa5`` with id 300 was spliced and shipped, and every
    CBOR reader of that object misread the records after it."""
    with pytest.raises(CorruptRecord, match=f"record {record_id} is corrupt: a map longer than its body$"):
        with_id(record_id, body)


def test_credential_headers_are_stripped_on_append_whatever_their_case() -> None:
    _, body = encode_body(make_record(1))
    decoded = cbor2.loads(body)
    assert "Authorization" not in decoded["capture"]["request"]["headers"]
    assert "Set-Cookie" not in decoded["capture"]["response"]["headers"]
    assert decoded["capture"]["request"]["headers"]["content-type"] == "application/json"


def test_export_check_strips_credentials_written_by_another_writer() -> None:
    record = make_record(2)
    record["capture"]["request"]["headers"] = [["X-Api-Key", "k"], ["Proxy-Authorization", "p"], ["accept", "*/*"]]
    raw = cbor2.dumps(record)  # as a foreign writer would store it, nothing stripped
    cleaned = cbor2.loads(check_foreign(2, raw))
    assert cleaned["capture"]["request"]["headers"] == [["accept", "*/*"]]
    assert "Set-Cookie" not in cleaned["capture"]["response"]["headers"]


def test_export_check_leaves_clean_records_byte_identical() -> None:
    _, body = encode_body(make_record(3))
    assert check_foreign(3, body) is body


def test_corrupt_record_is_named() -> None:
    with pytest.raises(CorruptRecord, match="record 9"):
        with_id(9, b"\x01\x02")


def test_sequence_round_trip() -> None:
    items = [{"a": 1}, {"b": b"\x00"}, [1, 2]]
    assert list(decode_sequence(b"".join(cbor2.dumps(i) for i in items))) == items


def test_credential_header_list_holds_the_design_s_and_issue_11_s() -> None:
    assert {"authorization", "x-api-key", "api-key", "cookie", "set-cookie", "proxy-authorization",
            "x-goog-api-key", "ocp-apim-subscription-key", "x-auth-token", "x-amz-security-token"} <= set(
        CREDENTIAL_HEADERS
    )


def test_rows_from_our_append_are_sealed_and_foreign_rows_are_checked(tmp_path) -> None:
    from capture_export.export.engine import encode_batch
    from capture_export.store import SQLiteStore

    store = SQLiteStore(tmp_path / "s.sqlite")
    store.append([make_record(1)])
    foreign = {k: v for k, v in make_record(2).items()}
    ts_us = timestamp_micros(foreign["timestamp"])
    store._conn.execute("INSERT INTO captures (ts_us, body) VALUES (?, ?)", (ts_us, cbor2.dumps(foreign)))
    # A writer that copies our row's seal onto its own body gains nothing: the seal covers the body.
    store._conn.execute("INSERT INTO captures (ts_us, body, seal) SELECT ?, ?, seal FROM captures WHERE id = 1",
                        (ts_us, cbor2.dumps(foreign)))
    rows = store.read_batch(0, 10)
    seal = store.record_seal()
    assert [seal.valid(row.body, row.seal) for row in rows] == [True, False, False]
    exported = [cbor2.loads(record) for record in encode_batch(rows, seal)]
    assert [record["id"] for record in exported] == [1, 2, 3]
    for record in exported:
        assert "Authorization" not in record["capture"]["request"]["headers"]
        assert "Set-Cookie" not in record["capture"]["response"]["headers"]
    store.close()


def _litellm_payload() -> dict[str, object]:
    """A StandardLoggingPayload as LiteLLM's proxy posts it: its metadata names the virtual key the request
    used (user_api_key_*), never the key itself."""
    return {
        "id": "chatcmpl-1", "call_type": "acompletion", "status": "success", "model": "gpt-4o",
        "startTime": 1_796_000_000.0, "endTime": 1_796_000_001.2, "response_cost": 0.001,
        "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "api_base": "https://api.openai.com",
        "metadata": {"user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
                     "user_api_key_alias": "ci-key", "user_api_key_team_id": "team-1",
                     "user_api_key_user_email": "u@example.com", "user_api_key_spend": None,
                     "user_api_key_auth_metadata": None, "used_client_oauth_token": None,
                     "requester_custom_headers": {"x-request-source": "bench"}},
        "messages": [{"role": "user", "content": "hello"}],
        "response": {"choices": [{"message": {"role": "assistant", "content": "hi"}}]},
        "hidden_params": {"additional_headers": {"x-ratelimit-remaining": "99"}},
    }


def test_ingest_does_not_walk_a_litellm_record_for_its_user_api_key_metadata(monkeypatch: pytest.MonkeyPatch,
                                                                             ) -> None:
    """Every LiteLLM record holds user_api_key_* keys; they name no secret, so encoding one at ingest must not
    take the full credential walk (it cost ten times the rest of the encoding), and the keys stay."""
    from capture_export.ingest.litellm import litellm_record
    from capture_export.store import credentials
    from capture_export.store.records import encode_ordered

    monkeypatch.setattr(credentials.CredentialPolicy, "strip",
                        lambda self, record: pytest.fail("walked a record that holds no credential"))
    _, body = encode_ordered(litellm_record(_litellm_payload(), 0))
    metadata = cbor2.loads(body)["capture"]["litellm"]["metadata"]
    assert metadata["user_api_key_hash"].startswith("88dc28d0") and "used_client_oauth_token" in metadata


@pytest.mark.parametrize(("name", "stripped"), [
    ("user_api_key_hash", False), ("X-User-Api-Key-Alias", False), ("used_client_oauth_token", False),
    ("user_api_key", True), ("X-User-Api-Key", True), ("user_api_key_secret", True),
    ("user_api_key_hash_x_api_key", True), ("x-api-key", True),
])
def test_litellm_key_metadata_names_are_no_credential_but_what_else_a_name_holds_is(name: str,
                                                                                  stripped: bool) -> None:
    from capture_export.ingest.litellm import litellm_record
    from capture_export.store.records import encode_ordered

    payload = _litellm_payload()
    payload["metadata"]["requester_custom_headers"] = {name: "sk-live-0123", "x-request-source": "bench"}  # type: ignore[index]
    _, body = encode_ordered(litellm_record(payload, 0))
    assert (b"sk-live-0123" not in body) is stripped
    assert check_foreign(1, body) == body  # the export's check of the same bytes agrees


@pytest.mark.parametrize(("changes", "field"), [
    ({"model": 5}, "model"),
    ({"usage": {"input_tokens": "12"}}, "usage.input_tokens"),
    ({"usage": {"input_tokens": 2**64}}, "usage.input_tokens"),
    ({"identity": {"tags": "tag:prod"}}, "identity.tags"),
    ({"status_code": 2**40}, "status_code"),
    ({"ver": 3}, "ver"),
])
def test_our_append_refuses_a_known_field_of_the_wrong_type(tmp_path, changes: dict, field: str) -> None:
    """A sealed row is exported without a second look, so our append checks the types the export checks
    in foreign rows (store/record_types.py) and stores nothing of a call that has a wrong one."""
    from capture_export.store import SQLiteStore

    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        with pytest.raises(ValueError, match=rf"'{field}'"):
            store.append([make_record(1), {**make_record(2), **changes}])
        assert store.read_batch(0, 10) == []
    finally:
        store.close()


@pytest.mark.parametrize("moment", [
    datetime(2040, 3, 3, 15, 15, 39, 27856, tzinfo=UTC),
    datetime(2107, 1, 26, 14, 41, 11, 827287, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
])
def test_a_row_s_time_is_its_record_s_exact_microsecond(moment: datetime) -> None:
    """A float's rounding put these a microsecond off, so a row's ts_us was not its record's timestamp."""
    record = make_record(1)
    record["timestamp"] = moment
    ts_us, _ = encode_body(record)
    assert ts_us == (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
