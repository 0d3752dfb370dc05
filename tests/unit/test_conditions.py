from __future__ import annotations

from datetime import UTC, datetime, timedelta

from capture_export.api import S3ExporterStatus
from capture_export.export import Cursor, ExportFailure, RunResult
from capture_export.status.conditions import get_condition, set_condition, summarize_ready
from capture_export.status.exporter import StatusUpdate

T0 = datetime(2026, 11, 25, tzinfo=UTC)


def test_last_transition_time_changes_only_when_status_flips() -> None:
    conditions, change = set_condition([], "Ready", "True", "Ready", "ok", now=T0, generation=1)
    assert change is not None and change.previous_status is None
    later = T0 + timedelta(minutes=5)
    conditions, change = set_condition(conditions, "Ready", "True", "Ready", "still ok", now=later, generation=2)
    assert change is None
    ready = get_condition(conditions, "Ready")
    assert ready.last_transition_time == T0 and ready.message == "still ok" and ready.observed_generation == 2
    conditions, change = set_condition(conditions, "Ready", "False", "BucketNotFound", "gone", now=later, generation=2)
    assert change is not None and get_condition(conditions, "Ready").last_transition_time == later
    assert len(conditions) == 1


def test_ready_summarises_the_first_failing_domain() -> None:
    conditions, _ = set_condition([], "CredentialsValid", "True", "Verified", "", now=T0, generation=1)
    conditions, _ = set_condition(conditions, "StoreReachable", "True", "Reachable", "", now=T0, generation=1)
    assert summarize_ready(conditions, ["CredentialsValid", "StoreReachable", "BucketReachable"])[0] == "Unknown"
    conditions, _ = set_condition(conditions, "BucketReachable", "False", "BucketNotFound", "no bucket x", now=T0,
                                  generation=1)
    status, reason, message = summarize_ready(conditions, ["CredentialsValid", "StoreReachable", "BucketReachable"])
    assert (status, reason) == ("False", "BucketNotFound") and "no bucket x" in message


def test_every_condition_is_set_on_the_first_visit_and_failures_become_warning_events() -> None:
    update = StatusUpdate(S3ExporterStatus(), now=T0, generation=3)
    run = RunResult(start=T0, end=T0, outcome="Failed", cursor=Cursor(),
                    failure=ExportFailure("Throttled", "slow down", domain="Bucket", transient=True), backlog=10)
    update.record_run(run)
    status, events = update.finish()
    types = {c.type: c.status for c in status.conditions}
    assert types == {"CredentialsValid": "Unknown", "StoreReachable": "Unknown", "BucketReachable": "False",
                     "UpToDate": "False", "Ready": "False"}
    assert status.observed_generation == 3 and status.last_run.reason == "Throttled"
    assert [(e.type, e.reason) for e in events] == [("Warning", "Throttled"), ("Warning", "ExportFailed"),
                                                    ("Warning", "Throttled")]


def test_cursor_never_regresses_except_into_a_new_epoch() -> None:
    update = StatusUpdate(S3ExporterStatus(cursor="500", epoch=1), now=T0, generation=1)
    update.advance_cursor(1, 400)
    assert update.status.cursor == "500"
    update.advance_cursor(2, 0)
    assert (update.status.epoch, update.status.cursor) == (2, "0")
