"""Connections to a PostgreSQL store: a small pool, one connection per concurrent caller (the engine
reads on a helper thread while the main thread may ask for the backlog), autocommit, TCP keepalives. A
read that fails on a pooled connection that went stale (server restarted) is retried once on a fresh
connection; writes are never retried here. Messages name the server by ``host:port/dbname``, never with
the password."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo as pg_conninfo

from ..base import StoreError

__all__ = ["DEFAULT_CONNECT_OPTIONS", "ConnectionPool", "first_line", "safe_label"]

T = TypeVar("T")

DEFAULT_CONNECT_OPTIONS = {
    "connect_timeout": "10",
    "application_name": "capture-export",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def safe_label(dsn: str) -> str:
    """``host:port/dbname`` for messages: never the password."""
    try:
        params = pg_conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


class ConnectionPool:
    """Autocommit connections to one server, reused by ``run``. Thread-safe."""

    def __init__(self, dsn: str, label: str, *, max_idle: int = 8, **connect_options: Any) -> None:
        self.label = label
        try:
            given = pg_conninfo.conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise StoreError(f"invalid PostgreSQL DSN: {exc.__class__.__name__}") from None
        defaults = {k: v for k, v in DEFAULT_CONNECT_OPTIONS.items() if k not in given}
        self._conninfo = pg_conninfo.make_conninfo(dsn, **{**defaults, **connect_options})
        self.max_idle = max_idle
        self._idle: list[psycopg.Connection[Any]] = []
        self._pool_lock = threading.Lock()
        self._closed = False

    def connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL store {self.label}: {first_line(exc)}") from None

    def _take(self) -> tuple[psycopg.Connection[Any], bool]:
        with self._pool_lock:
            if self._closed:
                raise StoreError(f"PostgreSQL store {self.label} is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn, False
        return self.connect(), True

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        healthy = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._pool_lock:
            if healthy and not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        with contextlib.suppress(Exception):
            conn.close()

    def run(self, work: Callable[[psycopg.Connection[Any]], T], *, retry_stale: bool = True) -> T:
        """Run ``work`` on a pooled connection, mapping failures to StoreError. A failure on a reused
        connection that turns out broken is retried once on a fresh one when ``retry_stale``."""
        attempts = 2 if retry_stale else 1
        for attempt in range(attempts):
            conn, fresh = self._take()
            try:
                result = work(conn)
            except psycopg.Error as exc:
                broken = conn.closed or conn.broken
                with contextlib.suppress(Exception):
                    conn.close()
                if broken and not fresh and attempt + 1 < attempts:
                    continue
                raise StoreError(f"PostgreSQL store {self.label}: {first_line(exc)}") from None
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.close()
                raise
            self._give_back(conn)
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()
