"""The retention gate: which records a purge may touch. Pure: no I/O, the time is passed in.

A record may be purged when it is older than ``maxAge`` (its own timestamp before ``now - maxAge``) and,
with ``requireExport`` (the default), its id is at or below the *bound*: the smallest committed cursor
among the gating S3Exporters. A committed cursor is the one in the exporter's checkpoint object in its
bucket (written only after the data object it covers), read there by the caller, not taken from status.

The gate is closed (bound 0, nothing purged) when any gating exporter is missing, has never committed
anything, was reset and has re-exported nothing yet, cannot be read (bucket, credentials), exports a
different store, or claims a cursor beyond the store's last id (the store was recreated under it). A
failing exporter whose checkpoint can still be read holds the bound at its last committed cursor; a
reset (new epoch, cursor 0) lowers the bound at once. Whatever limits the gate is named.

``requireExport: false`` gives an AgeOnly gate: the bound is the store's safe horizon, and every old
record goes, exported or not; the reason and message say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ..api.vocabulary import GateExporterState, GateMode, Reason
from ..export.model import Cursor
from ..store.columns import MIN_TIMESTAMP_US

__all__ = ["ExporterObservation", "Gate", "evaluate_gate", "from_micros", "gating_exporters", "micros"]

def micros(value: datetime) -> int:
    """A timezone-aware datetime as integer microseconds since the epoch (exact, no float rounding)."""
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=max(value, MIN_TIMESTAMP_US))


@dataclass(frozen=True)
class ExporterObservation:
    """What the caller found out about one gating exporter.

    ``state``: ``Committed`` (its checkpoint was read; ``cursor`` is None when there is no checkpoint
    object, i.e. it never committed a batch), ``NotFound`` (no such S3Exporter), ``Unreadable`` (the
    checkpoint could not be read: ``detail`` says why), ``StoreMismatch`` (it exports another store).
    ``failing``: why the exporter itself is failing (from its status), for the message only.
    """

    name: str
    state: GateExporterState  # COMMITTED, NOT_FOUND, UNREADABLE or STORE_MISMATCH
    cursor: Cursor | None = None
    detail: str = ""
    failing: str | None = None


@dataclass(frozen=True)
class ExporterVerdict:
    """One exporter as the gate judged it."""

    name: str
    state: GateExporterState
    bound: int  # what this exporter allows: its committed position, or 0
    cursor: Cursor | None
    reason: Reason
    message: str


@dataclass(frozen=True)
class Gate:
    open: bool
    mode: GateMode
    bound: int  # highest id that may be purged (0: none)
    cutoff_us: int  # records with ts_us < cutoff_us are old enough
    limiting: str | None  # the exporter that sets or closes the bound
    reason: Reason
    message: str
    exporters: tuple[ExporterVerdict, ...] = field(default=())

    @property
    def cutoff(self) -> datetime:
        return from_micros(self.cutoff_us)


def gating_exporters(
    names: Sequence[str] | None, match_labels: Mapping[str, str] | None, labels_by_name: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """The gating exporters' names: the listed ones (whether they exist or not: a missing one must close
    the gate), or those whose labels include every ``match_labels`` pair, sorted."""
    if names is not None:
        return list(names)
    wanted = dict(match_labels or {})
    return sorted(name for name, labels in labels_by_name.items()
                  if all(labels.get(key) == value for key, value in wanted.items()))


def _judge(observation: ExporterObservation, store_high_id: int) -> ExporterVerdict:
    name, cursor = observation.name, observation.cursor
    if observation.state == GateExporterState.NOT_FOUND:
        return ExporterVerdict(name, GateExporterState.NOT_FOUND, 0, None, Reason.EXPORTER_NOT_FOUND,
                               f"S3Exporter {name} does not exist")
    if observation.state == GateExporterState.STORE_MISMATCH:
        return ExporterVerdict(name, GateExporterState.STORE_MISMATCH, 0, None, Reason.EXPORTER_STORE_MISMATCH,
                               f"S3Exporter {name} exports another capture store ({observation.detail})")
    if observation.state == GateExporterState.UNREADABLE:
        return ExporterVerdict(name, GateExporterState.UNREADABLE, 0, None, Reason.CHECKPOINT_UNREADABLE,
                               f"cannot read S3Exporter {name}'s checkpoint: {observation.detail}")
    if cursor is None:
        return ExporterVerdict(name, GateExporterState.NEVER_RUN, 0, None, Reason.EXPORTER_NEVER_RUN,
                               f"S3Exporter {name} has not committed any export yet (no checkpoint object)")
    if cursor.position > store_high_id:
        return ExporterVerdict(name, GateExporterState.AHEAD_OF_STORE, 0, cursor, Reason.CURSOR_AHEAD_OF_STORE,
                               f"S3Exporter {name}'s committed cursor {cursor.position} is past the highest id the "
                               f"store ever assigned ({store_high_id}): the store was recreated or is not the "
                               "one it exported")
    if cursor.position == 0:
        if cursor.epoch > 0:
            return ExporterVerdict(name, GateExporterState.RESET, 0, cursor, Reason.EXPORTER_RESET,
                                   f"S3Exporter {name} was reset (epoch {cursor.epoch}) and has re-exported "
                                   "nothing yet")
        return ExporterVerdict(name, GateExporterState.NEVER_RUN, 0, cursor, Reason.EXPORTER_NEVER_RUN,
                               f"S3Exporter {name} has committed nothing yet (cursor 0)")
    note = f"; exporter failing ({observation.failing}), holding at its last committed cursor" \
        if observation.failing else ""
    return ExporterVerdict(name, GateExporterState.COMMITTED, cursor.position, cursor, Reason.COMMITTED,
                           f"S3Exporter {name} committed up to id {cursor.position} (epoch {cursor.epoch}){note}")


def evaluate_gate(
    *,
    require_export: bool,
    max_age: timedelta,
    now: datetime,
    observations: Sequence[ExporterObservation],
    store_high_id: int,
    horizon: int,
    selector: str = "",
) -> Gate:
    """The gate for one purge run.

    ``observations``: one per gating exporter (see ``gating_exporters``); ignored when ``require_export``
    is false. ``store_high_id``: the highest id the store ever assigned (a cursor beyond it closes the
    gate). ``horizon``:
    the store's safe horizon, the bound of an AgeOnly gate. ``selector``: how the exporters were chosen,
    for the message when none was.
    """
    cutoff_us = micros(now) - (max_age.days * 86_400 + max_age.seconds) * 1_000_000 - max_age.microseconds
    cutoff_text = from_micros(cutoff_us).isoformat().replace("+00:00", "Z")
    if not require_export:
        return Gate(
            open=horizon > 0, mode=GateMode.AGE_ONLY, bound=max(horizon, 0), cutoff_us=cutoff_us, limiting=None,
            reason=Reason.EXPORT_NOT_REQUIRED,
            message=f"requireExport is false: EVERY record older than {cutoff_text} is purged, EXPORTED OR NOT "
                    f"(up to id {horizon})",
        )
    if not observations:
        return Gate(open=False, mode=GateMode.REQUIRE_EXPORT, bound=0, cutoff_us=cutoff_us, limiting=None,
                    reason=Reason.NO_EXPORTERS_SELECTED,
                    message=f"no S3Exporter matches {selector or 'the selector'}: nothing is purged")
    verdicts = tuple(_judge(o, store_high_id) for o in observations)
    limiting = min(verdicts, key=lambda v: (v.bound, v.state == GateExporterState.COMMITTED, v.name))
    bound = limiting.bound
    if bound <= 0:
        closed = [v for v in verdicts if v.bound <= 0]
        others = f" ({len(closed) - 1} more exporters also hold it shut)" if len(closed) > 1 else ""
        return Gate(open=False, mode=GateMode.REQUIRE_EXPORT, bound=0, cutoff_us=cutoff_us, limiting=limiting.name,
                    reason=limiting.reason, message=f"gate closed by {limiting.message}{others}",
                    exporters=verdicts)
    return Gate(
        open=True, mode=GateMode.REQUIRE_EXPORT, bound=bound, cutoff_us=cutoff_us, limiting=limiting.name,
        reason=Reason.EXPORT_CONFIRMED,
        message=f"records up to id {bound} and older than {cutoff_text} may be purged; bound set by "
                f"{limiting.message}",
        exporters=verdicts,
    )
