"""The benchmarks check their requirements up front, never hang on a dead child, and clean up after
themselves unless asked to keep their work. Their figures are not checked here."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"

# Loaded first by a benchmark's interpreter: makes a module impossible to import, as if not installed.
BLOCKER = """\
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def _run(script: str, *args: str, tmp_path: Path, blocked: set[str] = frozenset(),
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    if blocked:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BLOCKER.format(BLOCKED=set(blocked)))
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_missing_package_is_named_before_anything_runs(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run("format_throughput.py", "--records", "200", "--only", "parquet", tmp_path=tmp_path,
                  blocked={"pyarrow"}, timeout=120)
    assert result.returncode != 0
    assert "pyarrow: .venv/bin/pip install -e '.[parquet]'" in result.stderr  # not on PyPI: from the checkout
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert not list((tmp_path / "tmp").iterdir()), "nothing was started"


@pytest.mark.parametrize(("script", "blocked", "named"), [
    ("operator_scale.py", {"kmock"}, "kmock: scripts/bootstrap.sh test"),
    ("otlp_throughput.py", {"opentelemetry"}, "opentelemetry.sdk: scripts/bootstrap.sh test"),
    ("ingest_throughput.py", {"psutil"}, "psutil: scripts/bootstrap.sh test"),
    ("postgres_export.py", {"pytest"}, "pytest: scripts/bootstrap.sh test"),
    ("memory_backlog.py", {"psutil"}, "psutil: scripts/bootstrap.sh test"),
    ("put_cpu.py", {"psutil"}, "psutil: scripts/bootstrap.sh test"),
    ("format_throughput.py", {"litellm"}, "litellm: scripts/bootstrap.sh test"),
])
def test_each_benchmark_names_what_to_install(tmp_path: Path, script: str, blocked: set[str], named: str) -> None:
    result = _run(script, tmp_path=tmp_path, blocked=blocked, timeout=120)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if '__name__ == "__main__"' in path.read_text())


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_usage_or_what_to_install(tmp_path: Path, script: str) -> None:
    """`--help` runs nothing: it prints the usage, or (psutil missing, as after ./demo.sh) what to install,
    never a traceback."""
    result = _run(script, "--help", tmp_path=tmp_path, blocked={"psutil"}, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    assert (result.returncode == 0 and "usage:" in result.stdout) or \
        "missing requirements:\n  psutil: scripts/bootstrap.sh test" in result.stderr, result.stdout + result.stderr


def _flags_in_the_docs() -> dict[str, set[str]]:
    """Each benchmark the docs show a command line of, with the flags those command lines pass."""
    flags: dict[str, set[str]] = {}
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text().replace("\\\n", " ")
        for script, arguments in re.findall(r"benchmarks/(\w+\.py)([^`\n]*)", text):
            flags.setdefault(script, set()).update(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", arguments.split("#")[0]))
    return {script: used for script, used in flags.items() if used}


@pytest.mark.parametrize(("script", "flags"), sorted(_flags_in_the_docs().items()))
def test_every_flag_the_docs_pass_a_benchmark_is_one_it_takes(tmp_path: Path, script: str, flags: set[str]) -> None:
    usage = _run(script, "--help", tmp_path=tmp_path, timeout=120)
    assert usage.returncode == 0, usage.stderr
    assert sorted(flag for flag in flags if not re.search(rf"{flag}(?![\w-])", usage.stdout)) == []


def test_the_work_directory_is_removed_unless_kept(tmp_path: Path) -> None:
    result = _run("export_throughput.py", "--records", "300", "--skip-stages", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "records/s" in result.stdout and "load average" in result.stdout
    assert not list((tmp_path / "tmp").iterdir()), "the work directory was left behind"

    kept = _run("export_throughput.py", "--records", "300", "--skip-stages", "--keep", tmp_path=tmp_path)
    assert kept.returncode == 0, kept.stderr
    (workdir,) = (tmp_path / "tmp").iterdir()
    assert f"work directory kept: {workdir}" in kept.stderr
    assert (workdir / "store.sqlite").exists()


@pytest.mark.parametrize(("script", "arguments"), [
    ("cycle_requests.py", ()),
    ("ingest_throughput.py", ("--stages", "--batch", "2", "--prefill", "0")),
    ("otlp_throughput.py", ("--stages", "--spans", "50")),
])
def test_no_mode_leaves_its_work_directory_behind(tmp_path: Path, script: str, arguments: tuple[str, ...]) -> None:
    result = _run(script, *arguments, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not list((tmp_path / "tmp").iterdir()), "the work directory was left behind"


def _crash(connection: object) -> None:
    raise SystemExit(3)


def test_a_child_that_dies_before_answering_does_not_hang_its_parent() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from bench_support import ChildDied, receive

    spawn = multiprocessing.get_context("spawn")
    receiving, sending = spawn.Pipe(duplex=False)
    child = spawn.Process(target=_crash, args=(sending,))
    child.start()
    sending.close()
    started = time.monotonic()
    with pytest.raises(ChildDied, match="exit code 3"):
        receive(receiving, child, "export")
    assert time.monotonic() - started < 30
    child.join()


def test_format_throughput_tells_its_own_sampler_apart_from_the_exporters_cpu() -> None:
    """The tree monitor reads every process's smaps ten times a second, on a thread of the exporting process
    (4-6 µs/record at 100k records): its CPU is reported as ``mon``, not left in ``other``."""
    pytest.importorskip("psutil")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from format_throughput import TreeMonitor
    finally:
        sys.path.remove(str(BENCHMARKS))
    monitor = TreeMonitor(interval=0.001)
    monitor.start()
    time.sleep(0.3)
    spent = monitor.own_cpu_seconds()
    monitor.done.set()
    monitor.join()
    assert 0 < spent < time.process_time()
