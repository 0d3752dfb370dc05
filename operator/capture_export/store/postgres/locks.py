"""Exporter locks of a PostgreSQL store (one writer per destination): a session-level advisory lock
keyed by store and exporter, on one session the store keeps for all its exporters' locks (200 exporters
are 200 locks, not 200 connections). A lock ends with its session (the process dies, the server
restarts); one holder per exporter in this process too."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Any

import psycopg

from ..base import StoreError
from .connections import ConnectionPool, first_line

__all__ = ["AdvisoryLock", "ExporterLocks"]


class ExporterLocks:
    """The lock session of one store and the exporter locks it holds. Thread-safe."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._mutex = threading.Lock()
        self._session: psycopg.Connection[Any] | None = None
        self._scope = ""
        self._held: set[int] = set()
        self._generation = 0

    def take(self, store_id: str, exporter: str) -> AdvisoryLock | None:
        """The exporter's lock, or None when another holder (in any process) has it."""
        digest = hashlib.sha256(f"capture-export:{store_id}:{exporter}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with self._mutex:
            try:
                session = self._open_session()
                if key in self._held:
                    return None
                taken = session.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]  # type: ignore[index]
            except psycopg.Error as exc:
                self._drop_session()
                raise StoreError(f"PostgreSQL store {self._pool.label}: {first_line(exc)}") from None
            if not taken:
                return None
            self._held.add(key)
            return AdvisoryLock(self, key, self._generation, self._scope)

    def _open_session(self) -> psycopg.Connection[Any]:
        """The session holding the exporter locks (opened on first use, again after it died)."""
        session = self._session
        if session is not None and not session.closed:
            return session
        self._drop_session()
        session = self._pool.connect()
        started, db_oid = session.execute(
            "SELECT pg_postmaster_start_time(), oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()  # type: ignore[misc]
        try:
            system = session.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]  # type: ignore[index]
        except psycopg.Error:  # not granted to this role: the postmaster's start time tells servers apart
            system = started.isoformat()
        self._session, self._scope = session, f"postgres:{system}:{db_oid}"
        return session

    def _drop_session(self) -> None:
        """The session is gone or going: every lock it held is released with it."""
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.close()
        self._session = None
        self._held.clear()
        self._generation += 1

    def alive(self, key: int, generation: int) -> bool:
        with self._mutex:
            if generation != self._generation or key not in self._held or self._session is None:
                return False
            try:
                self._session.execute("SELECT 1")
                return True
            except psycopg.Error:
                self._drop_session()
                return False

    def release(self, key: int, generation: int) -> None:
        with self._mutex:
            if generation != self._generation or key not in self._held:
                return
            self._held.discard(key)
            if self._session is not None:
                try:
                    self._session.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except psycopg.Error:
                    self._drop_session()

    def close(self) -> None:
        """Unlock before closing: the server ends a closed session a moment after the client returns, and a
        runner taking over at once must find the exporter free."""
        with self._mutex:
            if self._session is not None and not self._session.closed and self._held:
                with contextlib.suppress(psycopg.Error):
                    self._session.execute("SELECT pg_advisory_unlock_all()")
            self._drop_session()


class AdvisoryLock:
    """One exporter's advisory lock, held on its store's lock session: that session is its life."""

    def __init__(self, locks: ExporterLocks, key: int, generation: int, scope: str) -> None:
        self._locks = locks
        self._key = key
        self._generation = generation
        self.scope = scope

    def alive(self) -> bool:
        return self._locks.alive(self._key, self._generation)

    def release(self) -> None:
        self._locks.release(self._key, self._generation)
