"""The careless operator's inputs that used to end unclearly: a CRD check against an empty or missing
directory, a demo whose failures went to standard output, a retention run whose closed gate did not say
why on the runs after the first, and ``cat`` of an empty file, which printed nothing and exited 0.

Each drives the real ``capture-export`` command in a subprocess, with SeaweedFS and SQLite where the case
needs them.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from tests.support.cli import run_cli

from .identity_support import HostileExporter, assert_no_traceback, seed_sqlite

REPO = Path(__file__).resolve().parents[2]


def _one_error_line(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """One line on stderr, ``error:`` first, naming each of ``names``; no traceback."""
    assert_no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    (line,) = lines
    assert line.startswith("error:"), line
    for name in names:
        assert name in line, f"{name!r} not named in {line!r}"
    return line


# -- crds --check ----------------------------------------------------------------------------------


def test_crds_check_of_an_empty_directory_says_what_to_run_and_that_command_fixes_it(tmp_path: Path) -> None:
    (tmp_path / "charts").mkdir()
    result = run_cli("crds", "--check", "--dir", "charts", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result, "charts", "s3exporters", "retentionpolicies")
    assert "`capture-export crds --dir charts`" in line, line  # not `capture-export crds`: that writes crds/
    assert run_cli("crds", "--dir", "charts", cwd=tmp_path).returncode == 0
    assert run_cli("crds", "--check", "--dir", "charts", cwd=tmp_path).returncode == 0


def test_crds_check_of_a_stale_file_names_it_and_the_default_directory_needs_no_option(tmp_path: Path) -> None:
    assert run_cli("crds", cwd=tmp_path).returncode == 0  # crds/, the default
    stale = tmp_path / "crds" / "retentionpolicies.capture.dev.yaml"
    stale.write_text(stale.read_text().replace("maxAge", "maxAgeOld"))
    result = run_cli("crds", "--check", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result, "retentionpolicies", "`capture-export crds`")
    assert "s3exporters" not in line, line


def test_crds_check_of_a_missing_directory_says_what_to_run(tmp_path: Path) -> None:
    result = run_cli("crds", "--check", "--dir", "generated/crds", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    _one_error_line(result, "--dir generated/crds", "no such directory", "`capture-export crds --dir generated/crds`")
    assert not (tmp_path / "generated").exists()  # --check writes nothing


# -- demo: its errors on standard error ------------------------------------------------------------


def test_demo_of_a_manifest_without_an_exporter_says_so_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "secret.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: default}\n"
                                          "stringData: {a: b}\n")
    result = run_cli("demo", "--records", "1", "-f", "secret.yaml", "--workdir", "demo", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    _one_error_line(result, "secret.yaml", "S3Exporter")
    assert "error" not in result.stdout, result.stdout
    assert not (tmp_path / "demo").exists()  # refused before the work directory is emptied or made


def test_demo_on_a_taken_port_says_so_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "exporter.yaml").write_text((REPO / "examples" / "exporter.yaml").read_text())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("demo", "--records", "1", "-f", "exporter.yaml", "--workdir", "demo", "--port", port,
                         cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    _one_error_line(result, str(port), "without --port")
    assert "error" not in result.stdout, result.stdout


def test_demo_whose_export_fails_says_so_on_stderr(tmp_path: Path) -> None:
    """The exporter names a store that does not exist: the run's lines (stdout, as `run` prints them) say
    why, and the demo's own verdict goes to stderr, naming the exporter and the reason."""
    manifest = (REPO / "examples" / "exporter.yaml").read_text().replace(
        "  prefix: llm-usage\n", f"  prefix: llm-usage\n  store: {{sqlite: {{path: {tmp_path / 'nowhere.sqlite'}}}}}\n")
    assert "nowhere.sqlite" in manifest
    (tmp_path / "exporter.yaml").write_text(manifest)
    result = run_cli("demo", "--records", "5", "-f", "exporter.yaml", "--workdir", "demo", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    _one_error_line(result, "export failed", "default/usage", "StoreNotFound")
    assert "export failed" not in result.stdout, result.stdout


# -- run --once: a closed retention gate ------------------------------------------------------------

POLICY = """\
apiVersion: capture.dev/v1alpha1
kind: RetentionPolicy
metadata: {name: keep, namespace: default}
spec: {maxAge: 1m, exporters: [archive]}
"""


def test_a_closed_gate_is_no_failure_and_every_run_says_why_nothing_was_purged(
        s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    """The policy is gated on an exporter the files do not hold: the records wait, which is the gate
    doing its work, so exit 0; but each run's line says so and why, not only the first run's events."""
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 50)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store))
    (tmp_path / "policy.yaml").write_text(POLICY)
    for _ in range(2):
        result = exporter.run_once("-f", "policy.yaml")
        assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("default/keep:")]
    assert "GateClosed" in line and "purged 0" in line, line
    assert "S3Exporter archive does not exist" in line, line
    assert "nothing is purged until" in line, line
    status = json.loads(exporter.state.read_text())["RetentionPolicy/default/keep"]
    assert status["lastRun"]["outcome"] == "GateClosed" and status["totals"]["purged"] == 0


# -- cat and verify of an empty object -------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.cbor.zstd", "empty.jsonl", "empty.jsonl.gz", "empty.jsonl.zst",
                                  "empty.parquet", "empty"])
def test_cat_of_an_empty_file_is_an_error_naming_it(name: str, tmp_path: Path) -> None:
    """No exporter writes an empty object (a batch with no record writes none): zero bytes is a file cut
    short or not an export at all, never "no records"."""
    (tmp_path / name).write_bytes(b"")
    result = run_cli("cat", name, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    line = _one_error_line(result, name, "empty")
    assert "ValueError" not in line and "ArrowInvalid" not in line, line
    assert result.stdout == ""


def test_verify_and_cat_count_an_empty_object_in_the_bucket_as_unreadable(
        s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 300)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=100)
    assert exporter.run_once().returncode == 0
    exporter.put_object("llm/empty.cbor.zstd", b"")
    audit = exporter.verify()
    assert_no_traceback(audit)
    assert audit.returncode == 1, audit.stdout + audit.stderr
    assert "llm/empty.cbor.zstd" in audit.stdout and "unreadable: 1" in audit.stdout, audit.stdout
    assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout
    listed = exporter.cat(f"s3://{bucket}/llm/")
    assert listed.returncode == 1, listed.stderr
    assert len(listed.stdout.splitlines()) == 300
    assert any("llm/empty.cbor.zstd" in line and "empty" in line for line in listed.stderr.splitlines()), listed.stderr


# -- usage mistakes argparse cannot see ------------------------------------------------------------

SECRET_ONLY = "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: default}\nstringData: {a: b}\n"


@pytest.mark.parametrize(("command", "names"), [
    (["run", "--once", "-f", "secret.yaml"], ["secret.yaml", "S3Exporter", "RetentionPolicy"]),
    (["cat", "x.cbor.zstd", "-f", "secret.yaml"], ["source", "-f"]),
    (["cat", "-f", "secret.yaml"], ["secret.yaml", "no S3Exporter"]),
    (["cat"], ["source", "-f"]),
    (["verify", "--store", "store.sqlite"], ["-f", "--bucket"]),
    (["verify", "-f", "secret.yaml", "--store", "store.sqlite"], ["secret.yaml", "S3Exporter"]),
], ids=["run of no resource", "cat of a source and -f", "cat -f of no exporter", "cat of nothing",
        "verify of nothing", "verify -f of no exporter"])
def test_a_usage_mistake_is_one_error_line_exit_2(command: list[str], names: list[str], tmp_path: Path) -> None:
    (tmp_path / "secret.yaml").write_text(SECRET_ONLY)
    result = run_cli(*command, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_error_line(result, *names)
    assert "--exporter" not in line, line  # there is no exporter to choose among
