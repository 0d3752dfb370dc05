"""Helpers for the kind e2e suite: the tools it needs, kubectl/helm against the kind context, polling."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tests.support.e2e_assets import NAMESPACE, RELEASE, REPO_ROOT

__all__ = ["REQUIRED_TOOLS", "CommandFailed", "Kube", "run", "skip_reason", "wait_for"]

# The cluster's, release's and MinIO's names are in tests/support/e2e_assets.py (tests/chart checks them).
REQUIRED_TOOLS = ("docker", "kind", "kubectl", "helm", "make")


@functools.cache
def skip_reason(requested: bool) -> str | None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"e2e needs docker, kind, kubectl, helm and make; missing here: {', '.join(missing)} "
                "(CI runs it: .github/workflows/e2e.yaml)")
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the docker engine is not running: `docker info` timed out"
    if info.returncode != 0:
        detail = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the docker engine is not running: `docker info` failed: {detail}"
    if not requested:
        return "e2e suite not requested: run `make e2e` (or `pytest -m e2e tests/e2e`, or set CAPTURE_EXPORT_E2E=1)"
    return None


class CommandFailed(AssertionError):
    pass


def run(args: Sequence[str], *, input: str | None = None, timeout: float = 300, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout,
                            cwd=REPO_ROOT, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise CommandFailed(f"$ {' '.join(args)}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Kube:
    """kubectl and helm, always against the kind cluster's context (never the user's current one)."""

    context: str

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["kubectl", "--context", self.context, *args], input=input, timeout=timeout, check=check)

    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(["helm", "--kube-context", self.context, *args], timeout=timeout)

    def get(self, *args: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return data

    def exists(self, *args: str) -> bool:
        result = self.kubectl("get", *args, "--ignore-not-found", "-o", "name", check=False)
        return result.returncode == 0 and bool(result.stdout.strip())

    def apply(self, documents: Sequence[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents, sort_keys=False))

    def operator_exec(self, *command: str, timeout: float = 600,
                      check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the operator's container (the image has the capture-export CLI and the store)."""
        return self.kubectl("--namespace", NAMESPACE, "exec", f"deployment/{RELEASE}", "-c", "operator", "--",
                            *command, timeout=timeout, check=check)


def wait_for(what: str, probe: Callable[[], Any], *, timeout: float = 300, interval: float = 2.0) -> Any:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)
