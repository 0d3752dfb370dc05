"""The embedded default: a local S3 server and a SQLite store, seeded, exported, verified, reported."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

from .api.manifests import load_manifests
from .audit import verify_export, verify_options
from .local_s3 import LocalS3
from .objectstore import CredentialResolver, S3Location, S3ObjectStore
from .seed import seed_store
from .standalone import StandaloneRunner
from .store import SQLiteStore

__all__ = ["run_demo"]


def run_demo(*, records: int, manifest: Path, workdir: Path) -> int:
    manifests = load_manifests([manifest])
    exporters = manifests.of_kind("S3Exporter")
    if not exporters:
        print(f"{manifest} holds no S3Exporter")
        return 2
    exporter = exporters[0]
    spec = exporter.spec
    credentials = CredentialResolver(manifests).resolve(exporter.namespace, spec.secret_ref)
    port = urlparse(spec.endpoint).port if spec.endpoint else None
    if workdir.exists():
        shutil.rmtree(workdir)  # every demo starts from an empty store and bucket
    workdir.mkdir(parents=True)
    store_path = workdir / "store.sqlite"

    s3 = LocalS3(workdir / "s3", port=port,
                 access_key_id=credentials.access_key_id if credentials else "capture-export",
                 secret_access_key=credentials.secret_access_key if credentials else "capture-export-secret")
    print(f"starting a local S3 server (SeaweedFS) at {s3.endpoint} …", flush=True)
    with s3:
        s3.create_bucket(spec.bucket)
        store = SQLiteStore(store_path)
        started = time.monotonic()
        seed_store(store, records, progress=lambda n: print(f"\r  seeding the capture store: {n:,}/{records:,}",
                                                             end="", flush=True))
        print(f"\nseeded {records:,} synthetic LLM usage records into {store_path} "
              f"in {time.monotonic() - started:.1f}s", flush=True)

        print(f"exporting with {manifest} …", flush=True)
        runner = StandaloneRunner(manifests, state_path=workdir / "state.json", default_store=str(store_path))
        runner.install_signal_handlers()
        try:
            ok = runner.run_once()
        finally:
            runner.close()
        outcome = runner.outcomes.get(exporter.ref)
        if not ok or outcome is None or outcome.result is None:
            print("export failed; see the messages above")
            return 1
        run = outcome.result
        objects = S3ObjectStore(S3Location(spec.bucket, spec.region, spec.endpoint), credentials)
        report = verify_export(store, objects, spec.prefix, **verify_options(spec, exporter.namespace, exporter.name))
        store.close()
        ratio = run.raw_bytes / run.bytes if run.bytes else 0.0
        rate = run.rows / run.duration_seconds if run.duration_seconds else 0.0
        prefix = f"{spec.prefix}/" if spec.prefix else ""
        print()
        print("what was written")
        print(f"  objects:      {run.objects:,} under s3://{spec.bucket}/{prefix}")
        print(f"  rows:         {run.rows:,}")
        print(f"  bytes:        {run.bytes:,} compressed ({run.raw_bytes:,} as CBOR, ratio {ratio:.1f}x)")
        print(f"  throughput:   {rate:,.0f} records/s end to end ({run.duration_seconds:.2f}s)")
        print(f"  verify:       {len(report.missing)} missing, {len(report.duplicated)} duplicated")
        print()
        sample = workdir / Path(run.last_key or "sample.cbor.zstd").name
        if run.last_key:
            sample.write_bytes(objects.get(run.last_key) or b"")
        print("read it back (a copy of the last object is kept, since this S3 server stops now):")
        print(f"  .venv/bin/capture-export cat {sample} | head -1")
        print(f"  with a server running: capture-export cat s3://{spec.bucket}/{prefix} --endpoint {spec.endpoint}")
        print("  python: zstandard.ZstdDecompressor().decompressobj().decompress(data), then")
        print("          cbor2.CBORDecoder over the bytes until the end (a CBOR sequence)")
        print(f"  the S3 data stays in {workdir / 's3'}; state in {workdir / 'state.json'}")
    return 0 if report.ok else 1
