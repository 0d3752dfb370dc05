"""The bucket's commands: ``cat`` (decode exported objects) and ``verify`` (audit a store against a bucket)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import none_in_files, usage_error
from .options import STORE_KINDS, Subcommands, command, manifest_files, s3_location_options, store_option

if TYPE_CHECKING:
    from ..api.manifests import ManifestSet, Resource
    from ..objectstore import S3ObjectStore

__all__ = ["add_cat", "add_verify", "cmd_cat", "cmd_verify"]


def add_cat(sub: Subcommands) -> None:
    cat = command(
        sub, "cat", "decode exported objects to JSON Lines",
        "Decode exported objects to JSON Lines, one record per line (timestamps RFC 3339, bytes as "
        '{"$base64": …}): a local file, one object s3://BUCKET/KEY, or every data object under '
        "s3://BUCKET/PREFIX/, in any format (.cbor.zstd, .jsonl[.gz|.zst], .parquet); or, with -f, every object "
        "an S3Exporter wrote (its bucket, endpoint, prefix, pathTemplate and Secret). Without -f, S3 credentials "
        "come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY or the default AWS chain. An object that cannot "
        "be read or decoded (an empty one too: no exporter writes one) is named on stderr and skipped; the exit "
        "code is then 1.",
        ["capture-export cat .capture-export/demo/00000000000000095001-00000000000000100000.cbor.zstd | head -1",
         "capture-export cat -f examples/exporter.yaml | head",
         "capture-export cat s3://capture-exports/llm-usage/ --endpoint http://127.0.0.1:8333 | head"])
    cat.add_argument("source", nargs="?", help="a file, s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
    manifest_files(cat, "manifests naming the exporter (and its Secret), instead of a source")
    cat.add_argument("--exporter", metavar="NAME", help="with -f: this S3Exporter, when the manifests hold several")
    s3_location_options(cat)
    cat.set_defaults(handler=cmd_cat)


def add_verify(sub: Subcommands) -> None:
    verify = command(
        sub, "verify", "audit a store against a bucket: missing and duplicated records",
        "Check that every record of the capture store up to the exporter's committed checkpoint (records the "
        "exporter has not exported yet are not missing; --up-to sets another limit, and the report names the "
        "one it used) is in exactly one exported object, and report missing and duplicated records, records "
        "whose content (timestamp, capture_id) differs from the store's (a recreated store), and objects that "
        "cannot be read or decoded (each named, then counted). Other exporters' objects (nested prefixes, "
        "their own template folders) are left out. With -f, each S3Exporter's bucket, endpoint, prefix, key "
        "layout, filter, Secret and store (spec.store; without one, --store, as `run` does) are used; with "
        "--bucket, credentials come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY. Only the compared fields "
        "of each record are decoded, and the audit holds one object at a time and 8 bytes per exported record. "
        "Progress (objects, records and records per second) is shown on stderr when it takes more than a "
        "second. Exit code 1 on any missing, duplicated, different or unreadable one.",
        ["capture-export verify -f examples/exporter.yaml",
         "capture-export verify --bucket capture-exports --prefix llm-usage --endpoint http://127.0.0.1:8333"])
    manifest_files(verify, "manifests naming the exporters (and their Secrets)")
    verify.add_argument("--exporter", metavar="NAME", help="only this S3Exporter of the manifests")
    store_option(verify, f"capture store: {STORE_KINDS}; with -f, the store of an exporter without spec.store")
    verify.add_argument("--bucket", help="bucket to audit, without -f")
    verify.add_argument("--prefix", default="", help="key prefix, without -f (default: the whole bucket)")
    s3_location_options(verify, ", without -f")
    verify.add_argument("--up-to", type=int, default=None, metavar="ID",
                        help="check record ids up to this one (default: the exporter's committed checkpoint; "
                        "with --bucket, the checkpoint when it is the only one under the prefix, else all the "
                        "store holds)")
    verify.add_argument("-o", "--output", choices=["text", "json"], default="text",
                        help="json: one JSON object with each exporter's counts and sample ids")
    verify.set_defaults(handler=cmd_verify)


def _object_store_for(args: argparse.Namespace, bucket: str) -> S3ObjectStore:
    from ..objectstore import S3Location, S3ObjectStore
    from ..objectstore.credentials import credentials_from_environment

    return S3ObjectStore(S3Location(bucket, args.region, args.endpoint), credentials_from_environment())


def _exporter_objects(resource: Resource, manifests: ManifestSet) -> Iterator[tuple[str, Callable[[], bytes | None]]]:
    """``(key, read)`` for each data object of one S3Exporter of the manifests, in export order: its bucket,
    endpoint and Secret, the folders its prefix and pathTemplate give, and no other exporter's objects."""
    from ..audit import is_data_object, verify_options
    from ..objectstore import CredentialResolver, S3Location, S3ObjectStore

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
    from ..audit import is_data_object
    from ..export.formats import data_extension

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
    from ..api.manifests import load_manifests
    from ..audit import decode_object, to_json_line
    from ..export.formats import data_extension

    if args.file:
        if args.source:
            return usage_error("give a source or -f, not both")
        manifests = load_manifests(args.file)
        exporters = [r for r in manifests.of_kind("S3Exporter") if args.exporter in (None, r.name)]
        if not exporters:
            return none_in_files(args, "S3Exporter")
        if len(exporters) > 1:
            return usage_error(f"the files hold {len(exporters)} S3Exporters ({', '.join(r.ref for r in exporters)}): "
                               "choose one with --exporter NAME")
        sources = _exporter_objects(exporters[0], manifests)
    elif args.source:
        sources = _cat_sources(args)
    else:
        return usage_error("give a source (a file, s3://BUCKET/KEY or s3://BUCKET/PREFIX/) or -f exporter.yaml")
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
    from ..api.manifests import load_manifests
    from ..audit import AuditLimit, committed_limit, lone_checkpoint, verify_export, verify_options
    from ..export import ExporterId
    from ..export.layout import ObjectLayout
    from ..objectstore import CredentialResolver, S3Location, S3ObjectStore
    from ..progress import ProgressLine
    from ..store import CaptureStore, StoreOpener, check_store_url, open_store_url

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
            return none_in_files(args, "S3Exporter")
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
            return usage_error("give -f exporter.yaml or --bucket")

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
            progress = ProgressLine(f"verifying {name}", unit="objects", rate_unit="records")

            def show(done: int, total: int, records: int, progress: ProgressLine = progress) -> None:
                progress.total = total
                progress.update(done, rated=records)

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
