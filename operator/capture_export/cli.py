"""The ``capture-export`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .api.manifests import InvalidManifest, load_manifests

if TYPE_CHECKING:  # kopf is heavy: the operator's modules load only for `capture-export operator`
    from .handlers import OperatorConfig

__all__ = ["build_parser", "main", "operator_config"]

DEFAULT_STATE = ".capture-export/state.json"
DEFAULT_STORE = ".capture-export/store.sqlite"


def _default_store() -> str:
    return os.environ.get("CAPTURE_EXPORT_STORE", DEFAULT_STORE)


def cmd_run(args: argparse.Namespace) -> int:
    from .standalone import StandaloneRunner

    manifests = load_manifests(args.file)
    if not manifests.of_kind("S3Exporter") and not manifests.resources:
        print("no S3Exporter or RetentionPolicy found in the given files", file=sys.stderr)
        return 2
    runner = StandaloneRunner(manifests, state_path=Path(args.state), default_store=args.store)
    runner.install_signal_handlers()
    try:
        if args.once:
            return 0 if runner.run_once() else 1
        runner.run_forever()
        return 0
    finally:
        runner.close()


def cmd_seed(args: argparse.Namespace) -> int:
    import time

    from .seed import seed_store
    from .store import open_store_url

    store = open_store_url(args.store)
    started = time.monotonic()

    def progress(done: int) -> None:
        print(f"\r  seeded {done:,}/{args.count:,} records", end="", flush=True)

    last = seed_store(store, args.count, seed=args.seed, progress=progress)
    print(f"\nseeded {args.count:,} records into {args.store} in {time.monotonic() - started:.1f}s "
          f"(last id {last})")
    store.close()
    return 0


def _object_store_for(args: argparse.Namespace, bucket: str):
    from .objectstore import S3Location, S3ObjectStore
    from .objectstore.credentials import credentials_from_environment

    return S3ObjectStore(S3Location(bucket, args.region, args.endpoint), credentials_from_environment())


def cmd_cat(args: argparse.Namespace) -> int:
    from .audit import decode_object, is_data_object, to_json_line
    from .export.formats import data_extension

    source: str = args.source
    if source.startswith("s3://"):
        bucket, _, key = source[5:].partition("/")
        objects = _object_store_for(args, bucket)
        # A key, or a prefix: every data object under it, in any format and any template folder.
        keys = [key] if data_extension(key) else [info.key for info in objects.list(key) if is_data_object(info.key)]
        blobs = ((k, objects.get(k)) for k in keys)
    else:
        blobs = iter([(source, Path(source).read_bytes())])
    out = sys.stdout
    for key, data in blobs:
        if data is None:
            continue
        for record in decode_object(data, key if data_extension(key) else ".cbor.zstd"):
            out.write(to_json_line(record) + "\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .audit import verify_export, verify_options
    from .objectstore import CredentialResolver, S3Location, S3ObjectStore
    from .store import open_store_url

    store = open_store_url(args.store)
    if args.file:
        manifests = load_manifests(args.file)
        exporters = [r for r in manifests.of_kind("S3Exporter") if args.exporter in (None, r.name)]
        if not exporters:
            print("no matching S3Exporter in the given files", file=sys.stderr)
            return 2
        targets = []
        resolver = CredentialResolver(manifests)
        for resource in exporters:
            spec = resource.spec
            credentials = resolver.resolve(resource.namespace, spec.secret_ref)
            location = S3Location(spec.bucket, spec.region, spec.endpoint)
            # The exporter's key layout (pathTemplate) and filter: excluded records are not missing.
            options = verify_options(spec, resource.namespace, resource.name)
            targets.append((resource.ref, S3ObjectStore(location, credentials), spec.prefix, options))
    else:
        if not args.bucket:
            print("give -f exporter.yaml or --bucket", file=sys.stderr)
            return 2
        targets = [(args.bucket, _object_store_for(args, args.bucket), args.prefix, {})]
    ok = True
    for name, objects, prefix, options in targets:
        report = verify_export(store, objects, prefix, up_to=args.up_to, **options)
        print(f"{name}:\n{report.summary()}")
        ok &= report.ok
    return 0 if ok else 1


def _restore_since(text: str | None) -> int | None:
    """``--since``: a duration back from now (``2h``, ``7d``) or an ISO timestamp; None for all."""
    from datetime import UTC, datetime

    from .api.retention import parse_duration
    from .retention.gate import micros

    if text is None:
        return None
    try:
        return micros(datetime.now(UTC) - parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"error: --since {text!r} is neither a duration (2h, 7d) nor an ISO timestamp") from None
    return micros(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def cmd_restore(args: argparse.Namespace) -> int:
    from .retention import Purger
    from .store import StoreError, StoreOpener, open_store_url

    since_us = _restore_since(args.since)
    try:
        if args.file:
            manifests = load_manifests(args.file)
            policies = [r for r in manifests.of_kind("RetentionPolicy") if args.policy in (None, r.name)]
            if len(policies) != 1:
                print(f"give exactly one RetentionPolicy (found {len(policies)}; use --policy NAME)", file=sys.stderr)
                return 2
            opener = StoreOpener(args.store, manifests.get)
            store = opener(policies[0].spec, policies[0].namespace)
            where = f"the store of RetentionPolicy {policies[0].ref}"
        else:
            store = open_store_url(args.store)
            where = args.store
        if not callable(getattr(store, "restore_chunk", None)):
            print(f"error: {store!r} does not support soft deletion", file=sys.stderr)
            return 2
        pending = store.soft_deleted_count()
        if since_us is not None:
            pending -= store.soft_deleted_count(since_us - 1)
        if args.dry_run:
            print(f"{pending:,} soft-deleted records in {where} would be restored")
            return 0
        restored = Purger(store, batch_size=args.batch_size).restore(deleted_since_us=since_us)
        left = store.soft_deleted_count()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"restored {restored:,} soft-deleted records in {where}; {left:,} remain soft-deleted")
    if restored:
        print("note: a RetentionPolicy that still selects them soft-deletes them again on its next run: raise its "
              "maxAge, set dryRun, or delete it first")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from .store import CorruptRecord, StoreError, open_store_url
    from .store.quarantine import list_lines, release, show_lines

    if args.action != "list" and args.id is None:
        print(f"error: quarantine {args.action} needs a record id", file=sys.stderr)
        return 2
    try:
        store = open_store_url(args.store)
        try:
            if not callable(getattr(store, "quarantined", None)):
                print(f"error: {store!r} has no quarantine", file=sys.stderr)
                return 2
            if args.action == "list":
                lines = list_lines(store)
            elif args.action == "show":
                lines = show_lines(store, args.id)
            else:
                body = Path(args.body).read_bytes() if args.body else None
                new_id = release(store, args.id, body)
                lines = [f"released record {args.id} back into the store as record {new_id}"]
        finally:
            store.close()
    except CorruptRecord as exc:
        print(f"error: {exc}: not released; give the corrected record (one CBOR map without id) with "
              "--body FILE", file=sys.stderr)
        return 1
    except (StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _ingest_limits(args: argparse.Namespace):
    from .ingest import IngestLimits

    return IngestLimits(max_body_bytes=args.max_body_bytes, max_decoded_bytes=args.max_decoded_bytes,
                        max_records=args.max_records, max_pending_records=args.max_pending_records,
                        parse_workers=args.parse_workers)


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"error: --listen {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def cmd_ingest(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from .ingest import TokenFile, serve

    host, port = _listen_address(args.listen)
    try:
        tokens = TokenFile(args.token_file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

        def announce(bound: int) -> None:
            print(f"ingest server on http://{host}:{bound} (POST /v1/records, /v1/litellm, /v1/traces), "
                  f"store {_safe_store_label(args.store)}", flush=True)

        await serve(args.store, host, port, tokens, _ingest_limits(args), stop, announce=announce)

    asyncio.run(main())
    return 0


def _safe_store_label(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://", "host=")):
        from .store.postgres import _safe_label

        return f"postgresql {_safe_label(url)}"
    return url


def _add_ingest_limits(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    from .ingest import IngestLimits

    defaults = IngestLimits()
    parser.add_argument(f"--{prefix}max-body-bytes", dest="max_body_bytes", type=int, default=defaults.max_body_bytes,
                        help="largest request body as sent (413 past it)")
    parser.add_argument(f"--{prefix}max-decoded-bytes", dest="max_decoded_bytes", type=int,
                        default=defaults.max_decoded_bytes, help="largest body once decompressed (413 past it)")
    parser.add_argument(f"--{prefix}max-records", dest="max_records", type=int, default=defaults.max_records,
                        help="most records in one request (413 past it)")
    parser.add_argument(f"--{prefix}max-pending-records", dest="max_pending_records", type=int,
                        default=defaults.max_pending_records,
                        help="records waiting for the commit before requests get 503 + Retry-After")
    parser.add_argument(f"--{prefix}parse-workers", dest="parse_workers", type=int, default=defaults.parse_workers,
                        help="processes that decode and encode request bodies (0: in the server's own thread)")


def cmd_crds(args: argparse.Namespace) -> int:
    from .api import KINDS, render_crd_yaml, write_crds

    directory = Path(args.dir)
    if args.check:
        stale = [
            info.plural for info in KINDS
            if not (directory / f"{info.plural}.capture.dev.yaml").exists()
            or (directory / f"{info.plural}.capture.dev.yaml").read_text() != render_crd_yaml(info)
        ]
        if stale:
            print(f"CRDs out of date: {', '.join(stale)}; run `capture-export crds`", file=sys.stderr)
            return 1
        return 0
    for path in write_crds(directory, KINDS):
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(records=args.records, manifest=Path(args.file), workdir=Path(args.workdir))


def operator_config(args: argparse.Namespace) -> OperatorConfig:
    """The operator's configuration from `capture-export operator` arguments (checked by cmd_operator)."""
    from .handlers import OperatorConfig

    config = OperatorConfig(
        store=args.store,
        namespaces=tuple(args.namespace or ()),
        liveness_port=args.liveness_port or None,
        readiness_port=args.readiness_port or None,
        metrics_port=args.metrics_port or None,
        concurrency=args.concurrency,
        stop_timeout=args.stop_timeout,
    )
    if args.ingest_port:
        config.ingest_port = args.ingest_port
        config.ingest_token_file = args.ingest_token_file
        config.ingest_limits = _ingest_limits(args)
    return config


def cmd_operator(args: argparse.Namespace) -> int:
    import logging

    import kopf

    from .handlers import Runtime, run

    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=kopf.LogFormat[args.log_format.upper()])
    if args.ingest_port:
        if not args.ingest_token_file:
            print("error: --ingest-port needs --ingest-token-file", file=sys.stderr)
            return 2
        if not args.store:
            print("error: --ingest-port needs the default store (--store or CAPTURE_EXPORT_STORE)", file=sys.stderr)
            return 2
        from .ingest import TokenFile

        try:
            TokenFile(args.ingest_token_file)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    config = operator_config(args)
    runtime = Runtime(config)
    try:
        run(config, runtime=runtime)
    except Exception as exc:
        # A startup handler that refused to start (missing RBAC): one line saying why, not kopf's traceback.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, kopf.PermanentError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"capture-export operator: not started: {cause}", file=sys.stderr)
        # Threads the runtime made before the refusal would hold the interpreter's exit; nothing is in flight.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)
    if runtime.cycles.busy:
        # Cycles hung past the stop timeout (an upload that never answers): their threads would hold the
        # interpreter's exit until the pod is killed. What they had not committed is exported again.
        logging.getLogger(__name__).warning("exiting with %d cycles still in flight", runtime.cycles.busy)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capture-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run S3Exporter/RetentionPolicy manifests without a cluster")
    run.add_argument("-f", "--file", action="append", required=True, help="manifest file (repeatable)")
    run.add_argument("--once", action="store_true", help="drain every exporter once, then exit")
    run.add_argument("--state", default=DEFAULT_STATE, help=f"local state file (default {DEFAULT_STATE})")
    run.add_argument("--store", default=_default_store(),
                     help="default capture store: SQLite path or postgresql:// DSN (env CAPTURE_EXPORT_STORE)")
    run.set_defaults(handler=cmd_run)

    seed = sub.add_parser("seed", help="fill a store with realistic synthetic LLM usage records")
    seed.add_argument("--store", default=_default_store())
    seed.add_argument("--count", type=int, default=10_000)
    seed.add_argument("--seed", type=int, default=0)
    seed.set_defaults(handler=cmd_seed)

    cat = sub.add_parser("cat", help="decode an export (file or s3://bucket/key-or-prefix) to JSON Lines")
    cat.add_argument("source")
    cat.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"))
    cat.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    cat.set_defaults(handler=cmd_cat)

    verify = sub.add_parser("verify", help="audit a store against a bucket: missing and duplicated records")
    verify.add_argument("-f", "--file", action="append", help="manifest file(s) naming the exporter(s)")
    verify.add_argument("--exporter", help="only this S3Exporter (by name)")
    verify.add_argument("--store", default=_default_store())
    verify.add_argument("--bucket")
    verify.add_argument("--prefix", default="")
    verify.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"))
    verify.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    verify.add_argument("--up-to", type=int, default=None, help="check ids up to this (default: all)")
    verify.set_defaults(handler=cmd_verify)

    restore = sub.add_parser("restore", help="bring back records a RetentionPolicy soft-deleted (softDelete), "
                             "within their grace period")
    restore.add_argument("--store", default=_default_store(), help="capture store (default store with -f)")
    restore.add_argument("-f", "--file", action="append", help="manifest file(s): restore in the policy's store")
    restore.add_argument("--policy", help="the RetentionPolicy (by name) when the files hold several")
    restore.add_argument("--since", help="only records soft-deleted in the last DURATION (2h, 7d) or since an "
                         "ISO timestamp (default: all)")
    restore.add_argument("--batch-size", type=int, default=5000, help="records restored per transaction")
    restore.add_argument("--dry-run", action="store_true", help="only count what would be restored")
    restore.set_defaults(handler=cmd_restore)

    quarantine = sub.add_parser("quarantine", help="records moved aside by onCorruptRecord: Quarantine: list "
                                "them, show one (credentials never shown), release one back into the export")
    quarantine.add_argument("action", choices=["list", "show", "release"])
    quarantine.add_argument("id", type=int, nargs="?", help="record id (show, release)")
    quarantine.add_argument("--store", default=_default_store(), help="capture store: SQLite path or DSN")
    quarantine.add_argument("--body", help="release: the corrected record, a file holding one CBOR map")
    quarantine.set_defaults(handler=cmd_quarantine)
    ingest = sub.add_parser(
        "ingest", help="run the ingest server: gateways POST records, committed before the answer",
        description="Run the ingest server. Gateways POST native records (/v1/records), LiteLLM generic_api "
        "payloads (/v1/litellm) and OpenTelemetry GenAI spans (/v1/traces); each request is committed to the "
        "store before it is answered, and a record whose capture_id is stored already is not stored again. "
        "The ingest server writes the store: it creates the store (and its schema) when it does not exist.")
    ingest.add_argument("--store", default=_default_store(),
                        help="capture store to write (created if missing): SQLite path or postgresql:// DSN "
                        "(env CAPTURE_EXPORT_STORE)")
    ingest.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT to listen on (default 127.0.0.1:8090)")
    ingest.add_argument("--token-file", required=True,
                        help="file of accepted bearer tokens, one per line; re-read when it changes")
    _add_ingest_limits(ingest)
    ingest.set_defaults(handler=cmd_ingest)

    crds = sub.add_parser("crds", help="write the CRDs generated from the API models")
    crds.add_argument("--dir", default="crds")
    crds.add_argument("--check", action="store_true", help="fail if the files differ from the models")
    crds.set_defaults(handler=cmd_crds)

    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf) in this process")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", metavar="NS",
                       help="serve only this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (the default)")
    op.add_argument("--store", default=os.environ.get("CAPTURE_EXPORT_STORE") or None,
                    help="default capture store for specs that name none (env CAPTURE_EXPORT_STORE)")
    op.add_argument("--liveness-port", type=int, default=8080, help="liveness endpoint /healthz (0: off)")
    op.add_argument("--readiness-port", type=int, default=8081,
                    help="readiness endpoint /readyz: started and the Kubernetes API answers (0: off)")
    op.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics (0: off)")
    op.add_argument("--concurrency", type=int, default=8, help="export cycles running at once")
    op.add_argument("--stop-timeout", type=float, default=50.0, metavar="SECONDS",
                    help="on SIGTERM, how long the batches in flight get to commit (keep it under the pod's "
                    "terminationGracePeriodSeconds; the chart passes that less 10)")
    op.add_argument("--ingest-port", type=int, default=0,
                    help="also run the ingest server on this port, writing to the default store (0: off)")
    op.add_argument("--ingest-token-file", default=os.environ.get("CAPTURE_EXPORT_INGEST_TOKEN_FILE"),
                    help="file of bearer tokens the ingest server accepts, one per line "
                    "(env CAPTURE_EXPORT_INGEST_TOKEN_FILE)")
    _add_ingest_limits(op, "ingest-")
    op.add_argument("-v", "--verbose", action="store_true")
    op.add_argument("--debug", action="store_true")
    op.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    op.set_defaults(handler=cmd_operator)

    demo = sub.add_parser("demo", help="the embedded default: local S3 + SQLite, seed, export, report")
    demo.add_argument("--records", type=int, default=100_000)
    demo.add_argument("-f", "--file", default="examples/exporter.yaml")
    demo.add_argument("--workdir", default=".capture-export/demo")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except InvalidManifest as exc:
        print(f"error: invalid manifest: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`capture-export cat … | head`): not an error. Keep Python from
        # complaining again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
