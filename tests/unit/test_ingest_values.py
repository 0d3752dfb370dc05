"""The value counts that bound what parsing an ingest body creates (ingest/values.py) must never count
fewer values than the parser then builds: a count that fell short would let a memory bomb through."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from capture_export.ingest.values import cbor_values, json_values_at_most, protobuf_values

SCALARS = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats(allow_nan=False)
           | st.text(max_size=20))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=6), max_leaves=60)


def built(value: Any) -> int:
    """The values (map keys included) parsing creates for ``value``."""
    if isinstance(value, dict):
        return 1 + sum(1 + built(item) for item in value.values())
    if isinstance(value, list):
        return 1 + sum(built(item) for item in value)
    return 1


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=5))
def test_counts_are_never_below_what_parsing_builds(documents: list[Any]) -> None:
    expected = sum(built(document) for document in documents)
    json_lines = b"\n".join(orjson.dumps(document) for document in documents)
    assert json_values_at_most(json_lines) + len(documents) >= expected  # a line's first value follows no byte
    assert cbor_values(b"".join(cbor2.dumps(document) for document in documents), 1 << 30) >= expected


def test_a_cbor_count_stops_past_its_bound_and_skips_string_contents() -> None:
    assert cbor_values(b"\x80" * 1000, 10) == 11
    assert cbor_values(cbor2.dumps(["\x80" * 500, b"\x80" * 500]), 10) == 3


def test_protobuf_fields_are_counted_as_the_decoder_builds_them() -> None:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    scope.scope.name = "s"
    for _ in range(3):
        span = scope.spans.add()
        span.name = "x" * 300  # a length of two bytes
        span.trace_id = bytes(16)
        attribute = span.attributes.add()
        attribute.key = "k"
        attribute.value.array_value.values.add().string_value = "{[,:" * 40
        span.events.add().name = "e"
    # resource_spans > scope_spans > scope > name, and per span: spans > (name, trace_id, attributes > (key,
    # value > array_value > values > string_value), events > name)
    per_span = 1 + 2 + 6 + 2
    body = request.SerializeToString()
    assert protobuf_values(body, ExportTraceServiceRequest.DESCRIPTOR, 1 << 30) == 4 + 3 * per_span
    assert protobuf_values(body, ExportTraceServiceRequest.DESCRIPTOR, 5) == 6


def test_an_indefinite_length_string_is_not_skipped_as_content() -> None:
    # 0x5f opens an indefinite-length byte string: chunks follow, each with its own head, then a break. Read
    # as a head whose additional information (31) is a length, the count skipped 31 bytes into a chunk,
    # landed on a byte there that claims an 8-byte length (0x5b 0xff …) and stopped: the million empty
    # arrays after it went uncounted, though the decoder builds every one.
    chunk = bytes(29) + b"\x5b\xff\xff"
    body = b"\xa1\x67capture\x9f\x5f\x58\x20" + chunk + b"\xff" + b"\x80" * 1_000_000 + b"\xff"
    assert len(cbor2.loads(body)["capture"]) == 1_000_001
    assert cbor_values(body, 1 << 30) >= 1_000_001
    assert cbor_values(b"\x7f\x61a\x62bc\xff", 1 << 30) == 4  # the string, its two chunks, the break


def test_fields_after_a_group_are_counted() -> None:
    # A group (wire types 3 and 4) is kept by the decoder as unknown bytes, and parsing goes on after it:
    # the count used to stop at it, so a group ahead of a hundred thousand empty ResourceSpans hid them.
    body = b"\x9b\x06" + b"\x0a\x00" * 2 + b"\x9c\x06" + b"\x0a\x00" * 100_000  # field 99 as a group
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    assert len(request.resource_spans) == 100_000
    assert protobuf_values(body, ExportTraceServiceRequest.DESCRIPTOR, 1 << 30) >= 100_000
