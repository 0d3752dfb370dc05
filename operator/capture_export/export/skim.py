"""A few top-level fields of each record of a CBOR sequence, without decoding the rest (``verify``).

An exported ``.cbor.zstd`` object is a CBOR sequence of maps whose bulk (``capture``, with the bodies)
``verify`` never compares. Each map is walked head by head: the keys are read, the values of the fields
asked for are decoded with cbor2, every other value is stepped over by its length without building a
Python object. The walk checks that every item is well formed (no premature end, no reserved head, no
misplaced break), so a truncated or foreign object is still unreadable; what it does not check inside
the values it steps over is what only a full decode would find (text that is not UTF-8, a tag whose
content has the wrong type).

A record that is not a plain map, or that holds CBOR's shared values or string references (tags 25, 28,
29, 256: their meaning depends on what came before), is decoded in full by cbor2, as ``cat`` reads it.

The default export writes each sealed row's stored bytes with only ``id`` spliced in (store/records.py
``id_head``). Given those rows (``stored``), a record that is exactly one of them is not walked at all:
its bytes are compared with the row's and it is yielded as a ``StoredCopy``, the store's record of its id.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import cbor2

from ..store.records import CorruptRecord, id_head, read_head

__all__ = ["StoredCopy", "skim_sequence"]

_CONTEXT_TAGS = frozenset({25, 28, 29, 256})  # string references and shared values
_INDEFINITE = -1
_U16, _U32, _U64 = struct.Struct(">H").unpack_from, struct.Struct(">I").unpack_from, struct.Struct(">Q").unpack_from


class StoredCopy(NamedTuple):
    """A record whose bytes are its stored row's, ``id`` spliced in: the store's record of ``id``."""

    id: int


class _NeedsContext(Exception):
    """The item holds a tag whose meaning depends on the items before it: decode it with cbor2."""


def _skip(data: bytes, pos: int) -> int:
    """Where the CBOR item starting at ``pos`` ends. ValueError when it is not well formed."""
    end = len(data)
    remaining = 1  # items left at the current depth (_INDEFINITE: until a break)
    outer: list[int] = []  # the same for each enclosing array or map
    while True:
        while remaining == 0:
            if not outer:
                return pos
            remaining = outer.pop()
        if pos >= end:
            raise ValueError("premature end of the CBOR data")
        initial = data[pos]
        major = initial >> 5
        info = initial & 0x1F
        pos += 1
        if info < 24:
            argument = info
        elif info == 24:
            argument = data[pos]
            pos += 1
        elif info == 25:
            argument = _U16(data, pos)[0]
            pos += 2
        elif info == 26:
            argument = _U32(data, pos)[0]
            pos += 4
        elif info == 27:
            argument = _U64(data, pos)[0]
            pos += 8
        elif info == 31:
            if initial == 0xFF:
                if remaining != _INDEFINITE:
                    raise ValueError("a CBOR break outside an indefinite-length item")
                remaining = outer.pop()
                continue
            if not 2 <= major <= 5:
                raise ValueError(f"invalid CBOR head 0x{initial:02x}")
            if remaining > 0:
                remaining -= 1
            outer.append(remaining)
            remaining = _INDEFINITE
            continue
        else:
            raise ValueError(f"invalid CBOR head 0x{initial:02x} (reserved additional information)")
        if major == 6:  # a tag: the tagged item follows and takes its place
            if argument in _CONTEXT_TAGS:
                raise _NeedsContext
            continue
        if remaining > 0:
            remaining -= 1
        if major == 2 or major == 3:
            pos += argument
            if pos > end:
                raise ValueError("premature end of the CBOR data")
        elif major == 4 and argument:
            outer.append(remaining)
            remaining = argument
        elif major == 5 and argument:
            outer.append(remaining)
            remaining = 2 * argument


def _text_key(data: bytes, pos: int) -> tuple[str | None, int]:
    """A map key: its text (None when it is not text) and where it ends."""
    initial = data[pos]
    if 0x60 <= initial <= 0x77:  # a short text string, as every key of our records
        end = pos + 1 + initial - 0x60
        if end > len(data):
            raise ValueError("premature end of the CBOR data")
        return data[pos + 1:end].decode("utf-8"), end
    end = _skip(data, pos)
    if initial >> 5 != 3:
        return None, end  # a byte string, number, ...: never one of the (text) fields asked for
    key = cbor2.loads(data[pos:end])
    return key if isinstance(key, str) else None, end


def _skim_map(data: bytes, pairs: int, pos: int, fields: frozenset[str]) -> tuple[dict[str, Any], int]:
    found: dict[str, Any] = {}
    for _ in range(pairs):
        key, pos = _text_key(data, pos)
        end = _skip(data, pos)
        if key is not None and key in fields:
            found[key] = cbor2.loads(data[pos:end])  # a repeated key: the last one, as cbor2 keeps it
        pos = end
    return found, pos


def _decode_one(data: bytes, pos: int) -> tuple[Any, int]:
    stream = io.BytesIO(data)
    stream.seek(pos)
    item = cbor2.CBORDecoder(stream).decode()
    return item, stream.tell()


def _stored_copy(data: bytes, pos: int, stored: Callable[[int], bytes | None]) -> tuple[int, int] | None:
    """(id, end) of the record at ``pos`` when it is its stored row as the export writes it, else None."""
    major, count, start = read_head(data, pos)
    if major != 5 or count is None or data[start:start + 3] != b"\x62id":
        return None
    major, record_id, _ = read_head(data, start + 3)
    if major != 0 or record_id is None:
        return None
    body = stored(record_id)
    if body is None:
        return None
    try:
        spliced, offset = id_head(record_id, body)
    except CorruptRecord:
        return None
    rest = memoryview(body)[offset:]
    if not (data.startswith(spliced, pos) and data.startswith(rest, pos + len(spliced))):
        return None
    return record_id, pos + len(spliced) + len(rest)


def skim_sequence(data: bytes, fields: frozenset[str],
                  stored: Callable[[int], bytes | None] | None = None) -> Iterator[Any]:
    """For each item of the CBOR sequence ``data``: a map's ``fields`` (those it has) as cbor2 decodes
    them; any other item (not a map, or holding context tags) as ``cbor2`` decodes it in full, fields
    picked from it when it is a map. ``stored(id)``: the stored row of ``id`` when it is known to be well
    formed (sealed), else None; a record that is exactly that row comes as its StoredCopy. Raises
    (ValueError, cbor2's errors) on data that is not well formed."""
    pos = 0
    end = len(data)
    while pos < end:
        record: Any
        try:
            copy = _stored_copy(data, pos, stored) if stored is not None else None
            if copy is not None:
                record, pos = StoredCopy(copy[0]), copy[1]
            else:
                major, count, start = read_head(data, pos)
                if major != 5 or count is None:
                    raise _NeedsContext
                record, pos = _skim_map(data, count, start, fields)
        except _NeedsContext:
            item, pos = _decode_one(data, pos)
            record = {k: item[k] for k in fields if k in item} if isinstance(item, dict) else item
        except (IndexError, struct.error):
            raise ValueError("premature end of the CBOR data") from None
        yield record
