"""Generated records made once per test session: ``seed_store`` spends ~0.7 ms a record generating and
encoding realistic captures (more on a loaded machine), and the kill -9 tests append the same batches in
several tests (200,000 records in all cost ~2 minutes). The first call for a ``(count, seed)`` generates the
batch exactly as ``seed_store`` does and keeps it on disk (a few MB); later calls append those same encoded
rows. The store content is what ``seed_store`` would write, timestamps aside (they end when the batch was
first made, not when it is appended)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from capture_export.seed.generator import generate_records
from capture_export.store import SQLiteStore
from capture_export.store.records import encode_body

__all__ = ["SeededBatches", "seeded_batches"]


class SeededBatches:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def rows(self, count: int, seed: int) -> list[tuple[int, bytes]]:
        path = self.directory / f"{count}-{seed}.pickle"
        if path.exists():
            rows: list[tuple[int, bytes]] = pickle.loads(path.read_bytes())
            return rows
        rows = [encode_body(record) for record in generate_records(count, seed=seed)]
        path.write_bytes(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        return rows

    def append(self, store: Path | SQLiteStore, count: int, *, seed: int) -> int:
        """Append ``count`` records generated with ``seed`` (sealed as ``seed_store`` seals them) to
        ``store`` (open, or the path of a SQLite store, opened and closed here); return the last id."""
        if isinstance(store, SQLiteStore):
            return store.append_encoded(self.rows(count, seed), sealed=True)
        opened = SQLiteStore(store)
        try:
            return opened.append_encoded(self.rows(count, seed), sealed=True)
        finally:
            opened.close()


@pytest.fixture(scope="session")
def seeded_batches(tmp_path_factory: pytest.TempPathFactory) -> SeededBatches:
    return SeededBatches(tmp_path_factory.mktemp("seeded-batches"))
