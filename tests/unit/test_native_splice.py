"""The default format's batch spliced natively (capture_export/export/_cbor_json.c, ``spliced_records``): every
row's id spliced into its stored map and the records joined, in one call, for a batch whose rows all go out as
stored. Its contract is the Python path's bytes (``_pieces``, records.id_head, joined), exactly, or None (the
caller then splices in Python); it never joins a batch larger than it is told.

Where no C compiler built the extension these tests skip, but under CI (``CI`` set) they fail: CI builds it.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest
import zstandard

from capture_export.export import batch
from capture_export.export.batch import BatchRecipe, encode_rows
from capture_export.export.formats import ZSTD_ONE_SHOT_BYTES
from capture_export.seed import generate_records
from capture_export.store.base import StoredRecord
from capture_export.store.records import encode_body
from capture_export.store.seal import RecordSeal, new_seal_key
from tests.support.mutations import mutations
from tests.support.native import built_extension

IDS = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63 - 1]


@pytest.fixture(scope="module")
def native() -> ModuleType:
    return built_extension("spliced_records")


def _bodies(count: int) -> list[bytes]:
    return [encode_body(record)[1]
            for record in generate_records(count, seed=3, start=datetime(2026, 11, 24, tzinfo=UTC))]


def _rows(bodies: list[Any], first_id: int = 1) -> list[StoredRecord]:
    return [StoredRecord(first_id + n, 1_764_000_000_000_000 + n, body, None) for n, body in enumerate(bodies)]


def _python(rows: list[StoredRecord]) -> bytes:
    return b"".join(batch._pieces([(row.id, row.body) for row in rows]))


def test_standard_records_are_spliced_as_python_splices_them(native: ModuleType) -> None:
    rows = _rows(_bodies(500), first_id=99_900)  # ids from two bytes to four
    assert native.spliced_records(rows, 1 << 30) == _python(rows)


@pytest.mark.parametrize("record_id", IDS)
def test_every_width_of_id_is_spliced_as_python_splices_it(native: ModuleType, record_id: int) -> None:
    rows = [StoredRecord(record_id, 0, body, None) for body in _bodies(3)]
    assert native.spliced_records(rows, 1 << 30) == _python(rows)


@pytest.mark.parametrize("count", range(23))
def test_every_small_map_is_spliced_as_python_splices_it(native: ModuleType, count: int) -> None:
    """A map of ``count`` pairs (its count in its initial byte), padded past 22 bytes with a long value."""
    pairs = b"".join(bytes([0x61, 0x61 + n]) + b"\x58\x20" + bytes(32) for n in range(count))
    body = bytes([0xA0 + count]) + pairs
    if len(body) <= 22:
        assert native.spliced_records(_rows([body]), 1 << 30) is None
        return
    rows = _rows([body], first_id=300)
    assert native.spliced_records(rows, 1 << 30) == _python(rows)


@pytest.mark.parametrize("odd", [
    pytest.param(lambda body: body[:20], id="a map of 22 bytes or fewer"),
    pytest.param(lambda body: b"\xb7" + body[1:], id="a map of 23 pairs"),
    pytest.param(lambda body: b"\xb8\x05" + body[1:], id="a count after the head"),
    pytest.param(lambda body: b"\xbf" + body[1:] + b"\xff", id="an indefinite-length map"),
    pytest.param(lambda body: b"\xd9\xd9\xf7" + body, id="a map under tag 55799"),
    pytest.param(lambda body: b"\x80" + body[1:], id="an array"),
    pytest.param(lambda body: b"", id="empty"),
    pytest.param(memoryview, id="a memoryview"),
    pytest.param(bytearray, id="a bytearray"),
    pytest.param(lambda body: body.decode("latin-1"), id="text"),
    pytest.param(lambda body: None, id="null"),
    pytest.param(lambda body: 7, id="an integer"),
])
def test_a_batch_with_one_row_it_does_not_splice_is_left_to_python(native: ModuleType, odd: Any) -> None:
    bodies: list[Any] = _bodies(5)
    bodies[3] = odd(bodies[3])
    assert native.spliced_records(_rows(bodies), 1 << 30) is None


@pytest.mark.parametrize("record_id", [-1, 2**63, 2**70, True])
def test_an_id_no_store_assigns_is_left_to_python(native: ModuleType, record_id: Any) -> None:
    rows = _rows(_bodies(2))
    rows[1] = StoredRecord(record_id, 0, rows[1].body, None)
    assert native.spliced_records(rows, 1 << 30) is None


def test_rows_that_are_not_stored_records_are_left_to_python(native: ModuleType) -> None:
    body = _bodies(1)[0]
    assert native.spliced_records([[1, 0, body, None]], 1 << 30) is None
    assert native.spliced_records([(1, 0)], 1 << 30) is None
    assert native.spliced_records([], 1 << 30) == b""
    with pytest.raises(TypeError):
        native.spliced_records(tuple(_rows([body])), 1 << 30)


def test_a_batch_larger_than_it_may_join_is_left_to_python(native: ModuleType) -> None:
    rows = _rows(_bodies(10))
    size = len(_python(rows))
    assert native.spliced_records(rows, size) == _python(rows)
    assert native.spliced_records(rows, size - 1) is None


def test_mutated_maps_are_spliced_as_python_splices_them_or_left_to_it(native: ModuleType) -> None:
    """Random damage after the head: the splice never reads a body, so whatever follows its first byte is
    copied as it is, as the Python path copies it; a damaged head is left to Python."""
    rng = random.Random(5)
    spliced = 0
    for body in _bodies(40):
        for mutated in mutations(body, rng, 50):
            rows = _rows([body, mutated], first_id=rng.choice(IDS[:-1]))
            got = native.spliced_records(rows, 1 << 30)
            if got is not None:
                assert got == _python(rows)
                spliced += 1
    assert spliced > 1000


# -- in the export ---------------------------------------------------------------------------------------------


def _sealed_rows(count: int, first_id: int = 1) -> tuple[RecordSeal, list[StoredRecord]]:
    seal = RecordSeal(new_seal_key())
    rows = [StoredRecord(row.id, row.timestamp_us, row.body, seal.seal(row.body))
            for row in _rows(_bodies(count), first_id)]
    return seal, rows


def _counted(monkeypatch: pytest.MonkeyPatch, native: ModuleType) -> list[bytes | None]:
    results: list[bytes | None] = []

    def counting(rows: list[StoredRecord], max_bytes: int) -> bytes | None:
        results.append(native.spliced_records(rows, max_bytes))
        return results[-1]

    monkeypatch.setattr(batch, "_native_spliced_records", counting)
    return results


def test_the_default_format_splices_a_batch_of_our_own_rows_natively(native: ModuleType,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seal, rows = _sealed_rows(1000, first_id=70_000)
    recipe = BatchRecipe("cbor-zstd", "zstd", seal=seal)
    calls = _counted(monkeypatch, native)
    payload = encode_rows(recipe, rows).payload
    assert len(calls) == 1 and calls[0] is not None
    monkeypatch.setattr(batch, "_native_spliced_records", None)
    assert encode_rows(recipe, rows).payload == payload  # the same object, byte for byte
    assert zstandard.ZstdDecompressor().decompress(payload) == _python(rows)


def test_a_batch_too_large_to_compress_in_one_call_is_never_joined(native: ModuleType,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``limit: 10000`` batch is fed to zstd in runs (formats.zstd_frame), so that it never holds a second copy
    of its records: the native splice must not join it either."""
    seal, rows = _sealed_rows(1)
    one = rows[0]
    count = ZSTD_ONE_SHOT_BYTES // len(one.body) + 1
    rows = [StoredRecord(one.id + n, one.timestamp_us, one.body, one.seal) for n in range(count)]
    calls = _counted(monkeypatch, native)
    payload = encode_rows(BatchRecipe("cbor-zstd", "zstd", seal=seal), rows).payload
    assert calls == [None]
    assert zstandard.ZstdDecompressor().decompress(payload) == _python(rows)
