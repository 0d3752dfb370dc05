"""End to end on kind, the production shape: a second release watching only its own namespace, with
PostgreSQL (a PostgreSQL pod) as its default store, the chart's default resources, CBOR and Parquet
exporters, and a backlog caught up by eight exporters at once under the chart's default memory limit.

Runs after test_kind.py (file order), whose last test uninstalls the cluster-wide release: two operators
must never serve one namespace, so the fixture uninstalls that release itself when it is still there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.e2e_assets import (
    BUCKET,
    MINIO_ACCESS_KEY,
    MINIO_ENDPOINT,
    MINIO_SECRET_KEY,
    NS_RELEASE,
    OPERATOR_NAMESPACE,
    RELEASE,
    REPO_ROOT,
    exporter_document,
    release_settings,
    secret_document,
    seed_job_manifest,
)
from tests.support.e2e_assets import NAMESPACE as CLUSTER_WIDE_NAMESPACE

from .cluster import Kube, run, wait_for

pytestmark = pytest.mark.e2e

# The release's name and namespace (the only one it watches), its settings, the PostgreSQL DSN, and the
# Secret, S3Exporters and seeding Job it applies live in tests/support/e2e_assets.py, which tests/chart checks
# offline.
OTHER_NAMESPACE = "capture-unwatched"
FINALIZER = "capture.dev/finalizer"
PREFIX = f"e2e-ns/run-{int(time.time())}"
FIRST_BACKLOG = 12_000
MEMORY_BACKLOG = 60_000
MEMORY_EXPORTERS = 8


def _chart_default_memory_limit() -> str:
    values = yaml.safe_load((REPO_ROOT / "charts" / "capture-export" / "values.yaml").read_text())
    return str(values["resources"]["limits"]["memory"])


def operator_exec(kube: Kube, *command: str, timeout: float = 600) -> str:
    return kube.kubectl("--namespace", OPERATOR_NAMESPACE, "exec", f"deployment/{NS_RELEASE}", "-c", "operator",
                        "--", *command, timeout=timeout).stdout


def operator_pod(kube: Kube) -> dict[str, Any]:
    pods = kube.get("pods", "--namespace", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={NS_RELEASE}")
    running = [pod for pod in pods["items"] if not pod["metadata"].get("deletionTimestamp")]
    assert len(running) == 1, [pod["metadata"]["name"] for pod in running]
    return running[0]


def seed_job(kube: Kube, name: str, count: int, seed: int) -> int:
    """Seed from a Job of its own, not in the operator's container (whose memory the suite watches);
    return the last id."""
    kube.kubectl("--namespace", OPERATOR_NAMESPACE, "delete", "job", name, "--ignore-not-found", "--wait")
    kube.apply([seed_job_manifest(name, count, seed)])
    kube.kubectl("--namespace", OPERATOR_NAMESPACE, "wait", f"job/{name}", "--for=condition=Complete",
                 "--timeout=900s", timeout=960)
    output = kube.kubectl("--namespace", OPERATOR_NAMESPACE, "logs", f"job/{name}").stdout
    match = re.search(r"last id (\d+)", output)
    assert match, output
    return int(match.group(1))


def exporter(kube: Kube, name: str, namespace: str = OPERATOR_NAMESPACE) -> dict[str, Any]:
    return kube.get("s3exporter", name, "--namespace", namespace)


def caught_up(kube: Kube, name: str, last_id: int) -> bool:
    obj = exporter(kube, name)
    status = obj.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return int(status.get("cursor", "0")) >= last_id and status.get("backlog") == 0 and ready.get("status") == "True"


def verify(kube: Kube, prefix: str, up_to: int) -> str:
    """`capture-export verify` in the operator pod, against its default store (the PostgreSQL DSN)."""
    output = operator_exec(kube, "env", f"AWS_ACCESS_KEY_ID={MINIO_ACCESS_KEY}",
                           f"AWS_SECRET_ACCESS_KEY={MINIO_SECRET_KEY}", "capture-export", "verify", "--bucket",
                           BUCKET, "--prefix", prefix, "--endpoint", MINIO_ENDPOINT, "--region", "us-east-1",
                           "--up-to", str(up_to))
    assert output.rstrip().endswith("OK"), output
    assert "missing: 0" in output and "duplicated: 0" in output, output
    return output


def memory_state(kube: Kube) -> dict[str, Any]:
    (status,) = operator_pod(kube)["status"]["containerStatuses"]
    return {"restarts": status["restartCount"],
            "last": (status.get("lastState") or {}).get("terminated", {}).get("reason")}


@pytest.fixture(scope="module")
def release(kube: Kube) -> Iterator[Kube]:
    if run(["helm", "--kube-context", kube.context, "status", RELEASE, "--namespace", CLUSTER_WIDE_NAMESPACE],
           check=False).returncode == 0:
        kube.helm("uninstall", RELEASE, "--namespace", CLUSTER_WIDE_NAMESPACE, "--wait", "--timeout", "5m")
    kube.kubectl("apply", "-f", "tests/e2e/postgres.yaml")
    kube.kubectl("--namespace", "postgres", "rollout", "status", "deployment/postgres", "--timeout=300s")
    for namespace in (OPERATOR_NAMESPACE, OTHER_NAMESPACE):
        kube.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}}}])
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "charts/capture-export/crds/")
    settings = [word for setting in release_settings() for word in ("--set", setting)]
    kube.helm("upgrade", "--install", NS_RELEASE, "charts/capture-export", "--namespace", OPERATOR_NAMESPACE,
              *settings, "--wait", "--timeout", "5m")
    # --wait returned: the readiness probe passed, so the operator is serving (not merely started).
    yield kube
    for namespace in (OPERATOR_NAMESPACE, OTHER_NAMESPACE):
        kube.kubectl("--namespace", namespace, "delete", "s3exporters", "--all", "--wait", "--timeout=180s",
                     check=False)
    kube.helm("uninstall", NS_RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait", "--timeout", "5m")
    for namespace in (OPERATOR_NAMESPACE, OTHER_NAMESPACE):
        # An exporter in the unwatched namespace keeps no finalizer: it deletes with its namespace.
        kube.kubectl("delete", "namespace", namespace, "--wait", "--timeout=180s", check=False)
    kube.kubectl("delete", "-f", "tests/e2e/postgres.yaml", "--wait", "--timeout=180s", check=False)


def test_namespaced_release_has_no_cluster_wide_permission(release: Kube) -> None:
    kube = release
    for kind in ("clusterrole", "clusterrolebinding"):
        assert not kube.exists(kind, "-l", f"app.kubernetes.io/instance={NS_RELEASE}")
    account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{NS_RELEASE}"
    can = kube.kubectl("auth", "can-i", "list", "s3exporters.capture.dev", "--namespace", OPERATOR_NAMESPACE,
                       "--as", account, check=False)
    assert can.stdout.strip() == "yes"
    cannot = kube.kubectl("auth", "can-i", "list", "s3exporters.capture.dev", "--all-namespaces", "--as", account,
                          check=False)
    assert cannot.stdout.strip() == "no"
    pod = operator_pod(kube)
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["memory"] == _chart_default_memory_limit()
    assert container["args"][:3] == ["operator", "--namespace", OPERATOR_NAMESPACE]


def test_postgres_store_exports_cbor_and_parquet_exactly_once(release: Kube) -> None:
    kube = release
    last_id = seed_job(kube, "seed-first", FIRST_BACKLOG, seed=11)
    kube.apply([secret_document(), exporter_document("usage-cbor", f"{PREFIX}/cbor"),
                exporter_document("usage-parquet", f"{PREFIX}/parquet", fmt="parquet")])
    for name in ("usage-cbor", "usage-parquet"):
        wait_for(f"{name} to export up to id {last_id}", lambda name=name: caught_up(kube, name, last_id),
                 timeout=600)
    verify(kube, f"{PREFIX}/cbor", last_id)
    verify(kube, f"{PREFIX}/parquet", last_id)
    last_key = exporter(kube, "usage-parquet")["status"]["lastRun"]["objectKey"]
    assert last_key.startswith(f"{PREFIX}/parquet/") and last_key.endswith(".parquet"), last_key


def test_unwatched_namespace_is_left_alone(release: Kube) -> None:
    kube = release
    kube.apply([secret_document(OTHER_NAMESPACE),
                exporter_document("elsewhere", f"{PREFIX}/elsewhere", namespace=OTHER_NAMESPACE)])
    time.sleep(20)
    obj = exporter(kube, "elsewhere", OTHER_NAMESPACE)
    assert FINALIZER not in obj["metadata"].get("finalizers", []), "a namespaced operator served another namespace"
    assert not obj.get("status"), obj.get("status")


def test_default_memory_limit_holds_eight_exporters_catching_up(release: Kube) -> None:
    """A backlog after an outage, caught up by eight exporters at limit 10000 at once (CBOR and Parquet),
    with the chart's default resources and --concurrency: the pod must never be OOM-killed."""
    kube = release
    before = memory_state(kube)
    last_id = seed_job(kube, "seed-backlog", MEMORY_BACKLOG, seed=12)
    names = [f"backlog-{index}" for index in range(MEMORY_EXPORTERS)]
    kube.apply([exporter_document(name, f"{PREFIX}/{name}", fmt="parquet" if index % 2 else "cbor")
                for index, name in enumerate(names)])

    def all_caught_up() -> bool:
        state = memory_state(kube)
        assert state == before, f"the operator restarted while catching up ({state['last']}): {state}"
        return all(caught_up(kube, name, last_id) for name in names)

    wait_for(f"{MEMORY_EXPORTERS} exporters to catch up with {last_id} records", all_caught_up, timeout=1800,
             interval=5)
    assert memory_state(kube) == before
    for name in names[:2]:  # one CBOR, one Parquet: exactly once under memory pressure too
        verify(kube, f"{PREFIX}/{name}", last_id)
