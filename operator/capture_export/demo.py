"""The embedded default: a local S3 server and a SQLite store, seeded, exported, verified, reported.

The demo owns its S3 server: it starts one on a free port (or on ``--port``, failing at once when that
port is taken), checks that what answers there is the server it started, exports every S3Exporter of
the manifest into it (whatever endpoint the manifest names; an exporter whose Secret is not in the
manifest signs with the server's own keys), and stops it on its way out, whether the
demo ends, fails, or is stopped by SIGINT, SIGTERM or SIGHUP. On Linux the server also dies with the
demo's process if that is killed outright.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .api import S3ExporterStatus
from .api.manifests import ManifestSet, load_manifests
from .api.vocabulary import ConditionType, Truth
from .audit import verify_export, verify_options
from .local_s3 import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, LocalS3, NotOurServer, PortInUse
from .objectstore import CredentialResolver, S3Location, S3ObjectStore
from .seed import seed_store
from .standalone import StandaloneRunner
from .store import SQLiteStore

__all__ = ["STOP_SIGNALS", "run_demo"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP ask the demo to stop: the request is recorded, and ``check()`` (called
    between steps and by the seeding's progress) turns it into ``_Interrupted``, so that every ``with``
    unwinds and the S3 server stops. Raising from the handler itself could land in a finaliser, where
    Python ignores exceptions and the request would be lost; a second signal does raise, for a demo stuck
    in a step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            raise _Interrupted(self.signum)
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise _Interrupted(self.signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopSignals]:
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# How to read an object of each format in your own code (docs/formats.md, docs/querying.md).
_READ_IN_PYTHON: dict[str, tuple[str, ...]] = {
    "cbor-zstd": ("  python: zstandard.ZstdDecompressor().decompressobj().decompress(data), then",
                  "          cbor2.CBORDecoder over the bytes until the end (a CBOR sequence)"),
    "jsonl": ("  python: one JSON object per line (gzip.decompress(data) for .jsonl.gz,",
              "          zstandard.ZstdDecompressor().decompressobj().decompress(data) for .jsonl.zst)"),
    "parquet": ("  python: pyarrow.parquet.read_table(path) (the parquet extra), or DuckDB's read_parquet",),
}


def _pointed_at(manifests: ManifestSet, endpoint: str) -> ManifestSet:
    """The manifests with every S3Exporter's endpoint replaced by the demo's own server."""
    resources = [
        dataclasses.replace(r, spec=r.spec.model_copy(update={"endpoint": endpoint})) if r.kind == "S3Exporter" else r
        for r in manifests.resources
    ]
    return dataclasses.replace(manifests, resources=resources)


def _with_missing_secrets(manifests: ManifestSet) -> ManifestSet:
    """The manifests with the demo server's keys as every Secret an S3Exporter names but they lack (that of
    examples/exporter-analytics.yaml is in examples/exporter.yaml): the server is the demo's own."""
    secrets = dict(manifests.secrets)
    for exporter in manifests.of_kind("S3Exporter"):
        ref = exporter.spec.secret_ref
        if ref is not None:
            secrets.setdefault((exporter.namespace, ref.name), {"access_key_id": DEFAULT_ACCESS_KEY_ID,
                                                                 "access_secret": DEFAULT_SECRET_ACCESS_KEY})
    return dataclasses.replace(manifests, secrets=secrets)


def run_demo(*, records: int, manifest: Path, workdir: Path, port: int | None = None) -> int:
    """Seed, export, verify and report; ``port``: the S3 server's (None: a free one)."""
    manifests = _with_missing_secrets(load_manifests([manifest]))
    exporters = manifests.of_kind("S3Exporter")
    if not exporters:
        print(f"error: -f {manifest} holds no S3Exporter", file=sys.stderr)
        return 2
    exporter = exporters[0]
    credentials = CredentialResolver(manifests).resolve(exporter.namespace, exporter.spec.secret_ref)
    if workdir.exists():
        shutil.rmtree(workdir)  # every demo starts from an empty store and bucket
    workdir.mkdir(parents=True)
    s3 = LocalS3(workdir / "s3", port=port, die_with_parent=True,
                 access_key_id=credentials.access_key_id if credentials else "capture-export",
                 secret_access_key=credentials.secret_access_key if credentials else "capture-export-secret")
    try:
        with _StopSignals().installed() as stop:
            print(f"starting a local S3 server (SeaweedFS) at {s3.endpoint} …", flush=True)
            with s3:
                stop.check()
                return _seed_export_report(s3, _pointed_at(manifests, s3.endpoint), records, manifest, workdir,
                                           stop)
    except (PortInUse, NotOurServer) as exc:
        hint = "run the demo without --port to use a free port, or stop that process first" if port else (
            "run the demo again")
        print(f"error: {exc}; {hint}", file=sys.stderr)
        return 1
    except _Interrupted as exc:
        print(f"\ninterrupted by {exc}: the demo's S3 server is stopped; its data stays in {workdir}", flush=True)
        return 128 + exc.signum


def _not_ready(status: S3ExporterStatus) -> str | None:
    """The reason an exporter is not Ready (None when it is)."""
    ready = next((c for c in status.conditions if c.type == ConditionType.READY), None)
    return ready.reason if ready is not None and ready.status != Truth.TRUE else None


def _seed_export_report(s3: LocalS3, manifests: ManifestSet, records: int, manifest: Path, workdir: Path,
                        stop: _StopSignals) -> int:
    exporter = manifests.of_kind("S3Exporter")[0]
    spec = exporter.spec
    for resource in manifests.of_kind("S3Exporter"):
        s3.create_bucket(resource.spec.bucket)
    store_path = workdir / "store.sqlite"
    store = SQLiteStore(store_path)
    try:
        started = time.monotonic()

        def progress(done: int) -> None:
            stop.check()
            print(f"\r  seeding the capture store: {done:,}/{records:,}", end="", flush=True)

        seed_store(store, records, progress=progress)
        stop.check()
        print(f"\nseeded {records:,} synthetic LLM usage records into {store_path} "
              f"in {time.monotonic() - started:.1f}s", flush=True)

        print(f"exporting with {manifest} (into the demo's server at {s3.endpoint}) …", flush=True)
        runner = StandaloneRunner(manifests, state_path=workdir / "state.json", default_store=str(store_path))
        with contextlib.ExitStack() as restore:
            for signum in STOP_SIGNALS:
                restore.callback(signal.signal, signum, signal.getsignal(signum))
            runner.install_signal_handlers()  # SIGINT/SIGTERM/SIGHUP: stop after the batch in flight commits
            if stop.signum is not None:  # a signal came before the runner's handlers
                runner.request_stop(stop.signum)
            try:
                ok = runner.run_once()
            finally:
                runner.close()
        if runner.stop_event.is_set():
            raise _Interrupted(runner.stopped_by or signal.SIGINT)
        outcome = runner.outcomes.get(exporter.ref)
        if not ok or outcome is None or outcome.result is None:
            failed = "; ".join(f"{ref}: {reason}" for ref, done in runner.outcomes.items()
                               if (reason := _not_ready(done.status)) is not None)
            print(f"error: export failed ({failed or exporter.ref}); the lines above say why", file=sys.stderr)
            return 1
        run = outcome.result
        access = CredentialResolver(manifests).access(exporter.namespace, exporter.name, spec)
        objects = S3ObjectStore(S3Location(spec.bucket, spec.region, s3.endpoint), access)
        report = verify_export(store, objects, spec.prefix, **verify_options(spec, exporter.namespace, exporter.name))
        stop.check()
    finally:
        store.close()
    ratio = run.raw_bytes / run.bytes if run.bytes else 0.0
    rate = run.rows / run.duration_seconds if run.duration_seconds else 0.0
    prefix = f"{spec.prefix}/" if spec.prefix else ""
    print()
    print("what was written")
    print(f"  objects:      {run.objects:,} under s3://{spec.bucket}/{prefix}")
    left_out = f" ({run.filtered:,} left out by the exporter's filter)" if run.filtered else ""
    print(f"  rows:         {run.rows:,}{left_out}")
    print(f"  bytes:        {run.bytes:,} written ({run.raw_bytes:,} of CBOR read from the store, ratio {ratio:.1f}x)")
    print(f"  throughput:   {rate:,.0f} records/s end to end ({run.duration_seconds:.2f}s)")
    print(f"  verify:       {len(report.missing)} missing, {len(report.duplicated)} duplicated"
          + ("" if report.ok else " (FAILED)"))
    print()
    data = objects.get(run.last_key) if run.last_key else None
    if data and run.last_key:
        sample = workdir / Path(run.last_key).name
        sample.write_bytes(data)
        print("read it back (a copy of the last object is kept, since the demo's S3 server stops now):")
        print(f"  .venv/bin/capture-export cat {sample} | head -1")
    for line in _READ_IN_PYTHON[spec.format]:
        print(line)
    print(f"  the store stays in {store_path}, the S3 data in {workdir / 's3'}")
    print("next: keep a local S3 server running with `.venv/bin/capture-export s3 serve` and run the exporter "
          "yourself (README, \"Without a cluster\")")
    return 0 if report.ok else 1
