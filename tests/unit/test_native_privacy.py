"""Privacy mode's native paths (capture_export/export/_cbor_json.c).

``privacy_prefilter``: a stored record's CBOR without what ``privacy_scrub`` certainly drops, the other items'
bytes as they are. For every body it returns None (the caller decodes the body whole) or a body whose scrub
is the scrub of the whole one, under each decoding privacy mode uses (cbor2's, the CBOR format's, JSON
Lines'), errors included: a record Python refuses is still refused.

``privacy_scrubbed``: the whole scrub, for records as our writer stores them. For every body it returns None
or the bytes cbor2 writes for the scrubbed record, so that the record spliced with its id is the CBOR
format's bytes, and ``json_line`` of it (where it writes one) the JSON Lines format's.

An exported privacy-mode batch is the same bytes with or without them, and holds the same dates of a request
in every format.

Where no C compiler built the extension these tests skip, but under CI (``CI`` set) they fail: CI builds it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from types import ModuleType
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture_export.export import batch
from capture_export.export.batch import BatchRecipe, FilterOptions, encode_rows
from capture_export.export.formats import FORMATS, CborZstdEncoder, JsonLinesEncoder
from capture_export.export.transform import BODY_KEYS_KEPT, CHOICE_KEYS_KEPT, TOOL_USE_KEYS_KEPT, privacy_scrub
from capture_export.seed import generate_records
from capture_export.store.base import StoredRecord
from capture_export.store.records import encode_body, with_id
from capture_export.store.seal import RecordSeal
from tests.support.mutations import broken_copies, mutations
from tests.support.native import built_extension
from tests.support.trust import NATIVE_PATHS, Raw, build, good_record, head, object_records, text

DECODERS: tuple[Callable[[Any], Any], ...] = (cbor2.loads, CborZstdEncoder.decode_record,
                                              JsonLinesEncoder.decode_record)


@pytest.fixture(scope="module")
def native() -> ModuleType:
    return built_extension("privacy_prefilter")


def outcome(body: bytes, loads: Callable[[Any], Any]) -> tuple[Any, ...]:
    """What privacy mode makes of a body under ``loads``: the scrubbed record's CBOR, or the error."""
    try:
        record = loads(body)
        scrubbed = privacy_scrub(record) if isinstance(record, dict) else record
    except Exception as exc:
        return ("error", type(exc), str(exc))
    try:
        return ("ok", cbor2.dumps(scrubbed, timezone=UTC))
    except Exception:  # a value cbor2 decodes but cannot encode again: compared by its repr
        return ("ok", repr(scrubbed))


def assert_equivalent(native: ModuleType, body: bytes) -> bytes | None:
    """privacy_prefilter's contract on ``body`` (and privacy_scrubbed's, ``assert_scrubbed_exactly``)."""
    smaller: bytes | None = native.privacy_prefilter(body)
    if smaller is not None:
        assert len(smaller) <= len(body)
        for loads in DECODERS:
            assert outcome(smaller, loads) == outcome(body, loads), (body, smaller)
    assert_scrubbed_exactly(native, body)
    return smaller


def assert_scrubbed_exactly(native: ModuleType, body: bytes, record_id: int = 7) -> bytes | None:
    scrubbed: bytes | None = native.privacy_scrubbed(body)
    if scrubbed is not None:
        expected = cbor2.dumps({"id": record_id, **privacy_scrub(CborZstdEncoder.decode_record(body))}, timezone=UTC)
        assert with_id(record_id, scrubbed) == expected, body
        assert _body(cbor2.loads(scrubbed)) == _body(privacy_scrub(cbor2.loads(body)))  # Parquet's decoding
        line = native.json_line(scrubbed, record_id)
        if line is not None:
            record = {"id": record_id}
            record.update(JsonLinesEncoder.decode_record(body))
            assert line == JsonLinesEncoder.line(privacy_scrub(record)), body
    return scrubbed


def _body(record: Any) -> bytes:
    return cbor2.dumps(record, timezone=UTC)


# -- records as our writer stores them ---------------------------------------------------------------------


def test_standard_records_shrink_to_what_privacy_mode_keeps(native: ModuleType) -> None:
    stored = kept = 0
    for record in generate_records(2000, seed=11, start=datetime(2026, 11, 24, tzinfo=UTC)):
        body = encode_body(record)[1]
        smaller = assert_equivalent(native, body)
        assert smaller is not None, record
        stored, kept = stored + len(body), kept + len(smaller)
        # Nothing is left that privacy mode drops: the rest is as long as the scrubbed record's CBOR.
        assert len(smaller) == len(_body(privacy_scrub(cbor2.loads(body))))
        assert assert_scrubbed_exactly(native, body) is not None, record  # and the whole scrub is native
    assert kept < stored / 2


def test_every_key_privacy_mode_keeps_is_kept(native: ModuleType) -> None:
    """The C file's lists of kept keys against transform.py's: a key the prefilter dropped and Python keeps
    would be lost from the export."""
    body = {key: n for n, key in enumerate(sorted(BODY_KEYS_KEPT))} | {"messages": "secret", "input": "secret"}
    choices = {name: [{key: n for n, key in enumerate(keys)} | {"message": "secret"}]
               for name, keys in CHOICE_KEYS_KEPT.items()}
    tool_use = [{key: key for key in TOOL_USE_KEYS_KEPT} | {"input": {"q": "secret"}}]
    record = good_record(1)
    record["capture"] = {"request": {"headers": {"a": "b"}, "body": body | choices, "raw_body": b"secret",
                                     "raw_content_type": "application/json", "sent_at": datetime.now(UTC)},
                         "response": {"body": body, "status": 200, "note": "text"},
                         "tool_use": tool_use, "headers": {"x": "y"}, "prompt": "secret"}
    stored = _body(record)
    smaller = assert_equivalent(native, stored)
    assert smaller is not None and b"secret" not in smaller
    capture = cbor2.loads(smaller)["capture"]
    assert set(capture) == {"request", "response", "tool_use", "headers"}
    assert set(capture["request"]["body"]) == BODY_KEYS_KEPT | set(CHOICE_KEYS_KEPT)
    for name, keys in CHOICE_KEYS_KEPT.items():
        assert list(capture["request"]["body"][name][0]) == list(keys)
    assert capture["tool_use"] == [{key: key for key in TOOL_USE_KEYS_KEPT}]
    # raw_body goes; what a request's other keys hold is Python's to judge, so they stay
    assert set(capture["request"]) == {"headers", "body", "raw_content_type", "sent_at"}
    assert set(capture["response"]) == {"body", "status", "note"}


# -- hostile records -----------------------------------------------------------------------------------------


def _with_capture(capture: Any) -> bytes:
    return build({"ver": 2, "timestamp": Raw(_body(datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC))),
                  "model": "m", "capture": capture})


TAGGED = Raw(b"\xd9\xd9\xf7" + text("messages"))  # tag 55799 (self-described CBOR): decodes as the text
TAGGED_REQUEST = Raw(b"\xd9\xd9\xf7" + text("request"))
STAMP = Raw(b"\xc0" + text("2026-11-24T12:00:00.123456Z"))
ODD_STAMP = Raw(b"\xc0" + text("2026-11-24T12:00:00Z"))

HOSTILE_CAPTURES: list[Any] = [
    {"request": {"body": {"messages": "a", "messages ": "b", "model": "x", Raw(text("model")): "y"}}},  # dup
    {"request": {"body": {Raw(text("messages")): 1, "model": 2, "messages": 3}}},
    {Raw(text("request")): {"body": {"input": 1}}, "request": "not a map"},  # the last request wins
    {"request": {"body": {"input": 1}}, Raw(text("request")): {"body": {"model": 5, "input": 2}}},
    {"request": {"body": {TAGGED: "secret", "model": 1, 7: "int key", b"bytes": "key", 2.5: 1, True: 2}}},
    {TAGGED_REQUEST: {"body": {"messages": "x"}}, "request": {"body": {"model": 1}}},
    {"request": {"body": {"choices": "not a list", "candidates": {"index": 0}}}},
    {"response": {"body": {"choices": [1, "two", None, [3], {"index": 0, "finish_reason": "stop", "message": {}},
                                       {"finish_reason": STAMP, 5: 6, "delta": "x"}]}}},
    {"response": {"body": {"candidates": [{"index": 0, "finishReason": "STOP", "content": {"parts": []}}],
                           "choices": [{"index": 1, "finishReason": "x", "finish_reason": "y"}]}}},
    {"response": {"body": {"choices": [{"index": 0}], Raw(text("choices")): [{"index": 9, "text": "x"}]}}},
    {"tool_use": [{"id": "t1", "name": "n", "type": "function", "input": {"nested": [{"tool_use": [1]}]},
                   "output": [{"id": "inner", "name": "x"}]}, "text", 5, [{"id": 1}], {}]},
    {"tool_use": {"id": "not a list"}},
    {"tool_use": [{Raw(text("id")): 1, "id": 2, "name": b"bytes", "type": None}]},
    {"request": {"raw_body": b"\x00\xff" * 100, "raw_content_type": "application/json", "body": "text body"}},
    {"request": {"raw_body": "text raw body", "raw_content_type": 5, "body": [1, 2]},
     "response": {"raw_body": [b"x"], "body": {"usage": {"n": 2**70}, "temperature": 0.1, "seed": -(2**65)}}},
    {"request": {"body": {"temperature": float("nan"), "top_p": float("inf"), "n": -0.0, "messages": 1.5}}},
    {"request": {"sent_at": STAMP, "stamp": ODD_STAMP, "body": {"created": STAMP, "messages": [1]}}},
    {"request": "request as text", "response": ["list"], "headers": "headers as text"},
    {"request": {"headers": {"authorization-free": "x"}, "body": {}}, "response": {}},
    {"prompt": "secret", "messages": ["secret"], 1: "int key", "request": None, "extra": {"deep": [[[]]]}},
    {"request": {"body": {"model": cbor2.undefined, "stream": True, "store": False, "user": None}}},
    {"request": {"body": {"metadata": {"k": cbor2.CBORTag(4242, "tag nobody knows")}, "messages": "x"}}},
    {"request": {"headers": {"set": {1, 2}}, "body": {"metadata": cbor2.CBORTag(1, 1700000000)}}},
    {"request": {"body": {"model": Raw(b"\xd8\x25" + bytes([0x50]) + b"0123456789abcdef")}}},  # tag 37, kept
    {"request": {"body": {"messages": Raw(head(4, 2) + b"\x01\x02"), "model": Raw(b"\x19\x00\x05")}}},
    {},
    "capture as text",
    ["capture", "as", "list"],
    b"capture as bytes",
    None,
    Raw(b"\xc0" + text("2026-11-24T12:00:00Z")),
]


@pytest.mark.parametrize("capture", HOSTILE_CAPTURES, ids=lambda value: repr(value)[:60])
def test_hostile_captures_scrub_as_the_whole_record_does(native: ModuleType, capture: Any) -> None:
    assert_equivalent(native, _with_capture(capture))


def test_duplicate_keys_and_wide_heads_are_filtered(native: ModuleType) -> None:
    """Duplicate keys, and map heads wider than needed (which the new count is written in)."""
    pairs = text("messages") + text("x") + text("model") + text("m1") + text("messages") + text("y")
    pairs += text("model") + text("m2")
    for wide in (b"\xa4", b"\xb8\x04", b"\xb9\x00\x04", b"\xba\x00\x00\x00\x04", b"\xbb" + (4).to_bytes(8, "big")):
        body = _with_capture({"request": {"body": Raw(wide + pairs)}})
        smaller = assert_equivalent(native, body)
        assert smaller is not None
        assert cbor2.loads(smaller)["capture"]["request"]["body"] == {"model": "m2"}
    many = {f"k{i}": i for i in range(300)} | {"model": "m"}
    smaller = assert_equivalent(native, _with_capture({"request": {"body": many}}))
    assert smaller is not None and cbor2.loads(smaller)["capture"]["request"]["body"] == {"model": "m"}


@pytest.mark.parametrize("dropped", [
    Raw(b"\x62\xc3\x28"),  # invalid UTF-8: cbor2 refuses the record, so the rest must not be accepted
    Raw(b"\x63\xed\xa0\x80"),  # a surrogate
    Raw(b"\xc0" + text("not a time")),  # a tag: cbor2 may refuse it
    Raw(b"\xc0" + text("2026-11-24T12:00:00.123456Z")),
    Raw(b"\xd9\xd9\xf7\x01"),
    Raw(b"\xf8\x10"),  # a two-byte simple value below 32: an error in cbor2
    Raw(b"\xf0"),  # simple value 16
    Raw(b"\x81" * 500 + b"\x01"),  # deeper than cbor2's max_depth
    Raw(b"\x7f\x61a\xff"),  # indefinite length
    Raw(b"\x9f\xff"),
])
def test_what_cbor2_might_refuse_in_dropped_content_is_left_to_python(native: ModuleType, dropped: Raw) -> None:
    for capture in ({"request": {"body": {"messages": [dropped]}}}, {"prompt": dropped},
                    {"request": {"raw_body": dropped}}, {"tool_use": [{"input": dropped}]},
                    {"request": {"body": {"choices": [{"message": dropped}]}}}):
        assert native.privacy_prefilter(_with_capture(capture)) is None, capture
    key = Raw(b"\x62\xc3\x28")  # a dropped key that is not UTF-8
    assert native.privacy_prefilter(_with_capture({"request": {"body": {key: 1}}})) is None


@pytest.mark.parametrize("kept", [
    Raw(b"\x62\xc3\x28"), Raw(b"\xc0" + text("not a time")), Raw(b"\xc0\x05"), Raw(b"\xf8\x10"),
    Raw(b"\xc2\x41\x01"), Raw(b"\xd9\x01\x02\x82\x01\x02"),
])
def test_what_cbor2_refuses_in_kept_content_is_refused_the_same(native: ModuleType, kept: Raw) -> None:
    for capture in ({"request": {"body": {"model": kept, "messages": "x"}}}, {"headers": kept, "prompt": "x"},
                    {"tool_use": [{"id": kept, "input": "x"}]}):
        assert assert_equivalent(native, _with_capture(capture)) is not None, capture


@pytest.mark.parametrize("stateful", [
    Raw(b"\xd8\x19\x00"),  # tag 25: a string reference
    Raw(b"\xd9\x01\x00" + text("x")),  # tag 256: a string reference namespace
    Raw(b"\xd8\x1c\x01"),  # tag 28: a shareable value
    Raw(b"\xd8\x1d\x00"),  # tag 29: a shared value
])
def test_tags_that_refer_to_other_items_are_left_to_python(native: ModuleType, stateful: Raw) -> None:
    """Dropping an item would renumber the strings and values such tags refer to."""
    for capture in ({"request": {"body": {"model": stateful}}}, {"headers": stateful}):
        assert native.privacy_prefilter(_with_capture(capture)) is None
    assert native.privacy_prefilter(build({"a": stateful, "capture": {}})) is None


@pytest.mark.parametrize("body", [
    b"", b"\x01", b"\x80", b"\xa0\x00", b"\x61a", b"\xc0\xa0",  # empty, not a map, trailing byte, a tag
    b"\xbf\xff", b"\xa1\x67capture\xbf\xff", b"\xa1\x61a\x5f\x41a\xff",  # indefinite lengths
    b"\xa1\x67capture\xa1\x67request\xa1\x64body\xbf\xff",
    b"\xa1\x61a\x1c", b"\xa1\x61a\xfc", b"\xa1\x61a\x7b\xff\xff\xff\xff\xff\xff\xff\xff",  # reserved, overflow
    b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff", b"\xa1\x67capture\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xa1\x67capture\xa1\x68tool_use\x9b\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xa1\x67capture\xa1\x66prompt\x5b\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xa1\x61a\xfb\x00", b"\xa1\x61a\x19\x01", b"\xa2\x61a\x01",  # truncated
])
def test_malformed_bodies_are_left_to_python(native: ModuleType, body: bytes) -> None:
    assert native.privacy_prefilter(body) is None


WRITTEN_AS_CBOR2_WRITES = [1, -1, 2**64 - 1, -(2**64), 0.1, -0.0, 1e300, float("nan"), float("inf"), "é😀", b"\x00",
                           True, None, [], {}, {"a": [1, {"b": 2}]}, datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC),
                           datetime(2026, 1, 1, tzinfo=UTC), cbor2.undefined]
NOT_AS_CBOR2_WRITES = [Raw(b"\x18\x05"), Raw(b"\x79\x00\x01a"), Raw(b"\x98\x01\x01"), Raw(b"\xb8\x01\x61a\x01"),
                       Raw(b"\xf9\x3e\x00"), Raw(b"\xfa\x3f\xc0\x00\x00"), Raw(b"\xfb\x7f\xf8" + bytes(6)),
                       Raw(b"\xf9\x7e\x01"), Raw(b"\xc0" + text("2026-11-24T12:00:00.000000Z")),
                       Raw(b"\xc0" + text("2026-11-24T12:00:00.5Z")), Raw(b"\xc1\x01"), Raw(b"\xc2\x41\x01"),
                       Raw(b"\xa2\x61a\x01\x61a\x02"), Raw(b"\xa1\x01\x02"), Raw(b"\x62\xc3\x28"),
                       Raw(b"\xf0"), {1, 2}]


@pytest.mark.parametrize("value", WRITTEN_AS_CBOR2_WRITES + NOT_AS_CBOR2_WRITES, ids=lambda value: repr(value)[:40])
def test_the_whole_scrub_is_only_what_cbor2_writes(native: ModuleType, value: Any) -> None:
    """privacy_scrubbed's bytes are cbor2's: a value that cbor2 would write in other bytes leaves the record
    to the prefilter's path, wherever it is kept."""
    for capture in ({"request": {"body": {"model": value, "messages": "x"}}}, {"headers": {"h": value}},
                    {"tool_use": [{"id": value, "input": "x"}]},
                    {"response": {"body": {"choices": [{"index": value}]}}}):
        body = _with_capture(capture)
        scrubbed = assert_scrubbed_exactly(native, body)
        assert (scrubbed is not None) == (value in WRITTEN_AS_CBOR2_WRITES or isinstance(value, float)), capture
    assert assert_scrubbed_exactly(native, build({"v": value, "capture": {}})) is not None or (
        value not in WRITTEN_AS_CBOR2_WRITES and not isinstance(value, float))


@pytest.mark.parametrize(("capture", "whole"), [
    ({"request": {"body": {"model": "m"}, "raw_body": b"x", "raw_content_type": "text/plain", "status": 2}}, True),
    ({"request": {"raw_content_type": 5}}, False),  # kept by Python as a number: left to the prefilter's path
    # a date/time, which the two formats decode differently (JSON Lines: as its text): left to the prefilter's path
    ({"request": {"sent_at": datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC)}}, False),
    ({"request": {"url": "https://example.com"}}, False),  # text that Python drops: so does the prefilter's path
    ({"request": {"body": "text"}}, False),
    ({"request": "text"}, False),
    ({"tool_use": [{"type": "t", "input": "x", "name": "n", "id": "i"}]}, True),  # written id, name, type
    ({"response": {"body": {"candidates": [{"finishReason": "STOP", "content": {}, "index": 0}]}}}, True),
    ({"response": {"body": {"choices": [{"finish_reason": "stop", "index": 1}, 5]}}}, False),
    ({"response": {"body": {"choices": {"index": 0}}}}, False),
    ({"tool_use": "text"}, False),
    ({1: "int key"}, False),
    ({"headers": {"a": 1}, "prompt": "x", "messages": [1]}, True),
    ({f"k{i}": i for i in range(30)} | {"request": {"body": {f"k{i}": i for i in range(30)} | {"model": 1}}}, True),
])
def test_what_the_whole_scrub_takes(native: ModuleType, capture: Any, whole: bool) -> None:
    body = _with_capture(capture)
    assert (assert_scrubbed_exactly(native, body) is not None) == whole
    assert assert_equivalent(native, body) is not None


def test_the_whole_scrub_leaves_a_stored_id_and_an_odd_capture(native: ModuleType) -> None:
    assert native.privacy_scrubbed(_body({"id": 1, "capture": {}})) is None
    assert native.privacy_scrubbed(_body({"capture": None})) is None
    assert native.privacy_scrubbed(_body({"capture": "text"})) is None
    assert assert_scrubbed_exactly(native, _body({"model": "m"})) == _body({"model": "m"})
    assert assert_scrubbed_exactly(native, build({"capture": Raw(b"\xb8\x01\x66prompt\x01")})) == _body({"capture": {}})


def test_deep_nesting_is_left_to_python(native: ModuleType) -> None:
    for depth in (10, 50, 200, 100_000):
        for capture in ({"request": {"body": {"messages": Raw(b"\x81" * depth + b"\x01")}}},
                        {"headers": Raw(b"\xa1\x61a" * depth + b"\x01")}, {"headers": Raw(b"\xc6" * depth + b"\x01")}):
            smaller = assert_equivalent(native, _with_capture(capture))
            assert (smaller is None) == (depth > 50)


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6),
    st.binary(max_size=6), st.datetimes(timezones=st.just(UTC)), st.just(cbor2.undefined),
    st.builds(lambda value: cbor2.CBORTag(4242, value), st.text(max_size=3)), st.just({1, "set"}),
)
_keys = st.one_of(st.sampled_from(["messages", "index", "finish_reason", "finishReason", "id", "name", "type",
                                   "body", "raw_body", "headers", "model", "usage", "choices", "candidates",
                                   "request", "response", "tool_use", "raw_content_type", "prompt"]),
                  st.text(max_size=4), st.integers(0, 3), st.binary(max_size=2))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=5),
                       max_leaves=16)
_maps = st.dictionaries(_keys, _values | st.lists(st.dictionaries(_keys, _values, max_size=4), max_size=3),
                        max_size=6)
_exchanges = st.dictionaries(_keys, _values | _maps | st.dictionaries(_keys, _maps, max_size=3), max_size=6)
_captures = st.dictionaries(_keys, _exchanges | _values | st.lists(_maps, max_size=3), max_size=6) | _values


@settings(max_examples=500, deadline=None)
@given(_captures, st.dictionaries(st.sampled_from(["extra", "notes", "capture "]), _values, max_size=2))
def test_random_records_scrub_as_the_whole_record_does(native: ModuleType, capture: Any, extra: dict[str, Any],
                                                       ) -> None:
    record = good_record(3) | extra
    record["capture"] = capture
    assert_equivalent(native, _body(record))


def test_truncated_and_garbled_bodies_never_crash_and_never_differ(native: ModuleType) -> None:
    rng = random.Random(2026)
    bodies = [encode_body(record)[1] for record in generate_records(40, seed=4)]
    bodies += [_body(good_record(n)) for n in range(3)]
    filtered = 0
    for body in bodies:
        for broken in broken_copies(body):  # truncated, or a byte too many
            assert native.privacy_prefilter(broken) is None
        for mutated in mutations(body, rng, 150):
            if assert_equivalent(native, mutated) is not None:
                filtered += 1
    assert filtered  # many mutations (a letter in a string) are still records, and filtered
    for _ in range(3000):
        assert_equivalent(native, rng.randbytes(rng.randint(0, 64)))
        assert_equivalent(native, b"\xa2\x67capture\xa3" + rng.randbytes(rng.randint(0, 64)))


def test_arguments(native: ModuleType) -> None:
    body = _with_capture({"prompt": "x", "headers": {}})
    expected = native.privacy_prefilter(body)
    assert expected is not None
    assert native.privacy_prefilter(memoryview(body)) == expected
    assert native.privacy_prefilter(memoryview(b"xx" + body)[2:]) == expected
    assert native.privacy_prefilter(bytearray(body)) == expected
    with pytest.raises(TypeError):
        native.privacy_prefilter("text")
    with pytest.raises(TypeError):
        native.privacy_prefilter()


# -- batches -------------------------------------------------------------------------------------------------


SEAL = RecordSeal("5a" * 32)


def _rows() -> list[StoredRecord]:
    rows = []
    records = list(generate_records(240, seed=2, start=datetime(2026, 11, 24, tzinfo=UTC)))
    records[7]["capture"]["tool_use"] = [{"id": "t", "name": "n", "input": {"q": "x"}}]
    records[8]["capture"] = "text capture"
    records[9]["capture"]["request"]["raw_body"] = b"\x00" * 64
    records[10]["timestamp"] += timedelta(microseconds=-records[10]["timestamp"].microsecond)  # no fraction
    records[11]["other"] = {"kept": [1.5, "x"]}  # a field of no typed column: Parquet's extra (the Python way)
    records[12].pop("estimated_cost", None)  # unknown: a null in Parquet's column, natively
    records[13]["capture"]["request"]["sent_at"] = DATED["aware"]  # a request's dates: Python's to keep
    records[13]["capture"]["response"]["done_on"] = DATED["day"]
    for n, record in enumerate(records, 1):
        stamp, body = encode_body(record)
        rows.append(StoredRecord(n, stamp, body, SEAL.seal(body)))
    rows[4] = StoredRecord(5, rows[4].timestamp_us, rows[4].body, None)  # foreign: checked and decoded first
    odd = build({"ver": 2, "timestamp": Raw(_body(datetime(2026, 11, 24, tzinfo=UTC))),
                 "capture": {"request": {"body": {"messages": Raw(b"\xbf\x61a\x01\xff")}}}})  # indefinite
    rows[5] = StoredRecord(6, rows[5].timestamp_us, odd, SEAL.seal(odd))  # sealed, left to Python whole
    return rows


DATED: dict[str, Any] = {  # a request's or response's own dates, in the forms CBOR stores them, and their text
    "aware": datetime(2026, 11, 24, 12, 0, 1, 250000, tzinfo=UTC),  # tag 0 as our writer stores it
    "whole_second": datetime(2026, 11, 24, 12, 0, 1, tzinfo=UTC),
    "day": date(2026, 11, 24),
    "zero_fraction": Raw(b"\xc0" + text("2026-11-24T12:00:01.000000Z")),
    "epoch": Raw(b"\xc1" + cbor2.dumps(1_795_000_000.25)),
}
DATED_TEXT = {"aware": "2026-11-24T12:00:01.250000Z", "whole_second": "2026-11-24T12:00:01.000000Z",
              "day": "2026-11-24", "zero_fraction": "2026-11-24T12:00:01.000000Z",
              "epoch": "2026-11-18T11:06:40.250000Z"}

RECIPES = [
    BatchRecipe("cbor-zstd", "zstd", privacy_mode=True, seal=SEAL),
    BatchRecipe("jsonl", "zstd", privacy_mode=True, seal=SEAL),
    BatchRecipe("jsonl", "none", privacy_mode=True, seal=SEAL, redact_fields=("capture.request.headers",)),
    BatchRecipe("parquet", "zstd", privacy_mode=True, seal=SEAL),
    BatchRecipe("cbor-zstd", "zstd", privacy_mode=True, seal=SEAL, filter=FilterOptions(models=("gpt-*",)),
                redact_fields=("identity", "capture.*.body.model")),
    BatchRecipe("cbor-zstd", "zstd", privacy_mode=True, seal=SEAL, strip_headers=("x-request-id",)),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda recipe: f"{recipe.format}-{recipe.compression}")
def test_a_privacy_batch_is_the_same_bytes_natively(native: ModuleType, recipe: BatchRecipe,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Sealed rows are scrubbed natively (privacy mode alone, into CBOR, JSON Lines or Parquet) or
    prefiltered, after their seal was checked on the stored bytes; a foreign row is not (its check decodes it
    whole). The object is the same bytes with both native paths, with the prefilter alone, and with neither
    (nor the native JSON line or Parquet row)."""
    if recipe.format == "parquet":
        pytest.importorskip("pyarrow")
    rows = _rows()
    calls: dict[str, list[bytes]] = {"privacy_prefilter": [], "privacy_scrubbed": []}
    rowed: list[bool] = []
    if recipe.format == "parquet":
        real_row = native.parquet_row

        def parquet_row(body: Any, record_id: int) -> Any:
            row = real_row(body, record_id)
            rowed.append(row is not None)
            return row

        monkeypatch.setattr(batch, "_native_parquet_row", parquet_row)

    def counted(name: str) -> Callable[[Any], bytes | None]:
        def call(body: Any) -> bytes | None:
            calls[name].append(bytes(body))
            return getattr(native, name)(body)  # type: ignore[no-any-return]
        return call

    monkeypatch.setattr(batch, "_native_privacy_prefilter", counted("privacy_prefilter"))
    monkeypatch.setattr(batch, "_native_privacy_scrubbed", counted("privacy_scrubbed"))
    natively = encode_rows(recipe, rows)
    if not recipe.strip_headers:  # the exporter's own header names: sealed rows holding one are decoded whole
        assert calls["privacy_scrubbed"] == [bytes(row.body) for row in rows if row.id != 5]
        # the prefilter takes the rows the whole scrub leaves: a text capture, an indefinite-length map, dates
        assert calls["privacy_prefilter"] == [bytes(row.body) for row in rows if row.id in (6, 9, 14)]
    if recipe.format == "parquet":  # the scrubbed rows' bytes go to parquet_row: all but the one with another field
        assert rowed.count(True) == len(rows) - 5 and rowed.count(False) == 1  # not 5, 6, 9, 14 (above) nor 12
    monkeypatch.setattr(batch, "_native_privacy_scrubbed", None)
    prefiltered = encode_rows(recipe, rows)
    monkeypatch.setattr(batch, "_native_json_line", None)
    monkeypatch.setattr(batch, "_native_parquet_row", None)
    monkeypatch.setattr(batch, "_native_privacy_prefilter", None)
    in_python = encode_rows(recipe, rows)
    for ours in (natively, prefiltered):
        assert ours.payload == in_python.payload
        assert (ours.rows, ours.filtered, ours.first_id, ours.last_id) == (
            in_python.rows, in_python.filtered, in_python.first_id, in_python.last_id)
    assert natively.rows > 0


def _dated_rows() -> list[StoredRecord]:
    """Sealed records with dates among their request's and response's own keys, beside content: as our own
    append stores them (rows 1-2), and in the other forms (row 3)."""
    rows = []
    for n in (1, 2, 3):
        record = good_record(n)
        for side in ("request", "response"):
            record["capture"][side].update({key: value for key, value in DATED.items()
                                            if (n == 3) == isinstance(value, Raw)}, note="content")
        body = build(record) if n == 3 else encode_body(record)[1]
        rows.append(StoredRecord(n, encode_body(good_record(n))[0], body, SEAL.seal(body)))
    return rows


def _exported(recipe: BatchRecipe, payload: bytes) -> list[dict[str, Any]]:
    """The records of an object as users read it: cbor2, json, pyarrow (the capture column's JSON)."""
    extension, _content_type = FORMATS[recipe.format].object_type(recipe.compression)
    records = object_records(f"batch{extension}", payload)
    if recipe.format == "parquet":
        return [{**row, "capture": json.loads(row["capture"])} for row in records]
    return records


@pytest.mark.parametrize("natively", [True, False], ids=["native", "python"])
def test_every_privacy_format_keeps_a_requests_dates(native: ModuleType, natively: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The same dates in every format (JSON Lines once dropped a timestamp our writer stored: its decoding keeps
    it as its text, which privacy mode took for content), with the native paths and without them."""
    pytest.importorskip("pyarrow")
    if not natively:
        for name in NATIVE_PATHS:
            monkeypatch.setattr(batch, name, None)
    for recipe in RECIPES[:4]:  # CBOR, JSON Lines, JSON Lines with a redaction (the general path), Parquet
        encoded = encode_rows(recipe, _dated_rows())
        assert encoded.payload is not None
        records = _exported(recipe, encoded.payload)
        assert [record["id"] for record in records] == [1, 2, 3]
        for record in records:
            for side in ("request", "response"):
                part = record["capture"][side]
                assert "note" not in part, (recipe, record["id"], side)
                dates = {key: value for key, value in part.items() if key in DATED}
                if recipe.format == "cbor-zstd":  # dates, read back as their text
                    assert all(isinstance(value, date) for value in dates.values()), dates
                    dates = {key: value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                             if isinstance(value, datetime) else value.isoformat() for key, value in dates.items()}
                want = {key: value for key, value in DATED_TEXT.items() if (record["id"] == 3) == (
                    isinstance(DATED[key], Raw))}
                assert dates == want, (recipe.format, recipe.compression, record["id"], side)


def test_without_the_native_json_lines_path_the_scrubbed_record_is_decoded(
        native: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = BatchRecipe("jsonl", "zstd", privacy_mode=True, seal=SEAL)
    expected = encode_rows(recipe, _rows()).payload
    monkeypatch.setattr(batch, "_native_json_line", None)
    assert encode_rows(recipe, _rows()).payload == expected


def test_without_privacy_mode_nothing_is_prefiltered(native: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[Any] = []
    monkeypatch.setattr(batch, "_native_privacy_prefilter", lambda body: called.append(body))
    monkeypatch.setattr(batch, "_native_privacy_scrubbed", lambda body: called.append(body))
    for recipe in (BatchRecipe("cbor-zstd", "zstd", seal=SEAL, redact_fields=("identity",)),
                   BatchRecipe("jsonl", "zstd", seal=SEAL)):
        encode_rows(recipe, _rows())
    assert not called
