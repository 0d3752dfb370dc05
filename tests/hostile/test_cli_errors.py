"""The careless operator at the command line: an ordinary mistake (an endpoint that
does not answer, a missing bucket, a database that refuses, a Secret left in another file, a directory
given as a file, a missing file, broken YAML, no cluster) ends with one clear line on stderr naming what
and why, a non-zero exit, no traceback, and no secret in that line.

Each case drives the real ``capture-export`` command in a subprocess against real SeaweedFS, SQLite and
PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from capture_export.local_s3 import LocalS3
from tests.support.cli import CLI, run_cli, write_manifest
from tests.support.pg import TempPostgres

DSN_PASSWORD = "pw-Hunter2-never-printed"
YAML_SECRET = "yaml-secret-never-printed"
AWS_SECRET = "aws-secret-key-never-printed"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: nothing listens there


def assert_one_line(result: subprocess.CompletedProcess[str], *names: str, secrets: tuple[str, ...] = ()) -> str:
    """One line on stderr that names each of ``names``, a non-zero exit, no traceback, no secret."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    (line,) = lines
    assert "Traceback" not in line
    assert line.startswith("error:") or line.startswith("capture-export operator: not started:"), line
    for name in names:
        assert name.lower() in line.lower(), f"{name!r} not named in {line!r}"
    for secret in secrets:
        assert secret not in result.stderr and secret not in result.stdout
    return line


def run_with_keys(*args: str | Path, cwd: Path, key_id: str, secret: str) -> subprocess.CompletedProcess[str]:
    """The command with S3 credentials in the environment, as the README's quick start tells a user to set them."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cat_from_an_endpoint_that_does_not_answer(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result = run_with_keys("cat", "s3://capture-exports/llm/", "--endpoint", endpoint, cwd=tmp_path,
                           key_id="AKIAEXAMPLE", secret=AWS_SECRET)
    assert_one_line(result, endpoint, secrets=(AWS_SECRET,))


def _store_init(path: Path) -> None:
    created = run_cli("store", "init", "--store", path, cwd=path.parent)
    assert created.returncode == 0, created.stderr


def test_cat_and_verify_without_credentials_say_which_variables_to_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws either
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    _store_init(tmp_path / "store.sqlite")  # verify never creates the store it audits
    for command in (["cat", "s3://capture-exports/llm/"], ["verify", "--bucket", "capture-exports", "--store",
                                                             "store.sqlite"]):
        result = subprocess.run([*CLI, *command, "--endpoint", endpoint], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        line = assert_one_line(result, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        assert "spec.secretRef" not in line  # there is no spec here


def test_cat_from_a_missing_bucket(s3_server: LocalS3, tmp_path: Path) -> None:
    result = run_with_keys("cat", "s3://no-such-bucket-here/llm/", "--endpoint", s3_server.endpoint, cwd=tmp_path,
                           key_id=s3_server.access_key_id, secret=s3_server.secret_access_key)
    assert_one_line(result, "no-such-bucket-here", secrets=(s3_server.secret_access_key,))


def test_cat_of_a_missing_file_and_of_a_directory(tmp_path: Path) -> None:
    assert_one_line(run_cli("cat", "missing.cbor.zstd", cwd=tmp_path), "missing.cbor.zstd", "no such file")
    (tmp_path / "exports").mkdir()
    assert_one_line(run_cli("cat", "exports", cwd=tmp_path), "exports", "directory")


def test_verify_against_a_missing_bucket(s3_server: LocalS3, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, "no-such-bucket-here")
    _store_init(tmp_path / "store.sqlite")
    result = run_cli("verify", "-f", manifest, "--store", tmp_path / "store.sqlite", cwd=tmp_path)
    assert_one_line(result, "no-such-bucket-here", secrets=(s3_server.secret_access_key,))


def test_verify_with_the_secret_in_another_file(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    full = write_manifest(tmp_path / "both.yaml", s3_server, bucket).read_text()
    secret_doc, exporter_doc = full.split("---\n")
    (tmp_path / "exporter.yaml").write_text(exporter_doc)
    (tmp_path / "secret.yaml").write_text(secret_doc)
    result = run_cli("verify", "-f", "exporter.yaml", "--store", tmp_path / "store.sqlite", cwd=tmp_path)
    assert_one_line(result, "default/s3-creds", secrets=(s3_server.secret_access_key,))
    # Given both files (and a store: verify never creates one), it works.
    _store_init(tmp_path / "store.sqlite")
    both = run_cli("verify", "-f", "exporter.yaml", "-f", "secret.yaml", "--store", tmp_path / "store.sqlite",
                   cwd=tmp_path)
    assert both.returncode == 0, both.stderr


def test_store_commands_against_a_database_that_refuses(pg_cluster: TempPostgres, tmp_path: Path) -> None:
    refusing = f"postgresql://nobody:{DSN_PASSWORD}@127.0.0.1:{pg_cluster.port}/no_such_database"
    unreachable = f"postgresql://capture:{DSN_PASSWORD}@127.0.0.1:{_closed_port()}/capture"
    for dsn in (refusing, unreachable):
        for command in (["seed", "--count", "10"], ["verify", "--bucket", "capture-exports"], ["restore"]):
            result = run_cli(*command, "--store", dsn, cwd=tmp_path)
            assert_one_line(result, "postgresql", secrets=(DSN_PASSWORD,))


STORE_COMMANDS = (["seed", "--count", "10"], ["store", "init"], ["verify", "--bucket", "capture-exports"],
                  ["restore"], ["quarantine", "list"])


def test_store_commands_given_a_directory_as_the_sqlite_file(tmp_path: Path) -> None:
    (tmp_path / "store.sqlite").mkdir()
    # A relative path, and an absolute one such as `--store /tmp`: the line says it is a directory, not
    # that it "does not exist" (it does, as a directory) or that SQLite "cannot open" it.
    for store in ("store.sqlite", str(tmp_path)):
        for command in STORE_COMMANDS:
            line = assert_one_line(run_cli(*command, "--store", store, cwd=tmp_path), store, "is a directory")
            assert "does not exist" not in line and "unable to open" not in line, line
    assert list((tmp_path / "store.sqlite").iterdir()) == []  # nothing created inside it either


def test_run_and_verify_given_a_directory_as_the_sqlite_file(s3_server: LocalS3, bucket: str,
                                                             tmp_path: Path) -> None:
    """The same mistake in a manifest (spec.store.sqlite.path) and in run's default store: the exporter's
    status and the command's output say the path is a directory; a non-zero exit, no traceback."""
    directory = tmp_path / "captures"
    directory.mkdir()
    plain = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket)
    in_spec = write_manifest(tmp_path / "exporter-store.yaml", s3_server, bucket,
                             extra_spec=f"  store: {{sqlite: {{path: {directory}}}}}\n")
    for manifest, store in ((plain, ["--store", str(directory)]), (in_spec, [])):
        state = tmp_path / f"{manifest.stem}.state.json"
        result = run_cli("run", "--once", "-f", manifest, "--state", state, *store, cwd=tmp_path)
        assert result.returncode != 0, result.stdout
        output = result.stdout + result.stderr
        assert "Traceback" not in output, output
        assert f"{directory} is a directory" in output and "does not exist" not in output, output
        assert s3_server.secret_access_key not in output
        # What `status` shows: the exporter failed on its store, and says why.
        shown = run_cli("status", "--state", state, "-o", "json", cwd=tmp_path)
        assert f"{directory} is a directory" in shown.stdout, shown.stdout
    line = assert_one_line(run_cli("verify", "-f", in_spec, cwd=tmp_path), str(directory), "is a directory",
                           secrets=(s3_server.secret_access_key,))
    assert "does not exist" not in line, line
    assert list(directory.iterdir()) == []


def test_status_given_a_directory_as_the_state_file(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    assert_one_line(run_cli("status", "--state", "state", cwd=tmp_path), "state", "directory")


def test_run_given_a_directory_as_the_state_file(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket)
    (tmp_path / "state").mkdir()
    result = run_cli("run", "--once", "-f", manifest, "--state", "state", "--store", tmp_path / "store.sqlite",
                     cwd=tmp_path)
    assert_one_line(result, "state", "directory", secrets=(s3_server.secret_access_key,))


def test_bad_yaml_is_one_line_that_never_quotes_the_file(tmp_path: Path) -> None:
    # The broken line holds a credential: the YAML parser's error would quote it back.
    (tmp_path / "secret.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s3-creds}\n"
        f'stringData: {{access_key_id: a, access_secret: "{YAML_SECRET}}}\n')
    for command in (["run", "--once"], ["verify"], ["status"], ["restore"]):
        result = run_cli(*command, "-f", "secret.yaml", cwd=tmp_path)
        assert_one_line(result, "secret.yaml", "line 4", secrets=(YAML_SECRET,))


def test_operator_without_a_cluster(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    result = subprocess.run([*CLI, "operator", "--liveness-port", "0", "--readiness-port", "0", "--metrics-port",
                             "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert_one_line(result, "kubeconfig", "capture-export run")


def test_run_with_a_role_and_an_sts_that_does_not_answer(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    """examples/exporter-aws-role.yaml without a network: the exporter fails, naming why; botocore's own
    warnings about the failed refresh come without their tracebacks."""
    sts = f"http://127.0.0.1:{_closed_port()}"
    manifest = write_manifest(tmp_path / "exporter.yaml", s3_server, bucket,
                              extra_spec="  roleArn: arn:aws:iam::111122223333:role/capture-export-writer\n")
    _store_init(tmp_path / "store.sqlite")
    env = {**os.environ, "AWS_ENDPOINT_URL_STS": sts}
    result = subprocess.run([*CLI, "run", "--once", "-f", str(manifest), "--store", "store.sqlite"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Failed" in result.stdout, result.stdout
    assert s3_server.secret_access_key not in result.stdout + result.stderr
