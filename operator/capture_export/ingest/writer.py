"""Group commit: the requests that arrive while one transaction commits are committed together in the next.

One writer thread owns the store. Each request hands over its encoded rows and waits; the thread takes
everything queued (up to ``max_group_records``), commits it in ONE transaction with the store's
insert-or-ignore by capture_id, and answers every waiting request with how many of its rows were new.
A request therefore succeeds only once its rows are committed, and is all-or-nothing: its rows are in
one transaction, whatever else shares it. When the transaction fails (the store is unreachable or
locked) every request in it fails and nothing of them is stored; the clients retry.

Backpressure: when more than ``max_pending_records`` rows, or ``max_pending_bytes`` of their bodies, wait,
new requests are refused at once (``Overloaded``: 503 with Retry-After) instead of queueing without bound
(a count alone let 16 MiB one-record requests pile up while the store was locked).

The store is opened lazily by the writer thread (a PostgreSQL server that is down when the ingest
server starts gives 503s until it is back, not a crash) and reopened after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..store import IngestStore, StoreError
from .errors import Overloaded, StoreUnavailable
from .parsing import Row

__all__ = ["GroupCommitter"]

log = logging.getLogger(__name__)



@dataclass
class _Waiting:
    rows: Sequence[Row]
    future: asyncio.Future[int]
    loop: asyncio.AbstractEventLoop
    size: int = 0  # bytes of the rows' bodies


def _settle(future: asyncio.Future[int], result: int | BaseException) -> None:
    if future.done():  # the request went away (cancelled); its rows are committed or not all the same
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _settle_all(settled: list[tuple[asyncio.Future[int], int | BaseException]]) -> None:
    for future, result in settled:
        _settle(future, result)


class GroupCommitter:
    def __init__(
        self,
        open_store: Callable[[], IngestStore],
        *,
        max_pending_records: int = 50_000,
        max_pending_bytes: int = 256 << 20,
        max_group_records: int = 5_000,
        on_commit: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.open_store = open_store
        self.max_pending_records = max_pending_records
        self.max_pending_bytes = max_pending_bytes
        self.max_group_records = max_group_records
        self.on_commit = on_commit  # (requests, rows, seconds) after each successful transaction
        self._store: IngestStore | None = None
        self._queue: deque[_Waiting] = deque()
        self._pending = 0
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()

    @property
    def pending_records(self) -> int:
        return self._pending

    async def commit(self, rows: Sequence[Row]) -> int:
        """Commit ``rows`` (with others' rows, in one transaction); return how many were new."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        size = sum(len(row[1]) for row in rows)
        with self._cond:
            if self._stopping:
                raise StoreUnavailable("the ingest server is shutting down")
            # One request larger than the whole allowance still goes through when nothing else waits.
            if self._pending and (self._pending + len(rows) > self.max_pending_records
                                  or self._pending_bytes + size > self.max_pending_bytes):
                raise Overloaded(f"{self._pending} records ({self._pending_bytes} bytes) are waiting to be "
                                 "committed; retry shortly")
            self._queue.append(_Waiting(rows, future, loop, size))
            self._pending += len(rows)
            self._pending_bytes += size
            self._cond.notify()
        return await future

    def _take(self) -> list[_Waiting] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            group = [self._queue.popleft()]
            size = len(group[0].rows)
            while self._queue and size + len(self._queue[0].rows) <= self.max_group_records:
                size += len(self._queue[0].rows)
                group.append(self._queue.popleft())
            return group

    def _write(self, group: list[_Waiting]) -> list[int] | BaseException:
        import time

        started = time.monotonic()
        try:
            if self._store is None:
                self._store = self.open_store()
            added = self._store.append_unique([waiting.rows for waiting in group])
        except StoreError as exc:
            log.warning("ingest: %d requests not committed: %s", len(group), exc)
            self._drop_store()
            return StoreUnavailable(f"the capture store is unavailable: {exc}")
        except Exception as exc:  # a bug, not the client's fault: still answer every request
            log.exception("ingest: commit failed")
            self._drop_store()
            return StoreUnavailable(f"commit failed ({exc.__class__.__name__})")
        if self.on_commit is not None:
            self.on_commit(len(group), sum(len(w.rows) for w in group), time.monotonic() - started)
        return added

    def _drop_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def _run(self) -> None:
        try:  # open (and create or migrate) the store now rather than on the first request
            self._store = self.open_store()
        except Exception as exc:
            log.warning("ingest: the capture store is unavailable for now (%s); requests get 503 until it is back",
                        exc)
        while True:
            group = self._take()
            if group is None:
                break
            outcome = self._write(group)
            with self._cond:
                self._pending -= sum(len(w.rows) for w in group)
                self._pending_bytes -= sum(w.size for w in group)
            # One wake-up per event loop for the whole group, not one per request: each wake-up is a
            # write to the loop's self-pipe and a trip through the GIL.
            answers: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], Any]]] = {}
            for index, waiting in enumerate(group):
                result: Any = outcome if isinstance(outcome, BaseException) else outcome[index]
                answers.setdefault(waiting.loop, []).append((waiting.future, result))
            for loop, settled in answers.items():
                with contextlib.suppress(RuntimeError):  # the requests' loop is closed
                    loop.call_soon_threadsafe(_settle_all, settled)
        self._drop_store()

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the thread and close the store."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
