"""`capture-export demo` owns its S3 server: it never exports into another one, and stops its own on every
signal."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capture_export.local_s3 import LocalS3
from tests.support.cli import CLI, run_cli

REPO = Path(__file__).resolve().parents[2]
# Records a stopped demo is given: the seeding marker comes after its first batch of 5,000 and a signal then
# lands before the second ends; the export marker comes once all are seeded, and a signal then lands within
# the first of two objects of 5,000 (examples/exporter.yaml's limit). 40,000 cost each export case ~20 s more
# of seeding, and tested nothing more.
STOPPED_DEMO_RECORDS = "10000"


def _processes_using(path: Path) -> list[int]:
    """Pids of processes whose command line names ``path`` (a demo's weed names its data directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and "weed" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "demo"
    yield path
    for pid in _processes_using(path):  # a server this test's demo left behind: fail, but leave nothing
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def foreign_server(tmp_path: Path) -> Iterator[LocalS3]:
    """Another S3 server, with the credentials of examples/exporter.yaml (as an earlier demo's would be)."""
    with LocalS3(tmp_path / "foreign") as server:
        server.create_bucket("capture-exports")
        yield server


def _manifest_pointing_at(tmp_path: Path, port: int) -> Path:
    text = (REPO / "examples" / "exporter.yaml").read_text().replace("127.0.0.1:8333", f"127.0.0.1:{port}")
    path = tmp_path / "exporter.yaml"
    path.write_text(text)
    return path


def _foreign_keys(server: LocalS3) -> list[str]:
    listing = server.client().list_objects_v2(Bucket="capture-exports")
    return [item["Key"] for item in listing.get("Contents", [])]


def test_a_server_on_the_manifests_port_is_never_written_to(
    tmp_path: Path, workdir: Path, foreign_server: LocalS3
) -> None:
    manifest = _manifest_pointing_at(tmp_path, foreign_server.port)
    result = run_cli("demo", "--records", "3000", "-f", manifest, "--workdir", workdir, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify:       0 missing, 0 duplicated" in result.stdout
    assert f"127.0.0.1:{foreign_server.port}" not in result.stdout.split("what was written")[0].split("at ", 1)[1]
    assert _foreign_keys(foreign_server) == [], "the demo wrote into a server it did not start"
    sample = result.stdout.split("capture-export cat ", 1)[1].split(" |", 1)[0]
    assert Path(sample).is_file(), "the demo points at a copy that does not exist"
    assert not _processes_using(workdir)


def test_a_port_asked_for_that_is_taken_fails_clearly(
    tmp_path: Path, workdir: Path, foreign_server: LocalS3
) -> None:
    manifest = _manifest_pointing_at(tmp_path, foreign_server.port)
    result = run_cli("demo", "--records", "3000", "-f", manifest, "--workdir", workdir,
                     "--port", str(foreign_server.port), cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    assert f"port {foreign_server.port} on 127.0.0.1 is already in use" in result.stderr  # an error: on stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "seeding" not in result.stdout, "nothing is done once the server is known not to be the demo's"
    assert _foreign_keys(foreign_server) == []


@pytest.mark.parametrize(("signum", "moment"), [
    (signal.SIGTERM, "seeding"), (signal.SIGHUP, "seeding"), (signal.SIGINT, "seeding"),
    (signal.SIGTERM, "exporting"), (signal.SIGHUP, "exporting"),
])
def test_every_stop_signal_stops_the_demos_server(tmp_path: Path, workdir: Path, signum: int, moment: str) -> None:
    manifest = REPO / "examples" / "exporter.yaml"
    demo = subprocess.Popen([*CLI, "demo", "--records", STOPPED_DEMO_RECORDS, "-f", str(manifest),
                             "--workdir", str(workdir)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert demo.stdout is not None
    seen = ""
    deadline = time.monotonic() + 240
    marker = "seeding the capture store" if moment == "seeding" else "exporting with"
    while marker not in seen and time.monotonic() < deadline and demo.poll() is None:
        seen += demo.stdout.read(1)
    assert marker in seen, seen
    assert _processes_using(workdir), "the demo's server runs"
    demo.send_signal(signum)
    output, _ = demo.communicate(timeout=120)
    assert "Traceback" not in output, output
    assert demo.returncode != 0, "a demo cut short does not report success"
    deadline = time.monotonic() + 15
    while _processes_using(workdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_using(workdir), f"{signal.Signals(signum).name} left the demo's S3 server running"


def test_a_demo_killed_outright_takes_its_server_along(tmp_path: Path, workdir: Path) -> None:
    demo = subprocess.Popen([*CLI, "demo", "--records", STOPPED_DEMO_RECORDS, "--workdir", str(workdir),
                             "-f", str(REPO / "examples" / "exporter.yaml")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert demo.stdout is not None
    seen = ""
    deadline = time.monotonic() + 240
    while "seeding the capture store" not in seen and time.monotonic() < deadline and demo.poll() is None:
        seen += demo.stdout.read(1)
    demo.kill()
    demo.wait()
    deadline = time.monotonic() + 15
    while _processes_using(workdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_using(workdir), "SIGKILL left the demo's S3 server running"


def test_the_analytics_example_runs_though_its_secret_is_in_another_file(tmp_path: Path, workdir: Path) -> None:
    """The reference's `capture-export demo --records 10000 -f examples/exporter-analytics.yaml`: that
    exporter uses the Secret of examples/exporter.yaml; the demo's server is its own, so it signs with the
    demo's keys (as it writes there whatever endpoint the manifest names)."""
    result = run_cli("demo", "--records", "2000", "-f", REPO / "examples" / "exporter-analytics.yaml",
                     "--workdir", workdir, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify:       0 missing, 0 duplicated" in result.stdout, result.stdout
    assert not _processes_using(workdir)
    # What it prints is about what this exporter wrote: Parquet objects, of the records its filter kept.
    assert "pyarrow.parquet.read_table(" in result.stdout and "ZstdDecompressor" not in result.stdout, result.stdout
    assert "left out by the exporter's filter)" in result.stdout and "of CBOR read from the store" in result.stdout
