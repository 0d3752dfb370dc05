"""The standalone runner's scheduler (``capture-export run -f``), for every kind at once.

Every resource of the manifests is one :class:`Scheduled` item, kinds in the order they were added (the
exporters first, so that ``--once`` purges what that very run exported). A turn is one cycle of one item;
it returns the seconds until the item is due again. ``--once`` gives every item one turn; otherwise each
item gets a turn whenever it is due, one at a time. A turn that raises is contained: reported, and tried
again after :data:`~capture_export.backoff.CONTAINED_RETRY`; the other items go on.

Each kind's turn is written beside its cycle's caller (standalone.py for S3Exporters,
retention/standalone.py for RetentionPolicies); what they share of the runner is :class:`Runner`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TextIO, TypeVar

from .api.manifests import ManifestSet, Resource
from .backoff import CONTAINED_RETRY
from .clock import Clock
from .store import StoreOpener

__all__ = ["Runner", "Schedule", "Scheduled", "Turn"]

WorkerT = TypeVar("WorkerT")
StatusT = TypeVar("StatusT")


@dataclass
class Scheduled(Generic[WorkerT, StatusT]):
    """One resource of the manifests, its worker, the status the runner holds and when it is next due."""

    resource: Resource
    worker: WorkerT
    status: StatusT
    due: float = 0.0
    state_problem: str | None = None  # why its state file entry could not be read

    @property
    def ref(self) -> str:
        return self.resource.ref

    @property
    def state_key(self) -> str:
        """Its key in the state file: ``Kind/namespace/name``."""
        return f"{self.resource.kind}/{self.resource.ref}"

    @property
    def suspended(self) -> bool:
        return bool(getattr(self.resource.spec, "suspend", False))


# One turn of an item: (seconds until it is due again, whether the turn succeeded).
Turn = Callable[[Any], "tuple[float, bool]"]


class Runner(Protocol):
    """What a kind's turn may use of the standalone runner."""

    manifests: ManifestSet
    stores: StoreOpener
    clock: Clock
    out: TextIO
    progress_seconds: float  # least time between two progress lines of a long export or purge
    stop_event: threading.Event
    exporters: list[Scheduled[Any, Any]]

    def state_entry(self, key: str) -> dict[str, Any] | None: ...

    def save(self, ref: str, key: str, status: dict[str, Any], *, reported: bool = False, what: str = "") -> bool: ...

    def cycle_done(self, resource: Resource, status: dict[str, Any]) -> None: ...


class Schedule:
    """Runs the turns of every kind's items: each once (:meth:`run_once`) or whenever due (:meth:`run_forever`)."""

    def __init__(self, stop: threading.Event, out: TextIO, contained: Callable[[str, Exception], None]) -> None:
        self.stop = stop
        self.out = out
        self.contained = contained
        self.kinds: list[tuple[list[Scheduled[Any, Any]], Turn]] = []

    def add(self, items: list[Scheduled[Any, Any]], turn: Turn) -> None:
        """One kind: its items and the turn each of them gets."""
        self.kinds.append((items, turn))

    def _entries(self) -> Iterator[tuple[Scheduled[Any, Any], Turn]]:
        for items, turn in self.kinds:
            for item in items:
                yield item, turn

    def _turn(self, item: Scheduled[Any, Any], turn: Turn) -> bool:
        try:
            due_in, ok = turn(item)
        except Exception as exc:  # contained: the other items go on
            self.contained(item.ref, exc)
            item.due = time.monotonic() + CONTAINED_RETRY
            return False
        item.due = time.monotonic() + due_in
        return ok

    def run_once(self) -> bool:
        """One turn of every item (suspended ones are said and skipped). True when all succeeded."""
        ok = True
        for item, turn in self._entries():
            if self.stop.is_set():
                break
            if item.suspended:
                print(f"{item.ref}: suspended", file=self.out)
                continue
            ok &= self._turn(item, turn)
        return ok

    def run_forever(self) -> None:
        """A turn for each item whenever it is due, until stopped."""
        while not self.stop.is_set():
            for item, turn in self._entries():
                if self.stop.is_set() or item.suspended or item.due > time.monotonic():
                    continue
                self._turn(item, turn)
            dues = [item.due for item, _ in self._entries() if not item.suspended] or [time.monotonic() + 60]
            self.stop.wait(max(0.0, min(dues) - time.monotonic()))
