"""The careless operator's paths: every option that takes a file or a directory, given one that is missing,
a directory where a file belongs (or a file where a directory does), a file it may not read, and for
manifests an empty or a binary file. Each ends with one short line on stderr naming the option, the path
and what is wrong with it, a non-zero exit, and never a traceback nor a raw ``[Errno …]`` text.

Each case drives the real ``capture-export`` command in a subprocess; none needs S3 or PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import CLI, run_cli

REPO = Path(__file__).resolve().parents[2]

RETENTION_POLICY = """\
apiVersion: capture.dev/v1alpha1
kind: RetentionPolicy
metadata: {name: keep-30-days, namespace: default}
spec: {maxAge: 30d, requireExport: false}
"""


def _missing(directory: Path) -> str:
    return "missing.x"


def _a_directory(directory: Path) -> str:
    (directory / "adir").mkdir()
    return "adir"


def _unreadable(directory: Path) -> str:
    (directory / "noread").write_text("x\n")
    (directory / "noread").chmod(0)
    return "noread"


def _empty(directory: Path) -> str:
    (directory / "empty.yaml").write_bytes(b"")
    return "empty.yaml"


def _binary(directory: Path) -> str:
    (directory / "bin.yaml").write_bytes(b"\x00\xff\xfe\x81garbage\xc3\x28" * 8)
    return "bin.yaml"


def _under_a_file(directory: Path) -> str:
    """A path whose parent is a file: the directory it should be in cannot exist."""
    (directory / "afile").write_text("x\n")
    return "afile/sub"


def _a_file(directory: Path) -> str:
    (directory / "afile").write_text("x\n")
    return "afile"


BAD = {"missing": (_missing, ("no such", "does not exist")), "directory": (_a_directory, "directory"),
       "unreadable": (_unreadable, "permission denied"), "empty": (_empty, "empty"),
       "binary": (_binary, "not UTF-8"), "under a file": (_under_a_file, "not a directory"),
       "a file": (_a_file, "not a directory")}

READ_FILE = ("missing", "directory", "unreadable")
MANIFEST = (*READ_FILE, "empty", "binary")

# (command with {path} for the bad one, the option named in the line ("" for a positional), bad cases)
COMMANDS = [
    (["quarantine", "release", "4", "--body", "{path}", "--store", "store.sqlite"], "--body", READ_FILE),
    (["cat", "{path}"], "", READ_FILE),
    (["status", "--state", "{path}"], "--state", ("directory", "unreadable")),  # a missing one: no resources yet
    (["run", "--once", "-f", "policy.yaml", "--store", "store.sqlite", "--state", "{path}"], "--state",
     ("directory", "unreadable", "under a file")),
    (["ingest", "--token-file", "{path}", "--store", "store.sqlite", "--listen", "127.0.0.1:0"], "--token-file",
     (*READ_FILE, "empty", "binary")),
    (["operator", "--ingest-port", "1", "--ingest-token-file", "{path}", "--store", "store.sqlite"],
     "--ingest-token-file", (*READ_FILE, "binary")),
    # Refused before the operator looks for a cluster, as `run` refuses them: a --sqlite-dir that is no
    # directory would refuse every spec's store.sqlite.path for ever; a default store in a missing directory
    # (a typo) would be created there, directories and all.
    (["operator", "--store", "store.sqlite", "--sqlite-dir", "{path}"], "--sqlite-dir", ("missing", "a file")),
    (["operator", "--store", "{path}/store.sqlite"], "store", ("missing", "under a file")),
    (["run", "--once", "-f", "policy.yaml", "--store", "store.sqlite", "--sqlite-dir", "{path}"], "--sqlite-dir",
     ("missing", "a file")),
    (["crds", "--check", "--dir", "{path}"], "--dir", ("missing", "a file")),
    (["crds", "--dir", "{path}"], "--dir", ("a file", "under a file")),
    (["s3", "serve", "--port", "0", "--dir", "{path}"], "--dir", ("a file", "under a file")),
    (["demo", "--records", "1", "--workdir", "{path}", "-f", "exporter.yaml"], "--workdir", ("a file",)),
    (["seed", "--count", "1", "--store", "{path}/store.sqlite"], "store", ("a file",)),
    (["store", "init", "--store", "{path}/store.sqlite"], "store", ("a file",)),
    (["verify", "--bucket", "b", "--endpoint", "http://127.0.0.1:1", "--store", "{path}"], "store",
     ("missing", "directory")),
    (["restore", "--store", "{path}"], "store", ("missing", "directory")),
    (["quarantine", "list", "--store", "{path}"], "store", ("missing", "directory")),
    *[([*command, "-f", "{path}"], "-f", MANIFEST) for command in (
        ["run", "--once", "--store", "store.sqlite"], ["status"], ["verify", "--store", "store.sqlite"],
        ["restore", "--store", "store.sqlite"], ["cat"], ["demo", "--records", "1"])],
]

CASES = [pytest.param(command, option, bad, id=f"{' '.join(command).replace('{path}', bad)}")
         for command, option, bads in COMMANDS for bad in bads]


def _without_root_override(bad: str) -> list[str]:
    """Root reads a file without read permission: run as root (CI's containers, this box), the unreadable
    case runs the command without the two capabilities that let it (setpriv, from util-linux)."""
    if bad != "unreadable" or os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): root reads a file without read permission")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """One line on stderr that names each of ``names``, a non-zero exit, no traceback, no errno text."""
    assert result.returncode != 0, f"exit 0: {result.stdout}{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    (line,) = lines
    assert line.startswith(("error:", "capture-export operator: not started:")), line
    assert "Traceback" not in line and "[Errno" not in line and "codec" not in line, line
    for name in names:
        assert name.lower() in line.lower(), f"{name!r} not named in {line!r}"
    return line


@pytest.mark.parametrize(("command", "option", "bad"), CASES)
def test_a_bad_path_is_one_clear_line(command: list[str], option: str, bad: str, tmp_path: Path) -> None:
    created = run_cli("store", "init", "--store", "store.sqlite", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    (tmp_path / "policy.yaml").write_text(RETENTION_POLICY)
    (tmp_path / "exporter.yaml").write_text((REPO / "examples" / "exporter.yaml").read_text())
    make, what = BAD[bad]
    path = make(tmp_path)
    result = subprocess.run([*_without_root_override(bad), *CLI, *(part.replace("{path}", path) for part in command)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    line = assert_one_clear_line(result, path.partition("/")[0])
    assert any(wording.lower() in line.lower() for wording in ((what,) if isinstance(what, str) else what)), line
    if option and bad in (*READ_FILE, "under a file", "a file"):  # what the operator typed, to find it again
        assert f"{option} {path}" in line, line


@pytest.mark.parametrize("stdin", [b"", b"\x00\xff\xfe\x81garbage"], ids=["empty", "binary"])
def test_an_empty_or_binary_standard_input_as_manifests(stdin: bytes, tmp_path: Path) -> None:
    for command in (["run", "--once"], ["status"]):
        result = subprocess.run([*CLI, *command, "-f", "-"], cwd=tmp_path, input=stdin, capture_output=True,
                                timeout=60)
        text = subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(errors="replace"),
                                           result.stderr.decode(errors="replace"))
        assert_one_clear_line(text, "standard input", "empty" if not stdin else "not UTF-8")
