"""Batch encodings (``spec.format``), how to read each back, and the one registry of formats.

``FORMATS`` is the registry: each format's name and compressions (from format_names.py, where the spec's
allowed ``format`` and ``compression`` values, and so the CRD enums, come from without importing the
encoders), object extensions and content types, its encoder and its reader. The key layout's data
extensions and what ``cat``/``verify`` can read derive from it: a new format is one entry in
format_names.py and one here (plus its encoder and reader). The module is long (about 700 lines) on
purpose: every format's encoder, reader and registry entry sit together.

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

``parquet`` (``.parquet``, needs pyarrow: the ``parquet`` extra): row groups of 1,000 records with a fixed
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
import binascii
import gzip
import importlib.util
import io
import json
import math
import operator
import re
import threading
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate, chain
from typing import Any, NamedTuple, Protocol, cast

import cbor2
import orjson
import zstandard

from ..store.records import TRANSPARENT_TAGS, decode_sequence
from .format_names import COMPRESSIONS, FORMAT_CHOICES, FORMAT_NAMES, FormatChoice
from .skim import skim_sequence

__all__ = [
    "COMPRESSIONS",
    "DATA_EXTENSIONS",
    "FORMATS",
    "FORMAT_NAMES",
    "PARQUET_SCHEMA_VERSION",
    "BatchEncoder",
    "CborZstdEncoder",
    "EmptyObject",
    "EncodedCapture",
    "FormatInfo",
    "FormatUnavailable",
    "JsonLinesEncoder",
    "ParquetEncoder",
    "data_extension",
    "decode_object",
    "encoder_for",
    "format_of",
    "json_bytes",
    "json_default",
    "parquet_schema",
    "record_fields",
    "record_ids",
    "to_json_line",
    "zstd_frame",
]

PARQUET_SCHEMA_VERSION = "1"


class FormatUnavailable(RuntimeError):
    """The format needs a package that is not installed (pyarrow for parquet)."""


class EmptyObject(ValueError):
    """A data object of zero bytes. No exporter writes one (a batch without a record to export writes no
    object, and even an empty zstd frame or Parquet file has bytes), so it is a file cut short or not an
    export: an error, never "no records"."""

    message = "empty: 0 bytes, and no export is"

    def __init__(self) -> None:
        super().__init__(self.message)


class BatchEncoder(Protocol):
    extension: str
    content_type: str
    # False: ``encode`` takes the stored CBOR bytes of each record (the fast path, nothing decoded).
    # True: ``encode_records`` takes decoded records (dicts, as cbor2 decodes them).
    decoded: bool

    def encode(self, records: Sequence[bytes | memoryview]) -> bytes:
        """Encode a batch of CBOR-encoded records (each holding its ``id``) into one object."""
        ...

    def encode_records(self, records: Iterable[Mapping[str, Any]]) -> bytes:
        """Encode a batch of decoded records (a sequence or a generator) into one object."""
        ...


# -- zstd ----------------------------------------------------------------------------------------------

# A batch whose pieces take at most this many bytes is joined into one buffer and compressed in one call:
# zstd then reads its input where it lies instead of copying it into its own window buffer: ~1.3 µs per
# record less of the default format's ~27 µs of ``encode_rows`` (4.8% fewer instructions), and a frame ~0.6%
# smaller (another frame, as valid and as readable, content size recorded; docs/benchmarks.md, "zstd in one
# call"). The price is the joined copy, as long as the batch's records, for the moment of the call (~0.8 x
# of the stored bytes at the peak, measured): the memory budget charges the default format's batches up to
# this size for it (export/budget.py, ``JOINED_FACTOR``). Not JSON Lines (``_compress``): there the copy took
# an encode worker's batch above the memory it keeps for the next one (2.7 minor page faults per record instead
# of 0.02). 8 MiB covers ``limit: 1000`` of records up to ~8 KB (~3.4 MiB for the standard ones); a ``limit:
# 10000`` batch (~35 MB) is streamed.
ZSTD_ONE_SHOT_BYTES = 8 << 20
# Above it, pieces are handed to zstd in runs of about this many bytes, so that the batch never holds a
# second copy of its records: a batch's records are thousands of small pieces, and each call into zstd is a
# trip through Python and a release of the GIL that the other threads of the export (reading, uploading, the
# second encoder) then contend for; a run of pieces joined is one call. zstd buffers its input into blocks
# whatever the calls, so the frame is the same byte for byte whatever the runs (not the one-shot frame).
# Runs of 64 KiB to 4 MiB all took as long (measured 2026-12-04).
ZSTD_FEED_BYTES = 256 << 10
# Compression contexts kept for the next batch of the default format: one holds ~3.6 MiB of workspace for
# a batch-sized frame at level 3, which a new context allocates and page-faults in again for every batch
# (malloc gives it back to the system between batches: export/budget.py). At most this many wait idle per
# process, whatever the number of exporters (PROCESS_RESERVED_BYTES covers them); a context is used by one
# thread at a time (zstandard's are not thread-safe). The encode pool's workers (JSON Lines) keep none, so
# that an idle worker stays the size the memory budget counts.
IDLE_COMPRESSORS = 2
_idle_compressors: dict[int, list[zstandard.ZstdCompressor]] = {}
_compressors_lock = threading.Lock()


def _take_compressor(level: int) -> zstandard.ZstdCompressor:
    with _compressors_lock:
        idle = _idle_compressors.get(level)
        if idle:
            return idle.pop()
    return zstandard.ZstdCompressor(level=level, write_content_size=True)


def _give_back(level: int, compressor: zstandard.ZstdCompressor) -> None:
    with _compressors_lock:
        idle = _idle_compressors.setdefault(level, [])
        if sum(map(len, _idle_compressors.values())) < IDLE_COMPRESSORS:
            idle.append(compressor)


def zstd_frame(pieces: Sequence[bytes | memoryview], level: int = 3, *, keep_context: bool = True) -> bytes:
    """One zstd frame (content size recorded) of ``pieces`` one after the other: joined and compressed in one
    call when they take at most ``ZSTD_ONE_SHOT_BYTES``, else fed in runs of ``ZSTD_FEED_BYTES`` so that a
    large batch never holds a second copy of its records. The same pieces always make the same frame.
    ``keep_context``: take the compression context from, and give it back to, the idle ones."""
    compressor = (_take_compressor(level) if keep_context
                  else zstandard.ZstdCompressor(level=level, write_content_size=True))
    size = sum(map(len, pieces))
    if size <= ZSTD_ONE_SHOT_BYTES:
        frame = compressor.compress(b"".join(pieces))
    else:
        frame = _streamed_frame(compressor, pieces, size)
    if keep_context:
        _give_back(level, compressor)  # not when the frame failed half-way: that context is dropped
    return frame


def _streamed_frame(compressor: zstandard.ZstdCompressor, pieces: Sequence[bytes | memoryview], size: int) -> bytes:
    frame = compressor.compressobj(size=size)
    out: list[bytes] = []
    run: list[bytes | memoryview] = []
    run_bytes = 0
    for piece in pieces:
        run.append(piece)
        run_bytes += len(piece)
        if run_bytes >= ZSTD_FEED_BYTES:
            out.append(frame.compress(b"".join(run)))
            run.clear()
            run_bytes = 0
    if run:
        out.append(frame.compress(b"".join(run)))
    out.append(frame.flush())
    return b"".join(out)


# A tag-0 date/time text that cbor2 decodes to a datetime which it encodes back as exactly that text: our
# writer's (UTC, "Z", six digits of microseconds; cbor2 writes none when they are all zero).
_TIMESTAMP_WRITTEN_BACK = re.compile(
    r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.(?!000000)[0-9]{6}Z").fullmatch


def _timestamp_as_stored(value: Any, immutable: bool) -> Any:
    """Tag 0 decoded for re-encoding as CBOR: a text that would come back byte for byte (checked to be a
    real time) stays a ``CBORTag(0, text)``, which cbor2 writes as it was stored, so that no datetime is
    parsed only to be formatted again; anything else, and a date/time map key, is read by cbor2 as always
    (a datetime, or its error)."""
    if not immutable and type(value) is str and _TIMESTAMP_WRITTEN_BACK(value):
        try:
            datetime.fromisoformat(value)
            return cbor2.CBORTag(0, value)
        except ValueError:
            pass
    return cbor2.loads(b"\xc0" + cbor2.dumps(value))


_CBOR_READY_TAGS = {0: _timestamp_as_stored, **TRANSPARENT_TAGS}


class CborZstdEncoder:
    decoded = False

    @staticmethod
    def decode_record(data: bytes | memoryview) -> Any:
        """A stored record decoded to be rewritten (privacy mode, redactions) and encoded again: as
        ``cbor2.loads``, but a timestamp as its stored text (``_timestamp_as_stored``). Privacy mode keeps such a
        date/time where it keeps a datetime (export/transform.py)."""
        return cbor2.loads(data, semantic_decoders=_CBOR_READY_TAGS)

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self.extension, self.content_type = FORMATS["cbor-zstd"].object_type("zstd")

    def encode(self, records: Sequence[bytes | memoryview]) -> bytes:
        return zstd_frame(records, self.level)

    def encode_records(self, records: Iterable[Mapping[str, Any]]) -> bytes:
        return self.encode([cbor2.dumps(record, timezone=UTC) for record in records])


# -- JSON ---------------------------------------------------------------------------------------------


def _rfc3339(value: datetime) -> str:
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if value.year < 1000:  # strftime does not pad the year: kept as it always was written
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat is the same text, faster; "+00:00" becomes "Z".
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def _base64(value: bytes | bytearray | memoryview) -> dict[str, str]:
    return {"$base64": binascii.b2a_base64(value, newline=False).decode("ascii")}


def json_default(value: Any) -> Any:
    """JSON for what JSON lacks (see the module docstring)."""
    # The types a decoded record holds (cbor2's datetimes and byte strings) first, by exact type: this
    # runs for every timestamp and raw body of every record.
    kind = type(value)
    if kind is datetime:
        return _rfc3339(value)
    if kind is bytes:
        return _base64(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _base64(value)
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
    if isinstance(value, cbor2.frozendict):  # a map under tag 55799 read without TRANSPARENT_TAGS (Parquet)
        return dict(value)
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
# orjson writes what JSON has natively (NaN and infinity as null, as _finite does); datetimes go through
# json_default for the exact form above. Keys that are not strings (numbers) become strings only on a second
# try (``_ORJSON_ANY_KEYS``): orjson's serializer for them takes twice as long for a map whose keys are all
# text (measured on the standard records' captures: 7.0 against 3.3 µs each), and every record we store has
# only text keys; for such a map both write the same bytes.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME
_ORJSON_ANY_KEYS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def _stdlib_json(value: Any) -> str:
    try:
        return _JSON.encode(value)
    except (ValueError, TypeError):  # a NaN or infinity, or a key JSON has no form for (rare): fix, retry
        return _JSON.encode(_jsonable(value))


def json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (see the module docstring for bytes, timestamps and other types)."""
    try:
        return orjson.dumps(value, default=json_default, option=_ORJSON_OPTIONS)
    except TypeError:  # a key that is not text, or what orjson cannot write at all
        pass
    try:
        return orjson.dumps(value, default=json_default, option=_ORJSON_ANY_KEYS)
    except TypeError:
        # What orjson cannot write (integers beyond 64 bits, ...): the standard library's encoder, which
        # raises in turn when JSON cannot represent the value at all.
        return _stdlib_json(value).encode("utf-8")


def to_json(value: Any) -> str:
    return json_bytes(value).decode("utf-8")


def to_json_line(record: Mapping[str, Any]) -> str:
    """One record as a JSON line (no newline); see the module docstring for bytes and timestamps."""
    return to_json(record)


def _compress(chunks: list[bytes], compression: str, level: int | None) -> bytes:
    """The chunks one after the other, compressed as they come (never joined first, but for "none")."""
    if compression == "gzip":
        # Level 5: within 2% of the size of zlib's default 6, half again as fast. wbits 31: a gzip member.
        stream = zlib.compressobj(level or 5, zlib.DEFLATED, 31)
        out = [stream.compress(chunk) for chunk in chunks]
        out.append(stream.flush())
        return b"".join(out)
    if compression == "zstd":
        # Streamed, never joined: JSON Lines is written by the pool's workers, each keeping BATCH_REUSE_BYTES of
        # freed memory for its next batch, which a joined copy of the text would outgrow (``ZSTD_ONE_SHOT_BYTES``).
        compressor = zstandard.ZstdCompressor(level=level or 3, write_content_size=True)
        return _streamed_frame(compressor, chunks, sum(map(len, chunks)))
    return b"".join(chunks)


# A tag-0 date/time string as our writer stores it (cbor2, UTC): already the text the JSON carries.
_CANONICAL_TIMESTAMP = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z").fullmatch


class TimestampText(str):
    """A date/time that JSON Lines' decoding keeps as its stored text (``_timestamp_text``): written as any
    text, but still a date/time to privacy mode, which keeps a request's dates and drops its text
    (export/transform.py, ``_describes``)."""

    __slots__ = ()


def _timestamp_text(value: Any, immutable: bool) -> Any:
    """Tag 0 decoded for JSON: a stored string that is already what ``_rfc3339`` would write is kept as its
    text (a ``TimestampText``; checked to be a real time), so that no datetime is made only to be written back
    as the same text; anything else is read by cbor2 as always (a datetime, or its error)."""
    if not immutable and type(value) is str and _CANONICAL_TIMESTAMP(value):  # immutable: a map key
        try:
            datetime.fromisoformat(value)
            return TimestampText(value)
        except ValueError:
            pass
    return cbor2.loads(b"\xc0" + cbor2.dumps(value))


_JSON_READY_TAGS = {0: _timestamp_text, **TRANSPARENT_TAGS}


class JsonLinesEncoder:
    decoded = True

    @staticmethod
    def decode_record(data: bytes | memoryview) -> Any:
        """A stored record decoded for this encoder: as ``cbor2.loads``, timestamps already as their text."""
        return cbor2.loads(data, semantic_decoders=_JSON_READY_TAGS)

    def __init__(self, compression: str = "none", level: int | None = None) -> None:
        self.compression = compression
        self.level = level
        self.extension, self.content_type = FORMATS["jsonl"].object_type(compression)

    def encode(self, records: Sequence[bytes | memoryview]) -> bytes:
        return self.encode_records(self.decode_record(record) for record in records)

    @staticmethod
    def line(record: Mapping[str, Any]) -> bytes:
        """One record's JSON line, newline included."""
        # Not orjson's OPT_APPEND_NEWLINE: its output keeps the spare capacity of its buffer (measured: ~3.9x
        # the line), which a batch holds for every line until it is joined; the copy that appends the newline
        # is compact.
        return json_bytes(record) + b"\n"

    def encode_records(self, records: Iterable[Mapping[str, Any]]) -> bytes:
        """The records as JSON lines; ``records`` may be a generator (each is encoded as it comes)."""
        return self.encode_lines([self.line(record) for record in records])

    def encode_lines(self, lines: list[bytes]) -> bytes:
        """Lines already written (``line``, or the native path: export/batch.py), compressed into the object."""
        return _compress(lines, self.compression, self.level)


# -- Parquet ------------------------------------------------------------------------------------------

_IDENTITY_FIELDS: dict[str, type] = {"login_name": str, "node_id": str, "tags": list}
_USAGE_FIELDS: dict[str, type] = {"input_tokens": int, "output_tokens": int, "cached_tokens": int,
                                  "reasoning_tokens": int}
_COST_FIELDS: dict[str, type] = {"input": float, "output": float, "total": float, "currency": str}
_SCALARS = {"ver": int, "model": str, "api_type": str, "duration_ms": int, "capture_id": str,
            "session_id": str, "path": str, "status_code": int}
_STRUCTS = {"identity": _IDENTITY_FIELDS, "usage": _USAGE_FIELDS, "estimated_cost": _COST_FIELDS}
_INT_RANGES = {"ver": 2**31, "status_code": 2**31}


_NO_PYARROW = ("format parquet needs pyarrow, which is not installed here: install capture-export[parquet] "
               "(or pick format cbor-zstd or jsonl)")


def _pyarrow() -> Any:
    """pyarrow, loaded as export/arrow.py says (malloc as Arrow's allocator, the writer alone)."""
    try:
        importlib.import_module(".arrow", __package__)  # first: it chooses Arrow's allocator
        import pyarrow
    except ImportError:
        raise FormatUnavailable(_NO_PYARROW) from None
    return pyarrow


def _parquet_writer(sink: Any, schema: Any, **options: Any) -> Any:
    """A Parquet writer into ``sink`` (an Arrow output stream): pyarrow's own class (``pyarrow._parquet``)
    rather than ``pyarrow.parquet``'s, whose import also loads the file systems' libraries (S3, GCS,
    Azure, HDFS): ~9 MiB more in every process that writes Parquet."""
    try:
        from pyarrow._parquet import ParquetWriter
    except ImportError:  # a pyarrow that moved it: the public class
        from pyarrow.parquet import ParquetWriter

        return ParquetWriter(sink, schema, **options)
    # What pyarrow.parquet.ParquetWriter passes it by default (the same file: tests/unit/test_formats.py).
    return ParquetWriter(sink, schema, version="2.6", writer_engine_version="V2", data_page_version="1.0",
                         use_deprecated_int96_timestamps=False, use_compliant_nested_type=True,
                         store_schema=True, **options)


def _require_pyarrow() -> None:
    """Raise FormatUnavailable when pyarrow is missing, without importing it (the exporting process does
    not need it when the encode pool writes the Parquet)."""
    if importlib.util.find_spec("pyarrow") is None:
        raise FormatUnavailable(_NO_PYARROW)


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


_NONE = type(None)
# The Python types a column takes as they are: anything else is checked value by value (_fits).
_CLEAN_TYPES: dict[type, frozenset[type]] = {
    int: frozenset({int, _NONE}), str: frozenset({str, _NONE}), float: frozenset({float, int, _NONE}),
    list: frozenset({list, _NONE}),
}
_DICT_OR_NONE = frozenset({dict, _NONE})
# The types every value of a struct may take for Arrow to build the struct straight from the records' dicts.
# Arrow refuses text in a number field and a number or a list in a text field (the struct is then built
# value by value), but it would coerce what these sets leave out: a float or a bool into an integer, a bool
# into a double, bytes into text. A list field is checked on its own (Arrow would split a string into its
# characters).
_STRUCT_CLEAN_TYPES: dict[str, frozenset[type]] = {
    name: frozenset().union(*(_CLEAN_TYPES[kind] for kind in fields.values())) for name, fields in _STRUCTS.items()
}
_KNOWN_FIELDS = frozenset({"id", "timestamp", "capture", *_SCALARS, *_STRUCTS})
# The fields the typed columns come from, fetched from each record in one call (every record the gateway
# writes has all of them; a record that lacks one takes the slower way, field by field).
_COLUMN_FIELDS = ("id", "timestamp", *_SCALARS, *_STRUCTS, "capture")
_column_values = operator.itemgetter(*_COLUMN_FIELDS)
# A native row (export/batch.py: _cbor_json.c's ``parquet_row``, its PARQUET_ROW_FIELDS): a record's values
# in the schema's order, None for a missing field; the timestamp as microseconds since the epoch (or None);
# each struct flattened, its own slot True (None: no struct)
# and its fields' values after it, each of its field's type or None; its capture already as the capture
# column's JSON and its raw bodies; and no field the typed columns do not have.
_ROW_FIELDS = ("id", "ver", "timestamp",
               "identity", *(f"identity.{name}" for name in _IDENTITY_FIELDS),
               "model", "api_type",
               "usage", *(f"usage.{name}" for name in _USAGE_FIELDS),
               "estimated_cost", *(f"estimated_cost.{name}" for name in _COST_FIELDS),
               "duration_ms", "capture_id", "session_id", "path", "status_code",
               "capture", "raw_request_body", "raw_response_body")
_ROW_RECORD_FIELDS = _ROW_FIELDS[:_ROW_FIELDS.index("capture")]
# Columns with few distinct values, worth a dictionary encoding; the others (ids, times, bodies, the capture)
# are all but unique per record, where building a dictionary only to drop it costs time.
_DICTIONARY_COLUMNS = ["ver", "identity.login_name", "identity.node_id", "identity.tags.list.element", "model",
                       "api_type", "estimated_cost.currency", "session_id", "path", "status_code"]
# Columns without min/max statistics: nobody filters on them, and each page's statistics would hold two whole
# captures or bodies (3.5% of the file for the standard records).
_NO_STATISTICS = frozenset({"capture", "raw_request_body", "raw_response_body", "extra"})
# Records per row group: its records are built into Arrow arrays and written before the next group's, so a
# batch of 10,000 records never holds more than this many records uncompressed.
PARQUET_CHUNK = 1000
# Records decoded at a time: a decoded record (Python dicts and strings) takes several times its stored
# size, its Arrow columns about its size, so each slice is built into Arrow arrays and its records let go
# before the next is decoded (a worker's Python peak for a batch of 1,400 records: 32 MiB with whole row
# groups of 1,000 decoded at once, 13 MiB with slices of 250; a worker's peak growth for a batch of 1,300
# records 22 MiB with slices of 250, 16 with 100; docs/benchmarks.md). A divisor of PARQUET_CHUNK.
PARQUET_SLICE = 100


class EncodedCapture(NamedTuple):
    """A record's capture already as its columns' values: what a native row (export/batch.py, _cbor_json.c's
    ``parquet_row``) puts in its record's ``capture`` when its slice also holds decoded records
    (``_row_record``), so that the encoder takes them as they are (``_captures``) rather than decoding and
    writing the capture."""

    json: bytes  # the capture column: its JSON without the raw bodies
    raw_request: bytes | None
    raw_response: bytes | None


class _Extras:
    """Per record, the values the typed columns cannot hold (the ``extra`` column), made on demand."""

    def __init__(self, count: int) -> None:
        self.of: list[dict[str, Any] | None] = [None] * count

    def __getitem__(self, index: int) -> dict[str, Any]:
        extra = self.of[index]
        if extra is None:
            extra = self.of[index] = {}
        return extra


class ParquetEncoder:
    """Records to Parquet column by column: one pass takes every typed field of every record (in C, by
    ``operator.itemgetter``), each column is checked as a whole by the types it holds and handed to Arrow
    whole (structs straight from the records' dicts); only a column holding a value of an unexpected type
    is checked value by value, its misfits going to ``extra``."""

    decoded = True
    id_first = False  # records are read by field name: ``id`` need not lead the map (export/batch.py)

    def __init__(self, compression: str = "zstd") -> None:
        self.pa = _pyarrow()
        self.schema = parquet_schema()
        self.compression = compression
        self.extension, self.content_type = FORMATS["parquet"].object_type(compression)
        self.statistics = [path for path in _leaf_paths(self.pa, self.schema)
                           if path.split(".")[0] not in _NO_STATISTICS]

    def encode(self, records: Sequence[bytes | memoryview]) -> bytes:
        return self.encode_records(cbor2.loads(record) for record in records)

    def encode_records(self, records: Iterable[Mapping[str, Any] | tuple[Any, ...]]) -> bytes:
        """The records (decoded, or native rows: ``record_batch``) as Parquet, one row group per
        ``PARQUET_CHUNK`` records; ``records`` may be a
        generator, taken ``PARQUET_SLICE`` records at a time: each slice is built into Arrow arrays (about
        its stored size) and its decoded records let go before the next slice is decoded, and each row
        group is written (encoded and compressed) once its slices are built, so a batch never holds more
        than one slice decoded and one row group uncompressed."""
        pa = self.pa
        sink = pa.BufferOutputStream()
        with closing(_parquet_writer(sink, self.schema, compression=self.compression,
                                     write_statistics=self.statistics, use_dictionary=_DICTIONARY_COLUMNS)) as writer:
            group: list[Any] = []  # the row group's record batches, one per slice
            rows = 0
            chunk: list[Mapping[str, Any] | tuple[Any, ...]] = []
            for record in records:
                chunk.append(record)
                if len(chunk) == PARQUET_SLICE:
                    group.append(self.record_batch(chunk))
                    rows += len(chunk)
                    chunk = []
                    if rows >= PARQUET_CHUNK:
                        writer.write_table(pa.Table.from_batches(group), row_group_size=PARQUET_CHUNK)
                        group, rows = [], 0
            if chunk:
                group.append(self.record_batch(chunk))
            del chunk
            if group:
                writer.write_table(pa.Table.from_batches(group), row_group_size=PARQUET_CHUNK)
            del group
        data: bytes = sink.getvalue().to_pybytes()
        return data

    def record_batch(self, records: Sequence[Mapping[str, Any] | tuple[Any, ...]]) -> Any:
        """One slice's record batch. ``records``: decoded records (``id`` set in them), or native rows
        (``_ROW_FIELDS``: export/batch.py), or both."""
        extras = _Extras(len(records))
        kinds = set(map(type, records))
        if kinds == {tuple}:  # native rows: the columns as they are, no field but the typed ones
            values: dict[str, Sequence[Any]] = dict(zip(_ROW_FIELDS, zip(*records, strict=True), strict=True))
            captures = (list(values["capture"]), list(values["raw_request_body"]), list(values["raw_response_body"]))
            structs = {name: self._flat_struct(values, name) for name in _STRUCTS}
            structs["timestamp"] = self.pa.array(values["timestamp"], self.schema.field("timestamp").type)
            return self._record_batch(values, captures, extras, None, structs)
        if tuple in kinds:  # a slice with decoded records too (foreign rows, rows left to Python): all as those
            records = [_row_record(record) if type(record) is tuple else record for record in records]
        dicts = cast(Sequence[Mapping[str, Any]], records)
        try:
            columns = list(zip(*map(_column_values, dicts), strict=True))
            complete = True
        except KeyError:  # a record without some field (estimated_cost when unknown): null in its column
            columns = list(zip(*map(_typed_fields, dicts), strict=True))
            complete = False
        if not columns:
            columns = [() for _ in _COLUMN_FIELDS]
        values = dict(zip(_COLUMN_FIELDS, columns, strict=True))
        # A record holding every typed field holds another one exactly when it has more fields than those.
        others = (set(map(len, dicts)) != {len(_KNOWN_FIELDS)} if complete
                  else not set(chain.from_iterable(dicts)) <= _KNOWN_FIELDS)
        return self._record_batch(values, _captures(values["capture"]), extras, dicts if others else None)

    def _record_batch(self, values: Mapping[str, Sequence[Any]],
                      captures: tuple[list[bytes | None], list[bytes | None], list[bytes | None]], extras: _Extras,
                      others: Sequence[Mapping[str, Any]] | None, structs: dict[str, Any] | None = None) -> Any:
        """The record batch of the typed fields' ``values`` by name, the capture columns' ``captures``; ``others``:
        the records when some hold a field of no typed column (to ``extra``); ``structs``: the timestamp and
        struct columns when built already (native rows)."""
        pa, schema = self.pa, self.schema
        arrays: dict[str, Any] = {"id": pa.array(values["id"], pa.int64())}
        arrays["timestamp"] = (structs["timestamp"] if structs is not None
                               else self._timestamps(values["timestamp"], extras))
        for name, kind in _SCALARS.items():
            arrays[name] = self._column(values[name], kind, name, schema.field(name).type, extras)
        for name, fields in _STRUCTS.items():
            arrays[name] = (structs[name] if structs is not None
                            else self._struct_column(values[name], fields, name, schema.field(name).type, extras))
        texts, raw_requests, raw_responses = captures
        arrays["capture"] = _bytes_column(pa, texts, pa.string())  # orjson writes UTF-8
        arrays["raw_request_body"] = pa.array(raw_requests, pa.binary())
        arrays["raw_response_body"] = pa.array(raw_responses, pa.binary())
        if others is not None:
            for index, record in enumerate(others):
                if record.keys() - _KNOWN_FIELDS:
                    extra = extras[index]
                    for key, value in record.items():
                        if key not in _KNOWN_FIELDS:
                            extra[str(key)] = value
        arrays["extra"] = pa.array([None if extra is None else json_bytes(extra) for extra in extras.of],
                                   pa.binary()).view(pa.string())
        return pa.RecordBatch.from_arrays([arrays[name] for name in schema.names], schema=schema)

    def _timestamps(self, values: Sequence[Any], extras: _Extras) -> Any:
        if not set(map(type, values)) <= {datetime, _NONE}:
            values = list(values)
            for index, value in enumerate(values):
                if value is not None and not isinstance(value, datetime):
                    extras[index]["timestamp"] = value
                    values[index] = None
        # Arrow takes aware datetimes to UTC and naive ones as UTC, as the exported records mean them.
        return self.pa.array(values, self.pa.timestamp("us", tz="UTC"))

    def _column(self, values: Sequence[Any], kind: type, name: str, arrow_type: Any, extras: _Extras) -> Any:
        """A typed column; a value it cannot hold goes to the record's extra under ``name``."""
        if _clean(values, kind):
            try:
                return self.pa.array(values, arrow_type)
            except (OverflowError, self.pa.ArrowInvalid):
                pass  # an integer out of the column's range: checked one by one below
        values = list(values)
        for index, value in enumerate(values):
            if value is not None and not _fits(value, kind, name):
                extras[index][name] = value
                values[index] = None
            elif kind is float and value is not None:
                values[index] = float(value)
        return self.pa.array(values, arrow_type)

    def _flat_struct(self, values: Mapping[str, Sequence[Any]], name: str) -> Any:
        """A struct column from native rows' flattened structs (each field's values fit its type: _cbor_json.c
        leaves any other struct to Python), null where the struct's own slot is None."""
        pa = self.pa
        arrow_type = self.schema.field(name).type
        children = [pa.array(values[f"{name}.{child.name}"], child.type) for child in arrow_type]
        presence = values[name]
        nulls = presence.count(None)
        if not nulls:
            return pa.StructArray.from_arrays(children, fields=list(arrow_type))
        # The validity bitmap is a boolean array's values: StructArray.from_arrays's ``mask`` would invert one with
        # pyarrow.compute, whose import costs each encode worker ~60 ms of CPU and several MiB.
        valid = pa.array([present is not None for present in presence], pa.bool_())
        return pa.Array.from_buffers(arrow_type, len(presence), [valid.buffers()[1]], null_count=nulls,
                                     children=children)

    def _struct_column(self, values: Sequence[Any], fields: dict[str, type], name: str, arrow_type: Any,
                       extras: _Extras) -> Any:
        pa = self.pa
        if set(map(type, values)) <= _DICT_OR_NONE:
            present = [value for value in values if value]
            if (set(chain.from_iterable(present)) <= fields.keys()
                    and set(map(type, chain.from_iterable(map(dict.values, present)))) <= _STRUCT_CLEAN_TYPES[name]
                    and all(_clean([value.get(field) for value in present], list)
                            for field, kind in fields.items() if kind is list)):
                try:
                    return pa.array(values, arrow_type)
                except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
                    pass  # a value in the wrong field (text for a number, ...): value by value below
        rows = []
        for index, value in enumerate(values):
            extra: dict[str, Any] = {}
            rows.append(_struct(value, fields, extra, name))
            if extra:
                extras[index].update(extra)
        return pa.array(rows, arrow_type)


def _leaf_paths(pa: Any, schema: Any) -> list[str]:
    """The Parquet column paths of an Arrow schema's leaves (a list's items: ``<name>.list.element``)."""
    def path(name: str, arrow_type: Any) -> str:
        return f"{name}.list.element" if pa.types.is_list(arrow_type) else name

    paths = []
    for field in schema:
        if pa.types.is_struct(field.type):
            paths += [path(f"{field.name}.{child.name}", child.type) for child in field.type]
        else:
            paths.append(path(field.name, field.type))
    return paths


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _row_record(row: tuple[Any, ...]) -> dict[str, Any]:
    """A native row as the decoded record the encoder takes: its typed fields, each struct a dict, and an
    EncodedCapture."""
    values = dict(zip(_ROW_RECORD_FIELDS, row, strict=False))
    record = {name: value for name, value in values.items() if "." not in name}
    if record["timestamp"] is not None:
        record["timestamp"] = _EPOCH + timedelta(microseconds=record["timestamp"])
    for name, fields in _STRUCTS.items():
        if record[name] is not None:
            record[name] = {field: values[f"{name}.{field}"] for field in fields}
    capture, raw_request, raw_response = row[len(_ROW_RECORD_FIELDS):]
    record["capture"] = None if capture is None else EncodedCapture(capture, raw_request, raw_response)
    return record


def _typed_fields(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """``_column_values(record)`` for a record that may lack some fields (None for those), but ``id``."""
    try:
        return _column_values(record)  # type: ignore[no-any-return]
    except KeyError:
        record["id"]  # a record without an id cannot be written: KeyError, as before
        return tuple(map(record.get, _COLUMN_FIELDS))


def _captures(values: Sequence[Any]) -> tuple[list[bytes | None], list[bytes | None], list[bytes | None]]:
    """The capture column (JSON of each capture without its raw bodies) and the raw body columns. A capture
    without raw bodies (most) is written as it is, not copied first; an EncodedCapture is taken as it is."""
    captures: list[bytes | None] = []
    raw_requests: list[bytes | None] = []
    raw_responses: list[bytes | None] = []
    for capture in values:
        if capture is None:
            captures.append(None)
            raw_requests.append(None)
            raw_responses.append(None)
            continue
        if type(capture) is EncodedCapture:
            captures.append(capture.json)
            raw_requests.append(capture.raw_request)
            raw_responses.append(capture.raw_response)
            continue
        if type(capture) is dict and not (_may_hold_raw(capture.get("request"))
                                          or _may_hold_raw(capture.get("response"))):
            raw_request = raw_response = None
        else:
            capture, raw_request, raw_response = _split_raw(capture)
        captures.append(json_bytes(capture))
        raw_requests.append(raw_request)
        raw_responses.append(raw_response)
    return captures, raw_requests, raw_responses


def _bytes_column(pa: Any, values: list[bytes | None], arrow_type: Any) -> Any:
    """A binary or string (``values`` in UTF-8) column, its data buffer the values joined once. Arrow's
    builder would copy them into a buffer it grows by doubling: each larger buffer a new copy, and those
    past malloc's mmap threshold (256 KiB in an encode worker) page-faulted in afresh."""
    if None not in values:
        present = cast(list[bytes], values)
        try:
            offsets = array("i", accumulate(map(len, present), initial=0))
        except OverflowError:  # 2 GiB or more: Arrow's builder splits it
            pass
        else:
            return pa.Array.from_buffers(arrow_type, len(present), [None, pa.py_buffer(offsets),
                                                                    pa.py_buffer(b"".join(present))])
    return pa.array(values, pa.binary()).view(arrow_type)


def _may_hold_raw(part: Any) -> bool:
    if type(part) is dict:
        return isinstance(part.get("raw_body"), bytes)
    return isinstance(part, Mapping)


def _clean(values: Sequence[Any], kind: type) -> bool:
    """Whether Arrow can take ``values`` as they are into a ``kind`` column (a list: of strings only)."""
    return set(map(type, values)) <= _CLEAN_TYPES[kind] and (kind is not list or _all_strings(values))


def _all_strings(lists: Sequence[Any]) -> bool:
    return all(type(item) is str for items in lists if items is not None for item in items)


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


_LINE = re.compile(rb"[^\r\n]+")  # the lines bytes.splitlines gives, but one at a time


def _json_line_fields(data: bytes, extension: str, fields: frozenset[str], stored: object = None) -> Iterator[Any]:
    """``fields`` of each line's record, a line at a time (the text of one object, never its records at
    once). orjson reads each line; what it refuses (NaN, integers beyond 64 bits) the standard library
    reads as ``_json_lines`` does, and raises on as it does."""
    for match in _LINE.finditer(_decompress(data, extension)):
        line = match.group()
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = json.loads(line)
        yield _picked(record, fields)


def _picked(record: Any, fields: frozenset[str]) -> Any:
    """The ``fields`` a decoded record has; anything that is not a map as it is."""
    return {name: record[name] for name in fields if name in record} if isinstance(record, dict) else record


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
        yield _parquet_record(row)


def _parquet_fields(data: bytes, extension: str, fields: frozenset[str], stored: object = None) -> Iterator[Any]:
    """``fields`` of each record: only their columns (and ``extra``, where a value a typed column could not
    hold went) are read, one row group at a time."""
    _pyarrow()
    import pyarrow.parquet as pq

    file = pq.ParquetFile(io.BytesIO(data))
    columns = [name for name in file.schema_arrow.names if name in fields or name == "extra"]
    for batch in file.iter_batches(columns=columns):
        for row in batch.to_pylist():
            yield _picked(_parquet_record(row), fields)


def _parquet_record(row: dict[str, Any]) -> dict[str, Any]:
    """One record from the values of its row (all its columns, or some of them)."""
    record: dict[str, Any] = {}
    # Bytes where a typed column wanted text went to ``extra`` as {"$base64": …}: bytes again here.
    extra = _restore_bytes(json.loads(row.pop("extra"))) if row.get("extra") else {}
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
    return record


def _parquet_ids(data: bytes) -> list[int]:
    _pyarrow()
    import pyarrow.parquet as pq

    return [int(i) for i in pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist()]


# -- the registry -----------------------------------------------------------------------------------------

Reader = Callable[[bytes, str], Iterator[dict[str, Any]]]  # (object bytes, its extension) -> records
# (object bytes, its extension, top-level fields, stored rows) -> each record's fields (a record that is no
# map: as it is); see record_fields
FieldReader = Callable[[bytes, str, frozenset[str], Callable[[int], bytes | None] | None], Iterator[Any]]


@dataclass(frozen=True)
class FormatInfo:
    """One value of ``spec.format``: its ``choice`` (name and compressions, format_names.py) and how it is
    written and read. ``extensions`` and ``content_types``: the object's extension and Content-Type per compression
    (no Content-Encoding: clients would decompress on download and the name would lie). ``encoder`` makes
    the encoder for a compression; ``reader`` reads an object back; ``ids`` reads just the record ids when
    the format can do that more cheaply than reading whole records; ``fields`` reads a few top-level fields
    of each record (``verify``) without decoding the rest."""

    choice: FormatChoice
    extensions: Mapping[str, str]
    content_types: Mapping[str, str]
    encoder: Callable[[str], BatchEncoder]
    reader: Reader
    ids: Callable[[bytes], list[int]] | None = None
    fields: FieldReader | None = None
    decoded: bool = True  # whether its encoder needs the records decoded (see BatchEncoder.decoded)
    # Memory its encoder builds for a batch whose records are decoded (export/budget.py; measured in an
    # encode worker, the worker's copy of the rows and the pickled result included): per stored byte (JSON
    # Lines: the text, as long as the records, joined and pickled), and whatever the batch's size (Parquet:
    # a chunk of records decoded, Arrow's memory pool and the writer's buffers, ~60 MiB).
    working_memory: float = 2.8
    fixed_working_memory: int = 0
    # What loading its library adds to a process that encodes it (pyarrow: ~36 MiB PSS per process).
    library_memory: int = 0
    # The modules of that library, imported once by the encode pool's fork server so that its workers share
    # them rather than each importing its own copy (export/pool.py).
    library_modules: tuple[str, ...] = ()
    requires: Callable[[], None] | None = None  # raises FormatUnavailable when a package it needs is missing
    # Whether an encode worker keeps a batch's freed memory for its next batch (export/budget.py,
    # ``serve_batches``). Not Parquet's, but after a small batch (``SMALL_PARQUET_BATCH_BYTES``): its encoder's
    # fixed working memory comes on top of the batch, and a Parquet export at ``limit: 10000`` has little room
    # left below 200 MB (tests/integration/test_parquet_memory.py).
    keeps_batch_memory: bool = True

    @property
    def name(self) -> str:
        return self.choice.name

    @property
    def compressions(self) -> tuple[str, ...]:
        return self.choice.compressions

    @property
    def default_compression(self) -> str:
        return self.choice.default_compression

    def check_available(self) -> None:
        """Raise FormatUnavailable when this format cannot be written here."""
        if self.requires is not None:
            self.requires()

    def object_type(self, compression: str) -> tuple[str, str]:
        """(extension, content type) of this format's objects with ``compression``."""
        return self.extensions[compression], self.content_types[compression]


FORMATS: dict[str, FormatInfo] = {
    info.name: info
    for info in (
        FormatInfo(
            FORMAT_CHOICES["cbor-zstd"],
            extensions={"zstd": ".cbor.zstd"},
            content_types={"zstd": "application/zstd"},
            encoder=lambda compression: CborZstdEncoder(),
            # Read exactly as the Aperture docs tell their users: zstd, then the CBOR sequence.
            reader=lambda data, extension: decode_sequence(_decompress(data, ".zstd")),
            fields=lambda data, extension, fields, stored: skim_sequence(_decompress(data, ".zstd"), fields, stored),
            decoded=False,
        ),
        FormatInfo(
            FORMAT_CHOICES["jsonl"],
            extensions={"none": ".jsonl", "gzip": ".jsonl.gz", "zstd": ".jsonl.zst"},
            content_types={"none": "application/x-ndjson", "gzip": "application/gzip", "zstd": "application/zstd"},
            encoder=JsonLinesEncoder,
            reader=lambda data, extension: _json_lines(_decompress(data, extension)),
            fields=_json_line_fields,
        ),
        FormatInfo(
            FORMAT_CHOICES["parquet"],
            extensions=dict.fromkeys(("none", "gzip", "zstd"), ".parquet"),
            content_types=dict.fromkeys(("none", "gzip", "zstd"), "application/vnd.apache.parquet"),
            encoder=ParquetEncoder,
            reader=lambda data, extension: _parquet_records(data),
            ids=_parquet_ids,
            fields=_parquet_fields,
            requires=lambda: _require_pyarrow(),
            working_memory=1.5,
            fixed_working_memory=64 << 20,
            library_memory=36 << 20,
            library_modules=("capture_export.export.arrow",),
            keeps_batch_memory=False,
        ),
    )
}
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
    if not data:
        raise EmptyObject
    yield from _EXTENSION_FORMATS[extension].reader(data, extension)


def record_fields(data: bytes, key: str, fields: frozenset[str],
                  stored: Callable[[int], bytes | None] | None = None) -> Iterator[Any]:
    """The top-level ``fields`` of each record of one data object (those it has), as ``decode_object`` gives
    them, decoding as little as its format allows; a record that is not a map comes as it is. ``stored(id)``
    gives the store's row of ``id`` when it is sealed (so well formed), else None: a CBOR record that is
    that row byte for byte comes as a ``StoredCopy`` (export/skim.py), nothing of it decoded."""
    extension = data_extension(key)
    if extension is None:
        raise ValueError(f"not a data object (unknown extension): {key}")
    if not data:
        raise EmptyObject
    info = _EXTENSION_FORMATS[extension]
    if info.fields is not None:
        yield from info.fields(data, extension, fields, stored)
    else:
        yield from (_picked(record, fields) for record in info.reader(data, extension))


def record_ids(data: bytes, key: str) -> list[int]:
    """The record ids of one data object, read as cheaply as its format allows."""
    info = format_of(key)
    if info is not None and info.ids is not None:
        return info.ids(data)
    if not data:  # no ids, as before EmptyObject: the sweep's judgement of such an object is unchanged
        return []
    return [int(record["id"]) for record in decode_object(data, key)]
