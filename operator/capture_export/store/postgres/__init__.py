"""PostgreSQL capture store: the production store, read below a safe horizon so no record is skipped.

The package: ``schema`` (tables, migrations, what the gateway may be granted), ``horizon`` (why a
sequence alone would skip records, and the safe horizon that does not), ``connections`` (the pool),
``locks`` (one writer per exporter) and ``store`` (`PostgresStore`: reads, writes, retention, quarantine).
"""

from __future__ import annotations

from .connections import safe_label
from .horizon import HorizonTracker
from .store import PostgresStore

__all__ = ["HorizonTracker", "PostgresStore", "safe_label"]
