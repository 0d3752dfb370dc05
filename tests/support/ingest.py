"""Running ingest servers for the tests: in this process (on a thread of its own) or as a `capture-export
ingest` subprocess that can be killed with SIGKILL; exporting what they stored to SeaweedFS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from capture_export.export.formats import decode_object
from capture_export.ingest import IngestLimits, IngestServer, TokenFile, store_opener
from capture_export.local_s3 import LocalS3, free_port
from tests.support.cli import CLI, run_cli, write_manifest

TOKEN = "ingest-test-token-7d1f0a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# LiteLLM must never reach for the network in tests: its cost map comes from the package itself.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")


def token_file(directory: Path, *tokens: str) -> Path:
    path = directory / "ingest-token"
    path.write_text("\n".join(tokens or (TOKEN,)) + "\n")
    return path


@dataclass
class RunningIngest:
    url: str
    server: IngestServer
    loop: asyncio.AbstractEventLoop

    def post(self, path: str, body: bytes | str, *, content_type: str = "application/json",
             headers: dict[str, str] | None = None, auth: bool = True) -> httpx.Response:
        sent = {"Content-Type": content_type, **(AUTH if auth else {}), **(headers or {})}
        return httpx.post(self.url + path, content=body, headers=sent, timeout=60)


@contextmanager
def ingest_server(store_url: str | Path, directory: Path, *, limits: IngestLimits | None = None,
                  tokens: tuple[str, ...] = ()) -> Iterator[RunningIngest]:
    """An ingest server in this process, on its own event loop thread, writing to ``store_url``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = IngestServer(store_opener(str(store_url)), TokenFile(token_file(directory, *tokens)), limits=limits,
                          serve_metrics=True)
    port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(30)
    try:
        yield RunningIngest(f"http://127.0.0.1:{port}", server, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class IngestProcess:
    """`capture-export ingest` in a subprocess, on a fixed port so that clients can reconnect after a kill."""

    def __init__(self, store: str | Path, directory: Path, port: int | None = None) -> None:
        self.store = str(store)
        self.directory = directory
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens = token_file(directory)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> IngestProcess:
        self.process = subprocess.Popen(
            [*CLI, "ingest", "--store", self.store, "--listen", f"127.0.0.1:{self.port}",
             "--token-file", str(self.tokens)],
            cwd=self.directory, stdout=subprocess.DEVNULL, stderr=open(self.directory / "ingest.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ingest server exited {self.process.returncode}: "
                                     + (self.directory / "ingest.log").read_text()[-2000:])
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("ingest server did not start")

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def export_all(s3: LocalS3, bucket: str, store: str | Path, directory: Path, *, fmt: str = "cbor-zstd",
               prefix: str = "llm", limit: int = 500) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Export the whole store with `capture-export run --once`; the exported records (in key order) and
    the data objects by key."""
    extra = f"  format: {fmt}\n" if fmt != "cbor-zstd" else ""
    manifest = write_manifest(directory / f"exporter-{prefix}.yaml", s3, bucket, limit=limit, prefix=prefix,
                              extra_spec=extra)
    run = run_cli("run", "--once", "-f", manifest, "--store", store, "--state", directory / f"state-{prefix}.json",
                  cwd=directory)
    assert run.returncode == 0, run.stdout + run.stderr
    client = s3.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
                  if "_capture-export" not in o["Key"])
    objects = {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}
    records = [record for key in keys for record in decode_object(objects[key], key)]
    return records, objects


def stored_count(store_path: Path) -> int:
    """How many records the SQLite store at ``store_path`` holds."""
    from capture_export.store import SQLiteStore

    store = SQLiteStore(store_path)
    try:
        return store.count()
    finally:
        store.close()
