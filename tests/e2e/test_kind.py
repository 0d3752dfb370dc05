"""End to end on kind: the chart's operator exports seeded records to MinIO exactly once, retention purges
only what was exported, and deleting everything leaves no finalizer behind.

The tests run in file order and share the cluster; each names the step it checks.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import pytest

from tests.support.e2e_assets import (
    BUCKET,
    EXPORTER,
    EXPORTS_NAMESPACE,
    LIMIT,
    MAX_AGE_SECONDS,
    MINIO_ACCESS_KEY,
    MINIO_ENDPOINT,
    MINIO_SECRET_KEY,
    NAMESPACE,
    POLICY,
    PREFIX,
    RELEASE,
    example_exporter_documents,
    example_retention_policy,
)

from .cluster import Kube, wait_for

pytestmark = pytest.mark.e2e

# The exporter's and the policy's names, their namespace, LIMIT, MAX_AGE_SECONDS and this run's PREFIX live in
# tests/support/e2e_assets.py beside the resources built from examples/, which tests/chart checks offline.
FINALIZER = "capture.dev/finalizer"
FIRST_BATCH = 3000
SECOND_BATCH = 500
PURGE_SLACK_SECONDS = 60

# Lists (id, timestamp in µs) of every record in the operator's default store, as JSON.
STORE_ROWS = """
import json, os
from capture_export.store import open_store_url
store = open_store_url(os.environ["CAPTURE_EXPORT_STORE"])
rows, after = [], 0
while batch := store.read_batch(after, 5000):
    rows.extend((record.id, record.timestamp_us) for record in batch)
    after = batch[-1].id
print(json.dumps(rows))
"""


def seed(kube: Kube, count: int, seed_value: int) -> int:
    """Append ``count`` synthetic records to the operator's default store; return the last id."""
    output = kube.operator_exec("capture-export", "seed", "--count", str(count), "--seed", str(seed_value)).stdout
    match = re.search(r"last id (\d+)", output)
    assert match, output
    return int(match.group(1))


def store_rows(kube: Kube) -> list[tuple[int, int]]:
    return [tuple(row) for row in json.loads(kube.operator_exec("python", "-c", STORE_ROWS).stdout)]


def s3_env() -> list[str]:
    return ["env", f"AWS_ACCESS_KEY_ID={MINIO_ACCESS_KEY}", f"AWS_SECRET_ACCESS_KEY={MINIO_SECRET_KEY}"]


def verify(kube: Kube, up_to: int) -> str:
    """`capture-export verify`: every store record up to ``up_to`` is in exactly one object in MinIO."""
    result = kube.operator_exec(*s3_env(), "capture-export", "verify", "--bucket", BUCKET, "--prefix", PREFIX,
                                "--endpoint", MINIO_ENDPOINT, "--region", "us-east-1", "--up-to", str(up_to),
                                check=False)
    assert result.returncode == 0, f"verify failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.rstrip().endswith("OK"), result.stdout
    return result.stdout


def exporter(kube: Kube) -> dict[str, Any]:
    return kube.get("s3exporter", EXPORTER, "--namespace", EXPORTS_NAMESPACE)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def exported_up_to(kube: Kube, last_id: int) -> dict[str, Any] | None:
    obj = exporter(kube)
    status = obj.get("status", {})
    ready = condition(obj, "Ready")
    caught_up = int(status.get("cursor", "0")) >= last_id and status.get("backlog") == 0
    return obj if caught_up and ready and ready["status"] == "True" else None


def observed(obj: dict[str, Any]) -> bool:
    return obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"]


def purged(kube: Kube, up_to: int) -> list[tuple[int, int]] | None:
    """The store's rows once no record with id <= ``up_to`` is older than maxAge (plus slack for the
    policy's interval), else None."""
    rows = store_rows(kube)
    horizon_us = int((time.time() - MAX_AGE_SECONDS - PURGE_SLACK_SECONDS) * 1e6)
    return None if any(row_id <= up_to and ts_us < horizon_us for row_id, ts_us in rows) else rows


def policy(kube: Kube) -> dict[str, Any]:
    return kube.get("retentionpolicy", POLICY, "--namespace", EXPORTS_NAMESPACE)


# --------------------------------------------------------------------------------------------------


def test_operator_runs_restricted(kube: Kube) -> None:
    """The chart's pod is admitted in a namespace enforcing the restricted profile and runs as intended."""
    labels = kube.get("namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert kube.operator_exec("id", "-u").stdout.strip() == "10001"
    assert kube.operator_exec("touch", "/probe", check=False).returncode != 0, "root filesystem must be read-only"
    kube.operator_exec("touch", "/tmp/probe", "/home/capture/probe", "/data/probe")
    for url in ("http://127.0.0.1:8080/healthz", "http://127.0.0.1:9090/metrics"):
        code = f"import urllib.request; assert urllib.request.urlopen({url!r}, timeout=10).status == 200"
        kube.operator_exec("python", "-c", code)
    deployment = kube.get("deployment", RELEASE, "--namespace", NAMESPACE)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    service = kube.get("service", f"{RELEASE}-metrics", "--namespace", NAMESPACE)
    assert service["spec"]["ports"][0]["name"] == "metrics"
    for crd in ("s3exporters.capture.dev", "retentionpolicies.capture.dev"):
        kube.get("crd", crd)


def test_export_to_minio_exactly_once_then_retention_then_cleanup(kube: Kube) -> None:
    # A fresh namespace for the resources.
    kube.kubectl("delete", "namespace", EXPORTS_NAMESPACE, "--ignore-not-found", "--wait", "--timeout=180s")
    kube.kubectl("create", "namespace", EXPORTS_NAMESPACE)

    # 1. Records in the store, then the example exporter pointed at MinIO.
    first_last = seed(kube, FIRST_BATCH, seed_value=1)
    kube.apply(example_exporter_documents())
    wait_for("the operator's finalizer on the exporter",
             lambda: FINALIZER in exporter(kube)["metadata"].get("finalizers", []), timeout=120)

    # 2. Ready=True once the backlog is exported.
    kube.kubectl("wait", f"s3exporter/{EXPORTER}", "--namespace", EXPORTS_NAMESPACE,
                 "--for=condition=Ready=True", "--timeout=300s")
    obj = wait_for(f"the exporter to export up to id {first_last}", lambda: exported_up_to(kube, first_last))
    assert obj["status"]["totals"]["rows"] >= FIRST_BATCH
    assert obj["status"]["totals"]["objects"] >= math.ceil(FIRST_BATCH / LIMIT)

    # 3. Read the objects back from MinIO and compare with the store: each record exactly once.
    report = verify(kube, first_last)
    assert "missing: 0" in report and "duplicated: 0" in report
    listed = kube.operator_exec(
        "sh", "-c", f"{' '.join(s3_env())} capture-export cat s3://{BUCKET}/{PREFIX} "
        f"--endpoint {MINIO_ENDPOINT} --region us-east-1 | wc -l").stdout
    assert int(listed.strip()) == int(obj["status"]["totals"]["rows"])

    # 4. Records the exporter has not exported (suspended) must survive retention.
    kube.kubectl("patch", "s3exporter", EXPORTER, "--namespace", EXPORTS_NAMESPACE, "--type=merge",
                 "--patch", '{"spec": {"suspend": true}}')
    wait_for("the exporter to observe suspend", lambda: observed(exporter(kube)), timeout=120)
    second_last = seed(kube, SECOND_BATCH, seed_value=2)
    time.sleep(5)
    assert int(exporter(kube)["status"]["cursor"]) == first_last, "a suspended exporter must not export"

    kube.apply([example_retention_policy()])
    wait_for("the RetentionPolicy's Ready condition", lambda: condition(policy(kube), "Ready"), timeout=120)
    rows = wait_for("retention to purge the exported records older than maxAge",
                    lambda: purged(kube, up_to=first_last))
    unexported = [row_id for row_id, _ in rows if first_last < row_id <= second_last]
    assert len(unexported) == SECOND_BATCH, "retention purged records that were never exported"
    gate = policy(kube)["status"]["gate"]
    assert gate["bound"] == str(first_last), gate
    assert gate["limitingExporter"] == EXPORTER, gate
    assert policy(kube)["status"]["totals"]["purged"] > 0
    verify(kube, first_last)  # what was purged from the store is still in the bucket, once

    # 5. Resume: the rest is exported, and only then purged.
    kube.kubectl("patch", "s3exporter", EXPORTER, "--namespace", EXPORTS_NAMESPACE, "--type=merge",
                 "--patch", '{"spec": {"suspend": false}}')
    wait_for(f"the exporter to export up to id {second_last}", lambda: exported_up_to(kube, second_last))
    verify(kube, second_last)
    wait_for("retention to purge the newly exported records", lambda: purged(kube, up_to=second_last))

    # 6. Delete everything: the operator removes its finalizers, nothing is left stuck.
    kube.kubectl("delete", f"retentionpolicy/{POLICY}", f"s3exporter/{EXPORTER}", "--namespace",
                 EXPORTS_NAMESPACE, "--wait", "--timeout=180s")
    assert not kube.exists("s3exporters,retentionpolicies", "--namespace", EXPORTS_NAMESPACE)
    for plural in ("s3exporters", "retentionpolicies"):
        leftovers = [item["metadata"]["name"] for item in kube.get(plural, "--all-namespaces")["items"]
                     if FINALIZER in item["metadata"].get("finalizers", [])]
        assert leftovers == [], f"{plural} still carrying {FINALIZER}: {leftovers}"
    kube.kubectl("delete", "namespace", EXPORTS_NAMESPACE, "--wait", "--timeout=180s")


def test_uninstall_leaves_nothing_behind(kube: Kube) -> None:
    kube.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m")
    wait_for("the operator pod to go",
             lambda: not kube.exists("pods", "--namespace", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"))
    for resource in ("deployment", "serviceaccount", "service", "persistentvolumeclaim"):
        assert not kube.exists(resource, "--namespace", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")
    for resource in ("clusterrole", "clusterrolebinding"):
        assert not kube.exists(resource, "-l", f"app.kubernetes.io/instance={RELEASE}")
    # Helm keeps CRDs; with no custom resource left they delete at once (no finalizer can hold them).
    kube.kubectl("delete", "-f", "charts/capture-export/crds/", "--wait", "--timeout=120s")
    assert not kube.exists("crd", "s3exporters.capture.dev")
    assert not kube.exists("crd", "retentionpolicies.capture.dev")
