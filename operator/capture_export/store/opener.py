"""Which capture store a spec names, and opening it: the one place that knows the kinds of store.

A spec's ``store`` is ``{sqlite: {path}}``, ``{postgres: {secretRef}}``, or absent (``{}`` too) for the
operator's default store. :data:`STORE_KINDS` says, per kind, how to find its URL, how to describe it and
how to open a URL of it; :func:`chosen_kind`, :func:`describe_store`, :func:`store_identity`,
:func:`open_store_url` and :class:`StoreOpener` dispatch through it. A new kind of store is one entry
there (and one field of ``StoreRef``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import CaptureStore, StoreError

__all__ = ["STORE_KINDS", "StoreKind", "StoreOpener", "chosen_kind", "describe_store", "open_store_url",
           "store_identity"]

SecretLookup = Callable[[str, str], Mapping[str, str] | None]


def _postgres_dsn(ref: Any, namespace: str, secrets: SecretLookup) -> str:
    secret = ref.secret_ref
    data = secrets(namespace, secret.name)
    if data is None:
        raise StoreError(f"Secret {namespace}/{secret.name} (store DSN) not found")
    if not data.get(secret.key):
        raise StoreError(f"Secret {namespace}/{secret.name} has no key {secret.key!r} (store DSN)")
    return data[secret.key]


def _open_postgres(url: str) -> CaptureStore:
    from .postgres import PostgresStore  # optional at import time: needs psycopg

    return PostgresStore(url)


def _open_sqlite(url: str) -> CaptureStore:
    from .sqlite import SQLiteStore

    return SQLiteStore(url.removeprefix("sqlite://"))


@dataclass(frozen=True)
class StoreKind:
    """One kind of capture store: ``name`` is its field in ``StoreRef``. ``url`` finds the URL of the store
    a reference of this kind names (``(settings, namespace, secrets)``); ``describe`` names it for messages;
    ``url_prefixes`` recognise its URLs (an empty tuple: the kind any other URL is); ``open`` opens one."""

    name: str
    url: Callable[[Any, str, SecretLookup], str]
    describe: Callable[[Any], str]
    url_prefixes: tuple[str, ...]
    open: Callable[[str], CaptureStore]


STORE_KINDS: dict[str, StoreKind] = {
    kind.name: kind
    for kind in (
        StoreKind("sqlite", url=lambda ref, namespace, secrets: str(ref.path),
                  describe=lambda ref: f"sqlite {ref.path}", url_prefixes=(), open=_open_sqlite),
        StoreKind("postgres", url=_postgres_dsn,
                  describe=lambda ref: f"postgres from Secret {ref.secret_ref.name}",
                  url_prefixes=("postgresql://", "postgres://", "host="), open=_open_postgres),
    )
}
_FALLBACK = next(kind for kind in STORE_KINDS.values() if not kind.url_prefixes)


def chosen_kind(store_ref: Any | None) -> tuple[StoreKind, Any] | None:
    """The kind a ``StoreRef`` names and its settings; None for the default store (no ``store``, or
    ``store: {}``)."""
    if store_ref is None:
        return None
    for kind in STORE_KINDS.values():
        settings = getattr(store_ref, kind.name, None)
        if settings is not None:
            return kind, settings
    return None


def describe_store(store_ref: Any | None) -> str:
    choice = chosen_kind(store_ref)
    return "the default store" if choice is None else choice[0].describe(choice[1])


def store_identity(store_ref: Any | None) -> Any:
    """A comparable form of a store reference, ``store: {}`` and no ``store`` both being the default."""
    return None if chosen_kind(store_ref) is None else store_ref.model_dump(by_alias=True)


def open_store_url(url: str) -> CaptureStore:
    """``postgresql://…`` (or ``postgres://…``, or ``host=…``) opens PostgreSQL; anything else is a SQLite
    file path (``sqlite:///path`` also accepted)."""
    kind = next((k for k in STORE_KINDS.values() if k.url_prefixes and url.startswith(k.url_prefixes)), _FALLBACK)
    return kind.open(url)


class StoreOpener:
    """Opens stores on demand and shares one connection per store among exporters and policies."""

    def __init__(self, default: str | None, secrets: SecretLookup) -> None:
        self.default = default
        self.secrets = secrets
        self._open: dict[str, CaptureStore] = {}
        self._lock = threading.Lock()

    def url_for(self, store_ref: Any | None, namespace: str) -> str:
        choice = chosen_kind(store_ref)
        if choice is None:
            if not self.default:
                raise StoreError("no store in the spec and no default store configured (--store)")
            return self.default
        kind, settings = choice
        return kind.url(settings, namespace, self.secrets)

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
