"""The optional native Parquet path (``parquet_capture`` of capture_export/export/_cbor_json.c): a stored
record's CBOR split into the fields Parquet's columns still decode (a small CBOR map), the capture already
as the JSON text of its column, and the raw request and response bodies. Its contract is the Python
path's column values, exactly: for every input it returns either that split or None (the caller then
decodes the row the Python way), and never crashes. It takes exactly the rows ``json_line`` takes.

Where no C compiler built the extension these tests skip, but under CI (``CI`` set) they fail: CI builds it.
"""

from __future__ import annotations

import io
import math
import os
import random
import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import cbor2
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from capture_export.export import batch  # noqa: E402
from capture_export.export.batch import BatchRecipe, encode_rows  # noqa: E402
from capture_export.export.formats import PARQUET_SLICE, EncodedCapture, ParquetEncoder, _captures  # noqa: E402
from capture_export.seed import generate_records  # noqa: E402
from capture_export.store.base import StoredRecord  # noqa: E402
from capture_export.store.records import encode_body  # noqa: E402
from capture_export.store.seal import RecordSeal  # noqa: E402
from tests.support.mutations import mutations  # noqa: E402
from tests.support.records import make_record  # noqa: E402

Split = tuple[bytes, bytes | None, bytes | None, bytes | None]


def _native() -> ModuleType:
    try:
        from capture_export.export import _cbor_json
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the native extension is not built ({exc}); CI builds it (pip install -e .)", pytrace=False)
        pytest.skip(f"the native extension is not built here (no C compiler?): {exc}")
    if not hasattr(_cbor_json, "parquet_capture"):
        pytest.fail("the built extension has no parquet_capture: rebuild it (pip install --no-deps -e .)",
                    pytrace=False)
    return _cbor_json


@pytest.fixture(scope="module")
def native() -> ModuleType:
    return _native()


def _body(record: dict[str, Any]) -> bytes:
    return cbor2.dumps(record, timezone=UTC)


def python_split(body: bytes) -> Split | None:
    """What the Python path puts in the columns, as the native path returns it: the record's other fields
    as a CBOR map (here: decoded), the capture's JSON and raw bodies; None where it raises."""
    try:
        record = cbor2.loads(body)
        capture = record.get("capture") if isinstance(record, dict) else None
        if capture is None:
            return cbor2.dumps(record), None, None, None
        del record["capture"]
        (text,), (raw_request,), (raw_response,) = _captures([capture])
        return cbor2.dumps(record), text, raw_request, raw_response
    except Exception:
        return None


def _decoded_repr(data: bytes) -> str:
    """A decoded map's repr: its keys in order, its values' types, NaN equal to NaN."""
    return repr(cbor2.loads(data))


def assert_split_as_python(native: ModuleType, body: bytes) -> Split | None:
    got = native.parquet_capture(body)
    assert (got is None) == (native.json_line(body, 1) is None), body  # the rows json_line takes, no others
    if got is not None:
        expected = python_split(body)
        assert expected is not None, body
        assert _decoded_repr(got[0]) == _decoded_repr(expected[0]), body
        assert got[1:] == expected[1:], body
    return got  # type: ignore[no-any-return]


def python_records(bodies: Iterable[bytes]) -> list[dict[str, Any]]:
    records = []
    for n, body in enumerate(bodies):
        record = cbor2.loads(body)
        record["id"] = n + 1
        records.append(record)
    return records


def native_records(native: ModuleType, bodies: Iterable[bytes]) -> list[dict[str, Any]]:
    records = []
    for n, body in enumerate(bodies):
        split = native.parquet_capture(body)
        assert split is not None, body
        record = cbor2.loads(split[0])
        if split[1] is not None:
            record["capture"] = EncodedCapture(*split[1:])
        record["id"] = n + 1
        records.append(record)
    return records


def assert_same_parquet(native: ModuleType, bodies: Sequence[bytes]) -> None:
    """Both ways to the same Parquet: every column's values read back with pyarrow, and the file's bytes."""
    encoder = ParquetEncoder()
    ours = encoder.encode_records(native_records(native, bodies))
    theirs = encoder.encode_records(python_records(bodies))
    ours_table, theirs_table = pq.read_table(io.BytesIO(ours)), pq.read_table(io.BytesIO(theirs))
    assert ours_table.schema == theirs_table.schema
    for name in theirs_table.schema.names:
        assert ours_table.column(name).to_pylist() == theirs_table.column(name).to_pylist(), name
    assert ours == theirs


def test_standard_records_give_the_python_paths_parquet(native: ModuleType) -> None:
    records = generate_records(3000, seed=1, start=datetime(2026, 11, 24, tzinfo=UTC))
    bodies = [encode_body(record)[1] for record in records]
    for body in bodies[:500]:
        assert assert_split_as_python(native, body) is not None
    assert_same_parquet(native, bodies)


STRINGS = ["", "plain", "".join(map(chr, range(0x80))), "é", "\u2028\u2029", "😀", "/\\\"'", "\U0010ffff",
           "a" * 70_000, "\x7f\x00\x1f"]
FLOATS = [0.0, -0.0, 1.0, 0.1, 1e16, 1e-7, 1.5e300, 5e-324, 2.0**53, 123.456, math.pi, float("nan"),
          float("inf"), float("-inf")]
INTS = [0, 23, 24, 255, 65536, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -1, -25, -(2**32), -(2**63)]
VALUES = [*STRINGS, *FLOATS, *INTS, True, False, None, b"", b"\x00\xff", [], [1, [2, [3]]], {}, {"a": {"b": {}}},
          cbor2.CBORTag(0, "2026-11-24T12:00:00.123456Z"), cbor2.CBORTag(0, "2026-11-24T12:00:01Z")]


def _edge_records() -> list[dict[str, Any]]:
    """Records with every kind of value in the capture, in its request and response, beside the raw bodies
    and in the typed columns' fields."""
    records: list[dict[str, Any]] = []
    for n, value in enumerate(VALUES):
        record = make_record(n)
        record["capture"] = {"request": {"headers": {"h": value}, "body": {"v": value, "l": [value, value]},
                                         "raw_body": b"req" * n},
                             "response": {"body": value, "raw_body": value},  # bytes only when it is bytes
                             value if isinstance(value, str) else "odd": value}
        records.append(record)
        for field in ("model", "duration_ms", "status_code", "estimated_cost", "usage", "identity", "ver"):
            records.append(make_record(n, **{field: value}))  # text in a number's column, ...: to extra
        records.append(make_record(n, usage={"input_tokens": value, "output_tokens": 1}))
        records.append(make_record(n, identity={"login_name": value, "tags": [value]}))
        records.append(make_record(n, unknown_field=value))
    return records


def _shape_records() -> list[dict[str, Any]]:
    """Captures of every shape: missing, null, not a map, raw bodies on one side, both or none, empty or
    odd raw bodies, nested tool calls, and records that lack typed fields."""
    tool_calls = {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\"}"}},
        {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "21°C\n\"sunny\""}]}]}
    captures: list[Any] = [
        None, "text", 5, [1, {"raw_body": b"x"}], {}, {"request": None, "response": None},
        {"request": {"raw_body": b""}}, {"response": {"raw_body": b"\x00" * 3000}},
        {"request": {"raw_body": b"a", "body": tool_calls}, "response": {"raw_body": b"b", "x": 1}},
        {"request": {"raw_body": "text, not bytes"}, "response": {"raw_body": None}},
        {"request": [b"not", b"a map"], "response": "no", "raw_body": b"capture-level: stays in the JSON"},
        {"request": {"body": tool_calls, "raw_body": b"\xff\xfe"}, "response": {"body": {"tool_use": tool_calls}}},
        {"response": {"raw_body": b"r", "raw": {"raw_body": b"nested: stays"}}, "request": {"raw_body": b"q"}},
    ]
    records: list[dict[str, Any]] = []
    for n, capture in enumerate(captures):
        records.append(make_record(n, capture=capture))
        record = make_record(n, capture=capture)
        for field in ("estimated_cost", "usage", "identity", "timestamp"):
            record.pop(field)
        records.append(record)
    bare = make_record(99)
    del bare["capture"]
    records += [bare, {"ver": 2}, {}, {"capture": {"request": {"raw_body": b"only"}}}]
    return records


def test_edge_values_give_the_python_paths_parquet(native: ModuleType) -> None:
    bodies = [_body(record) for record in _edge_records() + _shape_records()]
    for body in bodies:
        assert assert_split_as_python(native, body) is not None
    assert_same_parquet(native, bodies)
    # and each alone, so that no slice's clean column hides a misfit of another
    for body in bodies[::7]:
        assert_same_parquet(native, [body])
    assert len(bodies) > 2 * PARQUET_SLICE


def test_the_split_itself(native: ModuleType) -> None:
    record = make_record(1, capture={"request": {"body": {"a": "é"}, "raw_body": b"\x01\x02"},
                                     "response": {"raw_body": b"", "status": 200}})
    rest, capture, raw_request, raw_response = native.parquet_capture(_body(record))
    del record["capture"]
    assert cbor2.loads(rest) == record
    assert capture == '{"request":{"body":{"a":"é"}},"response":{"status":200}}'.encode()
    assert (raw_request, raw_response) == (b"\x01\x02", b"")
    # without a capture, or with a null one: no capture text, and the null left in the map
    assert native.parquet_capture(_body({"a": 1})) == (_body({"a": 1}), None, None, None)
    assert native.parquet_capture(_body({"capture": None, "a": 1})) == (_body({"capture": None, "a": 1}), None, None,
                                                                          None)
    assert native.parquet_capture(memoryview(b"xx" + _body({"a": 1}))[2:]) == (_body({"a": 1}), None, None, None)
    assert native.parquet_capture(_body({})) == (b"\xa0", None, None, None)
    big = {f"k{i}": i for i in range(40)} | {"capture": {"request": {}}}
    rest, capture, _, _ = native.parquet_capture(_body(big))
    assert cbor2.loads(rest) == {f"k{i}": i for i in range(40)} and capture == b'{"request":{}}'


@pytest.mark.parametrize("value", [
    cbor2.CBORTag(0, "2026-11-24T12:00:00.123Z"),
    cbor2.CBORTag(1, 1700000000),
    cbor2.CBORTag(2, b"\x01\x00"),  # a bignum
    cbor2.CBORTag(37, b"0123456789abcdef"),
    cbor2.undefined,
    cbor2.CBORSimpleValue(99),
    2**64,
    -(2**63) - 1,
    {b"bytes key": 1},
    {1: "int key"},
])
@pytest.mark.parametrize("where", ["capture", "request", "raw_body", "field"])
def test_what_it_leaves_to_python(native: ModuleType, value: Any, where: str) -> None:
    record = {"capture": {"request": {"raw_body": b"x"}}, "model": "m"}
    if where == "capture":
        record["capture"]["v"] = value
    elif where == "request":
        record["capture"]["request"]["v"] = value
    elif where == "raw_body":
        record["capture"]["request"]["raw_body"] = value
    else:
        record["usage"] = {"input_tokens": value}
    body = _body(record)
    assert native.parquet_capture(body) is None
    assert native.json_line(body, 1) is None


@pytest.mark.parametrize("body", [
    b"", b"\x01", b"\x80", b"\xa0\x00",  # empty, not a map, trailing byte
    b"\xa1\x61a\x01\x00",
    b"\xbf\xff", b"\xa1\x67capture\xbf\xff", b"\xa1\x67capture\xa1\x67request\xa1\x68raw_body\x5f\x41a\xff",
    b"\xa1\x62id\x01",  # a top-level id
    b"\xa2\x67capture\xa0\x67capture\xa0",  # the capture twice
    b"\xa1\x67capture\xa2\x67request\xa0\x67request\xa0",
    b"\xa1\x67capture\xa1\x67request\xa2\x68raw_body\x41a\x68raw_body\x41b",  # two raw bodies
    b"\xa1\x67capture\xa1\x67request\xa1\x68raw_body\x5b\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xa1\x67capture\xa1\x67request\xa1\x68raw_body\x42a",  # cut short
    b"\xa1\x67capture\xa1\x67request\xa1\x68raw_body",
    b"\xa1\x67capture\xa1\x67request\xa1\x68raw_bod",
    b"\xa1\x67capture\xa1\x67request", b"\xa1\x67capture", b"\xa1\x67captur",
    b"\xa1\x61a\x62\xc3\x28", b"\xa1\x67capture\x62\xc3\x28",  # invalid UTF-8
    b"\xa1\x67capture\xa1\x67request\xa1\x62\xc3\x28\x01",
    b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",
])
def test_malformed_bodies_are_left_to_python(native: ModuleType, body: bytes) -> None:
    assert native.parquet_capture(body) is None


def test_deep_nesting_is_left_to_python(native: ModuleType) -> None:
    for depth in (10, 60, 61, 62, 63, 64, 200, 100_000):
        for inner in (b"\x81" * depth + b"\x01", b"\xa1\x61a" * depth + b"\x01"):
            for outer in (b"\xa1\x61a", b"\xa1\x67capture", b"\xa1\x67capture\xa1\x67request",
                          b"\xa1\x67capture\xa1\x68response\xa1\x68raw_body"):
                body = outer + inner
                assert_split_as_python(native, body)
    assert native.parquet_capture(b"\xa1\x67capture" + b"\x81" * 100_000 + b"\x01") is None


def test_hostile_bytes_never_crash_and_never_differ(native: ModuleType) -> None:
    rng = random.Random(2027)
    bodies = [encode_body(record)[1] for record in generate_records(40, seed=3)]
    bodies += [_body(record) for record in _shape_records()[::3]]
    split = 0
    for body in bodies:
        for cut in range(0, len(body), max(1, len(body) // 40)):  # truncated
            assert native.parquet_capture(body[:cut]) is None
        assert native.parquet_capture(body + b"\x00") is None  # trailing bytes
        for mutated in mutations(body, rng, 120):
            if assert_split_as_python(native, mutated) is not None:
                split += 1
    assert split  # some mutations (a letter in a string) are still records, and split as Python splits them
    for _ in range(3000):
        assert_split_as_python(native, rng.randbytes(rng.randint(0, 64)))
        assert_split_as_python(native, b"\xa2\x67capture" + rng.randbytes(rng.randint(0, 64)))
        assert_split_as_python(native, b"\xa1\x67capture\xa1\x67request\xa1" + rng.randbytes(rng.randint(0, 32)))


def test_many_doubles_in_the_capture(native: ModuleType) -> None:
    rng = random.Random(17)
    doubles = [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(1000)] + [rng.random() for _ in range(500)]
    for value in doubles:
        for head, fmt in ((b"\xfb", ">d"), (b"\xfa", ">f"), (b"\xf9", ">e")):
            try:
                encoded = struct.pack(fmt, value)
            except (OverflowError, struct.error):
                continue
            assert_split_as_python(native, b"\xa2\x67capture\xa1\x61v" + head + encoded + b"\x61c" + head + encoded)


def test_arguments(native: ModuleType) -> None:
    with pytest.raises(TypeError):
        native.parquet_capture("text")
    with pytest.raises(TypeError):
        native.parquet_capture()


def _rows(count: int, seal: RecordSeal) -> list[StoredRecord]:
    rows = []
    for n, record in enumerate(generate_records(count, seed=1, start=datetime(2026, 11, 24, tzinfo=UTC)), 1):
        stamp, body = encode_body(record)
        rows.append(StoredRecord(n, stamp, body, seal.seal(body)))
    return rows


def test_encode_rows_writes_the_same_parquet_natively(native: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sealed rows go the native way, a foreign row and a filtered or rewritten batch the Python way; the
    object is the same bytes either way."""
    seal = RecordSeal("6b" * 32)
    rows = _rows(1300, seal)
    rows[5] = StoredRecord(rows[5].id, rows[5].timestamp_us, rows[5].body, None)  # foreign: checked, decoded
    odd = _body({"ver": 2, "timestamp": datetime(2026, 1, 1, tzinfo=UTC), "v": cbor2.CBORTag(99, 1)})
    rows[6] = StoredRecord(rows[6].id, rows[6].timestamp_us, odd, seal.seal(odd))  # sealed, but left to Python
    calls: list[int] = []
    real = native.parquet_capture

    def counted(body: Any) -> Split | None:
        calls.append(1)
        return real(body)  # type: ignore[no-any-return]

    recipes = [BatchRecipe("parquet", "zstd", seal=seal),
               BatchRecipe("parquet", "none", seal=seal),
               BatchRecipe("parquet", "zstd", seal=seal, privacy_mode=True),
               BatchRecipe("parquet", "zstd", seal=seal, redact_fields=("capture.request.body",))]
    monkeypatch.setattr(batch, "_native_parquet_capture", counted)
    natively = [encode_rows(recipe, rows) for recipe in recipes]
    assert len(calls) == 2 * (len(rows) - 1)  # not the foreign row; only the unrewritten batches
    monkeypatch.setattr(batch, "_native_parquet_capture", None)
    in_python = [encode_rows(recipe, rows) for recipe in recipes]
    for ours, theirs in zip(natively, in_python, strict=True):
        assert ours.payload == theirs.payload
        assert (ours.rows, ours.first_id, ours.last_id) == (theirs.rows, theirs.first_id, theirs.last_id)
