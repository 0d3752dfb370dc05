"""Which capture store a spec names, whether its namespace may use it, and opening it: the one place that
knows the kinds of store.

A spec's ``store`` is ``{sqlite: {path}}``, ``{postgres: {secretRef}}``, or absent (``{}`` too) for the
operator's default store. :data:`STORE_KINDS` says, per kind, how to find its URL, how to describe it and
how to open a URL of it; :func:`chosen_kind`, :func:`describe_store`, :func:`store_identity`,
:func:`open_store_url` and :class:`StoreOpener` dispatch through it. A new kind of store is one entry
there (and one field of ``StoreRef``).

A reference is opened as the kind it names: a ``store.postgres`` DSN is always PostgreSQL, in a form
libpq accepts, and is never taken for a SQLite path. Only the default store (``--store``) is a bare string
whose kind is read from its form (:func:`kind_of_url`), and a string that looks like a URL of another kind
is refused rather than opened as a file.

Tenancy: :class:`StoreOpener` serves the default store only to the namespaces it is told to allow, and
SQLite paths only inside the directories it is told to allow; a refusal is a :class:`StoreRefused` whose
``reason`` is the condition's.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api.vocabulary import Domain, Reason
from ..redact import control_characters
from .base import CaptureStore, StoreError

__all__ = ["STORE_KINDS", "StoreKind", "StoreOpener", "StoreRefused", "check_store_location", "check_store_url",
           "chosen_kind", "describe_store", "dsn_problem", "kind_of_url", "open_store_url", "sqlite_file",
           "store_identity"]

SecretLookup = Callable[[str, str], Mapping[str, str] | None]


class StoreRefused(StoreError):
    """The store a spec names may not or cannot be used as it is: someone must fix the spec, the Secret or
    the operator's configuration. ``reason`` is the condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


_URL_SCHEME = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.\-]*:")
_KEY_VALUE = re.compile(r"^[A-Za-z_]+\s*=")
LIBPQ_FORMS = "postgresql://user:password@host:5432/db, postgres://… or key=value pairs such as host=… dbname=…"


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not a PostgreSQL connection string libpq accepts, in words that never quote it; None
    when it is one. libpq's own error messages quote the string, password included: never pass them on."""
    if control_characters(dsn):
        return f"holds a control character ({', '.join(control_characters(dsn))}), e.g. a trailing newline"
    if dsn != dsn.strip():
        return f"starts or ends with whitespace; libpq accepts {LIBPQ_FORMS}"
    from psycopg import conninfo as pg_conninfo  # psycopg is a dependency; imported late, with the store

    try:
        pg_conninfo.conninfo_to_dict(dsn)
    except Exception:
        if _URL_SCHEME.match(dsn) and not _KEY_VALUE.match(dsn):
            return ("is a URL whose scheme libpq does not accept (SQLAlchemy's postgresql+psycopg://, JDBC's "
                    f"jdbc:postgresql://, upper case?); write {LIBPQ_FORMS}")
        return f"is not a PostgreSQL connection string; write {LIBPQ_FORMS}"
    return None


def _postgres_dsn(ref: Any, namespace: str, secrets: SecretLookup) -> str:
    # Late: the object store's credentials module imports the API, which imports the store package.
    from ..objectstore.credentials import CredentialsError, secret_value

    secret = ref.secret_ref
    try:
        dsn = secret_value(namespace, secret.name, secrets(namespace, secret.name), secret.key, domain=Domain.STORE)
    except CredentialsError as exc:
        raise StoreRefused(exc.reason, f"{exc.message} (the store's PostgreSQL DSN, spec.store.postgres)") from None
    assert dsn is not None
    problem = dsn_problem(dsn)
    if problem is not None:
        raise StoreRefused(Reason.STORE_DSN_INVALID, f"Secret {namespace}/{secret.name} key {secret.key!r} "
                           f"(spec.store.postgres) {problem}")
    return dsn


def _open_postgres(url: str, create: bool) -> CaptureStore:
    from .postgres import PostgresStore  # optional at import time: needs psycopg

    return PostgresStore(url, create=create)


def sqlite_file(url: str) -> str:
    """The file a SQLite store URL names (a bare path is its own URL)."""
    return url.removeprefix("sqlite://")


def _open_sqlite(url: str, create: bool) -> CaptureStore:
    from .sqlite import SQLiteStore

    return SQLiteStore(sqlite_file(url), create=create)


@dataclass(frozen=True)
class StoreKind:
    """One kind of capture store: ``name`` is its field in ``StoreRef``. ``url`` finds the URL of the store
    a reference of this kind names (``(settings, namespace, secrets)``); ``describe`` names it for messages;
    ``url_prefixes`` recognise its URLs (an empty tuple: the kind any other URL is); ``open`` opens one
    (``(url, create)``: without ``create`` a store that does not exist is StoreNotFound)."""

    name: str
    url: Callable[[Any, str, SecretLookup], str]
    describe: Callable[[Any], str]
    url_prefixes: tuple[str, ...]
    open: Callable[[str, bool], CaptureStore]


STORE_KINDS: dict[str, StoreKind] = {
    kind.name: kind
    for kind in (
        StoreKind("sqlite", url=lambda ref, namespace, secrets: str(ref.path),
                  describe=lambda ref: f"sqlite {ref.path}", url_prefixes=(), open=_open_sqlite),
        StoreKind("postgres", url=_postgres_dsn,
                  describe=lambda ref: f"postgres from Secret {ref.secret_ref.name}",
                  url_prefixes=("postgresql://", "postgres://"), open=_open_postgres),
    )
}


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
    if store_ref is None or chosen_kind(store_ref) is None:
        return None
    return store_ref.model_dump(by_alias=True)


def kind_of_url(url: str) -> StoreKind:
    """The kind of store a bare URL names (``--store``): ``postgresql://…``, ``postgres://…`` or libpq's
    key=value form is PostgreSQL, ``sqlite:///path`` or a path is SQLite. Raises StoreRefused for what is
    neither: another URL scheme (``postgresql+psycopg://``, ``POSTGRESQL://``, ``jdbc:…``), surrounding
    whitespace or control characters, a key=value string libpq refuses. Never quotes ``url``."""
    if control_characters(url) or url != url.strip() or not url:
        raise StoreRefused(Reason.STORE_DSN_INVALID, "the store URL is empty, starts or ends with whitespace, or "
                           "holds a control character")
    postgres = STORE_KINDS["postgres"]
    if url.startswith(postgres.url_prefixes) or _KEY_VALUE.match(url):
        problem = dsn_problem(url)
        if problem is not None:
            raise StoreRefused(Reason.STORE_DSN_INVALID, f"the store DSN {problem}")
        return postgres
    looks_like_url = bool(_URL_SCHEME.match(url)) and ("://" in url or url.lower().startswith(("jdbc:", "postgres")))
    if url.startswith("sqlite://") or not looks_like_url:
        return STORE_KINDS["sqlite"]
    raise StoreRefused(Reason.STORE_DSN_INVALID, "the store URL is neither a SQLite path (or sqlite:///path) nor a "
                       f"PostgreSQL DSN libpq accepts ({LIBPQ_FORMS})")


def check_store_url(url: str, *, option: str = "--store") -> str:
    """``url`` if it names a store (see kind_of_url); else StoreRefused naming ``option``."""
    try:
        kind_of_url(url)
    except StoreRefused as exc:
        raise StoreRefused(exc.reason, f"{option}: {exc.message}") from None
    return url


def check_store_location(url: str, *, option: str = "--store") -> str:
    """``url`` if it names a store (check_store_url) that a file could hold: a SQLite path naming a
    directory is StoreNotFound, the line every command says. For the entry points that keep running before
    they open their store (the ingest server, the operator), so that they refuse to start rather than
    answer 503 or report the store missing for ever."""
    if check_store_url(url, option=option) and kind_of_url(url).name == "sqlite":
        from .sqlite.store import refuse_directory

        refuse_directory(Path(sqlite_file(url)))
    return url


def open_store_url(url: str, *, create: bool = False) -> CaptureStore:
    """Open the store a bare URL names (see kind_of_url; StoreRefused for what names none). Never creates a
    store unless ``create`` (``seed``, ``store init``, the demo, the operator's default store at start-up):
    a store that does not exist is StoreNotFound."""
    return kind_of_url(url).open(url, create)


class StoreOpener:
    """Opens stores on demand and shares one connection per store among exporters and policies. It never
    creates one: an exporter or a policy naming a store that does not exist gets StoreNotFound.

    ``default_namespaces``: the namespaces whose specs may use the default store (None: every one; ``*``
    in it: every one). ``sqlite_directories``: the directories a spec's ``store.sqlite.path`` must lie in,
    after symlinks and ``..`` are resolved (None: anywhere). A path to the default store's own file is the
    default store, with its namespace rule."""

    def __init__(self, default: str | None, secrets: SecretLookup, *,
                 default_namespaces: Collection[str] | None = None,
                 sqlite_directories: Sequence[str | os.PathLike[str]] | None = None) -> None:
        self.default = default
        self.secrets = secrets
        self.default_namespaces = None if default_namespaces is None or "*" in default_namespaces else frozenset(
            default_namespaces)
        self.sqlite_directories = None if sqlite_directories is None else [
            Path(directory).resolve() for directory in sqlite_directories]
        self._open: dict[tuple[str, str], CaptureStore] = {}
        self._lock = threading.Lock()

    # -- which store, and may this namespace use it -------------------------------------------------

    def _default(self, namespace: str, *, named_as: str = "") -> tuple[StoreKind, str]:
        if not self.default:
            raise StoreError("no store in the spec and no default store configured (--store)")
        if self.default_namespaces is not None and namespace not in self.default_namespaces:
            allowed = ", ".join(sorted(self.default_namespaces)) or "none"
            raise StoreRefused(Reason.DEFAULT_STORE_NOT_ALLOWED,
                               f"{named_as}namespace {namespace!r} may not use the operator's default store (allowed: "
                               f"{allowed}); name a store of its own in spec.store")
        return kind_of_url(self.default), self.default

    def _default_sqlite_file(self) -> Path | None:
        if not self.default:
            return None
        try:
            kind = kind_of_url(self.default)
        except StoreRefused:
            return None
        return Path(sqlite_file(self.default)).resolve() if kind.name == "sqlite" else None

    def _sqlite_path(self, path: str, namespace: str) -> tuple[StoreKind, str]:
        resolved = Path(path).resolve()
        if resolved == self._default_sqlite_file():
            assert self.default is not None
            return self._default(namespace, named_as="spec.store.sqlite.path names the default store: ")
        allowed = self.sqlite_directories
        if allowed is not None and not any(resolved.is_relative_to(directory) for directory in allowed):
            where = ", ".join(str(d) for d in allowed) or "none are configured"
            raise StoreRefused(Reason.STORE_PATH_NOT_ALLOWED,
                               f"spec.store.sqlite.path {path!r} is outside the directories SQLite stores may be in "
                               f"({where}; --sqlite-dir)")
        return STORE_KINDS["sqlite"], path

    def locate(self, store_ref: Any | None, namespace: str) -> tuple[StoreKind, str]:
        """The kind and URL of the store ``store_ref`` names for a resource in ``namespace``, or
        StoreRefused/StoreError saying why it cannot be used."""
        choice = chosen_kind(store_ref)
        if choice is None:
            return self._default(namespace)
        kind, settings = choice
        url = kind.url(settings, namespace, self.secrets)
        if kind.name == "sqlite":
            return self._sqlite_path(url, namespace)
        return kind, url

    def url_for(self, store_ref: Any | None, namespace: str) -> str:
        return self.locate(store_ref, namespace)[1]

    def __call__(self, spec: Any, namespace: str) -> CaptureStore:
        kind, url = self.locate(getattr(spec, "store", None), namespace)
        key = (kind.name, url)
        with self._lock:
            store = self._open.get(key)
            if store is None:
                store = self._open[key] = kind.open(url, False)  # never created here: StoreNotFound
            return store

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()
