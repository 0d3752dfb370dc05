"""Privacy mode's fast path against its reference, on hostile records (issue 13).

``privacy_scrub`` (export/transform.py) takes shortcuts for the dicts cbor2 decodes, and the default format
decodes its timestamps for privacy mode as their stored text (``CborZstdEncoder.decode_record``). Neither
may change a byte of what privacy mode exports: ``REFERENCE`` below is privacy mode written plainly (every
map test an ABC ``isinstance``), and a batch encoded the fast way must be the reference pipeline's object
byte for byte (stored CBOR decoded by ``cbor2.loads``, scrubbed by the reference, ``cbor2.dumps``, zstd),
on records with content in odd places and of odd types. A fast path that kept anything the reference drops
fails here.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from capture_export.export.batch import BatchRecipe, encode_rows
from capture_export.export.formats import CborZstdEncoder, zstd_frame
from capture_export.export.transform import BODY_KEYS_KEPT, privacy_scrub, redact
from capture_export.store.base import StoredRecord
from capture_export.store.records import encode_body
from capture_export.store.seal import RecordSeal, new_seal_key
from tests.support.trust import good_record

# -- the reference: privacy mode as specified (export/transform.py's docstring), written plainly ------------

_CHOICES = {"choices": ("index", "finish_reason"), "candidates": ("index", "finishReason")}
_TOOL_USE = ("id", "name", "type")
_DESCRIBING = (bool, int, float, Decimal, Fraction, datetime, date)


def _reference_body(body: Any) -> Any:
    if not isinstance(body, Mapping):
        return None
    kept: dict[Any, Any] = {}
    for key, value in body.items():
        if key in BODY_KEYS_KEPT:
            kept[key] = value
        elif key in _CHOICES and isinstance(value, list):
            kept[key] = [{k: item[k] for k in _CHOICES[key] if k in item} for item in value
                         if isinstance(item, Mapping)]
    return kept


def _reference_exchange(part: Any) -> Any:
    if not isinstance(part, Mapping):
        return None
    out: dict[Any, Any] = {}
    for key, value in part.items():
        if key == "body":
            body = _reference_body(value)
            if body is not None:
                out[key] = body
        elif key == "raw_body":
            continue
        elif (key == "headers" or (key == "raw_content_type" and isinstance(value, str))
              or isinstance(value, _DESCRIBING) or value is None):
            out[key] = value
    return out


def REFERENCE(record: dict[str, Any]) -> dict[str, Any]:
    capture = record.get("capture")
    if capture is None:
        return record
    out = dict(record)
    if not isinstance(capture, Mapping):
        del out["capture"]
        return out
    scrubbed: dict[Any, Any] = {}
    for key, value in capture.items():
        if key in ("request", "response"):
            exchange = _reference_exchange(value)
            if exchange is not None:
                scrubbed[key] = exchange
        elif key == "tool_use" and isinstance(value, list):
            scrubbed[key] = [{k: call[k] for k in _TOOL_USE if k in call} for call in value
                             if isinstance(call, Mapping)]
        elif key == "headers":
            scrubbed[key] = value
    out["capture"] = scrubbed
    return out


# -- hostile records ------------------------------------------------------------------------------------------

CANARY = "cnryFastPrivacy41c0"
_times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.just(CANARY),
    st.text(max_size=8), st.binary(max_size=8), _times, st.decimals(allow_nan=False, places=3),
    st.builds(lambda text: cbor2.CBORTag(4242, CANARY + text), st.text(max_size=4)),  # a tag nobody knows
    st.frozensets(st.just(CANARY) | st.text(max_size=4), max_size=2).map(set),  # CBOR tag 258
)
_keys = st.one_of(st.sampled_from(["messages", "content", "prompt", "index", "finish_reason", "finishReason",
                                   "id", "name", "type", "body", "headers", "model", "usage", "metadata"]),
                  st.text(max_size=6), st.integers(0, 3))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_keys, inner, max_size=4), max_leaves=12)
_choice_items = st.lists(st.dictionaries(_keys, _values, max_size=4) | _values, max_size=3)
_body_keys = st.sampled_from(sorted(BODY_KEYS_KEPT)) | st.sampled_from(
    ["messages", "input", "instructions", "system", "contents", "output", "tools", "choices", "candidates"])
_bodies = st.dictionaries(_body_keys, _values | _choice_items, min_size=1, max_size=8) | _values
_exchange_keys = st.sampled_from(["body", "raw_body", "headers", "raw_content_type", "status", "attempt",
                                  "sent_at", "prompt", "url"]) | _keys
_exchanges = st.one_of(
    st.builds(lambda fixed, extra: {**extra, **fixed},
              st.fixed_dictionaries({"headers": _values, "body": _bodies},
                                    optional={"raw_body": _values, "raw_content_type": _values, "sent_at": _times}),
              st.dictionaries(_exchange_keys, _scalars | _values, max_size=3)),
    st.dictionaries(_exchange_keys, _bodies | _values, max_size=6),
    _values,
)
_captures = st.one_of(
    st.fixed_dictionaries({"request": _exchanges, "response": _exchanges},
                          optional={"tool_use": _choice_items, "headers": _values, "prompt": _values}),
    st.dictionaries(st.sampled_from(["request", "response", "tool_use", "headers", "prompt"]) | _keys,
                    _exchanges | _choice_items | _values, max_size=5),
    _values,
)


@st.composite
def hostile_records(draw: st.DrawFn) -> dict[str, Any]:
    """A record as our own append stores it (schema fields valid), with a hostile capture, sometimes none,
    and sometimes fields the schema does not know; its timestamp with or without microseconds."""
    n = draw(st.integers(1, 10**6))
    record = good_record(n)
    moment = draw(_times | st.just(datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)))
    record["timestamp"] = moment + timedelta(microseconds=draw(st.sampled_from([0, 1, 999_999, 120_000])))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        del record["capture"]
    elif choice == 1:
        record["capture"] = None
    else:
        record["capture"] = draw(_captures)
    record.update(draw(st.dictionaries(st.sampled_from(["extra", "notes", "prompt"]), _values, max_size=2)))
    return record


def _stored(record: dict[str, Any]) -> bytes:
    return encode_body(record)[1]


def _exported(record_id: int, stored: bytes, privacy: bool = True, redactions: tuple[str, ...] = ()) -> bytes:
    """The reference pipeline's CBOR of one record: decoded in full, ``id`` first, scrubbed, redacted,
    re-encoded."""
    record = {"id": record_id}
    record.update(cbor2.loads(stored))
    if privacy:
        record = REFERENCE(record)
    if redactions:
        record = redact(record, [path.split(".") for path in redactions])
    return cbor2.dumps(record, timezone=UTC)


# -- the tests ------------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(hostile_records())
def test_privacy_scrub_is_the_reference(record: dict[str, Any]) -> None:
    decoded = {"id": 7}
    decoded.update(cbor2.loads(_stored(record)))
    expected = cbor2.dumps(REFERENCE(decoded), timezone=UTC)
    assert cbor2.dumps(privacy_scrub(decoded), timezone=UTC) == expected
    assert cbor2.dumps(REFERENCE(decoded), timezone=UTC) == expected  # the record was not changed in place


def _proxied(value: Any) -> Any:
    """The value with every map a read-only Mapping that is not a dict (the shortcuts' other branch)."""
    if isinstance(value, dict):
        return types.MappingProxyType({k: _proxied(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_proxied(item) for item in value]
    return value


@settings(max_examples=200, deadline=None)
@given(hostile_records())
def test_privacy_scrub_of_maps_that_are_not_dicts_is_the_reference(record: dict[str, Any]) -> None:
    proxied = dict(_proxied(record))
    assert _plain(privacy_scrub(proxied)) == _plain(REFERENCE(proxied))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return [(repr(k), _plain(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return repr(value)


SEAL = RecordSeal(new_seal_key())


@settings(max_examples=150, deadline=None)
@given(st.lists(hostile_records(), min_size=1, max_size=6))
def test_a_privacy_batch_is_the_reference_pipeline_byte_for_byte(records: list[dict[str, Any]]) -> None:
    rows = []
    for offset, record in enumerate(records):
        stored = _stored(record)
        rows.append(StoredRecord(300 + offset, 0, stored, SEAL.seal(stored)))
    recipe = BatchRecipe("cbor-zstd", "zstd", privacy_mode=True, seal=SEAL)
    batch = encode_rows(recipe, rows)
    assert batch.rows == len(rows)
    assert batch.payload == zstd_frame([_exported(row.id, row.body) for row in rows])


@settings(max_examples=100, deadline=None)
@given(st.lists(hostile_records(), min_size=1, max_size=4), st.booleans(),
       st.sampled_from([("timestamp",), ("capture.request.sent_at", "identity"), ("capture.*.body.model",)]))
def test_a_redacted_batch_is_the_reference_pipeline_byte_for_byte(records: list[dict[str, Any]], privacy: bool,
                                                                  redactions: tuple[str, ...]) -> None:
    """Redactions decode the default format's records the same way (timestamps as their stored text)."""
    stored = [_stored(record) for record in records]
    rows = [StoredRecord(5 + offset, 0, body, SEAL.seal(body)) for offset, body in enumerate(stored)]
    recipe = BatchRecipe("cbor-zstd", "zstd", privacy_mode=privacy, redact_fields=redactions, seal=SEAL)
    assert encode_rows(recipe, rows).payload == zstd_frame([_exported(row.id, row.body, privacy, redactions)
                                                            for row in rows])


@settings(max_examples=300, deadline=None)
@given(st.lists(_times | st.builds(lambda t, us: t.replace(microsecond=us), _times, st.sampled_from([0, 5, 500000])),
                min_size=1, max_size=3),
       st.sampled_from(["text", "key", "offset"]))
def test_timestamps_decoded_as_text_encode_back_to_the_same_bytes(moments: list[datetime], where: str) -> None:
    if where == "key":
        value: Any = {moment: 1 for moment in moments}
    elif where == "offset":
        value = [moment.astimezone(timezone(timedelta(hours=2))) for moment in moments]
    else:
        value = {"timestamp": moments[0], "more": moments}
    stored = cbor2.dumps(value, timezone=UTC)
    assert cbor2.dumps(CborZstdEncoder.decode_record(stored), timezone=UTC) == stored
    assert cbor2.dumps(CborZstdEncoder.decode_record(stored), timezone=UTC) == cbor2.dumps(cbor2.loads(stored),
                                                                                           timezone=UTC)


def test_odd_timestamp_texts_decode_as_cbor2_decodes_them() -> None:
    texts = ["2026-11-24T12:00:00.000000Z", "2026-11-24T12:00:00Z", "2026-11-24T12:00:00.5Z",
             "2026-11-24T12:00:00.123456+00:00", "2026-02-30T12:00:00.123456Z", "0999-11-24T12:00:00.123456Z",
             "2026-11-24T24:00:00.123456Z", "2026-11-24T12:00:60.123456Z", "2026-11-24t12:00:00.123456z",
             "2026-11-24T12:00:00.123456Z ", "\uff12\uff10\uff12\uff16-11-24T12:00:00.123456Z"]  # full-width digits
    for text in texts:
        stored = b"\xc0" + cbor2.dumps(text)
        try:
            expected = cbor2.dumps(cbor2.loads(stored), timezone=UTC)
        except Exception as exc:  # cbor2 refuses it: so must the fast decode, with the same error
            try:
                CborZstdEncoder.decode_record(stored)
            except Exception as fast:
                assert type(fast) is type(exc), text
                continue
            raise AssertionError(f"{text!r} decoded, cbor2 refuses it") from None
        assert cbor2.dumps(CborZstdEncoder.decode_record(stored), timezone=UTC) == expected, text
