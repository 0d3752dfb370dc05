"""How many values parsing a body can create, counted before it is parsed.

A body's bytes do not bound the memory its parsing takes: 64 MiB of ``[{},{},…]`` (a few KiB once
gzipped) are 21 million dicts, about 2 GB in a parsing process, and each byte 0x80 of CBOR is an empty list
of 72 bytes. What parsing creates costs at most about 140 bytes per value (with the checked copy of a
JSON record), so bounding the values bounds the memory; real captures hold about one value per 19 bytes
(docs/ingest.md has the measurements).
"""

from __future__ import annotations

from .errors import TooLarge

__all__ = ["cbor_values", "check_cbor_values", "check_json_values", "json_values_at_most"]

_JSON_VALUE_STARTS = (b"{", b"[", b",", b":")


def json_values_at_most(body: bytes) -> int:
    """An upper bound on the values and keys parsing ``body`` as JSON (or JSON Lines) creates: each one
    but a document's first comes right after a ``{``, ``[``, ``,`` or ``:``. Those inside strings are
    counted too, which is what bounds JSON text held in string fields (tool-call arguments, OTLP message
    attributes) that is parsed in turn."""
    return sum(body.count(byte) for byte in _JSON_VALUE_STARTS)


def check_json_values(body: bytes, limit: int) -> None:
    count = json_values_at_most(body)
    if count > limit:
        raise TooLarge(f"body may hold more than the limit of {limit} values (--max-values): it has {count} of "
                       "the bytes '{', '[', ',' and ':' that each start a JSON value or key")


# Bytes of the argument after each initial byte (RFC 8949 3: additional information 24-27).
_ARGUMENT_SIZES = bytes({24: 1, 25: 2, 26: 4, 27: 8}.get(initial & 0x1F, 0) for initial in range(256))


def cbor_values(body: bytes, stop: int) -> int:
    """The data items of a CBOR sequence (strings, numbers, arrays, maps and tags alike: each is one value
    parsing creates), counted from their heads without decoding them, up to the first past ``stop``.
    Malformed CBOR is counted as far as it goes: the decoder refuses it afterwards."""
    count = position = 0
    end = len(body)
    sizes = _ARGUMENT_SIZES
    while position < end and count <= stop:
        initial = body[position]
        size = sizes[initial]
        count += 1
        if 0x40 <= initial < 0x80:  # a byte or text string: skip its content
            if size:
                position += 1 + size + int.from_bytes(body[position + 1:position + 1 + size], "big")
            else:
                position += 1 + (initial & 0x1F)
        else:
            position += 1 + size
    return count


def check_cbor_values(body: bytes, limit: int) -> None:
    # Each item takes at least a byte: a body no longer than the limit cannot hold more (the scan, a
    # second per 30 MiB, is left to bodies that might).
    if len(body) > limit and cbor_values(body, limit) > limit:
        raise TooLarge(f"body holds more than the limit of {limit} values (--max-values): CBOR data items, "
                       "counted before they are decoded")
