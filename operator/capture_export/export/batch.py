"""One batch's rows to one object's payload: the per-row checks, the filter and rewrites, the encoding.

``encode_rows(recipe, rows)`` is a pure function of the batch, run in the exporting process for the
default pass-through path and in a worker of the encode pool (export/pool.py) for everything that decodes.
It is the one place a row is checked before it leaves: a row that is not a CBOR map stops the batch
(``CorruptRecord``, the export holds before it) and credential headers are stripped from every row our own
append did not write. So this module imports only what encoding needs (cbor2, orjson, zstandard and, for
Parquet, pyarrow): no API models, no S3 or Kubernetes clients, which keeps the workers small.

Each record is decoded at most once. The default path never decodes: ids are spliced into the stored CBOR
(``with_id``). A filter on a CBOR format reads only the fields it needs (``peek_fields``). Anything else
decodes each row once (``decoded_records``), strips credentials on the decoded map, then filters, rewrites
(privacy mode, redactions) and encodes record by record, so a batch of 10,000 records never holds 10,000
decoded records at once.
"""

from __future__ import annotations

import gc
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import cbor2

from ..store.base import StoredRecord
from ..store.records import CREDENTIAL_MARKERS, CorruptRecord, id_head, strip_credentials, with_id
from .budget import release_freed_memory
from .formats import FORMATS, FormatUnavailable, encoder_for
from .transform import RecordTransform, peek_fields

__all__ = [
    "BatchFailure",
    "BatchRecipe",
    "EncodedBatch",
    "FilterOptions",
    "PackedRows",
    "decoded_records",
    "encode_batch",
    "encode_in_worker",
    "encode_rows",
    "exported_body",
    "record_pieces",
]


@dataclass(frozen=True)
class FilterOptions:
    """``spec.filter`` as plain values (what transform.RecordFilter reads)."""

    models: tuple[str, ...] | None = None
    api_types: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    status_codes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class BatchRecipe:
    """What an exporter's spec says about turning rows into an object: plain values, so that a worker
    process receives it with each batch (the attributes transform.RecordTransform reads)."""

    format: str
    compression: str
    filter: FilterOptions | None = None
    privacy_mode: bool = False
    redact_fields: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: Any) -> BatchRecipe:
        chosen = spec.filter
        return cls(
            format=spec.format,
            compression=spec.compression or FORMATS[spec.format].default_compression,
            filter=None if chosen is None else FilterOptions(
                *(tuple(values) if values else None
                  for values in (chosen.models, chosen.api_types, chosen.tags, chosen.status_codes))),
            privacy_mode=spec.privacy_mode,
            redact_fields=tuple(spec.redact_fields),
        )

    @property
    def decodes(self) -> bool:
        """Whether records are decoded (a format that is not CBOR, privacy mode or redactions): the work
        worth sending to another process. The default, and a filter alone on CBOR, are not."""
        return FORMATS[self.format].decoded or self.privacy_mode or bool(self.redact_fields)


class BatchFailure(Exception):
    """Why a batch cannot be written; the engine turns it into an ExportFailure (export/engine.py).
    ``kind`` is one of CORRUPT (a row that is not a record), UNAVAILABLE (the format's package is missing
    here) and UNENCODABLE (a record the format cannot represent); all hold the export before the batch."""

    CORRUPT = "corrupt"
    UNAVAILABLE = "unavailable"
    UNENCODABLE = "unencodable"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass
class EncodedBatch:
    payload: bytes | None  # None: the filter excluded every record, no object is written
    rows: int  # records in the payload
    filtered: int  # records the filter excluded
    raw_bytes: int  # stored bytes of the batch's rows
    seconds: float
    cpu_seconds: float


def exported_body(row: StoredRecord) -> bytes:
    """The row's stored map as it may leave the store (still without ``id``): a row our own append wrote as
    stored; another writer's with any credential header stripped, decoded and re-encoded only when the name
    of one could occur in its bytes. Raises CorruptRecord for a row that cannot be read."""
    body = row.body
    if row.stripped:
        return body
    if not _might_hold_credentials(body):
        return body
    record = _decode(row)
    if not strip_credentials(record):
        return body
    return cbor2.dumps(record, timezone=UTC)


def _might_hold_credentials(body: bytes | memoryview) -> bool:
    lowered = (body if isinstance(body, bytes) else bytes(body)).lower()
    return any(marker in lowered for marker in CREDENTIAL_MARKERS)


def record_pieces(rows: Iterable[StoredRecord]) -> list[bytes | memoryview]:
    """The rows as exported CBOR records (``id`` spliced in, credentials stripped), as pieces to write one
    after the other: each record's new map head, then its stored bytes after the old head, not copied."""
    pieces: list[bytes | memoryview] = []
    for row in rows:
        body = exported_body(row)
        head, offset = id_head(row.id, body)
        pieces.append(head)
        pieces.append(memoryview(body)[offset:])
    return pieces


def encode_batch(rows: Sequence[StoredRecord]) -> list[bytes]:
    """Stored rows as exported CBOR records: ``id`` spliced in, credential headers stripped."""
    return [with_id(row.id, exported_body(row)) for row in rows]


def _decode(row: StoredRecord) -> dict[str, Any]:
    id_head(row.id, row.body)  # refuses what with_id would: empty, not a map, an indefinite-length map
    try:
        record = cbor2.loads(row.body)
    except Exception as exc:
        raise CorruptRecord(row.id, f"undecodable CBOR ({exc.__class__.__name__})") from None
    if not isinstance(record, dict):
        raise CorruptRecord(row.id, "not a CBOR map")
    return record


def decoded_records(rows: Iterable[StoredRecord]) -> Iterator[dict[str, Any]]:
    """Each row's record, decoded once: ``id`` first, credential headers stripped (unless our own append
    wrote the row, which stripped them before storing it)."""
    for row in rows:
        body = _decode(row)
        if not row.stripped and _might_hold_credentials(row.body):
            strip_credentials(body)
        record = {"id": row.id}
        record.update(body)
        yield record


def encode_rows(recipe: BatchRecipe, rows: Sequence[StoredRecord]) -> EncodedBatch:
    """The batch's payload. Raises BatchFailure: a row that is not a CBOR map, the format missing here, or
    an encoder that cannot represent a record."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    first, last = rows[0], rows[-1]
    raw_bytes, handled = sum(len(row.body) for row in rows), len(rows)
    try:
        encoder = encoder_for(recipe.format, recipe.compression)
    except FormatUnavailable as exc:
        raise BatchFailure(BatchFailure.UNAVAILABLE, str(exc)) from None
    transform = RecordTransform(recipe)
    exported = 0
    try:
        if not encoder.decoded and not transform.rewrites:
            if transform.filter is not None:  # read just the fields the filter needs; ship the bytes as stored
                rows = [row for row in rows if transform.accepts(_peek(row, transform.filter.fields))]
            exported = len(rows)
            payload = encoder.encode(record_pieces(rows)) if rows else None
        else:
            def kept() -> Iterator[dict[str, Any]]:
                nonlocal exported
                for record in decoded_records(rows):
                    if transform.accepts(record):
                        exported += 1
                        yield transform.rewrite(record)

            if encoder.decoded:
                payload = encoder.encode_records(kept())
            else:
                payload = encoder.encode([cbor2.dumps(record, timezone=UTC) for record in kept()])
            if not exported:
                payload = None
    except CorruptRecord as exc:
        raise BatchFailure(BatchFailure.CORRUPT, f"{exc}; export holds before it until it is fixed") from None
    except Exception as exc:  # an encoder that cannot represent a record, or a row that is not a blob
        # A row the store holds as TEXT (or anything but bytes) is found only when a batch fails, so the
        # common path pays nothing for the check.
        text = next((row for row in rows if not isinstance(row.body, (bytes, bytearray, memoryview))), None)
        if text is not None:
            corrupt = CorruptRecord(text.id, f"stored as {type(text.body).__name__}, not as a CBOR blob")
            raise BatchFailure(BatchFailure.CORRUPT, f"{corrupt}; export holds before it until it is fixed") from None
        raise BatchFailure(BatchFailure.UNENCODABLE, f"records {first.id}-{last.id} could not be written as "
                           f"{recipe.format}: {exc.__class__.__name__}: {exc}; export holds before them") from None
    return EncodedBatch(
        payload=payload,
        rows=exported,
        filtered=handled - exported,
        raw_bytes=raw_bytes,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.thread_time() - cpu_started,
    )


def _peek(row: StoredRecord, fields: frozenset[str]) -> dict[str, Any]:
    id_head(row.id, row.body)  # refuses what with_id would
    try:
        record = peek_fields(row.body, fields)
    except Exception as exc:
        raise CorruptRecord(row.id, f"undecodable CBOR ({exc.__class__.__name__})") from None
    if not isinstance(record, dict):
        raise CorruptRecord(row.id, "not a CBOR map")
    return record


@dataclass
class PackedRows:
    """A batch's rows as a few flat objects, for the trip to an encode worker: ids, timestamps and flags as
    arrays, every body in one bytes object. Pickling it is a copy of a few buffers rather than of thousands
    of objects, and while the worker encodes, the exporting process holds this one object instead of the
    rows. The worker's rows are views into it (nothing copied again)."""

    ids: array
    timestamps: array
    stripped: bytes
    ends: array
    bodies: bytes

    @classmethod
    def pack(cls, rows: Sequence[StoredRecord]) -> PackedRows:
        ends = array("Q")
        end = 0
        for row in rows:
            end += len(row.body)
            ends.append(end)
        return cls(ids=array("q", [row.id for row in rows]), timestamps=array("q", [row.timestamp_us for row in rows]),
                   stripped=bytes(row.stripped for row in rows), ends=ends, bodies=b"".join(row.body for row in rows))

    def unpack(self) -> list[StoredRecord]:
        view = memoryview(self.bodies)
        rows, start = [], 0
        for record_id, timestamp_us, stripped, end in zip(self.ids, self.timestamps, self.stripped, self.ends,
                                                           strict=True):
            rows.append(StoredRecord(record_id, timestamp_us, view[start:end], bool(stripped)))  # type: ignore[arg-type]
            start = end
        return rows


def encode_in_worker(recipe: BatchRecipe, packed: PackedRows) -> EncodedBatch:
    """``encode_rows`` in a worker of the encode pool. The cyclic garbage collector is off meanwhile:
    decoded records hold no cycles, and a batch allocates millions of containers that it would otherwise
    walk again and again (it costs a third of the decoding time). What the batch freed goes back to the
    operating system before the worker waits for the next one."""
    gc.disable()
    try:
        return encode_rows(recipe, packed.unpack())
    finally:
        gc.enable()
        release_freed_memory()
