"""``run`` and ``status``: the manifests without a cluster, and the statuses they leave in the state file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..collector import LessCollection
from .errors import none_in_files
from .options import (
    DEFAULT_STATE,
    STORE_KINDS,
    Subcommands,
    command,
    configure_export_resources,
    export_resource_options,
    manifest_files,
    require_directory,
    store_option,
    tenancy_options,
)

if TYPE_CHECKING:
    from ..api.manifests import Resource

__all__ = ["add_run", "add_status", "cmd_run", "cmd_status"]


def add_run(sub: Subcommands) -> None:
    run = command(
        sub, "run", "run S3Exporter/RetentionPolicy manifests without a cluster",
        "Run the S3Exporters and RetentionPolicies of the manifests without a cluster: the very YAML you would "
        "`kubectl apply`, Secrets in the same files supplying credentials. Each exporter runs every `every` "
        "seconds and drains a backlog at once; policies run after the exporters. A long export or purge prints "
        "its progress every second (--progress-every). Status (cursor, conditions, last run, history) is kept "
        "in the state file, rewritten after each committed batch: see it with `capture-export status`. Ctrl-C, "
        "SIGTERM or SIGHUP stop after the batch in flight commits. Exit code with --once: 0 when every run "
        "succeeded, 1 otherwise.",
        ["capture-export run -f examples/exporter.yaml                     # until Ctrl-C",
         "capture-export run --once -f examples/exporter.yaml -f examples/retentionpolicy.yaml",
         "capture-export run --once -f examples/                           # every manifest of a directory",
         "cat examples/exporter.yaml | capture-export run --once -f -",
         "capture-export run --once -f examples/exporter.yaml -o json | jq .status.lastRun"])
    manifest_files(run, "manifests to run", required=True)
    run.add_argument("--once", action="store_true", help="drain every exporter once, run every policy once, exit")
    run.add_argument("--state", default=DEFAULT_STATE, help="state file: statuses of every resource")
    run.add_argument("--progress-every", type=_positive_seconds, default=1.0, metavar="SECONDS",
                     help="least time between two progress lines of a long export or purge (default: 1)")
    store_option(run, f"default capture store, for specs without spec.store: {STORE_KINDS}")
    run.add_argument("-o", "--output", choices=["text", "json"], default="text",
                     help="json: after each cycle, the resource with its status as one JSON line on stdout "
                     "(what `kubectl get -o json` shows); messages go to stderr")
    export_resource_options(run)
    run.add_argument("--debug", action="store_true", help="log at DEBUG to stderr (secrets redacted)")
    tenancy_options(run, operator=False)
    run.set_defaults(handler=cmd_run)


def add_status(sub: Subcommands) -> None:
    status = command(
        sub, "status", "show each exporter's and policy's status, as `kubectl get` would",
        "Print the status of every S3Exporter and RetentionPolicy in the state file of `capture-export run`, "
        "with the columns `kubectl get s3exporters,retentionpolicies` shows in a cluster. With -f, only the "
        "resources of those manifests, and their spec columns (bucket, max age) too.",
        ["capture-export status",
         "capture-export status -o wide                  # also the reasons; with -f, requireExport",
         "capture-export status -f examples/exporter.yaml",
         "capture-export status -o json | jq '.items[].status.conditions'"])
    manifest_files(status, "only these resources, with their spec")
    status.add_argument("--state", default=DEFAULT_STATE, help="state file written by `capture-export run`")
    status.add_argument("-o", "--output", choices=["table", "wide", "json"], default="table",
                        help="table, wide (more columns) or json (a kubectl List of the objects with their status)")
    status.set_defaults(handler=cmd_status)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return seconds


def _configure_logging(debug: bool) -> None:
    """``--debug``: every log record to stderr, client libraries kept at INFO (their DEBUG output holds
    request headers), every record redacted. Without it, the client libraries' warnings come without their
    tracebacks (the run reports each failure itself)."""
    import logging

    from ..redact import drop_client_tracebacks, install_log_redaction, quiet_client_loggers

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_client_loggers()
    if not debug:
        drop_client_tracebacks()
    install_log_redaction()


def cmd_run(args: argparse.Namespace) -> int:
    collection = LessCollection()
    if args.once:  # no collection until the export starts (collector.py says why)
        collection.hold_off()
    try:
        return _run(args, collection)
    finally:
        collection.end()


def _run(args: argparse.Namespace, collection: LessCollection) -> int:
    from ..api.manifests import load_manifests
    from ..standalone import StandaloneRunner
    from ..store import check_store_url

    configure_export_resources(args)
    _configure_logging(args.debug)
    for directory in args.sqlite_dir or ():  # one that is no directory would refuse every spec's path
        require_directory(directory)
    manifests = load_manifests(args.file)
    if not manifests.of_kind("S3Exporter") and not manifests.resources:
        return none_in_files(args, "S3Exporter or RetentionPolicy")
    json_output = args.output == "json"
    runner = StandaloneRunner(manifests, state_path=Path(args.state), default_store=check_store_url(args.store),
                              default_namespaces=args.default_store_namespace, sqlite_directories=args.sqlite_dir,
                              # With --output json, stdout holds only the JSON lines; the rest goes to stderr.
                              out=sys.stderr if json_output else sys.stdout,
                              on_cycle=_print_json_object if json_output else None,
                              progress_seconds=args.progress_every, collection=collection)
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

    from ..status.table import resource_object

    spec = resource.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    obj = resource_object(resource.kind, resource.namespace, resource.name, status, spec)
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from ..api.manifests import load_manifests
    from ..status.table import render_tables, state_objects

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
