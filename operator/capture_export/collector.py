"""Pausing the cyclic garbage collector while a burst of objects that hold no cycles is made."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cyclic_gc_paused"]


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector meanwhile (a request body parsed, botocore's service models
    loaded).

    Such a burst allocates tens of thousands of dicts and lists that all stay alive (until their records
    are encoded; for the life of an S3 client), so the collector would run over them again and again (and,
    once they are promoted, over every object the process holds) to find nothing: they are trees, freed by
    reference counting. Cycles made meanwhile (an exception's traceback) are collected after the pause as
    usual. The pause is the process's: another thread that pauses meanwhile leaves it to the first, and
    threads that do not pause find nothing of theirs left uncollected for longer than the pause."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
