"""Helpers for tests that drive the ``capture-export`` command in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from capture_export.local_s3 import LocalS3

CLI = [sys.executable, "-m", "capture_export.cli"]


def write_manifest(path: Path, s3: LocalS3, bucket: str, *, limit: int = 200, prefix: str = "llm",
                   name: str = "usage", extra_spec: str = "") -> Path:
    path.write_text(f"""\
apiVersion: v1
kind: Secret
metadata: {{name: s3-creds, namespace: default}}
stringData: {{access_key_id: {s3.access_key_id}, access_secret: {s3.secret_access_key}}}
---
apiVersion: capture.dev/v1alpha1
kind: S3Exporter
metadata: {{name: {name}, namespace: default}}
spec:
  bucket: {bucket}
  region: us-east-1
  endpoint: {s3.endpoint}
  secretRef: {{name: s3-creds}}
  prefix: {prefix}
  limit: {limit}
  every: 3600
{extra_spec}""")
    return path


def run_cli(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
