"""Support for the hostile tests of "exactly once, nothing lost" (store identity, checkpoints, one writer
per destination, the sweep, verify): a standalone exporter driven through the ``capture-export`` command
against real SeaweedFS and a real SQLite or PostgreSQL store, and what a user would look at afterwards
(exit code, output, the state file's conditions, the bucket's keys, ``verify``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture_export.local_s3 import LocalS3
from capture_export.seed import seed_store
from capture_export.store import SQLiteStore
from tests.support.cli import CLI, run_cli

__all__ = [
    "HostileExporter",
    "assert_no_traceback",
    "create_secret",
    "failed_reasons",
    "operator_cluster",
    "operator_spec",
    "remove_sqlite",
    "seed_postgres",
    "seed_sqlite",
    "wait_until",
]

STATE_KEY = "S3Exporter/default/{name}"


def seed_sqlite(path: Path, count: int, *, seed: int = 1) -> int:
    """Fill (creating if need be) a SQLite store with ``count`` realistic records; the last id."""
    store = SQLiteStore(path)
    try:
        return seed_store(store, count, seed=seed)
    finally:
        store.close()


def seed_postgres(dsn: str, count: int, *, seed: int = 1) -> int:
    from capture_export.store.postgres import PostgresStore

    store = PostgresStore(dsn)
    try:
        return seed_store(store, count, seed=seed)
    finally:
        store.close()


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite store with its WAL files, as `rm store.sqlite*` would."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stdout + result.stderr


def failed_reasons(status: dict[str, Any] | None) -> dict[str, str]:
    """``{reason: message}`` of every condition that is False in a status (Ready's included)."""
    if not status:
        return {}
    return {c["reason"]: c["message"] for c in status.get("conditions", []) if c["status"] == "False"}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class HostileExporter:
    """One S3Exporter manifest (``default/<name>``) with its state file, store and bucket."""

    s3: LocalS3
    bucket: str
    workdir: Path
    store: str  # a SQLite path or a PostgreSQL DSN, passed as --store
    name: str = "usage"
    prefix: str = "llm"
    limit: int = 200
    every: int = 3600
    extra_spec: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    state: Path = field(default=Path())
    manifest: Path = field(default=Path())
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state == Path():
            self.state = self.workdir / f"state-{self.name}.json"
        self.write_manifest()

    # -- the manifest and the command --------------------------------------------------------------

    def spec_text(self) -> str:
        return (f"  bucket: {self.bucket}\n  region: us-east-1\n  endpoint: {self.s3.endpoint}\n"
                f"  secretRef: {{name: s3-creds}}\n  prefix: {self.prefix}\n  limit: {self.limit}\n"
                f"  every: {self.every}\n{self.extra_spec}")

    def document(self) -> str:
        annotations = json.dumps(self.annotations)
        return (f"apiVersion: capture.dev/v1alpha1\nkind: S3Exporter\n"
                f"metadata: {{name: {self.name}, namespace: default, annotations: {annotations}}}\n"
                f"spec:\n{self.spec_text()}")

    def reset(self, token: str = "1") -> None:
        """Ask for a reset (re-export from the beginning) as a user would: the annotation in the manifest."""
        self.annotations["capture.dev/reset-cursor"] = token
        self.write_manifest(self.manifest)

    def secret_document(self) -> str:
        return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s3-creds, namespace: default}}\n"
                f"stringData: {{access_key_id: {self.s3.access_key_id}, "
                f"access_secret: {self.s3.secret_access_key}}}\n")

    def write_manifest(self, path: Path | None = None) -> Path:
        self.manifest = path or self.workdir / f"exporter-{self.name}.yaml"
        self.manifest.write_text(f"{self.secret_document()}---\n{self.document()}")
        return self.manifest

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def run_once(self, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "run", "--once", "-f", str(self.manifest), "--state", str(self.state), "--store", self.store,
             *extra],
            cwd=self.workdir, capture_output=True, text=True, timeout=timeout, env=self._env(),
        )

    def start(self, *extra: str, once: bool = False) -> subprocess.Popen[str]:
        """``capture-export run`` in the background (until stopped, or ``--once``)."""
        args = [*CLI, "run", "-f", str(self.manifest), "--state", str(self.state), "--store", self.store, *extra]
        if once:
            args.insert(len(CLI) + 1, "--once")
        return subprocess.Popen(args, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self._env())

    def cat(self, source: str | Path) -> subprocess.CompletedProcess[str]:
        """``capture-export cat`` with this bucket's credentials in the environment, as a user runs it."""
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.s3.access_key_id,
               "AWS_SECRET_ACCESS_KEY": self.s3.secret_access_key}
        return subprocess.run([*CLI, "cat", str(source), "--endpoint", self.s3.endpoint], cwd=self.workdir,
                              capture_output=True, text=True, timeout=120, env=env)

    def verify(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("verify", "-f", self.manifest, "--store", self.store, *extra, cwd=self.workdir)

    # -- what a user looks at ----------------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        if not self.state.exists():
            return None
        try:
            return json.loads(self.state.read_text()).get(STATE_KEY.format(name=self.name))
        except ValueError:
            return None

    def client(self) -> Any:
        return self.s3.client()

    def keys(self, prefix: str | None = None) -> list[str]:
        """Every object key under ``prefix`` (default: this exporter's prefix), control objects included."""
        root = f"{self.prefix}/" if prefix is None else prefix
        paginator = self.client().get_paginator("list_objects_v2")
        return [item["Key"] for page in paginator.paginate(Bucket=self.bucket, Prefix=root)
                for item in page.get("Contents", [])]

    def data_keys(self) -> list[str]:
        return [key for key in self.keys() if "/_capture-export/" not in f"/{key}"]

    def snapshot(self) -> dict[str, str]:
        """Every object under the prefix with its ETag: "nothing written" means this does not change."""
        paginator = self.client().get_paginator("list_objects_v2")
        return {item["Key"]: item["ETag"] for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/")
                for item in page.get("Contents", [])}

    @property
    def checkpoint_key(self) -> str:
        return f"{self.prefix}/_capture-export/checkpoints/default/{self.name}.json"

    def checkpoint(self) -> dict[str, Any] | None:
        body = self.get_object(self.checkpoint_key)
        return None if body is None else json.loads(body)

    def put_checkpoint(self, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.client().put_object(Bucket=self.bucket, Key=self.checkpoint_key, Body=data,
                                 ContentType="application/json")

    def put_object(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata or {})

    def get_object(self, key: str) -> bytes | None:
        client = self.client()
        try:
            return client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    def strip_metadata(self) -> None:
        """Rewrite every data object without user metadata, as versions before store identity wrote them."""
        client = self.client()
        for key in self.data_keys():
            client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                               Metadata={}, MetadataDirective="REPLACE")

    def wipe(self, prefix: str | None = None) -> int:
        """Delete every object under the prefix, as `aws s3 rm --recursive` would; how many."""
        keys = self.keys(prefix)
        client = self.client()
        for key in keys:
            client.delete_object(Bucket=self.bucket, Key=key)
        return len(keys)


# -- the operator (kmock's emulated API server, as tests/operator does) --------------------------------


@contextlib.contextmanager
def operator_cluster(store: Path, **overrides: Any) -> Iterator[tuple[Any, Any]]:
    """An emulated API server with the S3 Secret, and the operator serving it with ``store`` as its default
    store: yields ``(kube, operator)``."""
    from tests.support.operator_harness import EmulatedCluster, Kube, OperatorThread, operator_config

    cluster = EmulatedCluster().start()
    kube = Kube(cluster)
    operator = None
    try:
        operator = OperatorThread(operator_config(cluster, store, **overrides)).start()
        yield kube, operator
    finally:
        if operator is not None and operator.error is None and not operator.stop_flag.is_set():
            operator.stop()
        kube.close()
        cluster.stop()


def operator_spec(exporter: HostileExporter, **overrides: Any) -> dict[str, Any]:
    """The spec of ``exporter``'s manifest as the operator gets it (the Secret must exist: see create_secret)."""
    spec: dict[str, Any] = {"bucket": exporter.bucket, "region": "us-east-1", "endpoint": exporter.s3.endpoint,
                            "secretRef": {"name": "s3-creds"}, "prefix": exporter.prefix, "limit": exporter.limit,
                            "every": exporter.every}
    spec.update(overrides)
    return spec


def create_secret(kube: Any, s3: LocalS3) -> None:
    kube.create_secret("s3-creds", {"access_key_id": s3.access_key_id, "access_secret": s3.secret_access_key})
