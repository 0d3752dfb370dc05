"""The operator starts under any uid, as OpenShift's restricted-v2 SCC runs it: a uid from the namespace's
range with no passwd entry, $HOME an empty writable directory.

`capture-export operator` runs as a real process (setpriv to an unused uid) against the emulated API
server, with the environment the chart's pod gets when installed with the OpenShift values (downward-API
fields resolved as the kubelet would). It must serve: put its finalizer and first conditions on an
S3Exporter, then stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from capture_export.local_s3 import free_port
from tests.support.chart_rendering import CHART_DIR, pod_spec, render
from tests.support.operator_harness import EmulatedCluster, Kube, wait_for

UID = 123456  # no passwd entry (checked below)
POD_NAME = "capture-export-5f7d8c9b6d-x2x7q"
POD_NAMESPACE = "capture-export"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="running the operator as another uid needs root and setpriv (util-linux)")


def openshift_container() -> dict[str, Any]:
    values = yaml.safe_load((CHART_DIR / "values-openshift.yaml").read_text())
    with helm.Chart.load(CHART_DIR) as chart:
        (container,) = pod_spec(render(chart, values, namespace=POD_NAMESPACE))["containers"]
    return container


def pod_environment(container: dict[str, Any], **overrides: str) -> dict[str, str]:
    """The container's env as the kubelet resolves it: only what the pod spec sets, nothing of ours."""
    fields = {"metadata.name": POD_NAME, "metadata.namespace": POD_NAMESPACE}
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    env.update(overrides)
    return env


@pytest.fixture
def sandbox(cluster: EmulatedCluster) -> Iterator[Path]:
    """$HOME, /tmp and the store directory for the uid, as the chart's emptyDirs and fsGroup make them
    (outside pytest's tmp_path, whose parents only root may enter)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="capture-export-uid-"))
    for name in ("home", "tmp", "data"):
        (tmp_path / name).mkdir()
        os.chown(tmp_path / name, UID, UID)
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
        "users": [{"name": "operator", "user": {"token": "unused"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    os.chmod(tmp_path / "kubeconfig", 0o644)
    os.chmod(tmp_path, 0o755)
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def run_as_uid(sandbox: Path) -> Iterator[Any]:
    processes: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str], args: list[str]) -> subprocess.Popen[str]:
        with pytest.raises(KeyError):
            pwd.getpwuid(UID)
        process = subprocess.Popen(
            ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--",
             str(Path(sys.executable).parent / "capture-export"), *args],
            env=env, cwd=sandbox / "home", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def wait_serving(process: subprocess.Popen[str], liveness_port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"the operator exited with {process.returncode} as uid {UID}:\n{output[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail("the operator did not serve /healthz within 60 s")


@pytest.mark.parametrize("pod_id", ["from the chart", "unset"])
def test_operator_runs_as_a_uid_without_passwd_entry(sandbox: Path, run_as_uid: Any, kube: Kube,
                                                      pod_id: str) -> None:
    container = openshift_container()
    assert "runAsUser" not in container["securityContext"], "OpenShift values leave the uid to the SCC"
    env = pod_environment(container, HOME=str(sandbox / "home"), TMPDIR=str(sandbox / "tmp"),
                          CAPTURE_EXPORT_STORE=str(sandbox / "data" / "store.sqlite"),
                          KUBECONFIG=str(sandbox / "kubeconfig"))
    assert not {"USER", "LOGNAME", "LNAME", "USERNAME"} & set(env), "getpass would not need a passwd entry"
    if pod_id == "unset":  # an install that is not the chart's (plain manifests, another chart)
        env.pop("POD_ID", None)
    else:
        assert env["POD_ID"] == POD_NAME
    liveness_port = free_port()
    # Free ports for every server, the chart's own (8080, 8081, 9090) may be taken: another run of this test
    # on a parallel worker, or anything else on the machine.
    args = [*container["args"], "--liveness-port", str(liveness_port), "--readiness-port", str(free_port()),
            "--metrics-port", str(free_port())]
    process = run_as_uid(env, args)
    wait_serving(process, liveness_port)

    kube.apply_exporter("usage", {"bucket": "capture-exports", "region": "us-east-1",
                                  "endpoint": "http://127.0.0.1:9", "prefix": "exports", "limit": 100})
    try:
        wait_for(lambda: "capture.dev/finalizer" in ((kube.get("usage") or {}).get("metadata", {})
                                                      .get("finalizers") or []), 30, what="the operator's finalizer")
        wait_for(lambda: kube.status("usage").get("conditions"), 30, what="the first conditions")
    except AssertionError as exc:
        process.kill()
        output = process.stdout.read() if process.stdout else ""
        raise AssertionError(f"{exc}\noperator output:\n{output[-4000:]}") from None

    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the operator did not stop within 60 s of SIGTERM")
    assert process.returncode == 0, output[-4000:]
    assert "getpwuid" not in output
