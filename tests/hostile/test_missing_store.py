"""Issue 10, item 12: a typo in ``store.sqlite.path`` silently created an empty store and reported Ready.
Opening an exporter's or a policy's store never creates it: a missing SQLite file, or a PostgreSQL
database without the capture tables, is ``StoreNotFound`` and nothing is written anywhere. Only ``seed``,
the demo, ``capture-export store init``, the ingest server and the operator's own default store (at
start-up) create one.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from capture_export.local_s3 import LocalS3
from tests.support.cli import run_cli

from .identity_support import (
    HostileExporter,
    assert_no_traceback,
    create_secret,
    failed_reasons,
    operator_cluster,
    operator_spec,
    seed_sqlite,
    wait_until,
)


def _exists(path: Path) -> bool:
    return any(Path(f"{path}{suffix}").exists() for suffix in ("", "-wal", "-shm"))


def test_typo_in_the_spec_store_path_is_store_not_found(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    real = tmp_path / "store.sqlite"
    seed_sqlite(real, 100)
    typo = tmp_path / "stroe.sqlite"
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(real),
                               extra_spec=f"  store: {{sqlite: {{path: {typo}}}}}\n")
    result = exporter.run_once()
    assert result.returncode != 0, result.stdout
    assert_no_traceback(result)
    reasons = failed_reasons(exporter.status())
    assert "StoreNotFound" in reasons, exporter.status()
    assert str(typo) in reasons["StoreNotFound"]
    assert not _exists(typo)
    assert exporter.keys(prefix="") == []


def test_missing_default_store_is_store_not_found(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    typo = tmp_path / "nested" / "stroe.sqlite"
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(typo))
    result = exporter.run_once()
    assert result.returncode != 0, result.stdout
    assert_no_traceback(result)
    assert "StoreNotFound" in failed_reasons(exporter.status()), exporter.status()
    assert not _exists(typo) and not typo.parent.exists()


def test_postgres_database_without_the_capture_tables_is_store_not_found(
    s3_server: LocalS3, bucket: str, tmp_path: Path, pg_dsn: str
) -> None:
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(tmp_path / "unused.sqlite"),
                               extra_spec="  store: {postgres: {secretRef: {name: pg, key: dsn}}}\n")
    exporter.manifest.write_text(exporter.manifest.read_text() + "---\n" + (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: pg, namespace: default}\n"
        f"stringData: {{dsn: {json.dumps(pg_dsn)}}}\n"))
    result = exporter.run_once()
    assert result.returncode != 0, result.stdout
    assert_no_traceback(result)
    assert "StoreNotFound" in failed_reasons(exporter.status()), exporter.status()
    with psycopg.connect(pg_dsn) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
    assert tables == []


def test_retention_policy_with_a_missing_store_is_store_not_found(tmp_path: Path) -> None:
    typo = tmp_path / "stroe.sqlite"
    manifest = tmp_path / "policy.yaml"
    manifest.write_text(f"""\
apiVersion: capture.dev/v1alpha1
kind: RetentionPolicy
metadata: {{name: keep, namespace: default}}
spec:
  maxAge: 30d
  requireExport: false
  store: {{sqlite: {{path: {typo}}}}}
""")
    state = tmp_path / "state.json"
    result = run_cli("run", "--once", "-f", manifest, "--state", state, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert_no_traceback(result)
    assert "StoreNotFound" in result.stdout + result.stderr
    assert not _exists(typo)


def test_verify_and_restore_never_create_a_store(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    typo = tmp_path / "stroe.sqlite"
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(typo))
    audit = exporter.verify()
    assert audit.returncode != 0
    assert_no_traceback(audit)
    assert "does not exist" in audit.stderr, audit.stderr
    restore = run_cli("restore", "--store", typo, cwd=tmp_path)
    assert restore.returncode != 0
    assert_no_traceback(restore)
    assert not _exists(typo)


def test_store_init_creates_a_store_that_an_exporter_may_then_use(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    path = tmp_path / "new.sqlite"
    init = run_cli("store", "init", "--store", path, cwd=tmp_path)
    assert init.returncode == 0, init.stdout + init.stderr
    assert path.exists()
    again = run_cli("store", "init", "--store", path, cwd=tmp_path)  # idempotent
    assert again.returncode == 0, again.stdout + again.stderr
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(path))
    result = exporter.run_once()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NothingToDo" in result.stdout


def test_operator_creates_only_its_own_default_store(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    default = tmp_path / "operator" / "default.sqlite"  # the operator's --store: created at start-up
    typo = tmp_path / "operator" / "stroe.sqlite"  # beside it: inside the directories SQLite stores may be in
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(default))
    with operator_cluster(default) as (kube, _operator):
        wait_until(default.exists, timeout=30, what="the operator's default store, made at start-up")
        create_secret(kube, s3_server)
        kube.apply_exporter("usage", operator_spec(exporter, store={"sqlite": {"path": str(typo)}}))
        ready = kube.wait_condition("usage", "Ready", "False", "StoreNotFound", timeout=60)
        assert str(typo) in ready["message"]
        assert kube.condition("usage", "StoreReachable")["reason"] == "StoreNotFound"
        # The Event is posted after the status patch: wait for it rather than list once.
        wait_until(lambda: any(reason == "StoreNotFound" for _, reason, _ in kube.events("usage")), timeout=30,
                   what="a StoreNotFound Event")
    assert not _exists(typo)
    assert exporter.keys(prefix="") == []
