"""SQLite capture store: the embedded default.

SQLite serialises writers and assigns ``AUTOINCREMENT`` ids inside the write transaction, so ids are
visible in commit order and the safe horizon is simply the highest committed id.

What each schema version added (soft deletion, the seal, the quarantine table) is told in ``schema``.

The package: ``schema`` (tables and migrations), ``locks`` (one writer per exporter) and ``store``
(`SQLiteStore`).
"""

from __future__ import annotations

from .store import SQLiteStore

__all__ = ["SQLiteStore"]
