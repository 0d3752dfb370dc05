"""Support for the hostile retention tests: a standalone run of an S3Exporter and a RetentionPolicy from
the same YAML against real SeaweedFS and a real SQLite store, and the one question that matters after it:
is every record the store ever held still somewhere, in the store or in the bucket?
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from capture_export.audit import decode_object
from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore
from tests.support.cli import run_cli, write_manifest
from tests.support.records import make_record

__all__ = ["RetentionRun", "append_old_records", "open_store", "world_store"]

EXPORTER_KEY = "S3Exporter/default/usage"


def open_store(target: Path | str) -> Any:
    """A SQLite store (a path, created if need be) or a PostgreSQL one (a DSN)."""
    if isinstance(target, str) and target.startswith("postgres"):
        from capture_export.store.postgres import PostgresStore

        return PostgresStore(target)
    return SQLiteStore(target)


def world_store(kind: str, request: pytest.FixtureRequest) -> Any:
    """The store a ``tests.support.retention.World`` is given for ``kind``: None (its own SQLite store in
    memory) or a PostgresStore on a fresh database, closed at teardown."""
    if kind == "sqlite":
        return None
    store = open_store(request.getfixturevalue("pg_dsn"))
    request.addfinalizer(store.close)
    return store


def append_old_records(target: Path | str, count: int, *, age: timedelta = timedelta(days=40)) -> list[int]:
    """``count`` records ``age`` old, appended to a store (see open_store); their ids."""
    store = open_store(target)
    try:
        before = store.max_id()
        now = datetime.now(UTC)
        store.append(make_record(before + i, timestamp=now - age) for i in range(count))
        return list(range(before + 1, store.max_id() + 1))
    finally:
        store.close()


class RetentionRun:
    """One S3Exporter ``default/usage`` and one RetentionPolicy ``default/keep`` gated on it, in one manifest,
    run with ``capture-export run --once`` against ``store``."""

    def __init__(self, s3: LocalS3, bucket: str, workdir: Path, *, limit: int = 100, store: str | None = None,
                 policy: str = "  maxAge: 30d\n  exporters: [usage]\n  batchSize: 50\n",
                 more_policies: dict[str, str] | None = None) -> None:
        """``more_policies``: name -> spec text of further RetentionPolicies on the same store, run after
        ``keep`` in this order."""
        self.s3, self.bucket, self.workdir = s3, bucket, workdir
        self.store: Path | str = store or workdir / "store.sqlite"
        self.state = workdir / "state.json"
        self.manifest = write_manifest(workdir / "all.yaml", s3, bucket, limit=limit)
        self.manifest.write_text(self.manifest.read_text() + "---\napiVersion: capture.dev/v1alpha1\n"
                                 "kind: RetentionPolicy\nmetadata: {name: keep, namespace: default}\n"
                                 f"spec:\n{policy}")
        for name, spec in (more_policies or {}).items():
            self.manifest.write_text(self.manifest.read_text() + "---\napiVersion: capture.dev/v1alpha1\n"
                                     f"kind: RetentionPolicy\nmetadata: {{name: {name}, namespace: default}}\n"
                                     f"spec:\n{spec}")

    def run_once(self) -> subprocess.CompletedProcess[str]:
        return run_cli("run", "--once", "-f", self.manifest, "--state", self.state, "--store", self.store,
                       cwd=self.workdir)

    def state_entry(self, key: str = EXPORTER_KEY) -> dict[str, Any]:
        return dict(json.loads(self.state.read_text())[key])

    def edit_state(self, key: str = EXPORTER_KEY, **fields: Any) -> None:
        """Edit the saved status by hand, as an operator with a text editor (or a tenant with patch on
        status) would."""
        state = json.loads(self.state.read_text())
        state[key].update(fields)
        self.state.write_text(json.dumps(state))

    def soft_deleted(self) -> int:
        store = open_store(self.store)
        try:
            return int(store.soft_deleted_count())
        finally:
            store.close()

    def store_ids(self) -> set[int]:
        store = open_store(self.store)
        try:
            return set(store.ids())
        finally:
            store.close()

    def bucket_ids(self) -> set[int]:
        """Every record id in the exporter's data objects."""
        client = self.s3.client()
        ids: set[int] = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="llm/"):
            for item in page.get("Contents", []):
                if "/_capture-export/" in item["Key"]:
                    continue
                body = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                ids.update(int(record["id"]) for record in decode_object(body))
        return ids
