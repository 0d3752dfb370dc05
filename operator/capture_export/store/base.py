"""The capture-store protocol: what the export and retention engines need from a store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

__all__ = ["CaptureStore", "StoreError", "StoredRecord"]


class StoreError(RuntimeError):
    """The store could not be read or written (unreachable, locked, schema problem)."""


class StoredRecord(NamedTuple):
    id: int
    timestamp_us: int
    body: bytes  # CBOR map without ``id``; see records.with_id


class CaptureStore(Protocol):
    """A capture store. Ids grow with insertion; reads are keyset reads below a safe horizon."""

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Insert records (credentials stripped); return the last id assigned."""
        ...

    def safe_horizon(self) -> int:
        """Highest id such that every id at or below it is committed and visible: no lower id can
        appear later. Readers never go past it."""
        ...

    def read_batch(self, after: int, limit: int, horizon: int | None = None) -> list[StoredRecord]:
        """Up to ``limit`` records with ``after < id <= horizon``, in id order."""
        ...

    def backlog(self, after: int, horizon: int | None = None) -> int:
        """How many records lie past ``after`` (up to the horizon)."""
        ...

    def max_id(self) -> int: ...

    def count(self) -> int: ...

    def ids(self) -> Iterable[int]:
        """Every record id, in order (for audits)."""
        ...

    def delete_up_to(self, max_id: int, older_than_us: int, batch_size: int) -> int:
        """Delete records with ``id <= max_id`` and timestamp older than ``older_than_us``, in short
        transactions of ``batch_size`` rows; return how many were deleted."""
        ...

    def close(self) -> None: ...
