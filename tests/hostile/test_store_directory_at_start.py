"""The careless operator names a directory as the SQLite store of a long-running entry point (the ingest
server, the operator's default store, a RetentionPolicy run). Like ``run``, ``seed`` and ``verify``
(test_cli_errors.py), each refuses to start with one line saying the path is a directory, a non-zero exit
and no traceback, and creates nothing inside the directory. The ingest server used to start anyway and
answer 503 to every request, waiting for ever for a store that can never open."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.cli import run_cli
from tests.support.ingest import token_file

from .store_directory_support import environment_without_a_cluster, run_until_refused


def _assert_refused_naming_the_directory(result: subprocess.CompletedProcess[str], directory: Path) -> str:
    """One line on stderr saying ``directory`` is a directory, a non-zero exit, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    (line,) = lines
    assert f"{directory} is a directory, not a SQLite file" in line, line
    return line


def test_ingest_server_given_a_directory_as_its_store_refuses_to_start(tmp_path: Path) -> None:
    directory = tmp_path / "captures"
    directory.mkdir()
    tokens = token_file(tmp_path)
    for store in (str(directory), "captures"):  # `--store /tmp`, and a relative path
        result = run_until_refused("ingest", "--store", store, "--listen", "127.0.0.1:0", "--token-file", tokens,
                                   cwd=tmp_path)
        line = _assert_refused_naming_the_directory(result, Path(store))
        assert line.startswith("error:"), line
        assert "ingest server on" not in result.stdout, result.stdout  # it never listened
    assert list(directory.iterdir()) == []


def test_operator_given_a_directory_as_its_default_store_refuses_to_start(tmp_path: Path) -> None:
    """Checked before anything else: even without a cluster, the line names the store, not the cluster."""
    directory = tmp_path / "captures"
    directory.mkdir()
    result = run_until_refused("operator", "--store", directory, "--liveness-port", "0", "--readiness-port", "0",
                               "--metrics-port", "0", cwd=tmp_path, env=environment_without_a_cluster(tmp_path))
    line = _assert_refused_naming_the_directory(result, directory)
    assert line.startswith("capture-export operator: not started:"), line
    assert list(directory.iterdir()) == []


def test_retention_policy_run_given_a_directory_as_its_store(tmp_path: Path) -> None:
    """A RetentionPolicy run with ``--store`` a directory, and with the directory in spec.store."""
    directory = tmp_path / "captures"
    directory.mkdir()
    for store_line, store_option in (("", ["--store", str(directory)]),
                                     (f"  store: {{sqlite: {{path: {directory}}}}}\n", [])):
        manifest = tmp_path / "policy.yaml"
        manifest.write_text("apiVersion: capture.dev/v1alpha1\nkind: RetentionPolicy\n"
                            "metadata: {name: keep, namespace: default}\n"
                            f"spec:\n  maxAge: 30d\n  requireExport: false\n{store_line}")
        result = run_cli("run", "--once", "-f", manifest, "--state", tmp_path / "state.json", *store_option,
                         cwd=tmp_path)
        assert result.returncode != 0, result.stdout
        output = result.stdout + result.stderr
        assert "Traceback" not in output, output
        assert f"{directory} is a directory" in output, output
    assert list(directory.iterdir()) == []
