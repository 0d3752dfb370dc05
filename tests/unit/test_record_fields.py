"""``record_fields`` (what ``verify`` reads of each exported record) gives exactly the fields a full decode
gives, in every format, and still refuses what a full decode refuses for its structure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest

from capture_export.export.formats import FORMATS, decode_object, encoder_for, record_fields, zstd_frame
from capture_export.export.skim import StoredCopy
from capture_export.store.records import encode_body, with_id
from tests.support.records import make_record

FIELDS = frozenset({"id", "timestamp", "capture_id"})


def _picked(records: Any) -> list[Any]:
    return [{k: r[k] for k in FIELDS if k in r} if isinstance(r, dict) else r for r in records]


def _key(fmt: str) -> str:
    info = FORMATS[fmt]
    return "k/00000000000000000001-00000000000000000009" + info.extensions[info.default_compression]


@pytest.mark.parametrize("fmt", ["cbor-zstd", "jsonl", "parquet"])
def test_the_fields_are_those_of_a_full_decode(fmt: str) -> None:
    records = [{"id": n, **make_record(n)} for n in range(1, 6)]
    records[1].pop("capture_id")
    records[2]["capture_id"] = b"\x00bytes"
    records[3]["timestamp"] = "not a time"  # a foreign writer's: Parquet keeps it in ``extra``
    payload = encoder_for(fmt).encode_records(records)
    assert list(record_fields(payload, _key(fmt), FIELDS)) == _picked(decode_object(payload, _key(fmt)))


def _sequence(*items: bytes) -> bytes:
    return zstd_frame(list(items))


FOREIGN_ITEMS = {
    "indefinite map": b"\xbf\x62id\x01\x69timestamp\xc0\x74" + b"2026-01-01T00:00:00Z" + b"\xff",
    "repeated key, the last counts": cbor2.dumps({"id": 1}) [:-1].replace(b"\xa1", b"\xa3", 1) + b"\x01"
    + b"\x6acapture_id\x61a\x6acapture_id\x61b",
    "tagged record": b"\xd9\xd9\xf7" + cbor2.dumps({"id": 2, "capture_id": "c"}),
    "not a map": cbor2.dumps([1, 2, 3]),
    "byte-string key": cbor2.dumps({b"id": 3, "id": 4, "capture": {"deep": [[[{"x": b"y" * 300}]]]}}),
    "indefinite strings and arrays": b"\xa3\x62id\x05\x64body\x9f\x7f\x61a\x61b\xff\x5f\x41\x00\xff\xff"
    b"\x69timestamp\xc1\x1a\x65\x00\x00\x00",
    "value sharing": cbor2.dumps({"id": 6, "a": [1, 2], "b": [1, 2]}, value_sharing=True),
}


@pytest.mark.parametrize("item", list(FOREIGN_ITEMS.values()), ids=list(FOREIGN_ITEMS))
def test_foreign_cbor_reads_as_a_full_decode_reads_it(item: bytes) -> None:
    payload = _sequence(item, cbor2.dumps({"id": 9, "timestamp": datetime(2026, 1, 1, tzinfo=UTC)}))
    assert list(record_fields(payload, "x.cbor.zstd", FIELDS)) == _picked(decode_object(payload, "x.cbor.zstd"))


BROKEN = {
    "truncated": cbor2.dumps({"id": 1, "capture": "x" * 50})[:-10],
    "a break outside an indefinite item": b"\xff\xff\x1f",
    "reserved head": b"\xa2\x62id\x01\x61a\x1c",
    "truncated in a head": b"\xa1\x62id\x1a\x00",
}


@pytest.mark.parametrize("data", list(BROKEN.values()), ids=list(BROKEN))
def test_what_is_not_well_formed_is_refused_as_by_a_full_decode(data: bytes) -> None:
    payload = _sequence(data)
    with pytest.raises(Exception):  # noqa: B017 - whatever cbor2 raises: the object is unreadable
        list(decode_object(payload, "x.cbor.zstd"))
    with pytest.raises((ValueError, cbor2.CBORDecodeError)):
        list(record_fields(payload, "x.cbor.zstd", FIELDS))


def test_a_record_that_is_its_stored_row_is_not_decoded() -> None:
    bodies = {n: encode_body(make_record(n))[1] for n in (7, 300, 70_000)}
    exported = [with_id(n, body) for n, body in bodies.items()]
    changed = cbor2.loads(exported[1])
    changed["capture_id"] = "another"
    exported[1] = cbor2.dumps(changed)
    payload = zstd_frame(exported)

    got = list(record_fields(payload, "x.cbor.zstd", FIELDS, bodies.get))

    assert got[0] == StoredCopy(7) and got[2] == StoredCopy(70_000)
    assert got[1] == {"id": 300, "timestamp": changed["timestamp"], "capture_id": "another"}
    # Without the stored rows, every record is read field by field.
    assert list(record_fields(payload, "x.cbor.zstd", FIELDS)) == _picked(decode_object(payload, "x.cbor.zstd"))
