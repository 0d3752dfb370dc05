"""The capture record (schema version 2) and its CBOR codec.

A record is stored as the CBOR encoding of its map *without* the ``id`` key: the id is only known once
the store has assigned it, and splicing it in at export time (`with_id`) lets the default export ship
the stored bytes as they are, with no decode and re-encode per record. That holds for rows our own
append wrote (``encode_body``, sealed: store/seal.py; it refuses a record whose known fields have the
wrong types, store/record_types.py); every other row is checked in full first (store/check.py).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import cbor2

from .credentials import CREDENTIAL_HEADERS, DEFAULT_POLICY
from .record_types import timestamp_micros, type_problem

__all__ = [
    "CREDENTIAL_HEADERS",
    "FIELD_ORDER",
    "SCHEMA_VERSION",
    "SELF_DESCRIBED",
    "TRANSPARENT_TAGS",
    "CborHeadError",
    "CorruptRecord",
    "HeadCutShort",
    "ReservedHead",
    "decode_sequence",
    "encode_body",
    "encode_ordered",
    "id_head",
    "loads_record",
    "read_head",
    "refuse_own_ids",
    "strip_credentials",
    "timestamp_micros",
    "untagged",
    "with_id",
]

SCHEMA_VERSION = 2

# Top-level field order of an exported record (after ``id``), as the Aperture v2 schema lists them.
FIELD_ORDER = (
    "ver",
    "timestamp",
    "identity",
    "model",
    "api_type",
    "usage",
    "estimated_cost",
    "duration_ms",
    "capture_id",
    "session_id",
    "path",
    "status_code",
    "capture",
)


class CorruptRecord(ValueError):
    """A stored record that is not one well-formed capture record. The message names the record and the
    reason, never the record's bytes."""

    def __init__(self, record_id: int, reason: str) -> None:
        super().__init__(f"record {record_id} is corrupt: {reason}")
        self.record_id = record_id
        self.reason = reason


class CborHeadError(ValueError):
    """A CBOR item's head (its initial byte and argument, RFC 8949 3) that cannot be read at ``position``."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


class HeadCutShort(CborHeadError):
    """The data ends inside a head (or before it): ``missing`` bytes of it are not there."""

    def __init__(self, position: int, missing: int) -> None:
        super().__init__(f"a CBOR head at byte {position} cut short by {missing} byte{'s' if missing > 1 else ''}",
                         position)
        self.missing = missing


class ReservedHead(CborHeadError):
    """A head with additional information 28, 29 or 30 (``info``), which RFC 8949 reserves: not well formed."""

    def __init__(self, position: int, info: int) -> None:
        super().__init__(f"reserved additional information {info} at byte {position}", position)
        self.info = info


_U16, _U32, _U64 = struct.Struct(">H").unpack_from, struct.Struct(">I").unpack_from, struct.Struct(">Q").unpack_from


def read_head(data: bytes | bytearray | memoryview, position: int = 0) -> tuple[int, int | None, int]:
    """The head of the CBOR item at ``position``: ``(major type, argument, where its content starts)``. The
    argument is the count, length or value; None for additional information 31 (an indefinite length, or in
    major type 7 the break; in major types 0, 1 and 6 not well formed: the caller's to refuse). Raises
    HeadCutShort when ``data`` ends before the head does, ReservedHead for additional information 28-30 (both
    CborHeadError, a ValueError)."""
    try:  # the ends of data are found by the indexing and unpacking that fail there (free until they do)
        initial = data[position]
        info = initial & 0x1F
        if info < 24:
            return initial >> 5, info, position + 1
        if info == 24:
            return initial >> 5, data[position + 1], position + 2
        if info == 25:
            return initial >> 5, _U16(data, position + 1)[0], position + 3
        if info == 26:
            return initial >> 5, _U32(data, position + 1)[0], position + 5
        if info == 27:
            return initial >> 5, _U64(data, position + 1)[0], position + 9
    except (IndexError, struct.error):
        size = 1 + (1 << (data[position] & 0x1F) - 24) if position < len(data) else 1
        raise HeadCutShort(position, position + size - len(data)) from None
    if info == 31:
        return initial >> 5, None, position + 1
    raise ReservedHead(position, info)


def strip_credentials(record: dict[str, Any]) -> bool:
    """Remove every credential from a decoded record in place (store/credentials.py has the rules);
    return whether anything was removed."""
    return DEFAULT_POLICY.strip(record)


def encode_body(record: Mapping[str, Any]) -> tuple[int, bytes]:
    """Encode a record for storage: credentials stripped, ``id`` left out, fields in schema order: one
    canonical CBOR map, which is what lets its store seal it (store/seal.py). Raises ValueError when a
    known field has the wrong type (a sealed row is exported unchecked).

    Returns ``(timestamp in microseconds, CBOR bytes of the map without id)``.
    """
    data = {k: v for k, v in record.items() if k != "id"}
    data.setdefault("ver", SCHEMA_VERSION)
    timestamp = data.get("timestamp")
    if not isinstance(timestamp, datetime):
        raise ValueError("record needs a 'timestamp' datetime")
    data["timestamp"] = timestamp.astimezone(UTC)
    if data.get("estimated_cost") is None:
        data.pop("estimated_cost", None)
    if (problem := type_problem(data)) is not None:
        raise ValueError(f"record cannot be stored: {problem}")
    ordered = {k: data[k] for k in FIELD_ORDER if k in data}
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    return encode_ordered(ordered)


def encode_ordered(record: dict[str, Any]) -> tuple[int, bytes]:
    """``encode_body`` of a record already in its stored shape, without encode_body's copies (the ingest
    server's mappers build records in that shape): fields in ``FIELD_ORDER`` then any others, no ``id``,
    ``ver`` set, ``estimated_cost`` left out when unknown, ``timestamp`` an aware UTC datetime. The record
    is the caller's to give up: credentials are stripped from it in place. Same bytes as encode_body, so
    its store seals it as its own (store/seal.py).
    """
    timestamp = record["timestamp"]
    body = cbor2.dumps(record, timezone=UTC)
    # Walking the whole record is slow; only records whose bytes could hold a credential need it.
    if DEFAULT_POLICY.might_hold(body) and DEFAULT_POLICY.strip(record):
        body = cbor2.dumps(record, timezone=UTC)
    return timestamp_micros(timestamp), body


def _uint_header(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([(major << 5) | value])
    if value < 0x100:
        return bytes([(major << 5) | 24, value])
    if value < 0x10000:
        return bytes([(major << 5) | 25]) + struct.pack(">H", value)
    if value < 0x100000000:
        return bytes([(major << 5) | 26]) + struct.pack(">I", value)
    return bytes([(major << 5) | 27]) + struct.pack(">Q", value)


_ID_KEY = b"\x62id"  # CBOR text string "id"
# The head of tag 55799, self-described CBOR (RFC 8949 3.4.6): a marker that a writer may put before an item
# and that changes nothing about it. A stored map under it is the same record: the marker is left out.
SELF_DESCRIBED = b"\xd9\xd9\xf7"


def _self_described(value: Any, immutable: bool) -> Any:
    return value


# cbor2 6 decodes what tag 55799 tags as immutable (a frozendict, tuples), which no strip, redaction or JSON
# writer handles as a map: decoded through this, the marker is transparent at any depth.
TRANSPARENT_TAGS = {55799: _self_described}


def loads_record(data: bytes | memoryview) -> Any:
    """``cbor2.loads``, tag 55799 (self-described CBOR) transparent at any depth."""
    return cbor2.loads(data, semantic_decoders=TRANSPARENT_TAGS)


def untagged(body: bytes | memoryview) -> bytes | memoryview:
    """``body`` without the self-described CBOR marker(s) before its item (a view when given one)."""
    while body[:3] == SELF_DESCRIBED:
        body = body[3:]
    return body


# The head of a map of n + 1 pairs followed by the key "id", for a stored map of n < 23 pairs (one head
# byte), and the head of the id itself for the usual widths: the default export's hot path.
_SMALL_MAP_WITH_ID = {0xA0 + n: bytes([0xA1 + n]) + b"\x62id" for n in range(23)}
_PACK_U16, _PACK_U32 = struct.Struct(">BH").pack, struct.Struct(">BI").pack


def id_head(record_id: int, body: bytes | memoryview) -> tuple[bytes, int]:
    """What splicing ``id`` into the stored CBOR map takes: the new map head with the ``id`` pair, and the
    offset in ``body`` where the old head ends (the record is ``head + body[offset:]``)."""
    head = _SMALL_MAP_WITH_ID.get(body[0]) if body else None
    if head is not None and 0x100 <= record_id < 0x100000000 and len(body) > 22:  # > any small map's count
        return head + (_PACK_U16(0x19, record_id) if record_id < 0x10000 else _PACK_U32(0x1A, record_id)), 1
    if not body:
        raise CorruptRecord(record_id, "empty")
    initial = body[0]
    if initial == 0xD9 and body[:3] == SELF_DESCRIBED:  # the map under tag 55799: spliced without the marker
        head, offset = id_head(record_id, body[3:])
        return head, offset + 3
    if initial >> 5 != 5:
        raise CorruptRecord(record_id, "not a CBOR map")
    count: int | None
    if initial < 0xB8:  # a small map: its count is in its initial byte
        count, offset = initial & 0x1F, 1
    else:
        try:
            _, count, offset = read_head(body)
        except HeadCutShort:
            raise CorruptRecord(record_id, "a map head cut short") from None
        except ReservedHead:
            raise CorruptRecord(record_id, "unsupported map header") from None
        if count is None:  # an indefinite-length map: the id pair goes first, its break stays where it is
            return b"\xbf" + _ID_KEY + _uint_header(0, record_id), 1
    if count >= len(body):  # more pairs than bytes (and one more might not fit a head): no whole map
        raise CorruptRecord(record_id, "a map longer than its body")
    return _uint_header(5, count + 1) + _ID_KEY + _uint_header(0, record_id), offset


def with_id(record_id: int, body: bytes) -> bytes:
    """Splice ``id`` in as the first key of the stored CBOR map, without decoding the rest."""
    head, offset = id_head(record_id, body)
    return head + body[offset:]


def holds_own_id(body: bytes | memoryview) -> bool:
    """Whether a stored body's map holds a top-level ``id`` key (any encoding of it: a repeated, chunked or
    tagged one too), as a CBOR reader decodes it. A body no reader decodes is not judged here (the export
    holds it as a corrupt record)."""
    try:
        record = loads_record(body)
    except Exception:  # cbor2's errors, RecursionError (a RuntimeError)
        return False
    return isinstance(record, dict) and "id" in record


def refuse_own_ids(rows: list[tuple[int, bytes]]) -> None:
    """ValueError when a body about to be sealed holds its own ``id`` (store/base.py ``append_encoded``): a
    sealed row goes out unchecked, and the default export splices the row's id into its stored bytes
    undecoded (``with_id``), so a stored ``id`` would be a second one, the one CBOR readers keep. Decodes each
    body: the cost of a caller's own bodies only (``append`` encodes its records itself, without ``id``)."""
    for index, (_, body) in enumerate(rows):
        if holds_own_id(body):
            raise ValueError(f"row {index + 1} of {len(rows)} holds an 'id' key: the store assigns ids, a body to "
                             "seal comes from encode_body, which leaves it out; nothing was written")


def decode_sequence(data: bytes) -> Iterator[Any]:
    """Decode an RFC 8742 CBOR sequence."""
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(stream)
    end = len(data)
    while stream.tell() < end:
        yield decoder.decode()
