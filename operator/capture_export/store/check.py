"""The full check of a row capture-export did not write itself, and a safe outline of one that failed it.

A row our own append wrote carries a valid seal (store/seal.py) and is exported as stored. Any other row
is *foreign*: the gateway's own ``INSERT``, a migration, a row whose seal does not match its bytes. Its
bytes may be anything, and in the default CBOR sequence one malformed record would swallow the records
after it. ``check_foreign`` therefore accepts a foreign row only when

* it is a byte string (a BLOB; SQLite also stores TEXT when a driver binds a str);
* it decodes as exactly one CBOR item, consuming every stored byte (nothing trailing);
* that item is a map whose keys are all text strings, none of them repeated, and none of them ``id`` (the
  store assigns ids);
* everything in it is valid CBOR that readers can represent: valid UTF-8 in every text string, dates
  within years 1-9999 with a UTC offset, no nesting deeper than cbor2's limit, no cycles (tags 28/29);
* its known fields have the record schema's types (store/record_types.py: ``timestamp`` a date/time,
  ``usage`` a map of non-negative integers, …; fields the schema does not know pass), and, given the
  row's ``ts_us``, its ``timestamp`` is that time (to the millisecond);

and returns the map re-encoded canonically (definite lengths, shortest heads, as cbor2 writes it; a
nested map with a repeated key keeps the last value, as cbor2 readers do) with every credential
removed (store/credentials.py: header names are compared after decoding, so indefinite-length and
byte-string names are found). Re-encoding is what makes the result safe to splice into a CBOR sequence;
a row already in canonical form comes out byte for byte the same.

``outline`` describes a row for ``capture-export quarantine show``: its structure, as far as it parses,
with the values of credential headers, header lines, query credentials and every byte string left out.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import cbor2

from .columns import UnreadableRow
from .credentials import DEFAULT_POLICY, CredentialPolicy
from .record_types import timestamp_problem, type_problem
from .records import TRANSPARENT_TAGS, CorruptRecord, HeadCutShort, ReservedHead, read_head, untagged

__all__ = ["CorruptRecord", "check_foreign", "check_foreign_record", "decode_problem", "outline"]


def _decode_reason(exc: Exception) -> str:
    """Why cbor2 could not decode a row, in words; cbor2's messages hold no bytes of the row."""
    message = str(exc).split("\n", 1)[0][:160]
    if isinstance(exc, cbor2.CBORDecodeEOF):
        return "truncated: a length or count claims more than the row holds"
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "invalid UTF-8 in a text string"
    if "datetime" in message:
        return f"a date/time readers cannot represent ({message})"
    return f"invalid CBOR ({message})"


def decode_problem(exc: BaseException) -> str:
    """Why a row could not be decoded (cbor2's error, or the RecursionError of a row nested too deeply), in
    words that hold no bytes of the row: the reason a corrupt row is held or quarantined with."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return _decode_reason(exc) if isinstance(exc, Exception) else type(exc).__name__


def check_foreign(record_id: int, body: Any, policy: CredentialPolicy = DEFAULT_POLICY,
                  timestamp_us: int | None = None) -> bytes:
    """A foreign row's map, checked in full and ready to export (canonical CBOR without ``id``, credentials
    stripped). Raises CorruptRecord when the row is not one well-formed record, or (given the row's
    ``timestamp_us``) when that is not the record's timestamp."""
    return check_foreign_record(record_id, body, policy, timestamp_us)[1]


def check_foreign_record(record_id: int, body: Any, policy: CredentialPolicy = DEFAULT_POLICY,
                         timestamp_us: int | None = None) -> tuple[dict[str, Any], bytes]:
    """``check_foreign``, and the map it decoded (credentials stripped too), for a caller that would
    decode it again."""
    if type(body) is UnreadableRow:
        raise CorruptRecord(record_id, body.reason)
    if isinstance(body, str):
        raise CorruptRecord(record_id, "stored as TEXT, not as a BLOB of CBOR")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise CorruptRecord(record_id, f"stored as {type(body).__name__}, not as a BLOB of CBOR")
    body = bytes(untagged(bytes(body)))  # a map under tag 55799 (self-described CBOR) is the map
    if not body:
        raise CorruptRecord(record_id, "empty")
    stream = io.BytesIO(body)
    try:
        record = cbor2.CBORDecoder(stream, semantic_decoders=TRANSPARENT_TAGS).decode()
    except RecursionError:
        raise CorruptRecord(record_id, "nested too deeply") from None
    except Exception as exc:
        raise CorruptRecord(record_id, _decode_reason(exc)) from None
    if stream.tell() != len(body):
        raise CorruptRecord(record_id, f"{len(body) - stream.tell()} bytes trailing after the record's map"
                            if isinstance(record, dict) else "not a CBOR map")
    if not isinstance(record, dict):
        raise CorruptRecord(record_id, f"not a CBOR map (a {_kind(record)})")
    if not all(isinstance(key, str) for key in record):
        raise CorruptRecord(record_id, "a top-level key is not a text string")
    if _top_level_pairs(body) != len(record):
        raise CorruptRecord(record_id, "a top-level key appears twice (readers would keep only one)")
    if "id" in record:
        raise CorruptRecord(record_id, "holds an 'id' key (ids are assigned by the store, never stored)")
    if (wrong_type := type_problem(record)) is not None:
        raise CorruptRecord(record_id, str(wrong_type))
    if timestamp_us is not None and (wrong_time := timestamp_problem(record, timestamp_us)) is not None:
        raise CorruptRecord(record_id, wrong_time)
    try:
        canonical = cbor2.dumps(record, timezone=UTC)
    except Exception as exc:
        raise CorruptRecord(record_id, f"cannot be re-encoded ({str(exc)[:120]})") from None
    if policy.might_hold(canonical) and policy.strip(record):
        canonical = cbor2.dumps(record, timezone=UTC)
    return record, body if canonical == body else canonical


def _top_level_pairs(body: bytes) -> int:
    """How many pairs the top-level map of a well-formed row holds (duplicates counted)."""
    info = body[0] & 0x1F
    if info < 24:
        return info
    if info < 28:
        size = 1 << (info - 24)
        return int.from_bytes(body[1:1 + size], "big")
    stream = io.BytesIO(body)  # an indefinite-length map: count its pairs
    stream.seek(1)
    decoder = cbor2.CBORDecoder(stream)
    pairs = 0
    while body[stream.tell()] != 0xFF:
        decoder.decode()
        decoder.decode()
        pairs += 1
    return pairs


def _kind(value: Any) -> str:
    return {list: "array", str: "text string", bytes: "byte string", int: "integer", float: "float"}.get(
        type(value), type(value).__name__)


# -- outline: what `capture-export quarantine show` prints ----------------------------------------------


class _Broken(Exception):
    """Parsing stopped here; ``partial`` is what was read of the enclosing item so far."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.located = False  # the innermost container has said where in it the row broke
        self.partial: Any = _BREAK


class _BreakMark:
    """Where the row stopped parsing, in the partial tree."""

    def __repr__(self) -> str:
        return "<break>"


_BREAK = _BreakMark()


class _Reader:
    """A lenient CBOR reader: builds what it can of the item and stops at the first problem, so that a
    malformed row is described up to where it breaks (cbor2 would only say that it broke)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise _Broken(f"the row ends {self.pos + size - len(self.data)} bytes short of an item "
                          "(a length or count claims more than the row holds)")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def at_break(self) -> bool:
        if self.data[self.pos:self.pos + 1] == b"\xff":
            self.pos += 1
            return True
        return False

    def head(self) -> tuple[int, int, int | None]:
        """``(major, additional info, argument)``; the argument is None for an indefinite length."""
        start = self.pos
        try:
            major, argument, self.pos = read_head(self.data, start)
        except HeadCutShort as exc:
            self.pos = min(start + 1, len(self.data))  # past the initial byte, where it is
            raise _Broken(f"the row ends {exc.missing} bytes short of an item "
                          "(a length or count claims more than the row holds)") from None
        except ReservedHead as exc:
            self.pos = start + 1
            raise _Broken(str(exc)) from None
        info = self.data[start] & 0x1F
        if argument is None and major not in (2, 3, 4, 5, 7):
            raise _Broken(f"reserved additional information {info} at byte {start}")
        return major, info, argument

    def string(self, major: int, argument: int | None) -> bytes:
        if argument is not None:
            return self.take(argument)
        chunks = []
        while not self.at_break():
            chunk_major, _info, size = self.head()
            if chunk_major != major or size is None:
                raise _Broken("a chunk of an indefinite-length string is not a definite string of its type")
            chunks.append(self.take(size))
        return b"".join(chunks)

    def item(self, depth: int = 0) -> Any:
        if depth > 64:
            raise _Broken("nested deeper than 64 levels")
        major, info, argument = self.head()
        if major == 0:
            return argument
        if major == 1:
            return -1 - (argument or 0)
        if major == 2:
            return self.string(2, argument)
        if major == 3:
            raw = self.string(3, argument)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return _InvalidText(raw.decode("utf-8", "replace"))
        if major in (4, 5):
            return self._container(major, argument, depth)
        if major == 6:
            try:
                return _Tagged(argument or 0, self.item(depth + 1))
            except _Broken as exc:
                exc.partial = _Tagged(argument or 0, exc.partial)
                raise
        return _simple(info, argument)

    def _container(self, major: int, count: int | None, depth: int) -> Any:
        out: Any = [] if major == 4 else {}
        index = 0
        key: Any = None  # the key whose value is being read (maps)
        try:
            while count is None or index < count:
                if count is None and self.at_break():
                    break
                if major == 4:
                    out.append(self.item(depth + 1))
                else:
                    key = None
                    read = self.item(depth + 1)
                    key = read if isinstance(read, str | bytes | int) else f"<{_kind(read)} key>"
                    out[key] = self.item(depth + 1)
                    key = None
                index += 1
        except _Broken as exc:
            if major == 4:
                out.append(exc.partial)
            else:
                out["<key>" if key is None else key] = exc.partial
            if count is not None and not exc.located:
                exc.reason += f" ({index} of {count} {'items' if major == 4 else 'pairs'} complete)"
                exc.located = True
            exc.partial = out
            raise
        return out


class _InvalidText(str):
    """A text string that is not valid UTF-8 (shown with replacement characters)."""


class _Tagged:
    def __init__(self, tag: int, value: Any) -> None:
        self.tag, self.value = tag, value


def _simple(info: int, argument: int | None) -> Any:
    if info == 25:
        return struct.unpack(">e", (argument or 0).to_bytes(2, "big"))[0]
    if info == 26:
        return struct.unpack(">f", (argument or 0).to_bytes(4, "big"))[0]
    if info == 27:
        return struct.unpack(">d", (argument or 0).to_bytes(8, "big"))[0]
    if argument is None:
        raise _Broken("a break code (0xff) where an item was expected")
    return {20: False, 21: True, 22: None}.get(argument, f"<simple value {argument}>")


def outline(body: Any, policy: CredentialPolicy = DEFAULT_POLICY) -> list[str]:
    """A description of a stored row that is safe to print: its structure as far as it parses, keys and
    short values, with credentials stripped as the export would strip them and, on top of that, every
    value under a credential-like key, every text that may hold a token, and every byte string's content
    left out; the bytes that fail to parse are never shown."""
    if isinstance(body, str):
        return [f"stored as TEXT ({len(body)} characters), not as a BLOB of CBOR: content not shown"]
    data = bytes(body)
    reader = _Reader(data)
    problem = None
    try:
        tree = reader.item()
    except _Broken as exc:
        tree, problem = exc.partial, exc.reason
    policy.strip(tree)
    lines = [f"{len(data)} bytes"]
    lines.extend(_render(tree, policy, depth=0))
    if problem is not None:
        lines.append(f"!! stops parsing at byte {reader.pos}: {problem}")
    elif reader.pos < len(data):
        lines.append(f"!! then {len(data) - reader.pos} bytes trailing after the first item (not shown)")
    return lines


def _render(value: Any, policy: CredentialPolicy, *, depth: int, label: str = "") -> Iterator[str]:
    indent = "  " * depth
    if isinstance(value, dict):
        yield f"{indent}{label}map, {len(value)} pairs"
        for key, item in value.items():
            name = f"{_key_text(key)}: "
            if policy.is_credential_header(key):
                yield f"{indent}  {name}<credential: not shown>"
            else:
                yield from _render(item, policy, depth=depth + 1, label=name)
    elif isinstance(value, list):
        yield f"{indent}{label}array, {len(value)} items"
        for item in value:
            yield from _render(item, policy, depth=depth + 1, label="- ")
    elif isinstance(value, _Tagged):
        yield from _render(value.value, policy, depth=depth, label=f"{label}tag {value.tag} ")
    else:
        yield f"{indent}{label}{_scalar(value, policy)}"


def _key_text(key: Any) -> str:
    if isinstance(key, bytes):
        return f"<byte-string key {key.decode('utf-8', 'replace')!r}>"
    if isinstance(key, str) and key.isidentifier():
        return key
    return repr(key) if not isinstance(key, _InvalidText) else f"{str(key)!r} (invalid UTF-8)"


def _scalar(value: Any, policy: CredentialPolicy) -> str:
    if value is _BREAK:
        return "<the row breaks here>"
    if isinstance(value, bytes):
        return f"<byte string, {len(value)} bytes: not shown>"
    if isinstance(value, str):
        note = " (invalid UTF-8)" if isinstance(value, _InvalidText) else ""
        text = policy.redact_url(str(value))
        lowered = text.lower()
        if any(word in lowered for word in ("bearer ", "basic ", "token")) or policy.might_hold(lowered.encode()):
            return f"<text, {len(text)} characters: may hold a credential, not shown>{note}"
        return repr(text if len(text) <= 80 else text[:77] + "...") + note
    return repr(value)
