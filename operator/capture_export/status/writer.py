"""Write a resource's status and Events, through whatever speaks to the API server (handlers/kube.py).

Status goes out as one explicit merge-patch of the ``status`` subresource per write (never through kopf's
handler results, so the status schema stays strict and nothing but the operator's own fields lands there).
Events go out after it, through ``emit`` (kopf's poster in the operator). The API calls block: they run
on the executor given, apart from the export cycles, so that a long backfill never delays a status write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol

from ..api import S3ExporterStatus
from ..api.vocabulary import Reason
from .exporter import Event, not_behind

__all__ = ["StatusApi", "StatusWriter", "cursor_of"]

log = logging.getLogger(__name__)


class StatusApi(Protocol):
    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch ``status``; False when the resource is gone."""
        ...


def log_event(body: Mapping[str, Any], event: Event) -> None:
    log.info("event %s %s: %s", event.type, event.reason, event.message)


def cursor_of(status: Mapping[str, Any] | None) -> tuple[int, int]:
    """(epoch, cursor) of a raw status, (0, 0) when absent or unreadable."""
    status = status or {}
    try:
        return int(status.get("epoch") or 0), int(status.get("cursor") or 0)
    except (TypeError, ValueError):
        return 0, 0


class StatusWriter:
    """Patches statuses and emits Events; an S3Exporter's cursor never goes backwards (status/exporter.py's
    ``not_behind`` guards it against what was written and what is stored), but for the cycle's correction
    of a cursor edited ahead of the checkpoint (an Event ``SavedCursorAhead`` comes with it).

    :meth:`write_exporter` is the S3Exporter's write; :meth:`write_status` writes any other kind's."""

    def __init__(self, api: StatusApi, executor: Executor | None = None,
                 emit: Callable[[Mapping[str, Any], Event], None] = log_event) -> None:
        self.api = api
        self.executor = executor
        self.emit_one = emit
        self._written: dict[tuple[str, str, str], tuple[int, int]] = {}

    async def patch(self, body: Mapping[str, Any], plural: str, status: Mapping[str, Any]) -> bool:
        meta = body.get("metadata", {})
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, self.api.patch_status, plural, meta.get("namespace"), meta.get("name"), status
        )

    def emit(self, body: Mapping[str, Any], events: Sequence[Event]) -> None:
        for event in events:
            try:
                self.emit_one(body, event)
            except LookupError:  # outside an operator context (no event poster): log only
                log_event(body, event)

    async def write_exporter(
        self, body: Mapping[str, Any], plural: str, status: S3ExporterStatus, events: Sequence[Event] = ()
    ) -> bool:
        """Write an S3Exporter status, never moving (epoch, cursor) below what was written or is stored."""
        meta = body.get("metadata", {})
        key = (plural, meta.get("namespace", ""), meta.get("name", ""))
        floor = max(self._written.get(key, (0, 0)), cursor_of(body.get("status")))
        if any(event.reason == Reason.SAVED_CURSOR_AHEAD for event in events):
            # The cycle set a cursor edited ahead of the checkpoint back to it (export/cycle.py): the one
            # write that may lower it, or the edited cursor would stand in status for ever.
            floor = (0, 0)
        status = not_behind(status, floor, what=f"{key[1]}/{key[2]}")
        raw = status.model_dump(mode="json", by_alias=True)
        written = await self.patch(body, plural, raw)
        if written:
            self._written[key] = (status.epoch, int(status.cursor))
            self.emit(body, events)
        return written

    async def write_status(self, body: Mapping[str, Any], plural: str, status: Mapping[str, Any],
                           events: Sequence[Event] = ()) -> bool:
        """Any kind's status in one merge-patch, then its Events; False when the resource is gone."""
        written = await self.patch(body, plural, status)
        if written:
            self.emit(body, events)
        return written

    def forget(self, plural: str, namespace: str, name: str) -> None:
        self._written.pop((plural, namespace, name), None)
