"""What the kind e2e suite applies to its cluster, and the names it shares with the Makefile and the manifests
in tests/e2e/: the e2e tests apply these, and tests/chart/test_deploy_assets.py and test_readme.py check them
offline (no cluster needed), so both import them from here rather than from each other.

``PREFIX`` is stamped with the time when this module is first imported: one prefix per run, so a kept
cluster (KEEP=1) can run the suite again without old objects; every user of it in one run sees the same one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["BUCKET", "CLUSTER", "DSN", "EXPORTER", "EXPORTS_NAMESPACE", "IMAGE", "LIMIT", "MAX_AGE_SECONDS",
           "MINIO_ACCESS_KEY", "MINIO_ENDPOINT", "MINIO_SECRET_KEY", "NAMESPACE", "NS_RELEASE", "OPERATOR_NAMESPACE",
           "POLICY", "PREFIX", "RELEASE", "REPO_ROOT", "SECRET", "example_exporter_documents",
           "example_retention_policy", "exporter_document", "image", "release_settings", "secret_document",
           "seed_job_manifest"]

REPO_ROOT = Path(__file__).resolve().parents[2]

# The same defaults as the Makefile, which exports them.
CLUSTER = os.environ.get("E2E_CLUSTER", "capture-export-e2e")
NAMESPACE = os.environ.get("E2E_NAMESPACE", "capture-export")
RELEASE = os.environ.get("E2E_RELEASE", "capture-export")
IMAGE = os.environ.get("E2E_IMAGE", "capture-export:e2e")  # built and loaded into the node by `make e2e-load`
# tests/e2e/minio.yaml and tests/e2e/minio-bucket.yaml
MINIO_ENDPOINT = "http://minio.minio.svc.cluster.local:9000"
MINIO_ACCESS_KEY = "capture-export"
MINIO_SECRET_KEY = "capture-export-secret"
BUCKET = "capture-exports"

# --------------------------------------------------------------------------------------------------
# tests/e2e/test_kind.py: the cluster-wide release, resources derived from examples/

EXPORTS_NAMESPACE = "capture-e2e"
EXPORTER = "usage"
POLICY = "purge-exported"
LIMIT = 500
MAX_AGE_SECONDS = 3600
PREFIX = f"e2e/run-{int(time.time())}"


def example_exporter_documents() -> list[dict[str, Any]]:
    """examples/exporter.yaml, pointed at the in-cluster MinIO and this run's namespace and prefix."""
    documents = [d for d in yaml.safe_load_all((REPO_ROOT / "examples" / "exporter.yaml").read_text()) if d]
    for document in documents:
        document["metadata"]["namespace"] = EXPORTS_NAMESPACE
        if document["kind"] == "Secret":
            document["stringData"] = {"access_key_id": MINIO_ACCESS_KEY, "access_secret": MINIO_SECRET_KEY}
        elif document["kind"] == "S3Exporter":
            assert document["metadata"]["name"] == EXPORTER
            document["spec"].update(bucket=BUCKET, endpoint=MINIO_ENDPOINT, prefix=PREFIX, limit=LIMIT)
    assert {d["kind"] for d in documents} == {"Secret", "S3Exporter"}
    return documents


def example_retention_policy() -> dict[str, Any]:
    """examples/retentionpolicy.yaml with a one-hour maxAge, a short interval and hard deletes."""
    (policy,) = [d for d in yaml.safe_load_all((REPO_ROOT / "examples" / "retentionpolicy.yaml").read_text()) if d]
    assert policy["kind"] == "RetentionPolicy" and policy["spec"]["exporters"] == [EXPORTER]
    policy["metadata"].update(name=POLICY, namespace=EXPORTS_NAMESPACE)
    policy["spec"].update(maxAge=f"{MAX_AGE_SECONDS // 3600}h", every=5, requireExport=True)
    policy["spec"].pop("softDelete", None)  # purge for good, so the store shows it at once
    policy["spec"].pop("dryRun", None)
    return policy


# --------------------------------------------------------------------------------------------------
# tests/e2e/test_kind_namespaced.py: the namespaced release with a PostgreSQL store

NS_RELEASE = "capture-export-ns"
OPERATOR_NAMESPACE = "capture-ns"  # the release's namespace, the only one it watches
DSN = "postgresql://capture:capture-pg-secret@postgres.postgres.svc.cluster.local:5432/capture"
SECRET = "minio-credentials"


def image() -> tuple[str, str]:
    """IMAGE as (repository, tag)."""
    repository, _, tag = IMAGE.rpartition(":")
    return repository, tag


def seed_job_manifest(name: str, count: int, seed: int) -> dict[str, Any]:
    """A Job appending ``count`` records to the PostgreSQL store, admitted by the restricted profile."""
    repository, tag = image()
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "seed", "image": f"{repository}:{tag}", "imagePullPolicy": "Never",
                "args": ["seed", "--store", DSN, "--count", str(count), "--seed", str(seed)],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "env": [{"name": "HOME", "value": "/tmp"}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        }}},
    }


def release_settings() -> list[str]:
    """`helm --set` values of the namespaced release: the chart's defaults (resources included) but for the
    loaded image and what the namespaced e2e module is about."""
    repository, tag = image()
    return [f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never",
            "watch.allNamespaces=false", "store.type=postgres", f"store.postgres.dsn={DSN}"]


def secret_document(namespace: str = OPERATOR_NAMESPACE) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": namespace},
            "type": "Opaque", "stringData": {"access_key_id": MINIO_ACCESS_KEY, "access_secret": MINIO_SECRET_KEY}}


def exporter_document(name: str, prefix: str, *, namespace: str = OPERATOR_NAMESPACE, fmt: str = "cbor",
                      limit: int = 10_000) -> dict[str, Any]:
    spec: dict[str, Any] = {"bucket": BUCKET, "region": "us-east-1", "endpoint": MINIO_ENDPOINT,
                            "secretRef": {"name": SECRET}, "prefix": prefix, "limit": limit, "every": 3600}
    if fmt != "cbor":
        spec["format"] = fmt
    return {"apiVersion": "capture.dev/v1alpha1", "kind": "S3Exporter",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
