"""Shared fixtures: a real SeaweedFS S3 server on a free loopback port (always stopped), SQLite stores.

``./test.sh`` runs the suite on several pytest-xdist workers (``-n N --dist loadgroup``). Each worker is a
session of its own: its own SeaweedFS, PostgreSQL cluster and, if it runs tests/kube, kube-apiserver, all on
free ports in temporary directories of their own. Tests in one of ``XDIST_GROUPS`` run on one worker, one
after the other. Run serially: ``-p no:xdist``.
"""

from __future__ import annotations

import faulthandler
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
from capture_export.store import SQLiteStore

# PostgreSQL: pg_cluster (a throwaway cluster per session) and pg_dsn (a fresh database per test).
from tests.support.pg import pg_cluster, pg_dsn  # noqa: F401

# seeded_batches: generated records made once per session, appended as often as tests ask.
from tests.support.seeded import seeded_batches  # noqa: F401

_bucket_numbers = itertools.count(1)

# Once every test has run, pytest must exit: a thread or child process that something left waiting would
# hold the interpreter's exit for ever (CI then ends in a timeout with every test passed). After this long,
# print where every thread waits and exit with a failure instead.
EXIT_DEADLINE_SECONDS = 180


# Groups of tests that --dist loadgroup runs on one worker, one after the other (a node ID prefix: its group).
# pytest-xdist's own xdist_group mark no longer groups anything on pytest 9.2 (pytest-xdist issue #1386: the
# group travels in the node ID, which pytest 9.2 no longer lets a plugin change), so the groups are here.
XDIST_GROUPS = {
    # The real Kubernetes API tier: one kube-apiserver and etcd, not one per worker.
    "tests/kube/": "kube",
    # Where kill -9 lands, how long a backoff waited and whether a restarted server is back within a
    # client's retries are wall-clock time: two of these side by side would slow each other down, and they
    # are the heaviest tests. The kill tests also share the seeded batches (tests/support/seeded.py).
    "tests/integration/test_kill.py::": "wall-clock",
    "tests/integration/test_faults.py::": "wall-clock",
    "tests/ingest/test_kill_restart.py::": "wall-clock",
}

# The slowest tests outside the groups (seconds, serial run, 2026-12-03 UTC, shared 2-vCPU dev box, load ~1),
# handed out first: collected last, one of them alone would end the run minutes after the rest.
SLOW_FIRST = (
    "tests/unit/test_retention_properties.py::test_purges_only_what_every_gating_exporter_committed",  # 117
    "tests/integration/test_postgres_concurrency.py::",  # 64
    "tests/integration/test_verify_scale.py::test_verify_keeps_eight_bytes_per_id",  # 33
    "tests/integration/test_s3_permissions_tls.py::test_an_expired_session_token",  # 32
)


def xdist_group(nodeid: str) -> str | None:
    return next((group for prefix, group in XDIST_GROUPS.items() if nodeid.startswith(prefix)), None)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent with -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Grouped(LoadGroupScheduling):
        """--dist loadgroup with the groups of XDIST_GROUPS (a group is one unit of work, given to one worker;
        the biggest units are handed out first)."""

        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid) or super()._split_scope(nodeid)

    return Grouped(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # run serially, the order does not change how long the run takes

    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable, so every worker collects the same order, as pytest-xdist requires


def pytest_unconfigure(config: pytest.Config) -> None:
    faulthandler.dump_traceback_later(EXIT_DEADLINE_SECONDS, exit=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    # die_with_parent: a pytest killed by a timeout or kill -9 must not leave its SeaweedFS running.
    server = LocalS3(tmp_path_factory.mktemp("seaweedfs"), die_with_parent=True)
    with server:
        yield server


@pytest.fixture
def bucket(s3_server: LocalS3) -> str:
    """A fresh, empty bucket for each test: created, and one object written and deleted again, so that it has
    its volume (SeaweedFS gives a bucket its volume at the first write of data, ~0.2 s of waiting that the
    test's first upload would otherwise pay) and is as empty as a new one.

    One at a time, never several in parallel: SeaweedFS 4.48's master can hang for good when it grows volumes
    for several new collections at once. In a full run at 2026-12-05 01:24 UTC three buckets made ready
    together asked for three volumes within 2 ms, one was created, and from then on every volume assignment and
    bucket creation on that server timed out (weed.log: "assign volume: ... DeadlineExceeded") until the run
    ended: three tests failed. Made ready in parallel, 8 buckets took 0.3 s; one after another 1.75 s."""
    name = f"test-bucket-{next(_bucket_numbers)}"
    s3_server.create_bucket(name)
    client = s3_server.client()
    client.put_object(Bucket=name, Key="warm-up", Body=b"0")  # empty objects need no volume
    client.delete_object(Bucket=name, Key="warm-up")
    return name


@pytest.fixture
def credentials(s3_server: LocalS3) -> Credentials:
    return Credentials(s3_server.access_key_id, s3_server.secret_access_key)


@pytest.fixture
def object_store(s3_server: LocalS3, bucket: str, credentials: Credentials) -> S3ObjectStore:
    return S3ObjectStore(S3Location(bucket, "us-east-1", s3_server.endpoint), credentials)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "store.sqlite")
    yield store
    store.close()
