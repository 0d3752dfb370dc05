"""The retention gate, pure: bounds from committed cursors, an injected time, and whatever limits it named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from capture_export.export import Cursor
from capture_export.retention.gate import ExporterObservation, evaluate_gate, from_micros, gating_exporters, micros

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def gate(*observations: ExporterObservation, require_export: bool = True, high: int = 10_000, horizon: int = 0):
    return evaluate_gate(require_export=require_export, max_age=timedelta(days=30), now=NOW,
                         observations=observations, store_high_id=high, horizon=horizon, selector="matchLabels a=b")


def committed(name: str, position: int, epoch: int = 0, failing: str | None = None) -> ExporterObservation:
    return ExporterObservation(name, "Committed", Cursor(epoch, position), failing=failing)


def test_bound_is_the_smallest_committed_cursor_and_names_its_exporter() -> None:
    result = gate(committed("fast", 900), committed("slow", 400), committed("mid", 700))
    assert (result.open, result.bound, result.limiting, result.reason) == (True, 400, "slow", "ExportConfirmed")
    assert "slow" in result.message and "400" in result.message
    assert result.cutoff == NOW - timedelta(days=30)
    assert [v.state for v in result.exporters] == ["Committed"] * 3


@pytest.mark.parametrize(("observation", "state", "reason"), [
    (ExporterObservation("b", "NotFound"), "NotFound", "ExporterNotFound"),
    (ExporterObservation("b", "Committed", None), "NeverRun", "ExporterNeverRun"),
    (ExporterObservation("b", "Committed", Cursor(0, 0)), "NeverRun", "ExporterNeverRun"),
    (ExporterObservation("b", "Committed", Cursor(3, 0)), "Reset", "ExporterReset"),
    (ExporterObservation("b", "Unreadable", detail="AccessDenied: no"), "Unreadable", "CheckpointUnreadable"),
    (ExporterObservation("b", "StoreMismatch", detail="x"), "StoreMismatch", "ExporterStoreMismatch"),
    (ExporterObservation("b", "Committed", Cursor(0, 20_000)), "AheadOfStore", "CursorAheadOfStore"),
])
def test_any_exporter_that_cannot_vouch_closes_the_gate_and_is_named(observation, state, reason) -> None:
    result = gate(committed("a", 500), observation)
    assert (result.open, result.bound, result.limiting, result.reason) == (False, 0, "b", reason)
    assert "b" in result.message
    assert {v.name: v.state for v in result.exporters} == {"a": "Committed", "b": state}


def test_a_reset_lowers_the_bound_at_once_and_it_rises_with_the_re_export() -> None:
    assert gate(committed("a", 500, epoch=0)).bound == 500
    assert gate(committed("a", 0, epoch=1)).open is False
    assert gate(committed("a", 120, epoch=1)).bound == 120


def test_a_failing_exporter_holds_the_bound_at_its_last_committed_cursor() -> None:
    result = gate(committed("a", 800), committed("b", 300, failing="BucketUnreachable"))
    assert (result.open, result.bound, result.limiting) == (True, 300, "b")
    assert "failing (BucketUnreachable)" in result.message and "last committed cursor" in result.message


def test_several_closers_the_first_is_named_and_the_rest_counted() -> None:
    result = gate(ExporterObservation("b", "NotFound"), ExporterObservation("c", "Committed", None))
    assert result.limiting == "b" and "1 more exporters" in result.message


def test_no_exporter_selected_closes_the_gate() -> None:
    result = gate()
    assert (result.open, result.reason, result.limiting) == (False, "NoExportersSelected", None)
    assert "matchLabels a=b" in result.message


def test_age_only_says_so_loudly_and_bounds_at_the_horizon() -> None:
    result = gate(require_export=False, horizon=1234)
    assert (result.open, result.mode, result.bound, result.reason) == (True, "AgeOnly", 1234, "ExportNotRequired")
    assert "EXPORTED OR NOT" in result.message
    assert gate(require_export=False, horizon=0).open is False


def test_cutoff_is_exact_to_the_microsecond() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
    result = evaluate_gate(require_export=False, max_age=timedelta(minutes=90), now=now, observations=(),
                           store_high_id=0, horizon=1)
    assert result.cutoff_us == micros(now) - 90 * 60 * 1_000_000
    assert from_micros(result.cutoff_us) == now - timedelta(minutes=90)
    assert micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0


def test_gating_exporters_by_name_or_labels() -> None:
    labels = {"a": {"gate": "yes"}, "b": {"gate": "no"}, "c": {"gate": "yes", "x": "1"}}
    assert gating_exporters(["z", "a"], None, labels) == ["z", "a"]  # names stay, missing or not
    assert gating_exporters(None, {"gate": "yes"}, labels) == ["a", "c"]
    assert gating_exporters(None, {"gate": "yes", "x": "1"}, labels) == ["c"]
    assert gating_exporters(None, {"gate": "maybe"}, labels) == []
