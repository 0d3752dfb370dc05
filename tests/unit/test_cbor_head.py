"""``read_head``: one CBOR item's initial byte and argument, read in one place (store/records.py), and what its
callers make of a head that is cut short or reserved: the filter's peek (export/transform.py), verify's skim
(export/skim.py), the outline of a quarantined row (store/check.py) and the id splice (``id_head``)."""

from __future__ import annotations

import cbor2
import pytest

from capture_export.export.formats import record_fields, zstd_frame
from capture_export.export.transform import peek_fields
from capture_export.store.check import outline
from capture_export.store.records import CborHeadError, HeadCutShort, ReservedHead, read_head, with_id

# The argument of additional information 24-27 and how many bytes it takes.
SIZES = {24: 1, 25: 2, 26: 4, 27: 8}


@pytest.mark.parametrize("major", range(8))
@pytest.mark.parametrize("info", range(32))
def test_every_additional_information_of_every_major_type(major: int, info: int) -> None:
    initial = (major << 5) | info
    argument_bytes = bytes(range(0xA1, 0xA1 + SIZES.get(info, 0)))
    data = b"\x00\x00" + bytes([initial]) + argument_bytes + b"\x61x"  # two bytes before, content after
    if info < 24:
        assert read_head(data, 2) == (major, info, 3)
    elif info < 28:
        assert read_head(data, 2) == (major, int.from_bytes(argument_bytes, "big"), 3 + SIZES[info])
    elif info == 31:  # an indefinite length (a break, in major type 7): no argument
        assert read_head(data, 2) == (major, None, 3)
    else:
        with pytest.raises(ReservedHead) as raised:
            read_head(data, 2)
        assert (raised.value.position, raised.value.info) == (2, info)
        assert str(raised.value) == f"reserved additional information {info} at byte 2"


@pytest.mark.parametrize("info", sorted(SIZES))
def test_a_head_cut_short_at_every_length_says_how_many_bytes_it_lacks(info: int) -> None:
    """Without its initial byte, a head lacks at least that one (how many more, nothing tells)."""
    whole = bytes([0xB0 | info]) + b"\x01" * SIZES[info]
    for cut in range(len(whole)):
        missing = len(whole) - cut if cut else 1
        for data in (b"\x00" + whole[:cut], memoryview(b"\x00" + whole[:cut]), bytearray(b"\x00" + whole[:cut])):
            with pytest.raises(HeadCutShort) as raised:
                read_head(data, 1)
            assert (raised.value.position, raised.value.missing) == (1, missing), (info, cut)
            assert str(raised.value) == f"a CBOR head at byte 1 cut short by {missing} byte{'s' if missing > 1 else ''}"
    assert read_head(b"\x00" + whole, 1) == (5, int.from_bytes(whole[1:], "big"), 1 + len(whole))


def test_no_head_at_all_is_one_cut_short_by_its_initial_byte() -> None:
    for data, position in ((b"", 0), (b"\xa1", 1), (memoryview(b"\x01\x02"), 2), (b"\x01", 5)):
        with pytest.raises(HeadCutShort) as raised:
            read_head(data, position)
        assert raised.value.missing == 1 + max(0, position - len(data))


def test_both_are_value_errors_of_one_kind_and_a_short_head_is_no_index_or_struct_error() -> None:
    assert issubclass(HeadCutShort, CborHeadError) and issubclass(ReservedHead, CborHeadError)
    assert issubclass(CborHeadError, ValueError)
    assert not issubclass(CborHeadError, IndexError)


@pytest.mark.parametrize("value", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_the_argument_is_the_integer_cbor2_writes(value: int) -> None:
    for major, encoded in ((0, cbor2.dumps(value)), (1, cbor2.dumps(-1 - value))):
        assert read_head(encoded) == (major, value, len(encoded))
    text = cbor2.dumps("a" * min(value, 70_000))
    assert read_head(text)[1:] == (min(value, 70_000), len(text) - min(value, 70_000))


# Stored rows whose head is cut short where the filter's peek reads one.
CUT_SHORT = {
    "map-head-two-byte-count": b"\xb9\x00",
    "map-head-four-byte-count": b"\xba\x00\x00",
    "map-head-eight-byte-count": b"\xbb",
    "map-head-one-byte-count": b"\xb8",
    "self-described-map-head": b"\xd9\xd9\xf7\xb9\x00",
    "timestamp-text-head": b"\xa2\x69timestamp\xc0\x79\x00",
    "timestamp-text-head-missing": b"\xa2\x69timestamp\xc0",
}


@pytest.mark.parametrize("body", list(CUT_SHORT.values()), ids=list(CUT_SHORT))
def test_the_filters_peek_names_a_head_cut_short(body: bytes) -> None:
    """Not struct.error or IndexError, whose names were all a quarantined row's reason said."""
    with pytest.raises(HeadCutShort):
        peek_fields(body, frozenset({"status_code"}))


def test_the_filters_peek_names_a_reserved_head() -> None:
    for body in (b"\xbc\x00", b"\xa2\x69timestamp\xc0\x7d"):
        with pytest.raises(ReservedHead):
            peek_fields(body, frozenset({"status_code"}))


@pytest.mark.parametrize("data", [b"\xb9\x00", b"\xa1\x62id\x1a\x00", b"\xa1\x62id", b"\xbc\x00"],
                         ids=["map-head", "id-head", "no-id-value", "reserved-map-head"])
def test_verify_refuses_an_object_whose_head_is_cut_short_or_reserved(data: bytes) -> None:
    stored = {1: b"\xa0"}
    with pytest.raises(ValueError):
        list(record_fields(zstd_frame([data]), "x.cbor.zstd", frozenset({"id"}), stored.get))


def test_the_outline_of_a_cut_short_head_still_says_where_and_by_how_much() -> None:
    assert outline(b"\xa1\x61a\x1a\x00")[-1] == (
        "!! stops parsing at byte 4: the row ends 3 bytes short of an item (a length or count claims more than "
        "the row holds) (0 of 1 pairs complete)")
    assert outline(b"\xa1\x61a")[-1] == (
        "!! stops parsing at byte 3: the row ends 1 bytes short of an item (a length or count claims more than "
        "the row holds) (0 of 1 pairs complete)")
    assert outline(b"\xa1\x61a\x1d")[-1] == (
        "!! stops parsing at byte 4: reserved additional information 29 at byte 3 (0 of 1 pairs complete)")
    assert outline(b"\xa1\x61a\x1f")[-1] == (
        "!! stops parsing at byte 4: reserved additional information 31 at byte 3 (0 of 1 pairs complete)")


def test_the_id_splice_keeps_its_reasons() -> None:
    for body in (b"\xb9\x00", b"\xba\x00\x00", b"\xbb", b"\xb8", b"\xd9\xd9\xf7\xb9\x00"):
        with pytest.raises(ValueError, match=r"record 300 is corrupt: a map head cut short$"):
            with_id(300, body)
    for body in (b"\xbc", b"\xbd\x00", b"\xbe"):
        with pytest.raises(ValueError, match=r"record 300 is corrupt: unsupported map header$"):
            with_id(300, body)
    for body in (b"\xd9\xd9", b"\xd9"):
        with pytest.raises(ValueError, match=r"record 300 is corrupt: not a CBOR map$"):
            with_id(300, body)
