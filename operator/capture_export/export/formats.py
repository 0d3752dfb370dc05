"""Batch encodings (``spec.format``), how to read each back, and the one registry of formats.

``FORMATS`` is the registry: each format's compressions, object extensions and content types, its encoder
and its reader. The spec's allowed ``format`` and ``compression`` values (and so the CRD enums), the key
layout's data extensions, and what ``cat``/``verify`` can read all derive from it: a new format is one
entry there (plus its encoder and reader here). The module is long (about 500 lines) on purpose: every
format's encoder, reader and registry entry sit together, so adding one touches this file only.

``cbor-zstd`` (default, ``.cbor.zstd``): one zstd frame holding a CBOR sequence (RFC 8742) of records, as
Aperture writes them. The encoder gets the stored CBOR bytes (with ``id`` spliced in) and never decodes.

``jsonl`` (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``): one JSON object per line, keys in schema order with
``id`` first. JSON has no bytes and no dates, so:

* timestamps are RFC 3339 strings in UTC with microseconds: ``"2026-11-24T12:00:00.123456Z"``;
* bytes (the raw bodies) are objects ``{"$base64": "<standard base64, padded>"}`` — the same convention
  as ``capture-export cat`` (in DuckDB: ``from_base64(capture.request.raw_body."$base64")``);
* other CBOR types: decimals and UUIDs as strings, unknown tags as ``{"$tag": n, "value": …}``;
* map keys other than text (a foreign writer's byte-string keys): a byte string as its UTF-8 text
  (``"$base64:…"`` when it is not UTF-8), anything else as its JSON text.

``parquet`` (``.parquet``, needs pyarrow: the ``parquet`` extra): one row group per object with a fixed
schema (``PARQUET_SCHEMA``) whatever the batch holds, so that files of different batches and days read
as one table:

    id int64, ver int32, timestamp timestamp[us, UTC],
    identity struct<login_name string, node_id string, tags list<string>>,
    model string, api_type string,
    usage struct<input_tokens, output_tokens, cached_tokens, reasoning_tokens: int64>,
    estimated_cost struct<input, output, total: double, currency string>   (null when unknown),
    duration_ms int64, capture_id string, session_id string, path string, status_code int32,
    capture string          the capture object as JSON (the jsonl conventions), raw bodies taken out,
    raw_request_body binary, raw_response_body binary,
    extra string            JSON of anything the typed columns cannot hold (unknown fields, values of an
                            unexpected type), so no data is lost; null when there is none.

Columns are compressed with zstd by default (``compression`` picks none, gzip or zstd); the file's
key-value metadata says ``capture_export.schema = 1``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

import cbor2
import zstandard

from ..store.records import decode_sequence

__all__ = [
    "COMPRESSIONS",
    "DATA_EXTENSIONS",
    "FORMATS",
    "FORMAT_NAMES",
    "PARQUET_SCHEMA_VERSION",
    "BatchEncoder",
    "CborZstdEncoder",
    "FormatInfo",
    "FormatUnavailable",
    "JsonLinesEncoder",
    "ParquetEncoder",
    "data_extension",
    "decode_object",
    "encoder_for",
    "format_of",
    "json_default",
    "parquet_schema",
    "record_ids",
    "to_json_line",
]

PARQUET_SCHEMA_VERSION = "1"


class FormatUnavailable(RuntimeError):
    """The format needs a package that is not installed (pyarrow for parquet)."""


class BatchEncoder(Protocol):
    extension: str
    content_type: str
    # False: ``encode`` takes the stored CBOR bytes of each record (the fast path, nothing decoded).
    # True: ``encode_records`` takes decoded records (dicts, as cbor2 decodes them).
    decoded: bool

    def encode(self, records: Sequence[bytes]) -> bytes:
        """Encode a batch of CBOR-encoded records (each holding its ``id``) into one object."""
        ...

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        """Encode a batch of decoded records into one object."""
        ...


class CborZstdEncoder:
    decoded = False

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self.extension, self.content_type = FORMATS["cbor-zstd"].object_type("zstd")

    def encode(self, records: Sequence[bytes]) -> bytes:
        # A compressor is cheap to make and not safe to share across threads.
        return zstandard.ZstdCompressor(level=self.level, write_content_size=True).compress(b"".join(records))

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        return self.encode([cbor2.dumps(record, timezone=UTC) for record in records])


# -- JSON ---------------------------------------------------------------------------------------------


def _rfc3339(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_default(value: Any) -> Any:
    """JSON for what JSON lacks (see the module docstring)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        return _rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, cbor2.CBORTag):
        return {"$tag": value.tag, "value": value.value}
    if value is cbor2.undefined:
        return None
    if isinstance(value, cbor2.CBORSimpleValue):
        return {"$simple": int(value.value)}
    return str(value)  # Decimal, Fraction, UUID, IP addresses, regular expressions


def _jsonable(value: Any) -> Any:
    """JSON has no NaN or infinity (they become null) and only text keys (see ``_json_key``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_json_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _json_key(key: Any) -> Any:
    """A map key JSON can hold: a byte string as its UTF-8 text (``"$base64:…"`` when it is not UTF-8),
    anything else CBOR allows as a key (a map, an array, a date) as its JSON text."""
    if isinstance(key, str | int | bool) or key is None or (isinstance(key, float) and math.isfinite(key)):
        return key
    if isinstance(key, bytes | bytearray | memoryview):
        try:
            return bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            return "$base64:" + base64.b64encode(bytes(key)).decode("ascii")
    return to_json(key)


_JSON = json.JSONEncoder(default=json_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def to_json(value: Any) -> str:
    try:
        return _JSON.encode(value)
    except (ValueError, TypeError):  # a NaN or infinity, or a key JSON has no form for (rare): fix, retry
        return _JSON.encode(_jsonable(value))


def to_json_line(record: Mapping[str, Any]) -> str:
    """One record as a JSON line (no newline); see the module docstring for bytes and timestamps."""
    return to_json(record)


class JsonLinesEncoder:
    decoded = True

    def __init__(self, compression: str = "none", level: int | None = None) -> None:
        self.compression = compression
        self.level = level
        self.extension, self.content_type = FORMATS["jsonl"].object_type(compression)

    def encode(self, records: Sequence[bytes]) -> bytes:
        return self.encode_records([cbor2.loads(record) for record in records])

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        text = "".join(to_json(record) + "\n" for record in records).encode("utf-8")
        if self.compression == "gzip":
            # Level 5: within 2% of the size of zlib's default 6, half again as fast.
            return gzip.compress(text, compresslevel=self.level or 5, mtime=0)
        if self.compression == "zstd":
            return zstandard.ZstdCompressor(level=self.level or 3, write_content_size=True).compress(text)
        return text


# -- Parquet ------------------------------------------------------------------------------------------

_IDENTITY_FIELDS = {"login_name": str, "node_id": str, "tags": list}
_USAGE_FIELDS = {"input_tokens": int, "output_tokens": int, "cached_tokens": int, "reasoning_tokens": int}
_COST_FIELDS = {"input": float, "output": float, "total": float, "currency": str}
_SCALARS = {"ver": int, "model": str, "api_type": str, "duration_ms": int, "capture_id": str,
            "session_id": str, "path": str, "status_code": int}
_STRUCTS = {"identity": _IDENTITY_FIELDS, "usage": _USAGE_FIELDS, "estimated_cost": _COST_FIELDS}
_INT_RANGES = {"ver": 2**31, "status_code": 2**31}


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise FormatUnavailable(
            "format parquet needs pyarrow, which is not installed here: install capture-export[parquet] "
            "(or pick format cbor-zstd or jsonl)"
        ) from None
    return pyarrow


def parquet_schema() -> Any:
    """The fixed Parquet schema (see the module docstring)."""
    pa = _pyarrow()
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("ver", pa.int32()),
            pa.field("timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("identity", pa.struct([("login_name", pa.string()), ("node_id", pa.string()),
                                            ("tags", pa.list_(pa.string()))])),
            pa.field("model", pa.string()),
            pa.field("api_type", pa.string()),
            pa.field("usage", pa.struct([(name, pa.int64()) for name in _USAGE_FIELDS])),
            pa.field("estimated_cost", pa.struct([("input", pa.float64()), ("output", pa.float64()),
                                                  ("total", pa.float64()), ("currency", pa.string())])),
            pa.field("duration_ms", pa.int64()),
            pa.field("capture_id", pa.string()),
            pa.field("session_id", pa.string()),
            pa.field("path", pa.string()),
            pa.field("status_code", pa.int32()),
            pa.field("capture", pa.string()),
            pa.field("raw_request_body", pa.binary()),
            pa.field("raw_response_body", pa.binary()),
            pa.field("extra", pa.string()),
        ],
        metadata={"capture_export.schema": PARQUET_SCHEMA_VERSION},
    )


def _fits(value: Any, kind: type, name: str = "") -> bool:
    if kind is int:
        limit = _INT_RANGES.get(name, 2**63)
        return isinstance(value, int) and not isinstance(value, bool) and -limit <= value < limit
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)


def _struct(value: Any, fields: dict[str, type], extra: dict[str, Any], name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        extra[name] = value
        return None
    row: dict[str, Any] = {}
    leftover: dict[Any, Any] = {}
    for key, item in value.items():
        if key in fields and (item is None or _fits(item, fields[key])):
            row[key] = float(item) if fields[key] is float and item is not None else item
        else:
            leftover[key] = item
    if leftover:
        extra[name] = leftover
    return row


def _split_raw(capture: Any) -> tuple[Any, bytes | None, bytes | None]:
    """The capture without its raw bodies, and the raw request and response bodies."""
    if not isinstance(capture, Mapping):
        return capture, None, None
    raws: list[bytes | None] = []
    out = dict(capture)
    for side in ("request", "response"):
        part = out.get(side)
        raw = part.get("raw_body") if isinstance(part, Mapping) else None
        if isinstance(raw, bytes):
            out[side] = {k: v for k, v in part.items() if k != "raw_body"}  # type: ignore[union-attr]
            raws.append(raw)
        else:
            raws.append(None)
    return out, raws[0], raws[1]


class ParquetEncoder:
    decoded = True

    def __init__(self, compression: str = "zstd") -> None:
        self.pa = _pyarrow()
        self.schema = parquet_schema()
        self.compression = compression
        self.extension, self.content_type = FORMATS["parquet"].object_type(compression)

    def encode(self, records: Sequence[bytes]) -> bytes:
        return self.encode_records([cbor2.loads(record) for record in records])

    def columns(self, records: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        known = {"id", "timestamp", "capture", *_SCALARS, *_STRUCTS}
        for record in records:
            extra: dict[str, Any] = {}
            columns["id"].append(record["id"])
            timestamp = record.get("timestamp")
            if isinstance(timestamp, datetime):
                columns["timestamp"].append(timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC))
            else:
                columns["timestamp"].append(None)
                if timestamp is not None:
                    extra["timestamp"] = timestamp
            for name, kind in _SCALARS.items():
                value = record.get(name)
                if value is None or _fits(value, kind, name):
                    columns[name].append(value)
                else:
                    columns[name].append(None)
                    extra[name] = value
            for name, fields in _STRUCTS.items():
                columns[name].append(_struct(record.get(name), fields, extra, name))
            capture, raw_request, raw_response = _split_raw(record.get("capture"))
            columns["capture"].append(None if capture is None else to_json(capture))
            columns["raw_request_body"].append(raw_request)
            columns["raw_response_body"].append(raw_response)
            for key, value in record.items():
                if key not in known:
                    extra[str(key)] = value
            columns["extra"].append(to_json(extra) if extra else None)
        return columns

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        import pyarrow.parquet as pq

        table = self.pa.Table.from_pydict(self.columns(records), schema=self.schema)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression=self.compression, write_statistics=True)
        return sink.getvalue()


# -- reading back (capture-export cat and verify) --------------------------------------------------------


def _decompress(data: bytes, extension: str) -> bytes:
    if extension.endswith(".zstd") or extension.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if extension.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _json_lines(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)


def _restore_bytes(value: Any) -> Any:
    """The inverse of json_default for bytes: ``{"$base64": …}`` back to bytes."""
    if isinstance(value, dict):
        if len(value) == 1 and "$base64" in value and isinstance(value["$base64"], str):
            return base64.b64decode(value["$base64"])
        return {k: _restore_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_bytes(v) for v in value]
    return value


def _parquet_records(data: bytes) -> Iterator[dict[str, Any]]:
    _pyarrow()
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    for row in table.to_pylist():
        record: dict[str, Any] = {}
        extra = json.loads(row.pop("extra")) if row.get("extra") else {}
        raw_request, raw_response = row.pop("raw_request_body", None), row.pop("raw_response_body", None)
        for name, value in row.items():
            if name == "capture":
                value = _restore_bytes(json.loads(value)) if value is not None else None
                if isinstance(value, dict):
                    for side, raw in (("request", raw_request), ("response", raw_response)):
                        if raw is not None and isinstance(value.get(side), dict):
                            value[side]["raw_body"] = raw
            elif isinstance(value, dict):
                value = {k: v for k, v in value.items() if v is not None}
                if isinstance(extra.get(name), dict):
                    value.update(extra.pop(name))
            if name in extra:
                value = extra.pop(name)
            if value is not None:
                record[name] = value
        record.update(extra)
        yield record


def _parquet_ids(data: bytes) -> list[int]:
    _pyarrow()
    import pyarrow.parquet as pq

    return [int(i) for i in pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist()]


# -- the registry -----------------------------------------------------------------------------------------

Reader = Callable[[bytes, str], Iterator[dict[str, Any]]]  # (object bytes, its extension) -> records


@dataclass(frozen=True)
class FormatInfo:
    """One value of ``spec.format``.

    ``compressions``: the values ``spec.compression`` may take with it; ``default_compression`` when it is
    omitted. ``extensions`` and ``content_types``: the object's extension and Content-Type per compression
    (no Content-Encoding: clients would decompress on download and the name would lie). ``encoder`` makes
    the encoder for a compression; ``reader`` reads an object back; ``ids`` reads just the record ids when
    the format can do that more cheaply than reading whole records."""

    name: str
    compressions: tuple[str, ...]
    default_compression: str
    extensions: Mapping[str, str]
    content_types: Mapping[str, str]
    encoder: Callable[[str], BatchEncoder]
    reader: Reader
    ids: Callable[[bytes], list[int]] | None = None

    def object_type(self, compression: str) -> tuple[str, str]:
        """(extension, content type) of this format's objects with ``compression``."""
        return self.extensions[compression], self.content_types[compression]


FORMATS: dict[str, FormatInfo] = {
    info.name: info
    for info in (
        FormatInfo(
            name="cbor-zstd",
            compressions=("zstd",),
            default_compression="zstd",
            extensions={"zstd": ".cbor.zstd"},
            content_types={"zstd": "application/zstd"},
            encoder=lambda compression: CborZstdEncoder(),
            # Read exactly as the Aperture docs tell their users: zstd, then the CBOR sequence.
            reader=lambda data, extension: decode_sequence(_decompress(data, ".zstd")),
        ),
        FormatInfo(
            name="jsonl",
            compressions=("none", "gzip", "zstd"),
            default_compression="none",
            extensions={"none": ".jsonl", "gzip": ".jsonl.gz", "zstd": ".jsonl.zst"},
            content_types={"none": "application/x-ndjson", "gzip": "application/gzip", "zstd": "application/zstd"},
            encoder=JsonLinesEncoder,
            reader=lambda data, extension: _json_lines(_decompress(data, extension)),
        ),
        FormatInfo(
            name="parquet",
            compressions=("none", "gzip", "zstd"),
            default_compression="zstd",
            extensions=dict.fromkeys(("none", "gzip", "zstd"), ".parquet"),
            content_types=dict.fromkeys(("none", "gzip", "zstd"), "application/vnd.apache.parquet"),
            encoder=ParquetEncoder,
            reader=lambda data, extension: _parquet_records(data),
            ids=_parquet_ids,
        ),
    )
}
FORMAT_NAMES = tuple(FORMATS)
# Every compression of any format: "none" first, then by name.
COMPRESSIONS = tuple(sorted({c for info in FORMATS.values() for c in info.compressions},
                            key=lambda c: (c != "none", c)))
_EXTENSION_FORMATS = {ext: info for info in FORMATS.values() for ext in info.extensions.values()}
# Every extension a data object may have, longest first, so that the extension of a key is found
# unambiguously.
DATA_EXTENSIONS = tuple(sorted(_EXTENSION_FORMATS, key=len, reverse=True))


def data_extension(key: str) -> str | None:
    """The data extension a key ends with, or None."""
    for extension in DATA_EXTENSIONS:
        if key.endswith(extension):
            return extension
    return None


def format_of(key: str) -> FormatInfo | None:
    """The format of a data object, told by its key's extension; None for any other key."""
    extension = data_extension(key)
    return _EXTENSION_FORMATS[extension] if extension is not None else None


def encoder_for(format: str, compression: str | None = None) -> BatchEncoder:
    """The encoder of ``spec.format``; raises FormatUnavailable when its package is missing."""
    info = FORMATS.get(format)
    if info is None:
        raise ValueError(f"unknown format {format!r}")
    return info.encoder(compression or info.default_compression)


def decode_object(data: bytes, key: str = ".cbor.zstd") -> Iterator[dict[str, Any]]:
    """Records of one data object, the format told by the key's extension (default ``.cbor.zstd``)."""
    extension = data_extension(key)
    if extension is None:
        raise ValueError(f"not a data object (unknown extension): {key}")
    yield from _EXTENSION_FORMATS[extension].reader(data, extension)


def record_ids(data: bytes, key: str) -> list[int]:
    """The record ids of one data object, read as cheaply as its format allows."""
    info = format_of(key)
    if info is not None and info.ids is not None:
        return info.ids(data)
    return [int(record["id"]) for record in decode_object(data, key)]
