"""Driving the product as a user would, and gathering everything it wrote: the ``capture-export`` command
in a subprocess (standalone), and the operator against the emulated API server (tests/support/operator_harness.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml
from prometheus_client import generate_latest

from capture_export.api import GROUP, VERSION
from capture_export.local_s3 import LocalS3

from .canary_support import KOPF_DIFF_BASE, LogCapture, Outputs

__all__ = ["CLI", "CliRun", "manifest_documents", "operator_outputs", "run_cli", "secret_document",
           "standalone_outputs", "wait_for_event", "write_manifest"]

CLI = [sys.executable, "-m", "capture_export.cli"]
PLURALS = ("s3exporters", "retentionpolicies")


def run_cli(*args: str | Path, cwd: Path, env: Mapping[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# -- manifests ---------------------------------------------------------------------------------------


def secret_document(name: str, *, data: Mapping[str, str] | None = None,
                    string_data: Mapping[str, Any] | None = None, namespace: str = "default") -> dict[str, Any]:
    """A Secret as ``kubectl create secret`` writes it: ``data`` values are base64-encoded here."""
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}}
    if data is not None:
        doc["data"] = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    if string_data is not None:
        doc["stringData"] = dict(string_data)
    return doc


def s3_secret(s3: LocalS3, name: str = "s3-creds", **overrides: str) -> dict[str, Any]:
    values = {"access_key_id": s3.access_key_id, "access_secret": s3.secret_access_key, **overrides}
    return secret_document(name, data=values)


def exporter_document(name: str, spec: Mapping[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "S3Exporter",
            "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}


def policy_document(name: str, spec: Mapping[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RetentionPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}


def exporter_spec(s3: LocalS3, bucket: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"bucket": bucket, "region": "us-east-1", "endpoint": s3.endpoint,
                            "secretRef": {"name": "s3-creds"}, "prefix": "llm", "limit": 100, "every": 3600}
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not None}


def manifest_documents(*documents: Mapping[str, Any]) -> str:
    return yaml.safe_dump_all([dict(d) for d in documents], sort_keys=False)


def write_manifest(path: Path, *documents: Mapping[str, Any]) -> Path:
    path.write_text(manifest_documents(*documents))
    return path


# -- standalone ---------------------------------------------------------------------------------------


@dataclass
class CliRun:
    result: subprocess.CompletedProcess[str]
    outputs: Outputs

    @property
    def stdout(self) -> str:
        return self.result.stdout

    @property
    def stderr(self) -> str:
        return self.result.stderr

    @property
    def returncode(self) -> int:
        return self.result.returncode


def standalone_outputs(result: subprocess.CompletedProcess[str], workdir: Path, *, inputs: Sequence[Path] = (),
                       s3: LocalS3 | None = None, buckets: Sequence[str] = ()) -> Outputs:
    """stdout, stderr, every file the run left under ``workdir`` (names and contents, but the user's own
    ``inputs``), and every object in ``buckets``."""
    outputs = Outputs()
    outputs.add("stdout", result.stdout)
    outputs.add("stderr", result.stderr)
    outputs.add_tree(workdir, skip=inputs)
    if s3 is not None:
        client = s3.client()
        for bucket in buckets:
            outputs.add_bucket(client, bucket)
    return outputs


# -- the operator -------------------------------------------------------------------------------------


def _strip_inputs(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A custom resource without what the user wrote (its spec, and kopf's copy of it)."""
    body = {k: v for k, v in obj.items() if k != "spec"}
    meta = dict(body.get("metadata") or {})
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != KOPF_DIFF_BASE}
    body["metadata"] = meta
    return body


def operator_outputs(api: kubernetes.client.ApiClient, operator: Any, logs: LogCapture, *,
                     s3: LocalS3 | None = None, buckets: Sequence[str] = ()) -> Outputs:
    """Everything the operator wrote: every custom resource's status, annotations and metadata (but the
    spec the user applied), every Event in every namespace, its metrics in Prometheus text, every log
    record at DEBUG, and every object in ``buckets``."""
    outputs = Outputs()
    custom = kubernetes.client.CustomObjectsApi(api)
    for plural in PLURALS:
        for obj in custom.list_cluster_custom_object(GROUP, VERSION, plural).get("items", []):
            meta = obj.get("metadata", {})
            where = f"{plural} {meta.get('namespace')}/{meta.get('name')}"
            stripped = _strip_inputs(obj)
            outputs.add_json(f"{where} status", stripped.get("status"))
            outputs.add_json(f"{where} annotations", stripped["metadata"].get("annotations"))
            outputs.add_json(f"{where} object", stripped)
    for event in kubernetes.client.CoreV1Api(api).list_event_for_all_namespaces().items:
        outputs.add_json(f"event {event.metadata.name}", api.sanitize_for_serialization(event))
    outputs.add("metrics", generate_latest(operator.runtime.metrics.registry).decode())
    outputs.add("logs", logs.text)
    if s3 is not None:
        client = s3.client()
        for bucket in buckets:
            outputs.add_bucket(client, bucket)
    return outputs


def wait_for_event(core: kubernetes.client.CoreV1Api, name: str, reason: str | None, namespace: str = "default",
                   timeout: float = 10.0) -> list[tuple[str, str, str]]:
    """Events are posted in the background: wait until one about ``name`` (with ``reason``) is there."""
    deadline = time.monotonic() + timeout
    while True:
        events = [(e.type, e.reason, e.message) for e in core.list_namespaced_event(namespace).items
                  if e.involved_object.name == name]
        if any(reason in (None, r) for _, r, _ in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def ready_decided(status: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Ready condition once it is True or False (not while Unknown)."""
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
    return ready if ready and ready.get("status") in ("True", "False") else None


def dumps(value: object) -> str:
    return json.dumps(value, default=str)
