"""The capture record (schema version 2) and its CBOR codec.

A record is stored as the CBOR encoding of its map *without* the ``id`` key: the id is only known once
the store has assigned it, and splicing it in at export time (`with_id`) lets the default export ship
the stored bytes as they are, with no decode and re-encode per record.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import cbor2

__all__ = [
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_MARKERS",
    "FIELD_ORDER",
    "SCHEMA_VERSION",
    "CorruptRecord",
    "decode_sequence",
    "encode_body",
    "encode_ordered",
    "ensure_no_credentials",
    "strip_credentials",
    "timestamp_micros",
    "with_id",
]

SCHEMA_VERSION = 2

# Header names a gateway may capture that carry credentials. They never leave the store.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "x-api-key", "api-key", "cookie", "set-cookie", "proxy-authorization"}
)
# Every credential header name contains one of these, so a record whose bytes contain none of them
# (case-insensitively) cannot hold a credential header and need not be decoded.
CREDENTIAL_MARKERS = (b"authorization", b"api-key", b"cookie")

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
    """A stored record whose bytes are not a CBOR map."""

    def __init__(self, record_id: int, reason: str) -> None:
        super().__init__(f"record {record_id} is corrupt: {reason}")
        self.record_id = record_id


def _strip_headers(headers: Any) -> tuple[Any, bool]:
    """Remove credential headers from a header map or a list of ``[name, value]`` pairs."""
    if isinstance(headers, Mapping):
        kept = {k: v for k, v in headers.items() if not (isinstance(k, str) and k.lower() in CREDENTIAL_HEADERS)}
        return kept, len(kept) != len(headers)
    if isinstance(headers, list):
        kept_pairs = [
            pair
            for pair in headers
            if not (
                isinstance(pair, list | tuple)
                and pair
                and isinstance(pair[0], str)
                and pair[0].lower() in CREDENTIAL_HEADERS
            )
        ]
        return kept_pairs, len(kept_pairs) != len(headers)
    return headers, False


def strip_credentials(record: dict[str, Any]) -> bool:
    """Strip credential headers from a record in place, wherever a ``headers`` field appears.

    Returns whether anything was removed.
    """
    changed = False

    def walk(node: Any) -> None:
        nonlocal changed
        if isinstance(node, dict):
            for key, value in list(node.items()):
                if key == "headers":
                    node[key], removed = _strip_headers(value)
                    changed |= removed
                    value = node[key]
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(record.get("capture"))
    return changed


def timestamp_micros(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("record timestamp must be timezone-aware (UTC)")
    return int(value.timestamp() * 1_000_000)


def encode_body(record: Mapping[str, Any]) -> tuple[int, bytes]:
    """Encode a record for storage: credentials stripped, ``id`` left out, fields in schema order.

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
    ordered = {k: data[k] for k in FIELD_ORDER if k in data}
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    return encode_ordered(ordered)


def encode_ordered(record: dict[str, Any]) -> tuple[int, bytes]:
    """``encode_body`` of a record already in its stored shape, without encode_body's copies (the ingest
    server's mappers build records in that shape): fields in ``FIELD_ORDER`` then any others, no ``id``,
    ``ver`` set, ``estimated_cost`` left out when unknown, ``timestamp`` an aware UTC datetime. The record
    is the caller's to give up: credentials are stripped from it in place. Same bytes as encode_body.
    """
    timestamp = record["timestamp"]
    body = cbor2.dumps(record, timezone=UTC)
    # Walking the whole capture is slow; only records whose bytes could hold a credential header need it.
    lowered = body.lower()
    if any(marker in lowered for marker in CREDENTIAL_MARKERS) and strip_credentials(record):
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


def with_id(record_id: int, body: bytes) -> bytes:
    """Splice ``id`` in as the first key of the stored CBOR map, without decoding the rest."""
    if not body:
        raise CorruptRecord(record_id, "empty")
    initial = body[0]
    if initial >> 5 != 5:
        raise CorruptRecord(record_id, "not a CBOR map")
    info = initial & 0x1F
    if info < 24:
        count, header_len = info, 1
    elif info == 24:
        count, header_len = body[1], 2
    elif info == 25:
        count, header_len = struct.unpack_from(">H", body, 1)[0], 3
    elif info == 26:
        count, header_len = struct.unpack_from(">I", body, 1)[0], 5
    else:
        raise CorruptRecord(record_id, "unsupported map header")
    return _uint_header(5, count + 1) + _ID_KEY + _uint_header(0, record_id) + body[header_len:]


def ensure_no_credentials(record_id: int, record: bytes) -> bytes:
    """Return the record's bytes with any credential header removed.

    Other writers may fill the store without stripping, so this runs on every exported record; only
    records whose bytes could hold a credential header name are decoded.
    """
    lowered = record.lower()
    if not any(marker in lowered for marker in CREDENTIAL_MARKERS):
        return record
    try:
        decoded = cbor2.loads(record)
    except Exception as exc:
        raise CorruptRecord(record_id, f"undecodable CBOR ({exc.__class__.__name__})") from None
    if not isinstance(decoded, dict):
        raise CorruptRecord(record_id, "not a CBOR map")
    if not strip_credentials(decoded):
        return record
    return cbor2.dumps(decoded, timezone=UTC)


def decode_sequence(data: bytes) -> Iterator[Any]:
    """Decode an RFC 8742 CBOR sequence."""
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(stream)
    end = len(data)
    while stream.tell() < end:
        yield decoder.decode()
