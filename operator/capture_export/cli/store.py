"""The capture store's own commands: ``seed`` (synthetic records), ``store init``, ``restore`` (what a
RetentionPolicy soft-deleted) and ``quarantine`` (records the export moved aside)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import Subcommands, command, command_group, manifest_files, store_option

__all__ = [
    "add_quarantine",
    "add_restore",
    "add_seed",
    "add_store",
    "cmd_quarantine",
    "cmd_restore",
    "cmd_seed",
    "cmd_store",
]


def add_seed(sub: Subcommands) -> None:
    seed = command(
        sub, "seed", "fill a store with realistic synthetic LLM usage records",
        "Append synthetic LLM usage records to a capture store, to try exports out: realistic identities, "
        "models, API types (OpenAI, Anthropic, Gemini), token counts, costs, timings and request and response "
        "bodies over the last 30 days. The store is created when it does not exist.",
        ["capture-export seed --count 100000",
         "capture-export seed --store postgresql://capture@127.0.0.1:5432/capture --count 10000"])
    store_option(seed)
    seed.add_argument("--count", type=int, default=10_000, help="records to append")
    seed.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same records")
    seed.set_defaults(handler=cmd_seed)


def add_store(sub: Subcommands) -> None:
    store_sub = command_group(
        sub, "store", "manage a capture store (`store init` creates an empty one)",
        "Manage a capture store (SQLite or PostgreSQL). `store init` creates an empty one: run, verify, restore "
        "and quarantine never create the store they name, so that a typo cannot look like an empty store. "
        "`capture-export store COMMAND --help` describes each, with its options and defaults.",
        ["capture-export store init                  # the default store, .capture-export/store.sqlite",
         "capture-export store init --store postgresql://capture@127.0.0.1:5432/capture"])
    init = command(
        store_sub, "init", "create an empty capture store; an existing store is only checked",
        "Create an empty capture store with its identity (a UUID in its capture_export_meta table, recorded in "
        "every checkpoint). Exporters, policies, verify and restore never create the store they name: a store "
        "that does not exist is StoreNotFound, so a typo in a path cannot look like an empty store. An existing "
        "store is only checked, and its identity printed.",
        ["capture-export store init --store .capture-export/store.sqlite",
         "capture-export store init --store postgresql://capture@127.0.0.1:5432/capture"])
    store_option(init)
    init.set_defaults(handler=cmd_store)


def add_restore(sub: Subcommands) -> None:
    restore = command(
        sub, "restore", "bring back records a RetentionPolicy soft-deleted",
        "Bring back records that a RetentionPolicy with softDelete has hidden and not yet removed (within "
        "their grace period). A policy that still selects them hides them again on its next run: raise its "
        "maxAge, set dryRun, or delete it first. Progress is shown when it takes more than a second.",
        ["capture-export restore --store .capture-export/store.sqlite --dry-run",
         "capture-export restore -f examples/exporter.yaml -f examples/retentionpolicy.yaml --since 2h"])
    store_option(restore, "capture store; with -f, the default store for a policy without spec.store")
    manifest_files(restore, "manifests: restore in the RetentionPolicy's store")
    restore.add_argument("--policy", metavar="NAME", help="the RetentionPolicy, when the manifests hold several")
    restore.add_argument("--since", help="only records soft-deleted in the last DURATION (2h, 7d) or since an "
                         "ISO timestamp (default: all)")
    restore.add_argument("--batch-size", type=int, default=5000, help="records restored per transaction")
    restore.add_argument("--dry-run", action="store_true", help="only count what would be restored")
    restore.set_defaults(handler=cmd_restore)


def add_quarantine(sub: Subcommands) -> None:
    quarantine = command(
        sub, "quarantine", "records moved aside by onCorruptRecord: Quarantine: list, show, release",
        "Records an S3Exporter with onCorruptRecord: Quarantine moved aside because they failed the check "
        "of foreign rows (not one well-formed record) or, written with the store's seal, could not be read at "
        "all (no CBOR reader decodes them). list: every quarantined record with its reason; show: "
        "one record's fields (credentials never shown); release: put one back into the store as a new "
        "record (exported on the next run), as it is when it now passes the check, or replaced by a "
        "corrected record given with --body.",
        ["capture-export quarantine list --store .capture-export/store.sqlite",
         "capture-export quarantine show 1042 --store .capture-export/store.sqlite",
         "capture-export quarantine release 1042 --body fixed.cbor --store .capture-export/store.sqlite"])
    quarantine.add_argument("action", choices=["list", "show", "release"], help="what to do (see above)")
    quarantine.add_argument("id", type=int, nargs="?", help="record id (show, release)")
    store_option(quarantine)
    quarantine.add_argument("--body", metavar="FILE",
                            help="release: the corrected record, a file holding one CBOR map without id")
    quarantine.set_defaults(handler=cmd_quarantine)


def cmd_seed(args: argparse.Namespace) -> int:
    import time

    from ..redact import redact
    from ..seed import seed_store
    from ..store import check_store_url, open_store_url

    store = open_store_url(check_store_url(args.store), create=True)  # seed creates the store it fills
    started = time.monotonic()

    def progress(done: int) -> None:
        print(f"\r  seeded {done:,}/{args.count:,} records", end="", flush=True)

    last = seed_store(store, args.count, seed=args.seed, progress=progress)
    print(f"\nseeded {args.count:,} records into {redact(args.store)} in {time.monotonic() - started:.1f}s "
          f"(last id {last})")
    store.close()
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """``store init``: create an empty capture store (tables, indexes, identity), or check an existing one.
    Exporters and policies never create the store they name: a typo must not become an empty store."""
    from ..store import StoreError, check_store_url, open_store_url

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


def _restore_since(text: str | None) -> int | None:
    """``--since``: a duration back from now (``2h``, ``7d``) or an ISO timestamp; None for all."""
    from datetime import UTC, datetime

    from ..api.retention import parse_duration
    from ..retention.gate import micros

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
    from ..api.manifests import load_manifests
    from ..progress import ProgressLine
    from ..redact import redact
    from ..retention import Purger
    from ..store import StoreError, StoreOpener, check_store_url, open_store_url

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
    from ..store import CorruptRecord, StoreError, open_store_url
    from ..store.quarantine import list_lines, release, show_lines

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
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
