"""Generated records into a capture store, in batches: sealed as our own, or (``strip=False``) as a
gateway that does not strip credentials would write them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import cbor2

from ..store.records import timestamp_micros
from .generator import generate_records

__all__ = ["SeedTarget", "seed_store"]


class SeedTarget(Protocol):
    def append(self, records: Iterable[Mapping[str, Any]]) -> int: ...

    def append_encoded(self, rows: list[tuple[int, bytes]], *, sealed: bool = False) -> int: ...


def _encode_unstripped(record: dict[str, Any]) -> tuple[int, bytes]:
    # Generated records already have their fields in schema order and a UTC timestamp.
    return timestamp_micros(record["timestamp"]), cbor2.dumps(record, timezone=UTC)


def seed_store(
    store: SeedTarget,
    count: int,
    *,
    seed: int = 0,
    batch_size: int = 5000,
    progress: Callable[[int], None] | None = None,
    start: datetime | None = None,
    span: timedelta = timedelta(days=30),
    strip: bool = True,
) -> int:
    """Append ``count`` generated records to ``store`` in batches; return the last id assigned.

    Records are encoded with ``encode_body`` (credentials stripped) and sealed as our own. ``strip=False``
    instead stores them as a gateway that does not strip would, credential headers included (same CBOR
    layout), unsealed: foreign rows, to exercise the exporter's check and stripping. ``progress`` is
    called after each batch with the number of records appended so far. With ``count <= 0`` nothing is
    appended and the store's ``max_id()`` (or 0) is returned. ``start`` and ``span`` are passed to
    `generate_records`.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")

    # Sealed rows go through ``append``, which encodes them itself (``encode_body``): ``append_encoded``'s
    # sealed path decodes every body it is handed once more to refuse one holding its own ``id``.
    def write(batch: list[dict[str, Any]]) -> int:
        if strip:
            return store.append(batch)
        return store.append_encoded([_encode_unstripped(record) for record in batch])

    last = 0
    done = 0
    batch: list[dict[str, Any]] = []
    for record in generate_records(count, seed=seed, start=start, span=span):
        batch.append(record)
        if len(batch) >= batch_size:
            last = write(batch)
            done += len(batch)
            batch = []
            if progress is not None:
                progress(done)
    if batch:
        last = write(batch)
        done += len(batch)
        if progress is not None:
            progress(done)
    if done == 0:
        max_id = getattr(store, "max_id", None)
        return int(max_id()) if callable(max_id) else 0
    return last
