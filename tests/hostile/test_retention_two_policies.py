"""Two RetentionPolicies on one store, set up by two people who never spoke: one promised its users that
what it purges stays restorable for a long grace period, the other keeps a short one (or none). The
short one must never end the long one's promise early: a soft-deleted record is removed for good only
once the grace period of the policy that soft-deleted it is over."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3

from .retention_support import RetentionRun, append_old_records

LONG_GRACE = "  maxAge: 30d\n  exporters: [usage]\n  batchSize: 50\n  softDelete: {gracePeriod: 20s}\n"
# maxAge 60d: it never selects the 40-day-old records itself, it only ever meets those `keep` hid.
OTHERS = {
    "short grace": "  maxAge: 60d\n  exporters: [usage]\n  softDelete: {gracePeriod: 1s}\n",
    "no soft delete": "  maxAge: 60d\n  exporters: [usage]\n",
}


@pytest.mark.parametrize("other", list(OTHERS))
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_second_policy_never_removes_for_good_what_the_first_promised_to_keep_restorable(
    s3_server: LocalS3, bucket: str, tmp_path: Path, request: pytest.FixtureRequest, kind: str, other: str
) -> None:
    run = RetentionRun(s3_server, bucket, tmp_path, policy=LONG_GRACE, more_policies={"tidy": OTHERS[other]},
                       store=request.getfixturevalue("pg_dsn") if kind == "postgresql" else None)
    old = append_old_records(run.store, 300)
    first = run.run_once()
    assert first.returncode == 0, first.stdout + first.stderr
    assert run.bucket_ids() == set(old) and run.store_ids() == set() and run.soft_deleted() == 300

    if "gracePeriod" in OTHERS[other]:
        time.sleep(1.5)  # `tidy`'s grace period is over, `keep`'s (20 s) is not
    second = run.run_once()
    assert second.returncode == 0, second.stdout + second.stderr
    assert run.soft_deleted() == 300, (
        f"{300 - run.soft_deleted()} records removed for good inside the 20 s grace period `keep` promised\n"
        + second.stdout)
    tidy = run.state_entry("RetentionPolicy/default/tidy")
    assert tidy["lastRun"]["purged"] == 0, tidy["lastRun"]
