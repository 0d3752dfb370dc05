"""One batch's rows to one object's payload: the per-row checks, the filter and rewrites, the encoding.

``encode_rows(recipe, rows)`` is a pure function of the batch, run in the exporting process for the
default pass-through path (and uncompressed JSON Lines of sealed rows: ``BatchRecipe.transcodes_natively``)
and in a worker of the encode pool (export/pool.py) for everything that decodes.
It is the one place a row is checked before it leaves (``check_rows``): a row whose seal is valid under
the store's key (store/seal.py) was written by our own append and goes out as stored; every other row is
*foreign* and gets the full check (structure, the known fields' types, ``ts_us`` against the body's
``timestamp``), credentials stripped (store/check.py). A row that fails it
is never encoded: with ``onCorruptRecord: Hold`` the batch ends before it (``EncodedBatch.held``; the
first row: ``BatchFailure``), with ``Quarantine`` it is left out and named in ``EncodedBatch.quarantined``
for the engine to move aside before it commits the batch. A sealed row the encoding then cannot read (no
CBOR reader decodes it, or the default format cannot splice an id into it: a writer holding the store's key,
with a bug) is found once the batch fails, and the batch is encoded again with that row failing the check
(``_undecodable``). The store's seal travels in the recipe, so the check runs the same in-process and in an
encode worker. A stored map under tag 55799 (self-described CBOR) is that map: the marker is left out.
This module imports the codecs encoding needs (cbor2, orjson, zstandard and, for Parquet, pyarrow) and no
S3 or Kubernetes clients, nor pydantic and the API models (the store package takes only the API's
vocabulary), which keeps the pool's fork server, and so its workers, small and quick to start: it imports
this module and ``__main__`` (the ``capture-export`` command, whose commands import what they run when they
run), and nothing else (tests/unit/test_import_costs.py).

Each record is decoded at most once. The default path never decodes a sealed row: ids are spliced into
the stored CBOR (``id_head``; a whole batch at once by _cbor_json.c's ``spliced_records`` where the optional
native extension is built); nor does JSON Lines without a filter or rewrite where that extension is built
(``_json_lines``: _cbor_json.c writes the row's JSON line straight from its CBOR), nor
privacy mode alone into CBOR or JSON Lines (``_privacy_records``: _cbor_json.c scrubs the row into the bytes
cbor2 writes for the scrubbed record); nor Parquet without a filter or rewrite, or with privacy mode alone
(``_parquet_records``, ``_privacy_parquet_records``: _cbor_json.c gives a sealed row's, or its scrubbed
bytes', values for the columns, its capture column's JSON and its raw bodies). A filter on a CBOR format
reads only the fields it needs (``peek_fields``). Anything else decodes each row once
(a foreign row's check is that decode; privacy mode decodes a sealed row's natively scrubbed or prefiltered
bytes where it can: ``_privacy_record``), then
filters, rewrites (privacy mode, redactions) and encodes record by record, so a batch of 10,000 records
never holds 10,000 decoded records at once.

The default path's usual batch, every row sealed, has its seals checked in one loop and goes out without an
object per row (``_as_stored``); a batch with any other row takes the row-by-row check (``check_rows``).
"""

from __future__ import annotations

import functools
import gc
import hmac
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import cbor2

from ..store.base import StoredRecord
from ..store.check import check_foreign_record, decode_problem
from ..store.credentials import CredentialPolicy
from ..store.records import (
    SELF_DESCRIBED,
    CorruptRecord,
    HeadCutShort,
    ReservedHead,
    id_head,
    loads_record,
    untagged,
    with_id,
)
from ..store.seal import SEAL_SIZE, NativeSealCheck, RecordSeal
from .budget import release_freed_memory, serve_batches
from .formats import (
    FORMATS,
    ZSTD_ONE_SHOT_BYTES,
    BatchEncoder,
    CborZstdEncoder,
    FormatUnavailable,
    JsonLinesEncoder,
    ParquetEncoder,
    encoder_for,
)
from .transform import RecordTransform, peek_fields

# _cbor_json.parquet_row's values of a stored record for the Parquet columns (formats._ROW_FIELDS): its id, its
# typed fields as cbor2 decodes them, the capture column's JSON, the raw request and response bodies.
ParquetRow = tuple[Any, ...]
ParquetRowOf = Callable[[bytes | memoryview, int], ParquetRow | None]

_native_json_line: Callable[[bytes | memoryview, int], bytes | None] | None
_native_parquet_row: ParquetRowOf | None
try:
    from ._cbor_json import json_line as _native_json_line
    from ._cbor_json import parquet_row as _native_parquet_row
except ImportError:  # built only where a C compiler was (hatch_build.py); the Python path writes the same bytes
    _native_json_line = _native_parquet_row = None
_native_privacy_prefilter: Callable[[bytes | memoryview], bytes | None] | None
_native_privacy_scrubbed: Callable[[bytes | memoryview], bytes | None] | None
try:
    from ._cbor_json import privacy_prefilter as _native_privacy_prefilter
    from ._cbor_json import privacy_scrubbed as _native_privacy_scrubbed
except ImportError:  # as above: privacy mode then decodes each stored record in full, with the same result
    _native_privacy_prefilter = _native_privacy_scrubbed = None
_native_spliced_records: Callable[[list[StoredRecord], int], bytes | None] | None
try:
    from ._cbor_json import spliced_records as _native_spliced_records
except ImportError:  # as above: the default format's batch is then spliced row by row in Python (``_pieces``)
    _native_spliced_records = None
_native_seals_valid: NativeSealCheck | None
try:
    from ._cbor_json import seals_valid as _native_seals_valid
except ImportError:  # as above: the seals of a batch are then checked row by row in Python (RecordSeal.all_valid)
    _native_seals_valid = None

__all__ = [
    "BatchFailure",
    "BatchRecipe",
    "CheckedRow",
    "EncodedBatch",
    "FilterOptions",
    "PackedRows",
    "SentOnce",
    "check_rows",
    "encode_batch",
    "encode_in_worker",
    "encode_rows",
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
    strip_headers: tuple[str, ...] = ()  # spec.stripHeaders: header names stripped beside the built-in ones
    on_corrupt_record: str = "Hold"  # or "Quarantine"
    # The store's seal (store/seal.py): rows it checks go out unchecked. It pickles as its key, so a worker
    # checks seals as the exporting process would; never in a repr.
    seal: RecordSeal | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_spec(cls, spec: Any, seal: RecordSeal | None = None) -> BatchRecipe:
        chosen = spec.filter
        return cls(
            format=spec.format,
            compression=spec.compression or FORMATS[spec.format].default_compression,
            filter=None if chosen is None else FilterOptions(
                *(tuple(values) if values else None
                  for values in (chosen.models, chosen.api_types, chosen.tags, chosen.status_codes))),
            privacy_mode=spec.privacy_mode,
            redact_fields=tuple(spec.redact_fields),
            strip_headers=tuple(spec.strip_headers),
            on_corrupt_record=spec.on_corrupt_record,
            seal=seal,
        )

    @property
    def decodes(self) -> bool:
        """Whether records are decoded (a format that is not CBOR, privacy mode or redactions): the work
        worth sending to another process. The default, and a filter alone on CBOR, are not."""
        return FORMATS[self.format].decoded or self.privacy_mode or bool(self.redact_fields)

    @property
    def transcodes_natively(self) -> bool:
        """Whether the rows our own append wrote are written straight from their stored CBOR by the native
        extension, decoding nothing: JSON Lines without a filter or rewrite (``_json_lines``). Such a batch
        costs this process less to encode itself than to hand to an encode worker (docs/benchmarks.md)."""
        return (self.format == "jsonl" and self.compression == "none" and _native_json_line is not None
                and not self.strip_headers and RecordTransform(self).identity)


class BatchFailure(Exception):
    """Why a batch cannot be written; the engine turns it into an ExportFailure (export/engine.py).
    ``kind`` is one of CORRUPT (the batch's first row fails the check, onCorruptRecord Hold), UNAVAILABLE
    (the format's package is missing here) and UNENCODABLE (a record the format cannot represent); all hold
    the export before the batch."""

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
    payload: bytes | None  # None: the filter excluded (or the quarantine took) every record, no object is written
    rows: int  # records in the payload
    filtered: int  # records the filter excluded
    raw_bytes: int  # stored bytes of the batch's rows
    seconds: float
    cpu_seconds: float
    # The ids the batch handles, first to last (the cursor moves to ``last_id``): short of the rows read
    # when the batch is held before a corrupt record.
    first_id: int = 0
    last_id: int = 0
    last_timestamp_us: int | None = None  # the stored timestamp of record ``last_id`` (see Checkpoint)
    # The first and last id of the records the payload holds (its object is named by them): records
    # quarantined at the edges are left out of the name.
    kept_first_id: int | None = None
    kept_last_id: int | None = None
    quarantined: list[tuple[int, str]] = field(default_factory=list)  # (id, reason): for the engine to move
    held: str | None = None  # onCorruptRecord Hold: why the batch ends before the next row


@functools.lru_cache(maxsize=64)
def _policy(strip_headers: tuple[str, ...]) -> CredentialPolicy:
    return CredentialPolicy(strip_headers)


@dataclass
class CheckedRow:
    """A row that passed the check: its map as it may leave the store (still without ``id``; credentials
    stripped; canonical CBOR when foreign), and the map decoded when the check had to decode it anyway."""

    row: StoredRecord
    body: bytes | memoryview
    record: dict[str, Any] | None = None


def check_rows(recipe: BatchRecipe, rows: Sequence[StoredRecord], decoded: bool = False,
               ) -> tuple[list[CheckedRow], list[tuple[int, CorruptRecord]]]:
    """The rows that pass the check, in order, and ``(index, why)`` of each that does not.

    A row whose seal is valid was written by our own append (one canonical map, credentials stripped) and
    goes out as stored, unless the exporter strips more header names (``spec.stripHeaders``), which its
    bytes are then scanned for. Every other row is foreign and checked in full (store/check.py). With
    ``decoded``, the records the check decoded are kept for the caller (which would decode them anyway)."""
    policy = _policy(recipe.strip_headers)
    sealed = recipe.seal.seal if recipe.seal is not None else None
    same = hmac.compare_digest
    rescan = bool(policy.extra_headers)
    if (_native_seals_valid is not None and recipe.seal is not None and not rescan
            and recipe.seal.all_valid_natively(rows, _native_seals_valid)):
        # Every row holds its seal (one native call): each goes out as stored, as the loop would find. When
        # one does not, the loop checks them all again, one by one (its seals hashed twice: a batch with a
        # forged or altered row only).
        return [CheckedRow(row, row.body) for row in rows], []
    good: list[CheckedRow] = []
    corrupt: list[tuple[int, CorruptRecord]] = []
    for index, row in enumerate(rows):
        body, mark = row.body, row.seal
        # A foreign writer may put anything in the seal column (SQLite keeps TEXT or a number as written):
        # only bytes are compared, anything else leaves the row foreign.
        if (type(mark) is bytes and sealed is not None and isinstance(body, bytes | memoryview)
                and same(sealed(body), mark)):
            if rescan and policy.might_hold(bytes(body)):
                record = loads_record(body)  # tag 55799 transparent: cbor2 would give an immutable map
                if policy.strip(record):
                    good.append(CheckedRow(row, cbor2.dumps(record, timezone=UTC), record if decoded else None))
                    continue
            good.append(CheckedRow(row, body))
            continue
        try:
            record, canonical = check_foreign_record(row.id, body, policy, row.timestamp_us)
        except CorruptRecord as exc:
            corrupt.append((index, exc))
            continue
        good.append(CheckedRow(row, canonical, record if decoded else None))
    return good, corrupt


def _all_ours(recipe: BatchRecipe, rows: Sequence[StoredRecord]) -> bool:
    """Whether every row of the batch goes out as stored, as ``check_rows`` would find row by row: each holds
    the store's seal of its body (checked for every row: ``RecordSeal.all_valid``, in one native call where the
    extension is built) and the exporter strips no header names beyond the built-in ones (which our append
    already did)."""
    return (recipe.seal is not None and not _policy(recipe.strip_headers).extra_headers
            and recipe.seal.all_valid(rows, _native_seals_valid))


def _pieces(records: Iterable[tuple[int, bytes | memoryview]]) -> list[bytes | memoryview]:
    """The ``(id, stored map)`` records as exported CBOR (``id`` spliced in), as pieces to write one after
    the other: each record's new map head, then its stored bytes after the old head, not copied."""
    pieces: list[bytes | memoryview] = []
    append = pieces.append
    for record_id, body in records:
        head, offset = id_head(record_id, body)
        append(head)
        append(memoryview(body)[offset:])
    return pieces


def _spliced(rows: Sequence[StoredRecord]) -> list[bytes | memoryview]:
    """``_pieces`` of stored rows that all go out as stored: joined already by the native splice (_cbor_json.c,
    ~0.3 µs a record instead of ~1.7) when every row is a small map our append writes and the batch is one the
    default format compresses in one call anyway (``ZSTD_ONE_SHOT_BYTES``: so no larger batch is ever joined)."""
    if _native_spliced_records is not None and type(rows) is list:
        joined = _native_spliced_records(rows, ZSTD_ONE_SHOT_BYTES)
        if joined is not None:
            return [joined]
    return _pieces([(row.id, row.body) for row in rows])


def _unencodable(recipe: BatchRecipe, first: StoredRecord, last: StoredRecord, exc: Exception) -> BatchFailure:
    return BatchFailure(BatchFailure.UNENCODABLE, f"records {first.id}-{last.id} could not be written as "
                        f"{recipe.format}: {exc.__class__.__name__}: {str(exc)[:200]}; export holds before them")


def _corrupt(exc: CorruptRecord) -> BatchFailure:
    return BatchFailure(BatchFailure.CORRUPT, f"{exc}; export holds before it until it is fixed")


def _as_stored(recipe: BatchRecipe, encoder: BatchEncoder, rows: Sequence[StoredRecord], started: float,
               cpu_started: float) -> EncodedBatch:
    """``encode_rows`` of a batch whose rows all go out as stored (``_all_ours``; no filter, CBOR): the same
    batch as the row-by-row path writes, without an object per row. The default export's usual batch."""
    first, last = rows[0], rows[-1]
    try:
        payload = encoder.encode(_spliced(rows))
    except CorruptRecord as exc:
        raise _corrupt(exc) from None
    except Exception as exc:  # as in encode_rows
        raise _unencodable(recipe, first, last, exc) from None
    return EncodedBatch(
        payload=payload, rows=len(rows), filtered=0, raw_bytes=sum(len(row.body) for row in rows),
        seconds=time.perf_counter() - started, cpu_seconds=time.thread_time() - cpu_started,
        first_id=first.id, last_id=last.id, last_timestamp_us=last.timestamp_us,
        kept_first_id=first.id, kept_last_id=last.id,
    )


def encode_batch(rows: Sequence[StoredRecord], seal: RecordSeal | None = None,
                 strip_headers: Sequence[str] = ()) -> list[bytes | CorruptRecord]:
    """Stored rows as exported CBOR records (``id`` spliced in, checked, credentials stripped), or the
    CorruptRecord of each row that is not one well-formed record."""
    recipe = BatchRecipe("cbor-zstd", "zstd", strip_headers=tuple(strip_headers), seal=seal)
    good, corrupt = check_rows(recipe, rows)
    out: list[bytes | CorruptRecord] = [with_id(item.row.id, bytes(item.body)) for item in good]
    for index, exc in corrupt:
        out.insert(index, exc)
    return out


def _identified(body: dict[str, Any], record_id: int, id_first: bool) -> dict[str, Any]:
    """The decoded record with the row's id: first (``id_first``) or set in ``body`` itself. The row's id wins
    over an ``id`` the stored map holds (only a sealed row can: one sealed before the append refused such
    bodies, or by a writer that computes the seal itself), and stays in first place."""
    if id_first:
        record = {"id": record_id}
        record.update(body)
        record["id"] = record_id
        return record
    body["id"] = record_id
    return body


def _decoded(checked: Sequence[CheckedRow], loads: Callable[[Any], Any] = cbor2.loads, *,
             id_first: bool = True) -> Iterator[dict[str, Any]]:
    """Each checked row's record, decoded once (by ``loads``: the encoder's own decoding when it has one),
    ``id`` first; or, for an encoder that reads records by field name (``id_first`` False: Parquet), ``id``
    set in the decoded map itself instead of a copy of it (a stored map never holds ``id``)."""
    for item in checked:
        yield _identified(item.record if item.record is not None else loads(item.body), item.row.id, id_first)


def _privacy_record(item: CheckedRow, loads: Callable[[Any], Any], id_first: bool,
                    scrubbed: bytes | None) -> tuple[dict[str, Any], bool]:
    """One row's record for privacy mode (as ``_decoded`` gives it) and whether it is scrubbed already. A row
    that went out as stored (its check was done on those bytes) is decoded from ``scrubbed`` when given
    (privacy_scrubbed's bytes: the scrubbed record, which privacy_scrub would leave as it is), else from what
    the native prefilter leaves of it (the record without what privacy_scrub drops anyway, so its scrub is
    the whole record's), else whole."""
    if item.record is not None:
        return _identified(item.record, item.row.id, id_first), False
    if scrubbed is not None:
        return _identified(loads(scrubbed), item.row.id, id_first), True
    smaller = _native_privacy_prefilter(item.body) if _native_privacy_prefilter is not None else None
    return _identified(loads(item.body if smaller is None else smaller), item.row.id, id_first), False


def _privacy_decoded(checked: Sequence[CheckedRow], loads: Callable[[Any], Any], *,
                     id_first: bool = True) -> Iterator[tuple[dict[str, Any], bool]]:
    """``_privacy_record`` of each checked row, through the native scrub (_cbor_json.c) where it is built."""
    scrubbed_of = _native_privacy_scrubbed
    for item in checked:
        scrubbed = scrubbed_of(item.body) if scrubbed_of is not None and item.record is None else None
        yield _privacy_record(item, loads, id_first, scrubbed)


def _scrubs_natively(transform: RecordTransform, encoder: BatchEncoder) -> bool:
    """Whether privacy mode's records can be written straight from the native scrub's bytes
    (``_privacy_records``; Parquet: ``_privacy_parquet_records``): privacy mode alone (a filter or redactions
    need the decoded record), into CBOR, or JSON Lines or Parquet where their native writers are built."""
    if not transform.privacy or transform.redactions or transform.filter is not None:
        return False
    if _native_privacy_scrubbed is None:
        return False
    return (isinstance(encoder, CborZstdEncoder)
            or (isinstance(encoder, JsonLinesEncoder) and _native_json_line is not None)
            or (isinstance(encoder, ParquetEncoder) and _native_parquet_row is not None))


def _privacy_records(checked: Sequence[CheckedRow], encoder: CborZstdEncoder | JsonLinesEncoder,
                     transform: RecordTransform) -> list[bytes]:
    """Privacy mode's records (without a filter or redactions) as the encoder writes them. A row that went out
    as stored and that the native scrub takes whole (_cbor_json.c, privacy_scrubbed: the scrubbed record in the
    very bytes cbor2 writes for it) gets its id spliced in (CBOR) or its JSON line written straight from
    those bytes (json_line: the Python path's bytes, or None), decoding nothing; every other row is decoded
    (``_privacy_record``), scrubbed and encoded as in any other rewrite."""
    assert _native_privacy_scrubbed is not None
    scrubbed_of = _native_privacy_scrubbed
    json_line = _native_json_line if isinstance(encoder, JsonLinesEncoder) else None
    written: list[bytes] = []
    for item in checked:
        scrubbed = scrubbed_of(item.body) if item.record is None and item.row.id >= 0 else None
        out: bytes | None = None
        if scrubbed is not None:
            out = json_line(scrubbed, item.row.id) if json_line is not None else with_id(item.row.id, scrubbed)
        if out is None:
            record, done = _privacy_record(item, encoder.decode_record, True, scrubbed)
            record = transform.rewrite(record, scrubbed=done)
            out = encoder.line(record) if isinstance(encoder, JsonLinesEncoder) else cbor2.dumps(record, timezone=UTC)
        written.append(out)
    return written


def _json_lines(checked: Sequence[CheckedRow], encoder: JsonLinesEncoder,
                native: Callable[[bytes | memoryview, int], bytes | None]) -> list[bytes]:
    """Each checked row's JSON line, written straight from its stored CBOR by the native path
    (_cbor_json.c: the very bytes of the Python path, or None) where it can; a row the check decoded
    (foreign, or rewritten to strip more headers) or one the native path leaves (a tag it does not know, ...)
    the Python way. Stored maps hold no duplicate keys (our writer encodes dicts); the native path leaves
    one that does to Python anyway."""
    lines = []
    for item in checked:
        line = native(item.body, item.row.id) if item.record is None else None
        if line is None:
            record = _identified(item.record if item.record is not None else encoder.decode_record(item.body),
                                 item.row.id, True)
            line = encoder.line(record)
        lines.append(line)
    return lines


def _parquet_records(checked: Sequence[CheckedRow], native: ParquetRowOf) -> Iterator[dict[str, Any] | ParquetRow]:
    """Each checked row's record for the Parquet encoder, ``id`` set in it, as ``_decoded`` gives them; but
    where the native path takes a row (_cbor_json.c's parquet_row), its values for the columns (a native row,
    formats._ROW_FIELDS: the typed fields as cbor2 decodes them, the capture already as the Python path's
    very JSON and raw bodies). A row the check decoded, or one the native path leaves, is decoded the
    Python way."""
    for item in checked:
        row = native(item.body, item.row.id) if item.record is None else None
        if row is not None:
            yield row
            continue
        record = item.record if item.record is not None else cbor2.loads(item.body)
        record["id"] = item.row.id
        yield record


def _undecodable(rows: Sequence[StoredRecord], checked: Sequence[CheckedRow],
                 loads: Callable[[Any], Any]) -> list[tuple[int, CorruptRecord]]:
    """``(index, why)`` of each row that went out as stored (sealed) but that no CBOR reader decodes as one
    map (invalid UTF-8, nesting past cbor2's limit, a string reference outside its namespace, a length past
    the end, ...): what a batch that decodes failed on. Only looked for once a batch failed: a writer that
    holds the store's key wrote it, with a bug, and it is held or quarantined like a foreign row."""
    index_of = {row.id: index for index, row in enumerate(rows)}
    bad: list[tuple[int, CorruptRecord]] = []
    for item in checked:
        if item.record is not None:  # decoded by the check
            continue
        try:
            record = loads(untagged(item.body))
        except Exception as exc:  # cbor2's errors, and RecursionError
            bad.append((index_of[item.row.id], CorruptRecord(item.row.id, decode_problem(exc))))
            continue
        if not isinstance(record, dict):
            bad.append((index_of[item.row.id], CorruptRecord(item.row.id, "not a CBOR map")))
    return bad


def _unspliceable(rows: Sequence[StoredRecord], checked: Sequence[CheckedRow],
                  fields: frozenset[str] | None) -> list[tuple[int, CorruptRecord]]:
    """``(index, why)`` of each row that went out as stored (sealed) but that the default format cannot splice
    an id into (its top level is no map of a definite length) or, given the filter's ``fields``, the filter
    cannot read: all of them at once, so that a batch full of them is encoded again once, not once each."""
    index_of = {row.id: index for index, row in enumerate(rows)}
    bad: list[tuple[int, CorruptRecord]] = []
    for item in checked:
        if item.record is not None:
            continue
        try:
            id_head(item.row.id, item.body)
            if fields is not None:
                _peek(item, fields)
        except CorruptRecord as exc:
            bad.append((index_of[item.row.id], exc))
    return bad


def _privacy_parquet_records(checked: Sequence[CheckedRow], native: ParquetRowOf,
                             transform: RecordTransform) -> Iterator[dict[str, Any] | ParquetRow]:
    """Privacy mode's records (without a filter or redactions) for the Parquet encoder: a row that went out
    as stored and that the native scrub takes whole (privacy_scrubbed: the scrubbed record's bytes, as cbor2
    writes them) as the native row of those bytes (parquet_row), where it takes them; every other row
    decoded (``_privacy_record``) and scrubbed as in any other rewrite."""
    assert _native_privacy_scrubbed is not None
    scrubbed_of = _native_privacy_scrubbed
    for item in checked:
        scrubbed = scrubbed_of(item.body) if item.record is None else None
        row = native(scrubbed, item.row.id) if scrubbed is not None else None
        if row is not None:
            yield row
            continue
        record, done = _privacy_record(item, loads_record, False, scrubbed)  # tag 55799: a mutable map
        yield transform.rewrite(record, scrubbed=done)


def encode_rows(recipe: BatchRecipe, rows: Sequence[StoredRecord], *,
                undecodable: Sequence[tuple[int, CorruptRecord]] = ()) -> EncodedBatch:
    """The batch's payload. Raises BatchFailure: the first row fails the check (onCorruptRecord Hold), the
    format is missing here, or an encoder cannot represent a record. A sealed row the encoding cannot read
    (``_undecodable``, or one the default format cannot splice) fails the check after all: the batch is
    encoded again with it held before or quarantined (``undecodable``: those rows, by index in ``rows``)."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    all_rows = rows
    try:
        encoder = encoder_for(recipe.format, recipe.compression)
    except FormatUnavailable as exc:
        raise BatchFailure(BatchFailure.UNAVAILABLE, str(exc)) from None
    transform = RecordTransform(recipe)
    decodes = encoder.decoded or transform.rewrites
    if not decodes and transform.filter is None and rows and not undecodable and _all_ours(recipe, rows):
        try:
            return _as_stored(recipe, encoder, rows, started, cpu_started)
        except BatchFailure as failure:  # a sealed row no id can be spliced into: row by row, it fails the check
            if failure.kind != BatchFailure.CORRUPT:
                raise
    checked, corrupt = check_rows(recipe, rows, decoded=decodes)
    if undecodable:
        left_out = {rows[index].id for index, _ in undecodable}
        checked = [item for item in checked if item.row.id not in left_out]
        corrupt = sorted([*corrupt, *undecodable], key=lambda pair: pair[0])
    if decodes:  # a sealed map under tag 55799 is that map (cbor2 would decode it as an immutable one)
        for item in checked:  # ~70 ns a row (~240 with a slice per row), against microseconds of decoding
            body = item.body
            if body and body[0] == 0xD9 and item.record is None and body[:3] == SELF_DESCRIBED:
                item.body = untagged(body)
    quarantined: list[tuple[int, str]] = []
    held: str | None = None
    if corrupt and recipe.on_corrupt_record == "Quarantine":
        quarantined = [(bad.record_id, bad.reason) for _, bad in corrupt]
    elif corrupt:
        index, first_bad = corrupt[0]
        held = (f"{first_bad}; the export holds before it until it is fixed in the store (or set onCorruptRecord: "
                "Quarantine)")
        if index == 0:
            raise BatchFailure(BatchFailure.CORRUPT, held)
        rows, checked = rows[:index], checked[:index]  # the rows before the first corrupt one all passed
    first, last = rows[0], rows[-1]
    raw_bytes, handled = sum(len(row.body) for row in rows), len(rows) - len(quarantined)
    # The object is named by the records that passed the check (the filter's choice does not rename it).
    kept_first_id = checked[0].row.id if checked else None
    kept_last_id = checked[-1].row.id if checked else None
    exported = 0
    try:
        if not decodes:
            if transform.filter is not None:  # read just the fields the filter needs; ship the bytes as stored
                checked = [item for item in checked if transform.accepts(_peek(item, transform.filter.fields))]
            exported = len(checked)
            payload = encoder.encode(_pieces([(item.row.id, item.body) for item in checked])) if checked else None
        elif transform.identity and isinstance(encoder, JsonLinesEncoder) and _native_json_line is not None:
            exported = len(checked)
            payload = encoder.encode_lines(_json_lines(checked, encoder, _native_json_line)) if checked else None
        elif transform.identity and isinstance(encoder, ParquetEncoder) and _native_parquet_row is not None:
            exported = len(checked)
            payload = encoder.encode_records(_parquet_records(checked, _native_parquet_row)) if checked else None
        elif (_scrubs_natively(transform, encoder) and isinstance(encoder, ParquetEncoder)
              and _native_parquet_row is not None):
            exported = len(checked)
            records = _privacy_parquet_records(checked, _native_parquet_row, transform)
            payload = encoder.encode_records(records) if checked else None
        elif _scrubs_natively(transform, encoder):
            assert isinstance(encoder, CborZstdEncoder | JsonLinesEncoder)
            exported = len(checked)
            written = _privacy_records(checked, encoder, transform)
            if not checked:
                payload = None
            elif isinstance(encoder, JsonLinesEncoder):
                payload = encoder.encode_lines(written)
            else:
                payload = encoder.encode(written)
        else:
            # A rewrite of a map under tag 55799 needs it mutable (Parquet's decoding has no semantic decoders).
            loads = getattr(encoder, "decode_record", loads_record if transform.rewrites else cbor2.loads)
            id_first = getattr(encoder, "id_first", True)
            marked = (_privacy_decoded(checked, loads, id_first=id_first) if transform.privacy
                      else ((record, False) for record in _decoded(checked, loads, id_first=id_first)))

            def kept() -> Iterator[dict[str, Any]]:
                nonlocal exported
                for record, scrubbed in marked:
                    if transform.accepts(record):
                        exported += 1
                        yield transform.rewrite(record, scrubbed=scrubbed)

            chosen: Iterator[dict[str, Any]]
            if transform.identity:  # every record as decoded: no call per record to filter or rewrite it
                exported, chosen = len(checked), _decoded(checked, loads, id_first=id_first)
            else:
                chosen = kept()
            if encoder.decoded:
                payload = encoder.encode_records(chosen)
            else:
                payload = encoder.encode([cbor2.dumps(record, timezone=UTC) for record in chosen])
            if not exported:
                payload = None
    except CorruptRecord as exc:  # a sealed row the default format cannot splice, or a filter cannot read
        fields = transform.filter.fields if transform.filter is not None else None
        bad = [] if decodes else _unspliceable(all_rows, checked, fields)
        if not any(found.record_id == exc.record_id for _, found in bad):
            bad += [(index, exc) for index, row in enumerate(all_rows) if row.id == exc.record_id]
        if bad:
            return encode_rows(recipe, all_rows, undecodable=[*undecodable, *bad])
        raise _corrupt(exc) from None
    except Exception as exc:  # a sealed row no reader decodes, or an encoder that cannot represent a record
        bad = _undecodable(all_rows, checked, getattr(encoder, "decode_record", cbor2.loads)) if decodes else []
        if bad:
            return encode_rows(recipe, all_rows, undecodable=[*undecodable, *bad])
        raise _unencodable(recipe, first, last, exc) from None
    return EncodedBatch(
        payload=payload,
        rows=exported,
        filtered=handled - exported,
        raw_bytes=raw_bytes,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.thread_time() - cpu_started,
        first_id=first.id,
        last_id=last.id,
        last_timestamp_us=last.timestamp_us,
        kept_first_id=kept_first_id,
        kept_last_id=kept_last_id,
        quarantined=quarantined,
        held=held,
    )


def _peek(item: CheckedRow, fields: frozenset[str]) -> dict[str, Any]:
    if item.record is not None:
        return item.record
    try:
        record = peek_fields(item.body, fields)
    except HeadCutShort as exc:
        raise CorruptRecord(item.row.id, f"truncated: {exc}") from None
    except ReservedHead as exc:
        raise CorruptRecord(item.row.id, f"invalid CBOR ({exc})") from None
    except Exception as exc:  # cbor2's errors, RecursionError: the reasons the formats that decode give
        raise CorruptRecord(item.row.id, decode_problem(exc)) from None
    if not isinstance(record, dict):
        raise CorruptRecord(item.row.id, "not a CBOR map")
    return record


@dataclass
class PackedRows:
    """A batch's rows as a few flat objects, for the trip to an encode worker: ids and timestamps as arrays,
    seals in one bytes object (``SEAL_SIZE`` each; ``sealed`` says which rows have one), every body in one
    bytes object (the engine packs only batches whose bodies are all bytes). Pickling it is a copy of a few
    buffers rather than of thousands of objects, and while the worker encodes, the exporting process holds
    this one object instead of the rows. The worker's rows are views into it (nothing copied again)."""

    ids: array[int]
    timestamps: array[int]
    sealed: bytes
    seals: bytes
    ends: array[int]
    bodies: bytes

    @classmethod
    def pack(cls, rows: Sequence[StoredRecord]) -> PackedRows:
        ends = array("Q")
        end = 0
        for row in rows:
            end += len(row.body)
            ends.append(end)
        # A seal of another size cannot be valid: the row is packed as unsealed (and checked in full).
        sealed = bytes(type(row.seal) is bytes and len(row.seal) == SEAL_SIZE for row in rows)
        return cls(ids=array("q", [row.id for row in rows]), timestamps=array("q", [row.timestamp_us for row in rows]),
                   sealed=sealed, seals=b"".join(row.seal for row, has in zip(rows, sealed, strict=True) if has),  # type: ignore[misc]
                   ends=ends, bodies=b"".join(row.body for row in rows))

    @property
    def stored_bytes(self) -> int:
        """The batch's stored size, as the memory budget counts it: its records' bodies."""
        return len(self.bodies)

    def unpack(self) -> list[StoredRecord]:
        view = memoryview(self.bodies)
        rows, start, at = [], 0, 0
        for record_id, timestamp_us, has_seal, end in zip(self.ids, self.timestamps, self.sealed, self.ends,
                                                           strict=True):
            seal = None
            if has_seal:
                seal, at = self.seals[at:at + SEAL_SIZE], at + SEAL_SIZE
            rows.append(StoredRecord(record_id, timestamp_us, view[start:end], seal))  # type: ignore[arg-type]
            start = end
        return rows


def _received(value: Any) -> Any:
    return value


class SentOnce:
    """A value on its one trip to an encode worker: pickled once, then let go of here. The process pool
    keeps the arguments of every batch submitted until its result is back, so each batch waiting for or in
    a worker would otherwise be held twice in the exporting process (the packed rows and their pickled
    message) and once more in the worker. A batch is never sent twice: a pool that breaks fails it, and the
    engine reads it again."""

    def __init__(self, value: Any) -> None:
        self._value: Any = value

    def __reduce__(self) -> tuple[Callable[[Any], Any], tuple[Any]]:
        value, self._value = self._value, None
        if value is None:
            raise RuntimeError("a batch is sent to an encode worker once")
        return _received, (value,)


def encode_in_worker(recipe: BatchRecipe, packed: PackedRows, keep: int) -> EncodedBatch:
    """``encode_rows`` in a worker of the encode pool. The cyclic garbage collector is off meanwhile:
    decoded records hold no cycles, and a batch allocates millions of containers that it would otherwise
    walk again and again (it costs a third of the decoding time). What the batch freed goes back to the
    operating system before the worker waits for the next one, but for what the next batch will reuse
    (``keep``, as the exporting process decided: ``pipeline.memory_kept_after_batch``)."""
    serve_batches(keep)
    gc.disable()
    try:
        return encode_rows(recipe, packed.unpack())
    finally:
        gc.enable()
        release_freed_memory(keep=keep)
