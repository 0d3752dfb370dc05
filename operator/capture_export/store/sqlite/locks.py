"""Exporter locks of a SQLite store (one writer per destination): ``flock`` on a lock file beside the
database, or, for an in-memory store, a lock within the process."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from pathlib import Path
from typing import IO

from ..base import StoreError

__all__ = ["IN_MEMORY", "FileLock", "ProcessLock", "exporter_lock"]

IN_MEMORY = ":memory:"


class FileLock:
    """``flock`` on a lock file beside the database: dies with the process (README "What exactly-once
    assumes"). The scope names the database file (host, device, inode): a copy of the file is another."""

    def __init__(self, handle: IO[str], scope: str) -> None:
        self._handle = handle
        self.scope = scope

    def alive(self) -> bool:
        return not self._handle.closed

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()


class ProcessLock:
    """The lock of an in-memory store: no other process can see the store anyway."""

    _held: set[tuple[int, str]] = set()
    _mutex = threading.Lock()

    def __init__(self, key: tuple[int, str]) -> None:
        self._key = key
        self.scope = f"memory:{os.getpid()}:{key[0]}"

    @classmethod
    def take(cls, key: tuple[int, str]) -> ProcessLock | None:
        with cls._mutex:
            if key in cls._held:
                return None
            cls._held.add(key)
        return cls(key)

    def alive(self) -> bool:
        return self._key in self._held

    def release(self) -> None:
        with self._mutex:
            self._held.discard(self._key)


def exporter_lock(path: Path, owner: object, exporter: str) -> FileLock | ProcessLock | None:
    """``exporter``'s lock on the store at ``path`` (``owner``: the store object, for an in-memory one), or
    None when another holder has it."""
    if str(path) == IN_MEMORY:
        return ProcessLock.take((id(owner), exporter))
    directory = Path(f"{path}-locks")
    try:
        directory.mkdir(exist_ok=True)
        handle = (directory / f"{exporter.replace('/', '.')}.export.lock").open("a+")
    except OSError as exc:
        raise StoreError(f"cannot create the exporter lock beside SQLite store {path}: {exc}") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    stat = path.stat()
    return FileLock(handle, f"sqlite:{socket.gethostname()}:{stat.st_dev}:{stat.st_ino}")
