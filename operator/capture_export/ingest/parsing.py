"""Turning a request body into rows to commit: undo Content-Encoding within limits, parse the source's
format, check, map and encode each record. Pure CPU work with no web framework in it, so that the
parsing processes of the ingest server (``parse_workers``) stay small."""

from __future__ import annotations

import gc
import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cbor2
import zstandard

from ..lifetime import end_with, leave_interrupts_to_the_parent
from ..store.records import encode_ordered
from .errors import BadInput, TooLarge, UnsupportedMediaType
from .limits import IngestLimits
from .values import check_cbor_values, check_json_values, check_protobuf_values

__all__ = ["PARSERS", "IngestLimits", "Parse", "Parsed", "Row", "cyclic_gc_paused", "prepare", "prepare_by_name",
           "start_parsing_process", "warm"]

log = logging.getLogger(__name__)

Row = tuple[int, bytes, str]  # (timestamp_us, CBOR body as encode_body makes it, capture_id)


@dataclass
class Parsed:
    """What a request's body holds: records to store, and items that are not records (ignored)."""

    records: list[dict[str, Any]]  # in their stored shape (records.encode_ordered), the parser's to give up
    ignored: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific facts for its answer


# -- bodies --------------------------------------------------------------------------------------------

# A body may concatenate gzip members or zstd frames (the decoded body is their concatenation), up to this
# many: each costs a decompressor, and 16 MiB of empty members would be a million of them.
MAX_MEMBERS = 20_000
# Compressed bytes handed to a decompressor at a time, so that what it leaves over past the end of a member
# is small (copying the rest of the body after each member made many small members quadratic). zstd's
# output per call has no bound of its own: 256 bytes hold at most 64 RLE blocks of 128 KiB, so the limit
# is overshot by 8 MiB at most; zlib's is bounded by max_length.
_STEPS = {"gzip": 4096, "zstd": 256}


def _decode(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` without ever holding more than ``limit`` decoded bytes (zip bombs). Every
    member or frame is decoded to its end: a body cut short is refused, not decoded as far as it goes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate", "zstd"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding} is not supported (gzip, deflate, zstd are)")
    codec = "zstd" if encoding == "zstd" else "gzip"
    step = _STEPS[codec]
    zstd = zstandard.ZstdDecompressor() if codec == "zstd" else None
    out = bytearray()
    data = memoryview(body)
    start = members = 0
    try:
        while start < len(data):
            members += 1
            if members > MAX_MEMBERS:
                raise BadInput(f"more than {MAX_MEMBERS} {encoding} members in one body")
            if zstd is not None:
                decompressor: Any = zstd.decompressobj()
            else:  # gzip or zlib header (47: either, auto)
                decompressor = zlib.decompressobj(47 if encoding != "deflate" else 15)
            position = start
            while not decompressor.eof and position < len(data):
                chunk = data[position:position + step]
                if zstd is not None:
                    out += decompressor.decompress(chunk)
                else:
                    out += decompressor.decompress(chunk, limit + 1 - len(out))
                    if decompressor.unconsumed_tail:
                        raise TooLarge(f"body larger than the limit of {limit} bytes once decompressed")
                if len(out) > limit:
                    raise TooLarge(f"body larger than the limit of {limit} bytes once decompressed")
                position = min(position + step, len(data))
            if not decompressor.eof:
                raise BadInput(f"truncated {encoding} body")
            start = position - len(decompressor.unused_data)  # a concatenated member follows
    except (zlib.error, zstandard.ZstdError) as exc:
        raise BadInput(f"body is not valid {encoding}: {exc}") from None
    return bytes(out)


# How deep a record may nest: cbor2's default ``max_depth``, where the readers of the exported objects (and
# the exporter's own decoder) stop. JSON nests to 1024 levels (orjson): a record accepted deeper could
# never be exported, and would hold the export of every record after it.
MAX_NESTING = 400
_CONTAINER_HEADS = bytes(range(0x80, 0xC0))  # CBOR array and map heads (and UTF-8 continuation bytes)


def _nests_too_deeply(body: bytes) -> bool:
    # A record nested N levels deep holds at least N container heads: most hold far fewer, and are not
    # decoded again.
    if len(body) - len(body.translate(None, _CONTAINER_HEADS)) < MAX_NESTING:
        return False
    try:
        cbor2.loads(body)
    except cbor2.CBORDecodeError:
        return True
    return False


def _encode_rows(records: Sequence[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for index, record in enumerate(records):
        try:
            ts, body = encode_ordered(record)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadInput(f"cannot be stored: {exc}", index=index) from None
        except RecursionError:
            raise BadInput(f"cannot be stored: nested more than {MAX_NESTING} levels deep", index=index) from None
        if _nests_too_deeply(body):
            raise BadInput(f"cannot be stored: nested more than {MAX_NESTING} levels deep (CBOR readers stop "
                           "there)", index=index)
        rows.append((ts, body, record["capture_id"]))
    return rows


def _records(body: bytes, content_type: str, limits: IngestLimits) -> Parsed:
    from .native import CBOR_TYPES, parse_records

    if content_type in CBOR_TYPES:
        check_cbor_values(body, limits.max_values)
    else:
        check_json_values(body, limits.max_values)
    return Parsed(parse_records(body, content_type, limits.max_records))


def _litellm(body: bytes, content_type: str, limits: IngestLimits) -> Parsed:
    from .litellm import parse_litellm

    check_json_values(body, limits.max_values)
    return Parsed(parse_litellm(body, limits.max_records))


def _otlp(body: bytes, content_type: str, limits: IngestLimits) -> Parsed:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from .otlp import PROTOBUF_TYPES, parse_otlp

    if content_type in PROTOBUF_TYPES:
        check_protobuf_values(body, ExportTraceServiceRequest.DESCRIPTOR, limits.max_values)
    else:
        check_json_values(body, limits.max_values)
    return parse_otlp(body, content_type, limits.max_records)


Parse = Callable[[bytes, str, IngestLimits], Parsed]

# source name -> (parse, an empty batch is fine)
PARSERS: dict[str, tuple[Parse, bool]] = {
    "records": (_records, False),
    "litellm": (_litellm, False),
    "otlp": (_otlp, True),
}


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a body is parsed and encoded.

    Parsing one request allocates tens of thousands of dicts and lists that all stay alive until their
    records are encoded, so the collector would run over them again and again (and, once they are
    promoted, over every object the process holds) to find nothing: they are trees, freed by reference
    counting. Leave the pause only once they are freed (``prepare`` returns the rows from an inner call),
    or the first allocation after it collects them all at once. Cycles made meanwhile (an exception's
    traceback) are collected after the pause as usual."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def prepare(parse: Parse, allow_empty: bool, body: bytes, encoding: str,
            content_type: str, limits: IngestLimits) -> tuple[int, dict[str, Any], list[Row]]:
    """Decode, parse, check and encode one body: ``(ignored items, source facts, rows to commit)``."""
    with cyclic_gc_paused():
        return _prepare(parse, allow_empty, body, encoding, content_type, limits)


def _prepare(parse: Parse, allow_empty: bool, body: bytes, encoding: str,
             content_type: str, limits: IngestLimits) -> tuple[int, dict[str, Any], list[Row]]:
    decoded = _decode(body, encoding, limits.max_decoded_bytes)
    del body
    try:
        parsed = parse(decoded, content_type, limits)
    except (ValueError, TypeError, LookupError, AttributeError, OverflowError, RecursionError) as exc:
        # A value the parser did not foresee. Parsing depends on the body alone, so the same body fails
        # the same way every time: a 400, not a retryable 503 that has the client resend it for ever.
        log.warning("ingest: a %s body the parser could not read (%s)", content_type, exc.__class__.__name__)
        raise BadInput(f"body cannot be read: {exc.__class__.__name__}: {str(exc)[:200]}") from None
    if not parsed.records and not allow_empty:
        raise BadInput("no records in the body")
    return parsed.ignored, parsed.extra, _encode_rows(parsed.records)


def prepare_by_name(source: str, body: bytes, encoding: str, content_type: str,
                    limits: IngestLimits) -> tuple[int, dict[str, Any], list[Row]]:
    """``prepare`` for a source named by its name (what a parsing process is handed)."""
    parse, allow_empty = PARSERS[source]
    return prepare(parse, allow_empty, body, encoding, content_type, limits)


def start_parsing_process(server_pid: int) -> None:
    """A parsing process's first step: end with the ingest server however it ends (and leave Ctrl-C to it),
    then import."""
    leave_interrupts_to_the_parent()
    end_with(server_pid)
    warm()


def warm() -> None:
    """Import every parser now (a parsing process, before its first request), and leave what the imports
    made out of the collector's work from then on (``gc.freeze``)."""
    from . import litellm, native, otlp  # noqa: F401

    gc.freeze()
