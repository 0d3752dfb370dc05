"""The safe-horizon bookkeeping alone (no server): bounds from successive observations."""

from __future__ import annotations

from capture_export.store.postgres import HorizonTracker


def test_tracker_bounds_new_transactions_by_the_previous_observation() -> None:
    tracker = HorizonTracker()
    assert tracker.observe(10, [], 0.0) == (10, False)
    # T1 appears: it drew nothing before the previous observation, so its ids are > 10.
    assert tracker.observe(15, ["3/7"], 0.01) == (10, False)
    # T1 still running, T2 new since: T1 still limits.
    assert tracker.observe(30, ["3/7", "4/2"], 0.02) == (10, False)
    # T1 ended: T2 (ids > 15) limits.
    assert tracker.observe(31, ["4/2"], 0.03) == (15, False)
    assert tracker.observe(31, [], 0.04) == (31, False)


def test_tracker_first_observation_uses_the_proven_floor_and_is_stale() -> None:
    tracker = HorizonTracker(floor=7)
    assert tracker.observe(20, ["1/1"], 0.0) == (7, True)
    tracker.settled()
    assert tracker.observe(25, ["1/1"], 0.01) == (7, False)
    assert tracker.observe(25, [], 0.02) == (25, False)


def test_tracker_never_goes_back_and_restarts_on_a_new_server() -> None:
    tracker = HorizonTracker()
    assert tracker.observe(50, [], 0.0, server="a")[0] == 50
    # Restarted server: the transaction in flight has an unknown bound; the proven 50 holds.
    assert tracker.observe(60, ["1/1"], 1.0, server="b") == (50, True)
    assert tracker.observe(70, [], 1.1, server="b") == (70, False)


def test_tracker_marks_bounds_from_old_observations_stale() -> None:
    tracker = HorizonTracker(precise_within=0.05)
    tracker.observe(10, [], 0.0)
    assert tracker.observe(90, ["2/2"], 5.0) == (10, True)  # seen 5 s after the last look
    assert tracker.observe(95, ["2/2", "3/3"], 5.001) == (10, True)
    assert tracker.observe(95, ["3/3"], 5.002) == (90, False)
