"""Open the capture store a spec names (``store: {sqlite: …}`` or ``{postgres: …}``) or the default one."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from .base import CaptureStore, StoreError

__all__ = ["StoreOpener", "open_store_url"]

SecretLookup = Callable[[str, str], Mapping[str, str] | None]


def open_store_url(url: str) -> CaptureStore:
    """``postgresql://…`` (or ``postgres://…``) opens PostgreSQL; anything else is a SQLite file path
    (``sqlite:///path`` also accepted)."""
    if url.startswith(("postgresql://", "postgres://")) or url.startswith("host="):
        from .postgres import PostgresStore  # optional at import time: needs psycopg

        return PostgresStore(url)
    from .sqlite import SQLiteStore

    return SQLiteStore(url.removeprefix("sqlite://"))


class StoreOpener:
    """Opens stores on demand and shares one connection per store among exporters and policies."""

    def __init__(self, default: str | None, secrets: SecretLookup) -> None:
        self.default = default
        self.secrets = secrets
        self._open: dict[str, CaptureStore] = {}
        self._lock = threading.Lock()

    def url_for(self, store_ref: Any | None, namespace: str) -> str:
        if store_ref is None or (store_ref.sqlite is None and store_ref.postgres is None):
            if not self.default:
                raise StoreError("no store in the spec and no default store configured (--store)")
            return self.default
        if store_ref.sqlite is not None:
            return str(store_ref.sqlite.path)
        ref = store_ref.postgres.secret_ref
        data = self.secrets(namespace, ref.name)
        if data is None:
            raise StoreError(f"Secret {namespace}/{ref.name} (store DSN) not found")
        if not data.get(ref.key):
            raise StoreError(f"Secret {namespace}/{ref.name} has no key {ref.key!r} (store DSN)")
        return data[ref.key]

    def __call__(self, spec: Any, namespace: str) -> CaptureStore:
        url = self.url_for(getattr(spec, "store", None), namespace)
        with self._lock:
            store = self._open.get(url)
            if store is None:
                store = self._open[url] = open_store_url(url)
            return store

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()
