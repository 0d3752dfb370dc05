"""The README's commands without a cluster run as written, one after the other, as a newcomer would type
them: `capture-export s3 serve` in a second terminal, then each command of the next block in a shell.

Two things differ from a newcomer's terminal, both substitutions the test makes visibly: the S3 port
(8333 in the README and in examples/, a free port here: the machine may run other servers) and the
number of seeded records (fewer, to keep the suite quick). Everything else is the README's text.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from capture_export.local_s3 import free_port

REPO = Path(__file__).resolve().parents[2]
SECTION = "### Without a cluster"
README_PORT = "8333"
SEED_COUNT = 3000


@dataclass
class Command:
    text: str
    comment: str

    @property
    def in_second_terminal(self) -> bool:
        return "in a second terminal" in self.comment

    @property
    def runs_until_stopped(self) -> bool:
        return "Ctrl-C stops it" in self.comment and not self.in_second_terminal


def readme_commands(section: str = SECTION) -> list[Command]:
    text = (REPO / "README.md").read_text()
    assert section in text, f"README has no {section!r} section"
    body = re.split(r"\n#{2,3} ", text.split(section, 1)[1], maxsplit=1)[0]  # up to the next (sub)section
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command, _, comment = line.partition("  #")
            if command.strip() and not command.strip().startswith("#"):
                commands.append(Command(command.strip(), comment.strip()))
    return commands


def test_the_section_is_a_whole_path() -> None:
    commands = readme_commands()
    assert commands[0].in_second_terminal and "capture-export s3 serve" in commands[0].text
    texts = "\n".join(c.text for c in commands)
    for step in ("capture-export seed", "capture-export run --once -f examples/exporter.yaml", "capture-export status",
                 "capture-export verify", "capture-export cat"):
        assert step in texts, step
    assert commands[-1].runs_until_stopped
    # The README's port is the one the example manifests and `s3 serve` default to.
    assert f"http://127.0.0.1:{README_PORT}" in (REPO / "examples" / "exporter.yaml").read_text()
    from capture_export.cli import build_parser

    serve = build_parser().parse_args(["s3", "serve"])
    assert str(serve.port) == README_PORT


def _substituted(text: str, port: int) -> str:
    text = text.replace(f"127.0.0.1:{README_PORT}", f"127.0.0.1:{port}")
    if "capture-export s3 serve" in text:
        text += f" --port {port}"
    return re.sub(r"--count \d+", f"--count {SEED_COUNT}", text)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory that looks like the repository to the commands: examples/ and .venv/."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    assert (tmp_path / ".venv" / "bin" / "capture-export").exists()
    return tmp_path


def _wait_for(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = path.read_text() if path.exists() else ""
        if text in seen:
            return seen
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} before printing {text!r}:\n{seen}")
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} within {timeout}s:\n{path.read_text()}")


def test_the_commands_run_as_written(checkout: Path) -> None:
    port = free_port()
    for manifest in (checkout / "examples").glob("*.yaml"):
        manifest.write_text(manifest.read_text().replace(f"127.0.0.1:{README_PORT}", f"127.0.0.1:{port}"))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "CAPTURE_EXPORT_"))}  # a newcomer's shell, not the test runner's
    commands = readme_commands()
    server_log = checkout / "s3-serve.log"
    with server_log.open("wb") as log:
        server = subprocess.Popen(["bash", "-c", f"exec {_substituted(commands[0].text, port)}"], cwd=checkout,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        printed = _wait_for(server_log, "Ctrl-C stops it", server, timeout=120)
        assert f"http://127.0.0.1:{port}" in printed and "capture-export-secret" in printed
        outputs: dict[str, str] = {}
        for command in commands[1:]:
            text = _substituted(command.text, port)
            if text.startswith("export "):
                for assignment in text.removeprefix("export ").split():
                    key, _, value = assignment.partition("=")
                    env[key] = value
                continue
            if command.runs_until_stopped:
                outputs[command.text] = _run_until_stopped(text, checkout, env)
                continue
            result = subprocess.run(["bash", "-o", "pipefail", "-c", text], cwd=checkout, env=env,
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"`{command.text}` exited {result.returncode}:\n{result.stdout}\n" \
                                           f"{result.stderr}"
            assert "Traceback" not in result.stderr, result.stderr
            outputs[command.text] = result.stdout

        by_verb = {re.search(r"capture-export (\w+)", key).group(1): out for key, out in outputs.items()}
        assert f"seeded {SEED_COUNT:,} records" in by_verb["seed"]
        assert "OK" in by_verb["verify"] and f"records in bucket: {SEED_COUNT}" in by_verb["verify"]
        status_lines = by_verb["status"].splitlines()
        assert status_lines[1].split()[:4] == ["default", "s3exporter/usage", "True", str(SEED_COUNT)]
        records = [json.loads(line) for line in by_verb["cat"].splitlines()]
        assert len(records) == 2 and all(record["ver"] == 2 for record in records)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert server.returncode == 0, server_log.read_text()
    assert "stopping the S3 server" in server_log.read_text()


def _run_until_stopped(text: str, cwd: Path, env: dict[str, str]) -> str:
    """Run a command that runs until Ctrl-C: once it has reported a cycle of each kind, interrupt it."""
    log_path = cwd / "run-forever.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(["bash", "-c", f"exec {text}"], cwd=cwd, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        _wait_for(log_path, "retention", process, timeout=300)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    return output
