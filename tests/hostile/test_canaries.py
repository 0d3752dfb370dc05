"""Secrets never leak: each way a careless user or a hostile tenant put a secret where the product could
echo it, driven through every output of the standalone runner (the command in a subprocess) and of the
operator (kopf against the emulated API server), searched for the canary in every encoding.

The ways in:
1. a Secret value with a trailing newline (``echo token | base64``): refused naming the Secret and the key;
2. an endpoint with userinfo (``http://user:PASS@host``): refused at the door (``spec.endpoint``);
3. a PostgreSQL DSN that is not one (``postgresql+psycopg://``, ``POSTGRESQL://``, a leading space):
   refused naming the Secret, never opened as a SQLite path; the forms libpq accepts are exported;
4. ``seed``, ``restore``, ``verify`` given a DSN with a password, YAML that does not parse, and ``cat`` with
   a bad token: none echoes the secret.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from subprocess import CompletedProcess

import cbor2
import pytest
import zstandard

from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore
from tests.support.operator_fixtures import (  # noqa: F401 (fixtures)
    admit_invalid_specs,
    cluster_fixture,
    kube_fixture,
    start_operator_fixture,
)
from tests.support.operator_harness import EmulatedCluster, Kube, OperatorThread
from tests.support.records import make_record

from .canary_support import Outputs, assert_no_canary, assert_no_traceback, canary, capture_logs, tree_of
from .runs_support import (
    exporter_document,
    exporter_spec,
    operator_outputs,
    policy_document,
    ready_decided,
    run_cli,
    s3_secret,
    secret_document,
    standalone_outputs,
    wait_for_event,
    write_manifest,
)

SECRET = "s3-creds"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def seeded(workdir: Path) -> Path:
    path = workdir / "store.sqlite"
    store = SQLiteStore(path)
    store.append(make_record(i) for i in range(30))
    store.close()
    return path

# What a standalone run may leave in its directory: the manifest, the state file and its lock.
STANDALONE_FILES = {"exporter.yaml", "state", "state/state.json", "state/state.json.lock"}


def run_twice(workdir: Path, manifest: Path, *args: str | Path, s3: LocalS3, buckets: list[str],
              secrets: list[str], env: dict[str, str] | None = None) -> list[tuple[CompletedProcess[str], Outputs]]:
    """``run --once`` as a user runs it, then again with ``--debug``; both outputs must be clean."""
    runs = []
    for extra in ([], ["--debug"]):
        result = run_cli("run", "--once", "-f", manifest, "--state", "state/state.json", *args, *extra,
                         cwd=workdir, env=env)
        outputs = standalone_outputs(result, workdir, inputs=[manifest], s3=s3, buckets=buckets)
        assert_no_canary(outputs, *secrets)
        assert_no_traceback(result.stdout, result.stderr)
        runs.append((result, outputs))
    return runs


def data_objects(s3: LocalS3, bucket: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return [o["Key"] for o in listed if "_capture-export" not in o["Key"]]


# -- 1. a Secret value with a control character ---------------------------------------------------------


@pytest.mark.parametrize("key", ["access_key_id", "session_token", "access_secret"])
def test_standalone_secret_value_with_a_trailing_newline_is_refused_by_name_and_never_echoed(
    s3_server: LocalS3, bucket: str, workdir: Path, seeded: Path, key: str,
) -> None:
    secret = canary(key.replace("_", ""))
    manifest = write_manifest(
        workdir / "exporter.yaml",
        s3_secret(s3_server, **{key: secret + "\n"}),  # what `echo token | base64` puts in a Secret
        exporter_document("usage", exporter_spec(s3_server, bucket)),
        policy_document("purge", {"maxAge": "1d", "exporters": ["usage"]}),  # the gate reads with it too
    )
    runs = run_twice(workdir, manifest, "--store", seeded, s3=s3_server, buckets=[bucket], secrets=[secret])
    for result, _ in runs:
        assert result.returncode == 1, result.stdout + result.stderr
        assert "SecretValueInvalid" in result.stdout
        assert f"Secret default/{SECRET}" in result.stdout and repr(key) in result.stdout
    assert data_objects(s3_server, bucket) == []


def test_standalone_secret_in_string_data_with_a_carriage_return_is_refused(
    s3_server: LocalS3, bucket: str, workdir: Path, seeded: Path,
) -> None:
    secret = canary("cr")
    document = secret_document(SECRET, string_data={"access_key_id": s3_server.access_key_id,
                                                    "access_secret": s3_server.secret_access_key,
                                                    "session_token": f"{secret}\r"})
    manifest = write_manifest(workdir / "exporter.yaml", document,
                              exporter_document("usage", exporter_spec(s3_server, bucket)))
    for result, _ in run_twice(workdir, manifest, "--store", seeded, s3=s3_server, buckets=[bucket],
                               secrets=[secret]):
        assert result.returncode == 1 and "SecretValueInvalid" in result.stdout


def test_operator_secret_value_with_a_trailing_newline_is_refused_by_name_and_never_echoed(
    kube: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3, bucket: str,
    sqlite_store: SQLiteStore,
) -> None:
    secret = canary("sessiontoken")
    sqlite_store.append(make_record(i) for i in range(20))
    kube.create_secret(SECRET, {"access_key_id": s3_server.access_key_id,
                                "access_secret": s3_server.secret_access_key, "session_token": secret + "\n"})
    with capture_logs() as logs:
        operator = start_operator()
        kube.apply_exporter("usage", exporter_spec(s3_server, bucket))
        ready = kube.wait_status("usage", ready_decided, what="Ready decided")
        wait_for_event(kube.core, "usage", "SecretValueInvalid")
        outputs = operator_outputs(kube.client, operator, logs, s3=s3_server, buckets=[bucket])
    assert_no_canary(outputs, secret)
    condition = kube.condition("usage", "CredentialsValid")
    assert (condition["status"], condition["reason"]) == ("False", "SecretValueInvalid"), ready
    assert f"Secret default/{SECRET}" in condition["message"] and "'session_token'" in condition["message"]
    assert data_objects(s3_server, bucket) == []


# -- 2. an endpoint with userinfo -------------------------------------------------------------------------


def userinfo_endpoint(s3: LocalS3, password: str | None, user: str = "admin") -> str:
    host = s3.endpoint.removeprefix("http://")
    return f"http://{user}:{password}@{host}" if password else f"http://{user}@{host}"


@pytest.mark.parametrize("form", ["user:password", "token as user"])
def test_standalone_endpoint_with_userinfo_is_refused_at_the_door(
    s3_server: LocalS3, bucket: str, workdir: Path, seeded: Path, form: str,
) -> None:
    secret = canary("endpoint")
    endpoint = (userinfo_endpoint(s3_server, secret) if form == "user:password"
                else userinfo_endpoint(s3_server, None, user=secret))
    manifest = write_manifest(workdir / "exporter.yaml", s3_secret(s3_server),
                              exporter_document("usage", exporter_spec(s3_server, bucket, endpoint=endpoint)))
    for result, _ in run_twice(workdir, manifest, "--store", seeded, s3=s3_server, buckets=[bucket],
                               secrets=[secret]):
        assert result.returncode == 2, result.stdout + result.stderr
        assert "spec.endpoint" in result.stderr and "default/usage" in result.stderr
    assert not (workdir / "state").exists(), tree_of(workdir)
    assert data_objects(s3_server, bucket) == []


def test_operator_endpoint_with_userinfo_is_refused_and_never_echoed(
    cluster: EmulatedCluster, kube: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3,
    bucket: str, sqlite_store: SQLiteStore,
) -> None:
    """The CRD refuses such an endpoint at `kubectl apply` (tests/hostile/test_refused_at_the_door.py); here
    it reaches the operator as through a CRD without its schema, and the operator must refuse it too."""
    admit_invalid_specs(cluster)
    secret = canary("endpoint")
    sqlite_store.append(make_record(i) for i in range(20))
    kube.create_secret(SECRET, {"access_key_id": s3_server.access_key_id,
                                "access_secret": s3_server.secret_access_key})
    with capture_logs() as logs:
        operator = start_operator()
        kube.apply_exporter("usage", exporter_spec(s3_server, bucket, endpoint=userinfo_endpoint(s3_server, secret)))
        kube.wait_status("usage", ready_decided, what="Ready decided")
        wait_for_event(kube.core, "usage", "InvalidSpec")
        outputs = operator_outputs(kube.client, operator, logs, s3=s3_server, buckets=[bucket])
    assert_no_canary(outputs, secret)
    ready = kube.condition("usage", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec") and "spec.endpoint" in ready["message"]
    assert data_objects(s3_server, bucket) == []


# -- 3. PostgreSQL DSNs ----------------------------------------------------------------------------------


def dsn_forms(pg_dsn: str, password: str) -> dict[str, str]:
    """The same database written as careless users write it; ``pg_dsn`` is postgresql://role@host:port/db."""
    url = urllib.parse.urlsplit(pg_dsn)
    user, host, port, db = url.username, url.hostname, url.port, url.path.lstrip("/")
    uri = f"postgresql://{user}:{password}@{host}:{port}/{db}"
    return {
        "uri": uri,
        "postgres-scheme": uri.replace("postgresql://", "postgres://", 1),
        "key-value": f"dbname={db} host={host} port={port} user={user} password={password}",
        "key-value-quoted": f"host='{host}' port={port} dbname='{db}' user='{user}' password='{password}'",
        "sqlalchemy": uri.replace("postgresql://", "postgresql+psycopg://", 1),
        "upper-case": uri.replace("postgresql://", "POSTGRESQL://", 1),
        "leading-space": " " + uri,
        "trailing-newline": uri + "\n",
        "jdbc": "jdbc:" + uri,
        "password-only": password,
    }


POSTGRES_STORE = {"postgres": {"secretRef": {"name": "capture-store"}}}
ACCEPTED_DSNS = ["uri", "postgres-scheme", "key-value", "key-value-quoted"]
REFUSED_DSNS = ["sqlalchemy", "upper-case", "leading-space", "trailing-newline", "jdbc", "password-only"]


def seed_postgres(dsn: str, count: int) -> None:
    from capture_export.store.postgres import PostgresStore

    store = PostgresStore(dsn)
    try:
        store.append(make_record(i) for i in range(count))
    finally:
        store.close()


def dsn_manifest(workdir: Path, s3: LocalS3, bucket: str, dsn: str) -> Path:
    return write_manifest(
        workdir / "exporter.yaml",
        s3_secret(s3),
        secret_document("capture-store", data={"dsn": dsn}),
        exporter_document("usage", exporter_spec(s3, bucket, store=POSTGRES_STORE)),
    )


@pytest.mark.postgres
@pytest.mark.parametrize("form", REFUSED_DSNS)
def test_standalone_dsn_that_is_not_postgresql_is_refused_and_never_opened_as_sqlite(
    s3_server: LocalS3, bucket: str, workdir: Path, pg_dsn: str, form: str,
) -> None:
    secret = canary("dsnpass")
    seed_postgres(pg_dsn, 10)
    manifest = dsn_manifest(workdir, s3_server, bucket, dsn_forms(pg_dsn, secret)[form])
    for result, _ in run_twice(workdir, manifest, s3=s3_server, buckets=[bucket], secrets=[secret]):
        assert result.returncode == 1, result.stdout + result.stderr
        assert "StoreReachable" in result.stdout and "Secret default/capture-store" in result.stdout
    assert set(tree_of(workdir)) <= STANDALONE_FILES, tree_of(workdir)
    assert data_objects(s3_server, bucket) == []


@pytest.mark.postgres
@pytest.mark.parametrize("form", ACCEPTED_DSNS)
def test_standalone_dsn_in_every_form_libpq_accepts_is_exported_without_echo(
    s3_server: LocalS3, bucket: str, workdir: Path, pg_dsn: str, form: str,
) -> None:
    secret = canary("dsnpass")
    seed_postgres(pg_dsn, 10)
    manifest = dsn_manifest(workdir, s3_server, bucket, dsn_forms(pg_dsn, secret)[form])
    (first, _), _ = run_twice(workdir, manifest, s3=s3_server, buckets=[bucket], secrets=[secret])
    assert first.returncode == 0, first.stdout + first.stderr
    assert "default/usage: Succeeded: 10 records" in first.stdout
    assert set(tree_of(workdir)) <= STANDALONE_FILES, tree_of(workdir)


@pytest.mark.postgres
@pytest.mark.parametrize("form", ["sqlalchemy", "upper-case", "leading-space", "jdbc"])
def test_standalone_default_store_dsn_that_is_not_postgresql_is_refused_not_opened_as_a_path(
    s3_server: LocalS3, bucket: str, workdir: Path, pg_dsn: str, form: str,
) -> None:
    secret = canary("dsnpass")
    manifest = write_manifest(workdir / "exporter.yaml", s3_secret(s3_server),
                              exporter_document("usage", exporter_spec(s3_server, bucket)))
    for result, _ in run_twice(workdir, manifest, "--store", dsn_forms(pg_dsn, secret)[form], s3=s3_server,
                               buckets=[bucket], secrets=[secret]):
        assert result.returncode != 0, result.stdout + result.stderr
        assert "--store" in result.stdout + result.stderr
    assert set(tree_of(workdir)) <= STANDALONE_FILES, tree_of(workdir)


@pytest.mark.postgres
def test_operator_dsn_that_is_not_postgresql_is_refused_and_never_opened_as_sqlite(
    kube: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3, bucket: str, pg_dsn: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = canary("dsnpass")
    cwd = tmp_path / "operator-cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a relative "SQLite path" would land here
    kube.create_secret(SECRET, {"access_key_id": s3_server.access_key_id,
                                "access_secret": s3_server.secret_access_key})
    kube.create_secret("capture-store", {"dsn": dsn_forms(pg_dsn, secret)["sqlalchemy"]})
    with capture_logs() as logs:
        operator = start_operator()
        kube.apply_exporter("usage", exporter_spec(
            s3_server, bucket, store={"postgres": {"secretRef": {"name": "capture-store"}}}))
        kube.wait_status("usage", ready_decided, what="Ready decided")
        wait_for_event(kube.core, "usage", None)
        outputs = operator_outputs(kube.client, operator, logs, s3=s3_server, buckets=[bucket])
    outputs.add("operator cwd", "\n".join(tree_of(cwd)))
    assert_no_canary(outputs, secret)
    assert tree_of(cwd) == []
    condition = kube.condition("usage", "StoreReachable")
    assert condition["status"] == "False" and "Secret default/capture-store" in condition["message"], condition
    assert data_objects(s3_server, bucket) == []


@pytest.mark.postgres
def test_operator_key_value_dsn_is_postgresql_and_exports_without_echo(
    kube: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3, bucket: str, pg_dsn: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = canary("dsnpass")
    cwd = tmp_path / "operator-cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # were it opened as a SQLite path, the file would land here
    seed_postgres(pg_dsn, 15)
    kube.create_secret(SECRET, {"access_key_id": s3_server.access_key_id,
                                "access_secret": s3_server.secret_access_key})
    kube.create_secret("capture-store", {"dsn": dsn_forms(pg_dsn, secret)["key-value"]})
    with capture_logs() as logs:
        operator = start_operator()
        kube.apply_exporter("usage", exporter_spec(
            s3_server, bucket, store={"postgres": {"secretRef": {"name": "capture-store"}}}))
        kube.wait_status("usage", ready_decided, what="Ready decided")
        outputs = operator_outputs(kube.client, operator, logs, s3=s3_server, buckets=[bucket])
    assert_no_canary(outputs, secret)
    kube.wait_status("usage", lambda s: s.get("cursor") == "15", what="exported from PostgreSQL")
    assert tree_of(cwd) == [], tree_of(cwd)


# -- 4. the other commands -------------------------------------------------------------------------------


@pytest.mark.postgres
def test_seed_restore_and_verify_never_print_the_dsn_password(
    s3_server: LocalS3, bucket: str, workdir: Path, pg_dsn: str,
) -> None:
    secret = canary("dsnpass")
    dsn = dsn_forms(pg_dsn, secret)["uri"]
    results = [
        run_cli("seed", "--store", dsn, "--count", "20", cwd=workdir),
        run_cli("restore", "--store", dsn, "--dry-run", cwd=workdir),
        run_cli("verify", "--store", dsn, "--bucket", bucket, "--endpoint", s3_server.endpoint, cwd=workdir,
                env={"AWS_ACCESS_KEY_ID": s3_server.access_key_id,
                     "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key}),
        run_cli("seed", "--store", dsn_forms(pg_dsn, secret)["sqlalchemy"], "--count", "5", cwd=workdir),
    ]
    outputs = Outputs()
    for index, result in enumerate(results):
        outputs.add(f"{result.args[3]} {index} stdout", result.stdout)
        outputs.add(f"{result.args[3]} {index} stderr", result.stderr)
        assert_no_traceback(result.stdout, result.stderr)
    outputs.add_tree(workdir)
    assert_no_canary(outputs, secret)
    assert results[0].returncode == 0 and "seeded 20" in results[0].stdout
    assert results[1].returncode == 0
    assert results[3].returncode != 0 and tree_of(workdir) == []


@pytest.mark.parametrize("line", [
    "  access_secret: {secret}: trailing",  # mapping values are not allowed here
    '  access_secret: "{secret}',  # an unclosed quote
    "  access_secret: [{secret}",  # an unclosed flow sequence
    "  access_secret:\t{secret} @x",  # a tab and a reserved character
])
def test_yaml_that_does_not_parse_is_refused_naming_the_line_not_echoing_it(workdir: Path, line: str) -> None:
    secret = canary("yaml")
    manifest = workdir / "secret.yaml"
    manifest.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s3-creds}\nstringData:\n"
                        "  access_key_id: key\n" + line.format(secret=secret) + "\n")
    result = run_cli("run", "--once", "-f", manifest, "--state", "state.json", cwd=workdir)
    outputs = standalone_outputs(result, workdir, inputs=[manifest])
    assert_no_canary(outputs, secret)
    assert_no_traceback(result.stderr)
    assert result.returncode == 2 and "secret.yaml" in result.stderr and "line " in result.stderr, result.stderr
    assert tree_of(workdir) == ["secret.yaml"]


@pytest.mark.parametrize("variable", ["AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
@pytest.mark.parametrize("suffix", ["\n", ""], ids=["newline", "wrong"])
def test_cat_and_verify_with_a_bad_token_never_echo_it(
    s3_server: LocalS3, bucket: str, workdir: Path, seeded: Path, variable: str, suffix: str,
) -> None:
    secret = canary("token")
    key = "llm/00000000000000000001-00000000000000000001.cbor.zstd"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=zstandard.ZstdCompressor().compress(
        cbor2.dumps({**make_record(1), "id": 1}, timezone=UTC)))
    env = {"AWS_ACCESS_KEY_ID": s3_server.access_key_id, "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
           variable: secret + suffix}
    results = [
        run_cli("cat", f"s3://{bucket}/llm/", "--endpoint", s3_server.endpoint, cwd=workdir, env=env),
        run_cli("cat", f"s3://{bucket}/{key}", "--endpoint", s3_server.endpoint, cwd=workdir, env=env),
        run_cli("verify", "--store", seeded, "--bucket", bucket, "--prefix", "llm", "--endpoint", s3_server.endpoint,
                cwd=workdir, env=env),
    ]
    outputs = Outputs()
    for index, result in enumerate(results):
        outputs.add(f"{index} stdout", result.stdout)
        outputs.add(f"{index} stderr", result.stderr)
    assert_no_canary(outputs, secret)
    for result in results:
        assert_no_traceback(result.stderr)
        if suffix:  # refused before any request, naming the variable
            assert result.returncode != 0 and f"${variable}" in result.stderr, result.stderr


@pytest.fixture(autouse=True)
def _no_stray_files_in_the_repository() -> Iterator[None]:
    """A DSN opened as a SQLite path once created folders named after the password in the current
    directory: make sure no test here leaves any in the repository."""
    root = Path(__file__).resolve().parents[2]
    before = {p.name for p in root.iterdir()}
    yield
    stray = {p.name for p in root.iterdir()} - before
    assert not stray, f"files appeared in the repository root: {sorted(stray)}"
