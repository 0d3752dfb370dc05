"""The bucket's commands: ``cat`` (decode exported objects) and ``verify`` (audit a store against a bucket)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ..api.manifests import load_manifests
from .options import Subcommands, command, manifest_files, s3_location_options, store_option

__all__ = ["add_cat", "add_verify", "cmd_cat", "cmd_verify"]


def add_cat(sub: Subcommands) -> None:
    cat = command(
        sub, "cat", "decode exported objects to JSON Lines",
        "Decode exported objects to JSON Lines, one record per line (timestamps RFC 3339, bytes as "
        '{"$base64": …}): a local file, one object s3://BUCKET/KEY, or every data object under '
        "s3://BUCKET/PREFIX/, in any format (.cbor.zstd, .jsonl[.gz|.zst], .parquet). S3 credentials come from "
        "$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY or the default AWS chain. An object that cannot be read or "
        "decoded is named on stderr and skipped; the exit code is then 1.",
        ["capture-export cat .capture-export/demo/00000000000000095001-00000000000000100000.cbor.zstd | head -1",
         "capture-export cat s3://capture-exports/llm-usage/ --endpoint http://127.0.0.1:8333 | head"])
    cat.add_argument("source", help="a file, s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
    s3_location_options(cat)
    cat.set_defaults(handler=cmd_cat)


def add_verify(sub: Subcommands) -> None:
    verify = command(
        sub, "verify", "audit a store against a bucket: missing and duplicated records",
        "Check that every record of the capture store (up to --up-to) is in exactly one exported object, and "
        "report missing and duplicated records, records whose content (timestamp, capture_id) differs from the "
        "store's (a recreated store), and objects that cannot be read or decoded (each named, then counted). "
        "Other exporters' objects (nested prefixes, their own template folders) are left out. With -f, each "
        "S3Exporter's bucket, endpoint, prefix, key layout, filter and Secret are used; with --bucket, "
        "credentials come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY. Exit code 1 on any missing, "
        "duplicated, different or unreadable one.",
        ["capture-export verify -f examples/exporter.yaml",
         "capture-export verify --bucket capture-exports --prefix llm-usage --endpoint http://127.0.0.1:8333"])
    manifest_files(verify, "manifests naming the exporters (and their Secrets)")
    verify.add_argument("--exporter", metavar="NAME", help="only this S3Exporter of the manifests")
    store_option(verify)
    verify.add_argument("--bucket", help="bucket to audit, without -f")
    verify.add_argument("--prefix", default="", help="key prefix, without -f (default: the whole bucket)")
    s3_location_options(verify, ", without -f")
    verify.add_argument("--up-to", type=int, default=None, metavar="ID",
                        help="check record ids up to this one (default: all the store holds)")
    verify.set_defaults(handler=cmd_verify)


def _object_store_for(args: argparse.Namespace, bucket: str):
    from ..objectstore import S3Location, S3ObjectStore
    from ..objectstore.credentials import credentials_from_environment

    return S3ObjectStore(S3Location(bucket, args.region, args.endpoint), credentials_from_environment())


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
        yield name, lambda name=name: objects.get(name)


def cmd_cat(args: argparse.Namespace) -> int:
    """Decode objects to JSON Lines. An object that cannot be read or decoded is named on stderr and
    skipped; the others are still printed; the exit code is 1 when any could not be read."""
    from ..audit import decode_object, to_json_line
    from ..export.formats import data_extension

    out = sys.stdout
    seen = unreadable = 0
    for key, read in _cat_sources(args):
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
    from ..audit import verify_export, verify_options
    from ..objectstore import CredentialResolver, S3Location, S3ObjectStore
    from ..store import check_store_url, open_store_url

    # The manifests first (a local mistake is named before anything is opened), then the store, which
    # verify never creates (StoreNotFound: main's _error_line says it in one line).
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
            access = resolver.access(resource.namespace, resource.name, spec)
            location = S3Location(spec.bucket, spec.region, spec.endpoint)
            # The exporter's key layout (pathTemplate) and filter: excluded records are not missing.
            options = verify_options(spec, resource.namespace, resource.name)
            targets.append((resource.ref, S3ObjectStore(location, access), spec.prefix, options))
    else:
        if not args.bucket:
            print("give -f exporter.yaml or --bucket", file=sys.stderr)
            return 2
        targets = [(args.bucket, _object_store_for(args, args.bucket), args.prefix, {})]
    store = open_store_url(check_store_url(args.store))
    ok = True
    try:
        for name, objects, prefix, options in targets:
            report = verify_export(store, objects, prefix, up_to=args.up_to, **options)
            print(f"{name}:\n{report.summary()}")
            ok &= report.ok
    finally:
        store.close()
    return 0 if ok else 1
