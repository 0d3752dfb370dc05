"""How many values parsing a body can create, counted before it is parsed.

A body's bytes do not bound the memory its parsing takes: 64 MiB of ``[{},{},…]`` (a few KiB once
gzipped) are 21 million dicts, about 2 GB in a parsing process, and each byte 0x80 of CBOR is an empty list
of 72 bytes. What parsing creates costs at most about 140 bytes per value (with the checked copy of a
JSON record), so bounding the values bounds the memory; real captures hold about one value per 19 bytes
(docs/ingest.md has the measurements).
"""

from __future__ import annotations

from typing import Any

from .errors import TooLarge

__all__ = ["cbor_values", "check_cbor_values", "check_json_values", "check_protobuf_values", "json_values_at_most",
           "protobuf_values"]

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
        if 0x40 <= initial < 0x80 and (initial & 0x1F) < 28:  # a definite-length string: skip its content
            if size:
                position += 1 + size + int.from_bytes(body[position + 1:position + 1 + size], "big")
            else:
                position += 1 + (initial & 0x1F)
        else:  # anything else, an indefinite-length string included (its chunks are items of their own)
            position += 1 + size
    return count


def check_cbor_values(body: bytes, limit: int) -> None:
    # Each item takes at least a byte: a body no longer than the limit cannot hold more (the scan, a
    # second per 30 MiB, is left to bodies that might).
    if len(body) > limit and cbor_values(body, limit) > limit:
        raise TooLarge(f"body holds more than the limit of {limit} values (--max-values): CBOR data items, "
                       "counted before they are decoded")


def _varint(body: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while position < len(body):
        byte = body[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    return value, position


# message full name -> {field number: the descriptor of its message type, or True for packed numbers}
_LAYOUTS: dict[str, dict[int, Any]] = {}


def _layout(descriptor: Any) -> dict[int, Any]:
    """What a length-delimited field of ``descriptor`` holds, read once: descriptors are slow to ask."""
    layout = _LAYOUTS.get(descriptor.full_name)
    if layout is None:
        from google.protobuf.descriptor import FieldDescriptor

        layout = {}
        for field in descriptor.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                layout[field.number] = field.message_type
            elif field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                layout[field.number] = True
        _LAYOUTS[descriptor.full_name] = layout
    return layout


# How deep protobuf's decoders nest messages (upb's default): past it, they refuse the body.
_PROTOBUF_DEPTH = 100


def protobuf_values(body: bytes, descriptor: Any, stop: int) -> int:
    """The fields of a protobuf message of type ``descriptor`` and of every message inside it (each one a
    value parsing creates), counted from their keys without decoding them, up to the first past ``stop``.
    An element of a packed repeated number counts as a byte (its least). Malformed input is counted as
    far as it goes, as is input nested deeper than the decoder goes: it refuses them afterwards."""
    count = position = 0
    end = len(body)
    layout = _layout(descriptor)
    enclosing: list[tuple[int, dict[int, Any]]] = []  # (end, layout) of the messages around this one
    while True:
        if position >= end:
            if not enclosing:
                return count
            end, layout = enclosing.pop()
            continue
        key = body[position]
        if key < 0x80:
            position += 1
        else:
            key, position = _varint(body, position)
        count += 1
        if count > stop:
            return count
        wire_type = key & 7
        if wire_type == 2:
            length = body[position] if position < end else 0
            if length < 0x80:
                position += 1
            else:
                length, position = _varint(body, position)
            inside = layout.get(key >> 3)
            if inside is None:  # a string, bytes, or a field these definitions do not know
                position += length
            elif inside is True:  # packed numbers
                count += length
                position += length
            elif length == 0:  # an empty message
                pass
            elif len(enclosing) < _PROTOBUF_DEPTH:  # a message: its fields come next
                enclosing.append((end, layout))
                end, layout = min(position + length, end), _layout(inside)
            else:
                return count
        elif wire_type == 0:
            _, position = _varint(body, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 3 and len(enclosing) < _PROTOBUF_DEPTH:
            # A group (deprecated, unused by OTLP): the decoder keeps it as unknown bytes, whatever its
            # field, and goes on after it. Its fields are scanned to its end with no layout (counted, never
            # entered), so that what follows the group is counted too.
            enclosing.append((end, layout))
            layout = {}
        elif wire_type == 4 and enclosing:  # a group's end
            _, layout = enclosing.pop()
        else:  # not protobuf: the decoder refuses it here
            return count


def check_protobuf_values(body: bytes, descriptor: Any, limit: int) -> None:
    """Protobuf's fields, and the JSON values its strings may hold (message contents, parsed in turn)."""
    in_strings = json_values_at_most(body)
    # Each field takes at least two bytes (a key, a value or length): a short body cannot hold too many.
    if in_strings + len(body) // 2 <= limit:
        return
    if in_strings + protobuf_values(body, descriptor, limit - in_strings) > limit:
        raise TooLarge(f"body holds more than the limit of {limit} values (--max-values): protobuf fields, "
                       "counted before they are decoded, and the JSON values its strings may hold")
