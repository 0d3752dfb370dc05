"""Starting a long-running entry point (the ingest server, the operator) with a mistake it should refuse at
once: the command either ends by itself within a deadline, or is killed and the test says it kept running."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.cli import CLI

# A refusal takes the interpreter's start-up and the command's imports: seconds, even on a busy machine.
REFUSAL_DEADLINE = 30.0


def run_until_refused(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
                      deadline: float = REFUSAL_DEADLINE) -> subprocess.CompletedProcess[str]:
    """Run ``capture-export *args`` expecting it to refuse to start; fail if it is still running (serving,
    waiting) after ``deadline`` seconds, quoting what it said meanwhile."""
    process = subprocess.Popen([*CLI, *map(str, args)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"`capture-export {args[0]}` did not refuse to start: still running after "
                             f"{deadline:.0f} s; stdout:\n{out}\nstderr:\n{err}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def environment_without_a_cluster(home: Path) -> dict[str, str]:
    """The environment with no Kubernetes credentials (no in-cluster variables, no ~/.kube/config)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
    env["HOME"] = str(home)
    return env
