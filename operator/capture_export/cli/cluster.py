"""The Kubernetes side: ``operator`` (kopf in this process) and ``crds`` (generated from the API models)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .ingest import ingest_limit_options, ingest_limits
from .options import (
    Subcommands,
    command,
    configure_export_resources,
    env_list,
    export_resource_options,
    require_directory,
    store_option,
    tenancy_options,
)

if TYPE_CHECKING:  # kopf is heavy: the operator's modules load only for `capture-export operator`
    from ..handlers import OperatorConfig

__all__ = ["add_crds", "add_operator", "cmd_crds", "cmd_operator", "operator_config"]

CRD_DIR = "crds"


def add_crds(sub: Subcommands) -> None:
    crds = command(
        sub, "crds", "write the CRDs generated from the API models",
        "Write the CustomResourceDefinitions of S3Exporter and RetentionPolicy, generated from the API models "
        "(the one source of truth), or check that the files are current.",
        ["capture-export crds                              # writes crds/",
         "capture-export crds --check --dir charts/capture-export/crds"])
    crds.add_argument("--dir", default=CRD_DIR, help="directory of the CRD files")
    crds.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if the files differ from the models, 2 if --dir is no directory")
    crds.set_defaults(handler=cmd_crds)


def add_operator(sub: Subcommands) -> None:
    op = command(
        sub, "operator", "run the Kubernetes operator (kopf) in this process",
        "Run the operator: serve the S3Exporters and RetentionPolicies of the cluster (logged in in-cluster "
        "with the pod's service account, or from $KUBECONFIG). The Helm chart runs this in a pod.",
        ["capture-export operator --all-namespaces --store /data/store.sqlite",
         "capture-export operator -n team-a -n team-b --store postgresql://capture@db:5432/capture"])
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", metavar="NS",
                       help="serve only this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (the default)")
    store_option(op, "default capture store for specs that name none", local_default=False)
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
    ingest_limit_options(op, "ingest-")
    export_resource_options(op)
    tenancy_options(op, operator=True)
    op.add_argument("-v", "--verbose", action="store_true", help="log more")
    op.add_argument("--debug", action="store_true", help="log everything (client libraries stay below DEBUG; "
                    "secrets redacted)")
    op.add_argument("--log-format", choices=["plain", "full", "json"], default="full", help="log line format")
    op.set_defaults(handler=cmd_operator)


def cmd_crds(args: argparse.Namespace) -> int:
    from ..api import KINDS, render_crd_yaml, write_crds

    directory = Path(args.dir)
    if args.check:
        # What writes them where --check looked: `capture-export crds` alone writes crds/.
        fix = f"`capture-export crds{'' if args.dir == CRD_DIR else f' --dir {args.dir}'}`"
        if not directory.is_dir():  # not "out of date": there is nothing to compare with
            if directory.exists():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), args.dir)  # --dir x: is not …
            print(f"error: --dir {args.dir}: no such directory; write the CRDs with {fix}", file=sys.stderr)
            return 2
        missing = [info.plural for info in KINDS if not (directory / f"{info.plural}.capture.dev.yaml").is_file()]
        stale = [
            info.plural for info in KINDS if info.plural not in missing
            and (directory / f"{info.plural}.capture.dev.yaml").read_text() != render_crd_yaml(info)
        ]
        if missing or stale:
            found = "; ".join(part for part in (f"missing: {', '.join(missing)}" if missing else "",
                                                 f"out of date: {', '.join(stale)}" if stale else "") if part)
            print(f"error: the CRDs in {args.dir} differ from the API models ({found}); write them with {fix}",
                  file=sys.stderr)
            return 1
        return 0
    for path in write_crds(directory, KINDS):
        print(f"wrote {path}")
    return 0


def operator_config(args: argparse.Namespace) -> OperatorConfig:
    """The operator's configuration from `capture-export operator` arguments (checked by cmd_operator)."""
    from ..handlers import OperatorConfig
    from ..store import check_store_url

    # Without --default-store-namespace, the default store serves the operator's own namespace when it is
    # known (the chart sets POD_NAMESPACE), every namespace otherwise.
    own = os.environ.get("POD_NAMESPACE")
    default_namespaces = args.default_store_namespace or (
        env_list("CAPTURE_EXPORT_DEFAULT_STORE_NAMESPACES", ",") or ([own] if own else None))
    config = OperatorConfig(
        store=check_store_url(args.store) if args.store else None,
        namespaces=tuple(args.namespace or ()),
        liveness_port=args.liveness_port or None,
        readiness_port=args.readiness_port or None,
        metrics_port=args.metrics_port or None,
        concurrency=args.concurrency,
        stop_timeout=args.stop_timeout,
        default_store_namespaces=tuple(default_namespaces) if default_namespaces is not None else None,
        sqlite_directories=tuple(args.sqlite_dir or env_list("CAPTURE_EXPORT_SQLITE_DIRS", os.pathsep) or ())
        or None,
    )
    if args.ingest_port:
        config.ingest_port = args.ingest_port
        config.ingest_token_file = args.ingest_token_file
        config.ingest_limits = ingest_limits(args)
    return config


def _import_kubernetes_without_validation() -> None:
    """Import ``kubernetes`` without kubernetes-validate, which its dynamic client imports whenever it is
    installed (the test extra installs it; the image does not). The operator never validates through it, and
    importing it compiles ~40 grammars (rfc3987-syntax, through jsonschema): seconds of CPU, half a minute on
    a busy node, before the operator could even say that it refuses to start."""
    if "kubernetes" in sys.modules or "kubernetes_validate" in sys.modules:
        return
    sys.modules["kubernetes_validate"] = None  # type: ignore[assignment]  # makes its import raise ImportError
    try:
        import kubernetes  # noqa: F401
    finally:
        del sys.modules["kubernetes_validate"]  # whoever imports it later gets it


def cmd_operator(args: argparse.Namespace) -> int:
    import logging

    _import_kubernetes_without_validation()
    import kopf

    from ..handlers import Runtime, run
    from ..redact import install_log_redaction

    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=kopf.LogFormat[args.log_format.upper()])
    configure_export_resources(args)
    install_log_redaction()
    if args.ingest_port:
        if not args.ingest_token_file:
            print("error: --ingest-port needs --ingest-token-file", file=sys.stderr)
            return 2
        if not args.store:
            print("error: --ingest-port needs the default store (--store or CAPTURE_EXPORT_STORE)", file=sys.stderr)
            return 2
        from ..ingest import TokenFile

        try:
            TokenFile(args.ingest_token_file)
        except ValueError as exc:
            print(f"error: --ingest-token-file {exc}", file=sys.stderr)
            return 2
    refusal = _stores_refusal(args)
    if refusal is not None:
        print(f"capture-export operator: not started: {refusal[0]}", file=sys.stderr)
        return refusal[1]
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
        return 1
    if runtime.cycles.busy:
        # Cycles hung past the stop timeout (an upload that never answers): their threads would hold the
        # interpreter's exit until the pod is killed. What they had not committed is exported again.
        logging.getLogger(__name__).warning("exiting with %d cycles still in flight", runtime.cycles.busy)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    return 0


def _stores_refusal(args: argparse.Namespace) -> tuple[str, int] | None:
    """Why the default store (``--store``) can never be opened or a ``--sqlite-dir`` never holds a store,
    and the exit code (None when they might): a URL that names no store, a directory where the SQLite file
    should be, a SQLite file in a directory that does not exist (the operator creates the default store's
    file, never the directories of a typo), a --sqlite-dir that is no directory. Checked before anything
    else, so that the operator refuses to start instead of reporting every exporter's store missing or
    every spec's path refused for ever."""
    from ..path_errors import why_unusable
    from ..store import StoreError, check_store_location
    from ..store.opener import kind_of_url, sqlite_file
    from .errors import error_line

    try:
        if args.store and kind_of_url(check_store_location(args.store)).name == "sqlite":
            folder = str(Path(sqlite_file(args.store)).parent)
            try:
                require_directory(folder)
            except OSError as exc:  # worded here: path_error knows a bare path, not sqlite:///path
                why = why_unusable(exc, directory=True, given=folder)
                return f"--store {args.store}: {why if why.endswith(' is not a directory') else f'{folder}: {why}'}", 2
        for directory in args.sqlite_dir or ():
            require_directory(directory)
    except (StoreError, OSError) as exc:
        line, code = error_line(exc, args) or (f"error: {exc.__class__.__name__}", 1)
        return line.removeprefix("error: "), code
    for directory in () if args.sqlite_dir else env_list("CAPTURE_EXPORT_SQLITE_DIRS", os.pathsep) or ():
        try:
            require_directory(directory)
        except OSError as exc:
            return f"$CAPTURE_EXPORT_SQLITE_DIRS: {directory}: {why_unusable(exc, directory=True, given=directory)}", 2
    return None


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
