"""Mutated copies of a CBOR body, for the tests that feed the native paths (_cbor_json.c) hostile bytes."""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["broken_copies", "mutations"]


def mutations(body: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    """``count`` copies of ``body``, each with 1 to 4 mutations at random places: a byte overwritten (half of
    them), a bit flipped (a quarter), or a byte replaced by 0 to 9 random bytes (a quarter). ``rng`` is drawn
    from in the same order whatever the caller does between copies, so a seed gives the same copies."""
    for _ in range(count):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            if not mutated:  # a splice emptied a short body: nothing left to mutate
                break
            at = rng.randrange(len(mutated))
            choice = rng.random()
            if choice < 0.5:
                mutated[at] = rng.randrange(256)
            elif choice < 0.75:
                mutated[at] ^= 1 << rng.randrange(8)
            else:
                mutated[at:at + 1] = rng.randbytes(rng.randint(0, 9))
        yield bytes(mutated)


def broken_copies(body: bytes) -> Iterator[bytes]:
    """Copies of ``body`` that are no longer one whole CBOR item: cut short at 40 places spread over it, and
    with one byte too many at its end. A native path must reject every one (return None), never guess."""
    for cut in range(0, len(body), max(1, len(body) // 40)):
        yield body[:cut]
    yield body + b"\x00"
