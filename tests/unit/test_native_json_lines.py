"""The optional native JSON Lines path (capture_export/export/_cbor_json.c): a stored record's CBOR written
straight as its JSON line. Its contract is the Python path's bytes, exactly: for every input it returns
either those bytes or None (the caller then takes the Python path for that row), and never crashes.

Where no C compiler built the extension these tests skip, but under CI (``CI`` set) they fail: CI builds it.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
import pytest

from capture_export.export import batch
from capture_export.export.batch import BatchRecipe, encode_rows
from capture_export.export.formats import JsonLinesEncoder, json_bytes
from capture_export.seed import generate_records
from capture_export.store.base import StoredRecord
from capture_export.store.records import encode_body
from capture_export.store.seal import RecordSeal
from tests.support.mutations import broken_copies, mutations
from tests.support.native import built_extension
from tests.support.records import make_record

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "operator" / "capture_export" / "export" / "_cbor_json.c"


@pytest.fixture(scope="module")
def native() -> ModuleType:
    return built_extension("json_line")


def python_line(body: bytes, record_id: int) -> bytes | None:
    """What the Python path writes for the row, or None where it raises."""
    try:
        record: dict[str, Any] = {"id": record_id}
        record.update(JsonLinesEncoder.decode_record(body))
        return json_bytes(record) + b"\n"
    except Exception:
        return None


def assert_same_or_none(native: ModuleType, body: bytes, record_id: int = 7) -> bytes | None:
    got = native.json_line(body, record_id)
    if got is not None:
        assert got == python_line(body, record_id), body
    return got  # type: ignore[no-any-return]


def test_the_built_extension_is_of_this_source(native: ModuleType) -> None:
    """A .so left from an older C file would be tested instead of the code under review: rebuild it
    (``pip install -e .``) after editing the C file."""
    assert hashlib.sha256(SOURCE.read_bytes()).hexdigest() == native.SOURCE_SHA256


def test_standard_records_are_written_natively_as_python_writes_them(native: ModuleType) -> None:
    for n, record in enumerate(generate_records(2000, seed=1, start=datetime(2026, 11, 24, tzinfo=UTC))):
        _, body = encode_body(record)
        line = native.json_line(body, 1_000_000 + n)
        assert line is not None, record
        assert line == python_line(body, 1_000_000 + n)


def _body(record: dict[str, Any]) -> bytes:
    return cbor2.dumps(record, timezone=UTC)


STRINGS = [
    "", "plain", "".join(map(chr, range(0x80))), "é", "\u2028\u2029", "😀", "/\\\"'", "\ud7ff\ue000\uffff",
    "\U0010ffff", "a" * 70_000, "\x7f\x00\x1f",
]
FLOATS = [0.0, -0.0, 1.0, 0.1, 1e16, 1e-7, 1.5e300, 5e-324, 2.0**53, 1e21, 123.456, -2.5, math.pi,
          float("nan"), float("inf"), float("-inf")]
INTS = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
        -1, -24, -25, -256, -257, -(2**32), -(2**63)]


@pytest.mark.parametrize("value", STRINGS + FLOATS + INTS + [True, False, None, b"", b"\x00\xff", b"abc", b"abcd",
                                                             [], [1, [2, [3]]], {}, {"a": {"b": {}}}],
                         ids=lambda value: repr(value)[:40])
def test_each_type_as_python_writes_it(native: ModuleType, value: Any) -> None:
    body = _body({"v": value, "list": [value, value], "map": {"k": value}})
    line = native.json_line(body, 3)
    assert line is not None
    assert line == python_line(body, 3)


@pytest.mark.parametrize("key", STRINGS[:-2], ids=lambda value: repr(value)[:40])
def test_keys_are_escaped_as_python_escapes_them(native: ModuleType, key: str) -> None:
    body = _body({key: 1, "n": {key: key}} if key != "n" else {key: 1})
    assert native.json_line(body, 3) == python_line(body, 3)


def test_every_character_class_at_every_position_of_a_run(native: ModuleType) -> None:
    """Text is copied eight bytes at a time until a byte needs a look of its own: each kind of such byte at
    each position of a run, and runs of every length around them."""
    for length in range(0, 26):
        for special in ('"', "\\", "\x00", "\x08", "\x1f", " ", "\x7f", "é", "€", "😀", "\u2028"):
            for at in range(length + 1):
                text = "a" * at + special + "z" * (length - at)
                body = _body({text: text})
                assert native.json_line(body, 1) == python_line(body, 1), text


def test_every_float_width_and_many_doubles(native: ModuleType) -> None:
    rng = random.Random(13)
    doubles = [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(3000)]
    doubles += [rng.uniform(-1e6, 1e6) for _ in range(1000)] + [rng.random() for _ in range(1000)]
    for value in doubles:
        for head, fmt in ((b"\xfb", ">d"), (b"\xfa", ">f"), (b"\xf9", ">e")):
            try:
                encoded = struct.pack(fmt, value)
            except (OverflowError, struct.error):
                continue
            body = b"\xa1\x61v" + head + encoded
            assert native.json_line(body, 1) == python_line(body, 1), (value, fmt)


def test_ids_as_python_writes_them(native: ModuleType) -> None:
    body = _body(make_record(1))
    for record_id in (0, 1, 2**31, 2**63 - 1, -5):
        assert native.json_line(body, record_id) == python_line(body, record_id)
    assert native.json_line(_body({}), 9) == b'{"id":9}\n'


@pytest.mark.parametrize(("stamp", "text"), [
    ("2026-11-24T12:00:00.123456Z", None), ("2026-11-24T12:00:00.000000Z", None),
    ("2024-02-29T23:59:59.999999Z", None), ("1000-01-01T00:00:00.000000Z", None),
    # cbor2 writes a whole second without its fraction; Python's path writes the datetime with six zeros
    ("2026-11-24T12:00:01Z", "2026-11-24T12:00:01.000000Z"), ("2000-02-29T00:00:00Z", "2000-02-29T00:00:00.000000Z"),
])
def test_timestamps_our_writer_stores_are_their_text(native: ModuleType, stamp: str, text: str | None) -> None:
    text = text or stamp
    body = _body({"timestamp": cbor2.CBORTag(0, stamp), "n": [cbor2.CBORTag(0, stamp)]})
    expected = f'{{"id":1,"timestamp":"{text}","n":["{text}"]}}\n'.encode()
    assert native.json_line(body, 1) == python_line(body, 1) == expected
    if text != stamp:  # the form cbor2 writes a datetime of a whole second in
        assert _body({"t": datetime.fromisoformat(text)}) == _body({"t": cbor2.CBORTag(0, stamp)})


@pytest.mark.parametrize("value", [
    cbor2.CBORTag(0, "2026-11-24T12:00:00.123Z"),  # not as cbor2 writes a datetime: parsed by Python
    cbor2.CBORTag(0, "1900-02-29T12:00:00Z"),
    cbor2.CBORTag(0, "2026-11-24T12:00:00.123456+01:00"),
    cbor2.CBORTag(0, "2023-02-29T12:00:00.000000Z"),  # not a real day
    cbor2.CBORTag(0, "2026-11-24T24:00:00.000000Z"),
    cbor2.CBORTag(0, "2026-11-24T12:00:60.000000Z"),
    cbor2.CBORTag(0, "0999-11-24T12:00:00.000000Z"),
    cbor2.CBORTag(0, 5),
    cbor2.CBORTag(1, 1700000000),
    cbor2.CBORTag(2, b"\x01\x00"),  # a bignum
    cbor2.CBORTag(37, b"0123456789abcdef"),
    cbor2.CBORTag(55799, 1),
    cbor2.undefined,
    cbor2.CBORSimpleValue(99),
    2**64,
    -(2**63) - 1,
    -(2**64),
    {b"bytes key": 1},
    {1: "int key"},
    {2.5: "float key"},
    {"id": 1},  # nested "id" is fine, see below
])
def test_what_it_leaves_to_python(native: ModuleType, value: Any) -> None:
    body = _body({"v": value})
    got = assert_same_or_none(native, body)
    if not (isinstance(value, dict) and "id" in value):
        assert got is None, value
    else:
        assert got is not None


def test_a_top_level_id_and_duplicate_keys_are_left_to_python(native: ModuleType) -> None:
    assert native.json_line(_body({"a": 1, "id": 2}), 5) is None
    # A map with the same key twice (our writer cannot make one): Python keeps one, so it is left to Python.
    assert native.json_line(b"\xa2\x61a\x01\x61a\x02", 5) is None
    many = {f"k{i}": i for i in range(300)}
    body = bytearray(_body(many))
    at = body.index(b"k299")
    body[at:at + 4] = b"k123"  # same length: still a well-formed map, with "k123" twice
    assert native.json_line(bytes(body), 5) is None
    assert native.json_line(_body(many), 5) == python_line(_body(many), 5)


@pytest.mark.parametrize("body", [
    b"", b"\x01", b"\x80", b"\xa0\x00",  # empty, not a map, trailing byte
    b"\xbf\xff", b"\xa1\x7f\x61a\xff\x01", b"\xa1\x61a\x5f\x41a\xff", b"\xa1\x61a\x9f\xff",  # indefinite lengths
    b"\xa1\x61a\xf7", b"\xa1\x61a\xf0", b"\xa1\x61a\xf8\x20",  # undefined, simple values
    b"\xa1\x61a\xfc", b"\xa1\x61a\x1c", b"\xa1\x61a\x3f",  # reserved additional information
    b"\xa1\x61\xff\x01", b"\xa1\x61a\x62\xc3\x28", b"\xa1\x61a\x63\xed\xa0\x80",  # invalid UTF-8, a surrogate
    b"\xa1\x61a\x62\xc0\x80", b"\xa1\x61a\x64\xf4\x90\x80\x80",  # overlong, beyond U+10FFFF
    b"\xa1\x61a\x7b\xff\xff\xff\xff\xff\xff\xff\xff",  # a length that overflows
    b"\xa1\x61a\x5b\x7f\xff\xff\xff\xff\xff\xff\xff", b"\xa1\x61a\x9b\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xa1\x61a\xfb\x00", b"\xa1\x61a\x19\x01",  # truncated numbers
])
def test_malformed_bodies_are_left_to_python(native: ModuleType, body: bytes) -> None:
    assert native.json_line(body, 1) is None


def test_deep_nesting_is_left_to_python(native: ModuleType) -> None:
    for depth in (10, 60, 200, 100_000):
        body = b"\xa1\x61a" + b"\x81" * depth + b"\x01"
        assert_same_or_none(native, body)
        body = b"\xa1\x61a" + b"\xa1\x61a" * depth + b"\x01"
        assert_same_or_none(native, body)
    assert native.json_line(b"\xa1\x61a" + b"\x81" * 100_000 + b"\x01", 1) is None


def test_hostile_bytes_never_crash_and_never_differ(native: ModuleType) -> None:
    rng = random.Random(2026)
    bodies = [encode_body(record)[1] for record in generate_records(60, seed=3)]
    bodies += [_body(make_record(n)) for n in range(5)]
    written = 0
    for body in bodies:
        for broken in broken_copies(body):  # truncated, or a byte too many
            assert native.json_line(broken, 1) is None
        for mutated in mutations(body, rng, 150):
            if assert_same_or_none(native, mutated) is not None:
                written += 1
    assert written  # some mutations (a letter in a string) are still records, and written as Python writes them
    for _ in range(3000):
        assert_same_or_none(native, rng.randbytes(rng.randint(0, 64)))
        assert_same_or_none(native, b"\xa3" + rng.randbytes(rng.randint(0, 64)))


def test_arguments(native: ModuleType) -> None:
    body = _body({"a": 1})
    assert native.json_line(memoryview(body), 2) == b'{"id":2,"a":1}\n'
    assert native.json_line(memoryview(b"xx" + body)[2:], 2) == b'{"id":2,"a":1}\n'
    assert native.json_line(body, 2**63) is None  # an id orjson could write, but no store assigns one
    with pytest.raises(TypeError):
        native.json_line("text", 2)
    with pytest.raises(TypeError):
        native.json_line(body, "2")


def _rows(count: int, seal: RecordSeal) -> list[StoredRecord]:
    rows = []
    for n, record in enumerate(generate_records(count, seed=1, start=datetime(2026, 11, 24, tzinfo=UTC)), 1):
        stamp, body = encode_body(record)
        rows.append(StoredRecord(n, stamp, body, seal.seal(body)))
    return rows


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_encode_rows_writes_the_same_objects_natively(native: ModuleType, compression: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Sealed rows go the native way (in privacy mode, their scrubbed records), a foreign row and a redacted
    batch the Python way; the object is the same bytes either way."""
    seal = RecordSeal("6b" * 32)
    rows = _rows(300, seal)
    rows[5] = StoredRecord(rows[5].id, rows[5].timestamp_us, rows[5].body, None)  # foreign: checked, decoded
    odd = _body({"ver": 2, "timestamp": datetime(2026, 1, 1, tzinfo=UTC), "v": cbor2.CBORTag(99, 1)})
    rows[6] = StoredRecord(rows[6].id, rows[6].timestamp_us, odd, seal.seal(odd))  # sealed, but left to Python
    calls = []
    real = native.json_line

    def counted(body: Any, record_id: int) -> bytes | None:
        calls.append(record_id)
        return real(body, record_id)  # type: ignore[no-any-return]

    recipes = [BatchRecipe("jsonl", compression, seal=seal),
               BatchRecipe("jsonl", compression, seal=seal, privacy_mode=True),
               BatchRecipe("jsonl", compression, seal=seal, redact_fields=("capture.request.body",))]
    monkeypatch.setattr(batch, "_native_json_line", counted)
    natively = [encode_rows(recipe, rows) for recipe in recipes]
    # Not the foreign row. The identity batch: every other row; privacy mode: each whose scrubbed record the
    # native scrub writes (tests/unit/test_native_privacy.py), not the odd one; redactions: none.
    assert sorted(calls) == sorted([row.id for row in rows if row.id != 6] + [row.id for row in rows
                                                                             if row.id not in (6, 7)])
    monkeypatch.setattr(batch, "_native_json_line", None)
    in_python = [encode_rows(recipe, rows) for recipe in recipes]
    for ours, theirs in zip(natively, in_python, strict=True):
        assert ours.payload == theirs.payload
        assert (ours.rows, ours.first_id, ours.last_id) == (theirs.rows, theirs.first_id, theirs.last_id)
