"""SQLite capture store: the embedded default.

SQLite serialises writers and assigns ``AUTOINCREMENT`` ids inside the write transaction, so ids are
visible in commit order and the safe horizon is simply the highest committed id.

Schema version 2 adds soft deletion (RetentionPolicy ``softDelete``): a nullable ``deleted_at_us``
column and an index on ``(deleted_at_us, ts_us)``, which also serves the purge (visible records by age:
the ``deleted_at_us IS NULL`` part of the index) and the grace-period purge and restore (the marked
part), and a view ``captures_live`` of the records that are not soft-deleted, for anyone else who reads
the store. A store of version 1 is migrated when opened; the gateway's ``INSERT INTO captures (ts_us,
body)`` is unaffected. Soft-deleted rows are left out of ``count`` and ``ids`` but stay in the export
stream (``read_batch``, ``backlog``): see store/base.py for why.

Schema version 4 replaces version 3's ``stripped`` flag (any writer could set it, so it is no longer
read; the column stays, ignored) with a nullable ``seal`` column that our own append fills
(store/seal.py; the key is ``seal_key`` in ``capture_export_meta``, created by the migration), and adds
``captures_quarantine``, where ``onCorruptRecord: Quarantine`` moves rows that fail the check. Rows of
an upgraded store have no seal, so the export checks each of them in full once: safe, at the cost of
checking old rows that were in fact ours. Anyone who can open the file can read the key: with SQLite
the seal keeps out careless writers (and flags), not hostile ones (see store/seal.py).

The package: ``schema`` (tables and migrations), ``locks`` (one writer per exporter) and ``store``
(`SQLiteStore`).
"""

from __future__ import annotations

from .store import SQLiteStore

__all__ = ["SQLiteStore"]
