"""The optional native Parquet path (``parquet_row`` of capture_export/export/_cbor_json.c): a stored
record's CBOR as its values for Parquet's columns, a native row (formats._ROW_FIELDS): the typed fields as
cbor2 decodes them, the capture already as the JSON text of its column, and the raw request and response
bodies. Its contract is the Python path's column values, exactly: for every input it returns either that
row or None (the caller then decodes the row the Python way), and never crashes. It takes the rows
``json_line`` takes but those with a field of no typed column (or a half or single float).

Where no C compiler built the extension these tests skip, but under CI (``CI`` set) they fail: CI builds it.
"""

from __future__ import annotations

import io
import math
import random
import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import cbor2
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from capture_export.export import batch  # noqa: E402
from capture_export.export.batch import BatchRecipe, encode_rows  # noqa: E402
from capture_export.export.formats import (  # noqa: E402
    _ROW_FIELDS,
    _ROW_RECORD_FIELDS,
    PARQUET_SLICE,
    ParquetEncoder,
    _captures,
)
from capture_export.seed import generate_records  # noqa: E402
from capture_export.store.base import StoredRecord  # noqa: E402
from capture_export.store.records import encode_body  # noqa: E402
from capture_export.store.seal import RecordSeal  # noqa: E402
from tests.support.mutations import broken_copies, mutations  # noqa: E402
from tests.support.native import built_extension  # noqa: E402
from tests.support.records import make_record  # noqa: E402

Row = tuple[Any, ...]


@pytest.fixture(scope="module")
def native() -> ModuleType:
    return built_extension("parquet_row")


def _body(record: dict[str, Any]) -> bytes:
    return cbor2.dumps(record, timezone=UTC)


STRUCTS = {"identity": {"login_name": str, "node_id": str, "tags": list},
           "usage": dict.fromkeys(("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens"), int),
           "estimated_cost": {"input": float, "output": float, "total": float, "currency": str}}
FIELDS = {name for name in _ROW_RECORD_FIELDS if "." not in name} - {"id"} | {"capture"}


def python_row(body: bytes, record_id: int = 1) -> Row | None:
    """What the Python path puts in the columns, as the native path returns it: the record's typed fields
    as cbor2 decodes them (None where missing; a struct flattened: True or None, then its fields), the
    capture's JSON and raw bodies; None where it raises."""
    try:
        record = cbor2.loads(body)
        if not isinstance(record, dict):
            return None
        (text,), (raw_request,), (raw_response,) = _captures([record.get("capture")])
    except Exception:
        return None
    values: list[Any] = [record_id]
    for name in _ROW_RECORD_FIELDS[1:]:
        struct, _, field = name.partition(".")
        if name == "timestamp" and isinstance(record.get(name), datetime):
            values.append((record[name] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))
        elif struct in STRUCTS and not field:
            values.append(None if record.get(name) is None else True)
        elif field:
            parent = record.get(struct)
            values.append(parent.get(field) if isinstance(parent, dict) else None)  # (not a map: never native)
        else:
            values.append(record.get(name))
    return (*values, text, raw_request, raw_response)


def _fits(value: Any, kind: type) -> bool:
    if kind is int:
        return type(value) is int and -(2**63) <= value < 2**63
    if kind is list:
        return type(value) is list and all(type(item) is str for item in value)
    return type(value) is kind


def _left_to_python(body: bytes) -> bool:
    """Whether the native path may leave a record json_line writes to Python: a field of no typed column, a
    struct that is neither null nor a map of its fields each of its type (or null), or (outside the
    capture) a float, which may be a half or a single."""
    record = cbor2.loads(body)
    if not set(record) <= FIELDS or not isinstance(record.get("timestamp"), datetime | None):
        return True
    for name, fields in STRUCTS.items():
        value = record.get(name)
        if value is not None and not (type(value) is dict and all(
                key in fields and (item is None or _fits(item, fields[key])) for key, item in value.items())):
            return True
    return any(_holds_float(value) for name, value in record.items() if name != "capture")


def _holds_float(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_float(item) for item in value)
    return isinstance(value, float)


def assert_split_as_python(native: ModuleType, body: bytes) -> Row | None:
    got = native.parquet_row(body, 1)
    if native.json_line(body, 1) is None:  # the rows json_line takes, no others
        assert got is None, body
    elif got is None:
        assert _left_to_python(body), body
    if got is not None:
        expected = python_row(body)
        assert expected is not None, body
        assert repr(got) == repr(expected), body  # types too (1 is not 1.0 nor True), NaN equal to NaN
    return got  # type: ignore[no-any-return]


def python_records(bodies: Iterable[bytes]) -> list[dict[str, Any]]:
    records = []
    for n, body in enumerate(bodies):
        record = cbor2.loads(body)
        record["id"] = n + 1
        records.append(record)
    return records


def native_records(native: ModuleType, bodies: Iterable[bytes]) -> list[Any]:
    """The native rows of ``bodies``, and the decoded record of each the native path leaves to Python."""
    records: list[Any] = []
    for n, body in enumerate(bodies):
        row = native.parquet_row(body, n + 1)
        if row is None:
            assert native.json_line(body, 1) is None or _left_to_python(body), body
            record = cbor2.loads(body)
            record["id"] = n + 1
            records.append(record)
        else:
            records.append(row)
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
    # a record without estimated_cost (unknown) in every slice: a null in its column, the slice still native
    assert sum(1 for body in bodies if b"estimated_cost" not in body) > len(bodies) // PARQUET_SLICE


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
        assert_split_as_python(native, body)
    assert_same_parquet(native, bodies)
    # and each alone, so that no slice's clean column hides a misfit of another
    for body in bodies[::7]:
        assert_same_parquet(native, [body])
    assert len(bodies) > 2 * PARQUET_SLICE


def test_the_row_itself(native: ModuleType) -> None:
    names = ParquetEncoder().schema.names[:-1]  # but extra
    assert native.PARQUET_ROW_FIELDS == _ROW_FIELDS
    assert [name for name in _ROW_FIELDS if "." not in name] == names
    record = make_record(1, capture={"request": {"body": {"a": "é"}, "raw_body": b"\x01\x02"},
                                     "response": {"raw_body": b"", "status": 200}})
    row = dict(zip(_ROW_FIELDS, native.parquet_row(_body(record), 7), strict=True))
    assert row["id"] == 7
    for name in names[1:-3]:
        if name in STRUCTS:
            assert row[name] is True
            assert {field: row[f"{name}.{field}"] for field in STRUCTS[name]} == record[name] | {
                field: None for field in STRUCTS[name] if field not in record[name]}
        elif name == "timestamp":
            assert row[name] == (record[name] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        else:
            assert row[name] == record[name]
    assert row["capture"] == '{"request":{"body":{"a":"é"}},"response":{"status":200}}'.encode()
    assert (row["raw_request_body"], row["raw_response_body"]) == (b"\x01\x02", b"")
    # without a capture, or with a null one; missing fields: None; the id as given
    nothing = (None,) * (len(_ROW_FIELDS) - 1)
    assert native.parquet_row(_body({}), 1) == (1, *nothing)
    assert native.parquet_row(_body({"capture": None}), 2**70) == (2**70, *nothing)
    assert native.parquet_row(memoryview(b"xx" + _body({"ver": 2}))[2:], -1) == (-1, 2, *nothing[1:])
    for stamp in (datetime(2026, 11, 24, 12, 0, 1, tzinfo=UTC), datetime(2026, 11, 24, 12, 0, 1, 5, tzinfo=UTC),
                  datetime(1000, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                  datetime(2000, 2, 29, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)):
        micros = (stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        assert native.parquet_row(_body({"timestamp": stamp}), 1)[2] == micros
        assert_same_parquet(native, [_body(make_record(1, timestamp=stamp))])
    assert native.parquet_row(_body({"timestamp": None}), 1) == (1, *nothing)
    # structs: null, empty, partial; a field of no typed column, and a stored "id", go to Python (extra)
    assert native.parquet_row(_body({"usage": None}), 1) == (1, *nothing)
    assert native.parquet_row(_body({"usage": {}}), 1)[9:14] == (True, None, None, None, None)
    assert native.parquet_row(_body({"usage": {"cached_tokens": -(2**63)}}), 1)[9:14] == (True, None, None, -(2**63),
                                                                                          None)
    assert native.parquet_row(_body({"identity": {"tags": ["a", "é"]}}), 1)[3:7] == (True, None, None, ["a", "é"])
    assert native.parquet_row(_body({"ver": 2, "other": 1}), 1) is None
    assert native.parquet_row(_body({"id": 3}), 1) is None
    # values of any type json_line writes in the other fields, as cbor2 decodes them (the encoder checks them)
    odd = {"ver": "two", "api_type": [1, {"a": None}], "model": b"\x00", "path": -(2**63), "status_code": 2**64 - 1,
           "capture_id": True, "duration_ms": 1.5}
    assert dict(zip(_ROW_FIELDS, native.parquet_row(_body(odd), 1), strict=True)).items() >= odd.items()


@pytest.mark.parametrize("struct", [
    {"usage": {"input_tokens": 1.0}}, {"usage": {"input_tokens": True}}, {"usage": {"input_tokens": 2**63}},
    {"usage": {"input_tokens": -(2**63) - 1}}, {"usage": {"input_tokens": "1"}}, {"usage": {"other": 1}},
    {"usage": [1]}, {"usage": "none"}, {"usage": {"input_tokens": [1]}},
    {"estimated_cost": {"total": 1}}, {"estimated_cost": {"total": "1"}}, {"estimated_cost": {"currency": 1}},
    {"identity": {"tags": "a"}}, {"identity": {"tags": ["a", 1]}}, {"identity": {"tags": [None]}},
    {"identity": {"login_name": 1}}, {"identity": {"login_name": b"a"}}, {"identity": {"login_name": ["a"]}},
])
def test_a_struct_that_does_not_fit_is_left_to_python(native: ModuleType, struct: dict[str, Any]) -> None:
    _assert_left_to_python(native, struct)


@pytest.mark.parametrize("timestamp", ["2026-11-24T12:00:00Z", 1700000000, 1.5, {"a": 1}, [], True])
def test_a_timestamp_that_is_no_date_time_is_left_to_python(native: ModuleType, timestamp: Any) -> None:
    _assert_left_to_python(native, {"timestamp": timestamp})


def _assert_left_to_python(native: ModuleType, fields: dict[str, Any]) -> None:
    """A record with ``fields`` is left to Python (whose encoder puts them in extra), and a slice holding it
    and native rows is the same Parquet."""
    body = _body(make_record(1) | fields)
    assert native.parquet_row(body, 1) is None
    assert_same_parquet(native, [body, _body(make_record(2))])
    assert_same_parquet(native, [_body(make_record(2)), body, _body(make_record(3) | {"capture": None})])


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
    assert native.parquet_row(body, 1) is None
    assert native.json_line(body, 1) is None


@pytest.mark.parametrize("value", [
    struct.pack(">Be", 0xF9, 1.5), struct.pack(">Bf", 0xFA, 1.5),  # cbor2 writes a double: the Python way
    b"\xa2\x61a\x01\x61a\x02", b"\xa1\x61a\xa1\x61a\x01" * 2,  # a key twice (cbor2 keeps one)
    b"\xa1\x41a\x01", b"\xa1\x62\xc3\x28\x01", b"\x62\xc3\x28",  # a byte-string key, invalid UTF-8
    b"\x81" * 70 + b"\x01",  # deeper than json_line goes
    b"\xa2\x6binput_tokens\x01\x6binput_tokens\x02",  # a struct's field twice
    b"\xa1\x6dreasoning_tokens\x1b\x80\x00\x00\x00\x00\x00\x00\x00",  # 2**63: no int64
])
@pytest.mark.parametrize("field", ["usage", "model", "timestamp", "identity"])
def test_what_it_leaves_to_python_in_a_typed_field(native: ModuleType, value: bytes, field: str) -> None:
    name = field.encode()
    body = b"\xa2" + bytes([0x60 + len(name)]) + name + value + b"\x63ver\x02"
    assert native.parquet_row(body, 1) is None
    if python_row(body) is not None:  # (the Python path refuses invalid UTF-8)
        assert_same_parquet(native, [body, _body({"ver": 1, field: 1})])


def test_a_field_twice_is_left_to_python(native: ModuleType) -> None:
    for body in (b"\xa2\x63ver\x01\x63ver\x02", b"\xa2\x67capture\xf6\x67capture\xa0",
                 b"\xa2\x67capture\x01\x67capture\xf6", b"\xa2\x67capture\xa0\x67capture\xa0"):
        assert native.parquet_row(body, 1) is None


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
    assert native.parquet_row(body, 1) is None


def test_deep_nesting_is_left_to_python(native: ModuleType) -> None:
    for depth in (10, 60, 61, 62, 63, 64, 200, 100_000):
        for inner in (b"\x81" * depth + b"\x01", b"\xa1\x61a" * depth + b"\x01"):
            for outer in (b"\xa1\x61a", b"\xa1\x67capture", b"\xa1\x67capture\xa1\x67request",
                          b"\xa1\x67capture\xa1\x68response\xa1\x68raw_body"):
                body = outer + inner
                assert_split_as_python(native, body)
    assert native.parquet_row(b"\xa1\x67capture" + b"\x81" * 100_000 + b"\x01", 1) is None
    assert native.parquet_row(b"\xa1\x65usage" + b"\x81" * 100_000 + b"\x01", 1) is None


def test_hostile_bytes_never_crash_and_never_differ(native: ModuleType) -> None:
    rng = random.Random(2027)
    bodies = [encode_body(record)[1] for record in generate_records(40, seed=3)]
    bodies += [_body(record) for record in _shape_records()[::3]]
    split = 0
    for body in bodies:
        for broken in broken_copies(body):  # truncated, or a byte too many
            assert native.parquet_row(broken, 1) is None
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
        native.parquet_row("text", 1)
    with pytest.raises(TypeError):
        native.parquet_row(b"\xa0")


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
    other = cbor2.loads(rows[7].body) | {"other": [1, "x"]}  # a field of no typed column: to Python (extra)
    rows[7] = StoredRecord(rows[7].id, rows[7].timestamp_us, _body(other), seal.seal(_body(other)))
    assert sum(b"estimated_cost" not in row.body for row in rows) > len(rows) // PARQUET_SLICE  # null in its column
    calls: list[bool] = []
    real = native.parquet_row

    def counted(body: Any, record_id: int) -> Row | None:
        row = real(body, record_id)
        calls.append(row is not None)
        return row  # type: ignore[no-any-return]

    recipes = [BatchRecipe("parquet", "zstd", seal=seal),
               BatchRecipe("parquet", "none", seal=seal),
               BatchRecipe("parquet", "zstd", seal=seal, privacy_mode=True),
               BatchRecipe("parquet", "zstd", seal=seal, redact_fields=("capture.request.body",))]
    monkeypatch.setattr(batch, "_native_parquet_row", counted)
    natively = [encode_rows(recipe, rows) for recipe in recipes]
    # not the foreign row; the unrewritten batches, and privacy mode's the native scrub takes (not the odd one)
    assert len(calls) == 2 * (len(rows) - 1) + len(rows) - 2
    assert calls.count(False) == 2 * 2 + 1  # the odd row and the other field (privacy mode: the other field)
    monkeypatch.setattr(batch, "_native_parquet_row", None)
    in_python = [encode_rows(recipe, rows) for recipe in recipes]
    for ours, theirs in zip(natively, in_python, strict=True):
        assert ours.payload == theirs.payload
        assert (ours.rows, ours.first_id, ours.last_id) == (theirs.rows, theirs.first_id, theirs.last_id)


def test_native_rows_do_not_load_pyarrow_compute(native: ModuleType) -> None:
    """A struct column with null structs is built without pyarrow.compute (StructArray.from_arrays's mask
    loads it: ~60 ms of CPU and several MiB in each encode worker)."""
    script = """
import sys
from datetime import UTC, datetime
from capture_export.export import _cbor_json
from capture_export.export.formats import ParquetEncoder
from capture_export.seed import generate_records
from capture_export.store.records import encode_body
records = list(generate_records(300, seed=1, start=datetime(2026, 11, 24, tzinfo=UTC)))
for record in records[::7]:
    record.pop("estimated_cost", None)
    record["identity"] = None
rows = [_cbor_json.parquet_row(encode_body(record)[1], n) for n, record in enumerate(records)]
assert all(row is not None for row in rows)
ParquetEncoder().encode_records(rows)
print("pyarrow.compute" in sys.modules)
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
