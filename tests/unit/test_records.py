from __future__ import annotations

import cbor2
import pytest

from capture_export.store.check import check_foreign
from capture_export.store.records import (
    CREDENTIAL_HEADERS,
    CorruptRecord,
    decode_sequence,
    encode_body,
    with_id,
)
from tests.conftest import make_record


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
    store._conn.execute("INSERT INTO captures (ts_us, body) VALUES (?, ?)", (0, cbor2.dumps(foreign)))
    # A writer that copies our row's seal onto its own body gains nothing: the seal covers the body.
    store._conn.execute("INSERT INTO captures (ts_us, body, seal) SELECT 0, ?, seal FROM captures WHERE id = 1",
                        (cbor2.dumps(foreign),))
    rows = store.read_batch(0, 10)
    seal = store.record_seal()
    assert [seal.valid(row.body, row.seal) for row in rows] == [True, False, False]
    exported = [cbor2.loads(record) for record in encode_batch(rows, seal)]
    assert [record["id"] for record in exported] == [1, 2, 3]
    for record in exported:
        assert "Authorization" not in record["capture"]["request"]["headers"]
        assert "Set-Cookie" not in record["capture"]["response"]["headers"]
    store.close()
