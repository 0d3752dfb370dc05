"""The seals of a batch checked natively (capture_export/export/_cbor_json.c, ``seals_valid``): what decides which
rows the export trusts without a check, in every format. Its contract is ``RecordSeal.all_valid``'s answer in
Python, exactly, or None (the caller then checks in Python): never True where one row does not hold its seal.

Where no C compiler built the extension these tests skip, but under CI (``CI`` set) they fail: CI builds it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import cbor2
import pytest
import zstandard

from capture_export.export import batch
from capture_export.export.batch import BatchRecipe, encode_rows
from capture_export.seed import generate_records
from capture_export.store.base import StoredRecord
from capture_export.store.records import encode_body
from capture_export.store.seal import SEAL_CONTEXT, SEAL_SIZE, RecordSeal, new_seal_key
from tests.support.native import built_extension


@pytest.fixture(scope="module")
def native() -> ModuleType:
    module = built_extension("seals_valid")
    seal, rows = _sealed(_bodies(2))
    if module.seals_valid(rows, seal._mac_key) is None:
        pytest.fail("seals_valid found no SHA-256 in the libcrypto of this Python's hashlib", pytrace=False)
    return module


def _bodies(count: int) -> list[bytes]:
    return [encode_body(record)[1]
            for record in generate_records(count, seed=5, start=datetime(2026, 12, 5, tzinfo=UTC))]


def _sealed(bodies: list[Any], seal: RecordSeal | None = None) -> tuple[RecordSeal, list[StoredRecord]]:
    seal = seal or RecordSeal(new_seal_key())
    return seal, [StoredRecord(n, 1_764_900_000_000_000 + n, body, seal.seal(body)) for n, body in enumerate(bodies, 1)]


def _hmac_seal(key_hex: str, body: bytes) -> bytes:
    """The seal as store/seal.py documents it, by the standard library's HMAC: none of RecordSeal's shortcuts."""
    mac_key = hashlib.sha256(bytes.fromhex(key_hex) + SEAL_CONTEXT).digest()
    return hmac.new(mac_key, body, hashlib.sha256).digest()[:SEAL_SIZE]


def _both(native: ModuleType, seal: RecordSeal, rows: list[Any]) -> Any:
    """The native answer, after checking it against Python's where it gives one."""
    verdict = native.seals_valid(rows, seal._mac_key)
    if verdict is not None:
        assert verdict is seal.all_valid(rows), rows
    return verdict


def test_a_batch_of_our_own_rows_holds_its_seals(native: ModuleType) -> None:
    seal, rows = _sealed(_bodies(500))
    assert _both(native, seal, rows) is True
    assert _both(native, seal, []) is True


@pytest.mark.parametrize("where", [0, 1, 250, 499])
def test_one_row_that_does_not_hold_its_seal_fails_the_batch_wherever_it_is(native: ModuleType, where: int) -> None:
    seal, rows = _sealed(_bodies(500))
    row = rows[where]
    forged = [
        row._replace(body=row.body + b"\x00"),  # a byte more
        row._replace(body=row.body[:-1]),  # a byte less
        row._replace(body=bytes([row.body[0] ^ 1]) + row.body[1:]),  # the first bit
        row._replace(body=row.body[:-1] + bytes([row.body[-1] ^ 0x80])),  # the last bit
        row._replace(seal=rows[where - 1].seal),  # another row's seal
        row._replace(seal=row.seal[:-1] + bytes([row.seal[-1] ^ 1])),  # its seal's last bit
        row._replace(seal=bytes(SEAL_SIZE)),
        row._replace(seal=RecordSeal(new_seal_key()).seal(row.body)),  # another store's key
    ]
    for odd in forged:
        assert _both(native, seal, [*rows[:where], odd, *rows[where + 1:]]) is False, odd


@pytest.mark.parametrize("mark", [
    pytest.param(lambda good: good[:-1], id="15 bytes"),
    pytest.param(lambda good: good + b"\x00", id="17 bytes"),
    pytest.param(lambda good: b"", id="empty"),
    pytest.param(lambda good: bytearray(good), id="bytearray"),
    pytest.param(lambda good: memoryview(good), id="memoryview"),
    pytest.param(lambda good: good.hex(), id="text"),
    pytest.param(lambda good: int.from_bytes(good, "big"), id="a number"),
    pytest.param(lambda good: None, id="None"),
    pytest.param(lambda good: type("Seal", (bytes,), {})(good), id="a bytes subclass"),
])
def test_a_seal_that_is_not_16_bytes_fails_the_batch(native: ModuleType, mark: Any) -> None:
    seal, rows = _sealed(_bodies(3))
    rows[1] = rows[1]._replace(seal=mark(rows[1].seal))
    assert _both(native, seal, rows) is False


def test_the_whole_hmac_is_not_the_seal(native: ModuleType) -> None:
    """The first 16 bytes of the HMAC are the seal; all 32 (whose first 16 match) are not."""
    key = new_seal_key()
    seal, rows = _sealed(_bodies(2), RecordSeal(key))
    mac_key = hashlib.sha256(bytes.fromhex(key) + SEAL_CONTEXT).digest()
    rows[0] = rows[0]._replace(seal=hmac.new(mac_key, rows[0].body, hashlib.sha256).digest())
    assert _both(native, seal, rows) is False


@pytest.mark.parametrize("body", [
    pytest.param(lambda body: bytearray(body), id="bytearray"),
    pytest.param(lambda body: body.decode("latin-1"), id="text"),
    pytest.param(lambda body: None, id="None"),
    pytest.param(lambda body: 7, id="a number"),
    pytest.param(lambda body: type("Body", (bytes,), {})(body), id="a bytes subclass"),
])
def test_a_body_that_is_neither_bytes_nor_a_memoryview_fails_the_batch(native: ModuleType, body: Any) -> None:
    seal, rows = _sealed(_bodies(3))
    rows[2] = rows[2]._replace(body=body(rows[2].body))
    assert _both(native, seal, rows) is False


def test_bodies_that_are_views_of_one_buffer_are_checked_as_bytes(native: ModuleType) -> None:
    """The encode pool's rows are memoryviews of one buffer (PackedRows.unpack): checked like bytes."""
    seal, rows = _sealed(_bodies(40))
    unpacked = batch.PackedRows.pack(rows).unpack()
    assert all(isinstance(row.body, memoryview) for row in unpacked)
    assert _both(native, seal, unpacked) is True
    forged = batch.PackedRows.pack([*rows[:20], rows[20]._replace(seal=rows[21].seal), *rows[21:]]).unpack()
    assert _both(native, seal, forged) is False
    unsealed = [*unpacked[:10], unpacked[10]._replace(seal=None), *unpacked[11:]]
    assert _both(native, seal, unsealed) is False  # stopped at row 10, before hashing
    for row in unpacked:  # every buffer it held is given back, wherever it stopped
        row.body.release()
    words = rows[5].body[:len(rows[5].body) // 4 * 4]
    as_words = StoredRecord(6, 0, memoryview(words).cast("I"), seal.seal(words))  # hashed as its bytes, as hashlib
    assert _both(native, seal, [*rows[:5], as_words]) is True


def test_rows_it_does_not_check_are_left_to_python(native: ModuleType) -> None:
    seal, rows = _sealed(_bodies(3))
    for odd in (tuple(rows[1])[:3], (*rows[1], None), list(rows[1]), "row"):
        assert native.seals_valid([rows[0], odd, rows[2]], seal._mac_key) is None
    strided = rows[1]._replace(body=memoryview(rows[1].body * 2)[::2])  # not one run of bytes
    assert native.seals_valid([rows[0], strided, rows[2]], seal._mac_key) is None
    with pytest.raises(BufferError):  # and Python's answer is hashlib's
        seal.all_valid([rows[0], strided, rows[2]], native.seals_valid)
    released = memoryview(rows[1].body)
    released.release()
    assert native.seals_valid([rows[0], rows[1]._replace(body=released), rows[2]], seal._mac_key) is None
    with pytest.raises(TypeError):
        native.seals_valid(tuple(rows), seal._mac_key)
    for key in (seal._mac_key[:-1], seal._mac_key + b"\x00", bytearray(seal._mac_key), seal._mac_key.hex()):
        with pytest.raises(TypeError):
            native.seals_valid(rows, key)


@pytest.mark.parametrize("length", [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 1 << 20])
def test_bodies_of_every_length_around_sha256s_blocks_hold_the_standard_hmac(native: ModuleType, length: int) -> None:
    """Bodies of any bytes, at the lengths where SHA-256's padding changes: True with the seal the standard
    library's HMAC makes, False with that seal of the body one byte shorter or longer."""
    rng = random.Random(length)
    key = new_seal_key()
    seal = RecordSeal(key)
    body = rng.randbytes(length)
    assert native.seals_valid([StoredRecord(1, 0, body, _hmac_seal(key, body))], seal._mac_key) is True
    for other in (body[:-1], body + b"\x00"):
        if other != body:
            assert native.seals_valid([StoredRecord(1, 0, body, _hmac_seal(key, other))], seal._mac_key) is False


def test_random_keys_and_bodies_agree_with_the_standard_hmac(native: ModuleType) -> None:
    rng = random.Random(20261205)
    checked = 0
    for _ in range(200):
        key = rng.randbytes(rng.choice([16, 32, 64])).hex()
        seal = RecordSeal(key)
        bodies = [rng.randbytes(rng.randrange(0, 9000)) for _ in range(rng.randrange(1, 12))]
        rows = [StoredRecord(n, 0, body, _hmac_seal(key, body)) for n, body in enumerate(bodies)]
        assert native.seals_valid(rows, seal._mac_key) is True
        victim = rng.randrange(len(rows))
        flipped = bytearray(rows[victim].seal)
        flipped[rng.randrange(SEAL_SIZE)] ^= 1 << rng.randrange(8)
        rows[victim] = rows[victim]._replace(seal=bytes(flipped))
        assert native.seals_valid(rows, seal._mac_key) is False
        checked += len(rows)
    assert checked > 1000


def test_without_openssls_sha256_the_rows_are_checked_in_python() -> None:
    """A Python whose hashlib has no OpenSSL (here: ``_hashlib`` made unimportable before the first check):
    seals_valid answers None and all_valid still finds a forged row."""
    built_extension("seals_valid")
    script = """
import sys
import threading
import time
sys.modules["_hashlib"] = None
from capture_export.export import _cbor_json
from capture_export.store.base import StoredRecord
from capture_export.store.seal import RecordSeal, new_seal_key
seal = RecordSeal(new_seal_key())
rows = [StoredRecord(n, 0, b"body %d" % n, seal.seal(b"body %d" % n)) for n in range(5)]
assert _cbor_json.seals_valid(rows, seal._mac_key) is None
assert seal.all_valid(rows, _cbor_json.seals_valid) is True
rows[3] = rows[3]._replace(body=b"forged")
assert seal.all_valid(rows, _cbor_json.seals_valid) is False
print("checked in python")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    assert done.returncode == 0 and done.stdout.strip() == "checked in python", done.stdout + done.stderr


def test_the_check_lets_other_threads_run_and_keeps_its_own_rows(native: ModuleType) -> None:
    """The hashing lets go of the GIL (the store's reader and the uploads go on meanwhile), on its own references
    to the rows: another thread runs while one call checks, and a batch it empties meanwhile is checked as passed.
    The switch interval is made long so that the other thread gets the GIL only when a call lets go of it."""
    seal, rows = _sealed(_bodies(50) * 100)  # 5,000 rows: ~10-20 ms of hashing
    ticks = 0
    go, stop = threading.Event(), threading.Event()
    passed = list(rows)
    del rows

    def tick() -> None:
        nonlocal ticks
        go.wait()
        while not stop.is_set():
            ticks += 1
            if ticks == 1:
                passed.clear()
            time.sleep(0)  # lets go of the GIL at once

    interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    other = threading.Thread(target=tick)
    try:
        other.start()
        go.set()  # it now waits for the GIL, which this thread keeps until the call lets go of it
        verdict = native.seals_valid(passed, seal._mac_key)
        during = ticks
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        other.join()
    assert verdict is True
    assert during > 0 and not passed


# -- in the export ---------------------------------------------------------------------------------------------


def test_the_default_format_checks_a_batchs_seals_in_one_native_call(native: ModuleType,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seal, rows = _sealed(_bodies(1000))
    verdicts: list[bool | None] = []

    def counting(rows: list[StoredRecord], mac_key: bytes) -> bool | None:
        verdicts.append(native.seals_valid(rows, mac_key))
        return verdicts[-1]

    monkeypatch.setattr(batch, "_native_seals_valid", counting)
    recipe = BatchRecipe("cbor-zstd", "zstd", seal=seal)
    payload = encode_rows(recipe, rows).payload
    assert verdicts == [True]
    monkeypatch.setattr(batch, "_native_seals_valid", None)
    assert encode_rows(recipe, rows).payload == payload  # the same object, byte for byte
    assert zstandard.ZstdDecompressor().decompress(payload) == b"".join(batch._pieces([(r.id, r.body) for r in rows]))


@pytest.mark.parametrize("fmt", [("jsonl", "zstd"), ("jsonl", "none"), ("cbor-zstd", "zstd")],
                         ids=["jsonl.zst", "jsonl", "cbor-zstd"])
def test_every_format_checks_a_batch_of_our_own_rows_in_one_native_call(native: ModuleType, fmt: tuple[str, str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The formats that decode check their rows too (``check_rows``, in the encode pool's workers, whose rows are
    views of one buffer): a batch whose rows all hold their seals in one call, and the same object as row by
    row."""
    seal, rows = _sealed(_bodies(300))
    verdicts: list[bool | None] = []

    def counting(rows: list[StoredRecord], mac_key: bytes) -> bool | None:
        verdicts.append(native.seals_valid(rows, mac_key))
        return verdicts[-1]

    monkeypatch.setattr(batch, "_native_seals_valid", counting)
    recipe = BatchRecipe(fmt[0], fmt[1], seal=seal, on_corrupt_record="Quarantine")
    checked, payload = batch.check_rows(recipe, rows), encode_rows(recipe, rows).payload
    assert verdicts == [True, True]
    pooled = batch.PackedRows.pack(rows).unpack()  # as a worker of the encode pool gets them
    assert encode_rows(recipe, pooled).payload == payload and verdicts == [True, True, True]
    monkeypatch.setattr(batch, "_native_seals_valid", None)
    assert batch.check_rows(recipe, rows) == checked
    assert encode_rows(recipe, rows).payload == payload


def test_a_batch_with_a_row_that_does_not_hold_its_seal_is_checked_row_by_row(native: ModuleType) -> None:
    seal, rows = _sealed(_bodies(20))
    foreign = next(iter(generate_records(1, seed=9, start=datetime(2026, 12, 5, tzinfo=UTC))))
    foreign["capture"]["request"]["headers"]["authorization"] = "Bearer cnryRowByRow0d4c"
    foreign["timestamp"] = datetime.fromtimestamp(rows[7].timestamp_us / 1e6, UTC)
    rows[7] = rows[7]._replace(body=cbor2.dumps(foreign, timezone=UTC))  # its seal kept: now wrong
    recipe = BatchRecipe("jsonl", "zstd", seal=seal)
    good, corrupt = batch.check_rows(recipe, rows)
    assert not corrupt and [item.row.id for item in good] == [row.id for row in rows]
    assert b"cnryRowByRow0d4c" not in bytes(good[7].body)
    assert all(good[n].body is rows[n].body for n in range(20) if n != 7)
