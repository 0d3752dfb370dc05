"""The option blocks several commands share, defined once: the capture store, the S3 location, -f
manifests, the export resources and the tenancy of the default store; and the help layout."""

from __future__ import annotations

import argparse
import errno
import os
import stat
from collections.abc import Sequence
from typing import TypeAlias

__all__ = [
    "DEFAULT_BUCKET",
    "DEFAULT_S3_DIR",
    "DEFAULT_STATE",
    "DEFAULT_STORE",
    "STORE_KINDS",
    "HelpFormatter",
    "Subcommands",
    "command",
    "command_group",
    "configure_export_resources",
    "default_store",
    "env_list",
    "export_resource_options",
    "manifest_files",
    "require_directory",
    "s3_location_options",
    "store_option",
    "tenancy_options",
]

DEFAULT_STATE = ".capture-export/state.json"
DEFAULT_STORE = ".capture-export/store.sqlite"
DEFAULT_S3_DIR = ".capture-export/s3"
DEFAULT_BUCKET = "capture-exports"  # the bucket of examples/exporter.yaml
STORE_KINDS = "a SQLite path or a postgresql:// DSN"

# argparse's subparsers action is generic to the type checker only, hence the quoted alias.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's default after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "(default" not in text and not isinstance(action.default, list)):
            text += " (default: %(default)s)"
        return text


def command(sub: Subcommands, name: str, summary: str, description: str,
            examples: Sequence[str]) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in `capture-export --help`), a description and examples."""
    return sub.add_parser(name, help=summary, description=description, formatter_class=HelpFormatter,
                          epilog="examples:\n" + "\n".join(f"  {line}" for line in examples))


def command_group(sub: Subcommands, name: str, summary: str, description: str,
                  examples: Sequence[str]) -> Subcommands:
    """A group of subcommands (``store init``, ``s3 serve``), its help as a command's: summary, description
    and examples. Returns where its own subcommands are added."""
    group = command(sub, name, summary, description, examples)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def default_store() -> str:
    return os.environ.get("CAPTURE_EXPORT_STORE", DEFAULT_STORE)


def env_list(name: str, separator: str) -> list[str] | None:
    """A list from an environment variable (None when unset or empty)."""
    items = [item.strip() for item in os.environ.get(name, "").split(separator) if item.strip()]
    return items or None


def store_option(parser: argparse.ArgumentParser, what: str = f"capture store: {STORE_KINDS}", *,
                 local_default: bool = True) -> None:
    """``--store``, from $CAPTURE_EXPORT_STORE; without it, the local SQLite store (``local_default``) or
    none."""
    default = default_store() if local_default else os.environ.get("CAPTURE_EXPORT_STORE") or None
    parser.add_argument("--store", default=default, metavar="STORE", help=f"{what} ($CAPTURE_EXPORT_STORE)")


def s3_location_options(parser: argparse.ArgumentParser, when: str = "") -> None:
    """``--endpoint`` and ``--region`` of a bucket named on the command line (``when``: e.g. ", without -f")."""
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                        help=f"S3 endpoint URL{when}; none for Amazon S3 ($AWS_ENDPOINT_URL)")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"),
                        help=f"bucket region{when} ($AWS_REGION)")


def manifest_files(parser: argparse.ArgumentParser, what: str, *, required: bool = False) -> None:
    parser.add_argument("-f", "--file", action="append", required=required, metavar="FILE",
                        help=f"{what}: a YAML file, a directory (its .yaml, .yml and .json files) or - for "
                        "standard input; repeatable")


def export_resource_options(parser: argparse.ArgumentParser) -> None:
    workers = os.environ.get("CAPTURE_EXPORT_ENCODE_WORKERS")
    parser.add_argument("--encode-workers", type=int, default=int(workers) if workers else None, metavar="N",
                        help="processes that decode and encode JSON Lines and Parquet batches (0: in this "
                        "process; default: one per CPU the process may use, as many as its memory limit "
                        "affords; $CAPTURE_EXPORT_ENCODE_WORKERS)")
    parser.add_argument("--memory-budget", default=os.environ.get("CAPTURE_EXPORT_MEMORY_BUDGET"), metavar="SIZE",
                        help="memory for batches in flight across all exporters, e.g. 256Mi (default: the "
                        "container's memory limit less what the operator and its encode pool need, ~200Mi, "
                        "over 1.5 for malloc's slack, or 256Mi without one; $CAPTURE_EXPORT_MEMORY_BUDGET)")


def configure_export_resources(args: argparse.Namespace) -> None:
    """The encode pool's size and the memory budget of batches in flight (export/pool.py, export/budget.py)."""
    from ..export.budget import configure_memory_budget, parse_size, share_fewer_malloc_arenas
    from ..export.pool import configure_encode_pool

    share_fewer_malloc_arenas()
    configure_encode_pool(args.encode_workers)
    configure_memory_budget(parse_size(args.memory_budget) if args.memory_budget else None)


def tenancy_options(parser: argparse.ArgumentParser, *, operator: bool) -> None:
    default_ns = ("default: $CAPTURE_EXPORT_DEFAULT_STORE_NAMESPACES (comma-separated), else the operator's "
                  "namespace ($POD_NAMESPACE), else every namespace") if operator else "default: every namespace"
    parser.add_argument("--default-store-namespace", action="append", metavar="NS",
                        help=f"a namespace whose resources may use the default store (repeatable; '*': every "
                        f"one; {default_ns})")
    default_dirs = ("default: $CAPTURE_EXPORT_SQLITE_DIRS, else the default store's directory when it is SQLite"
                    if operator else "default: anywhere")
    parser.add_argument("--sqlite-dir", action="append", metavar="DIR",
                        help=f"a directory a spec's store.sqlite.path may be in (repeatable; {default_dirs})")


def require_directory(path: str) -> None:
    """OSError naming ``path`` unless it is a directory (missing, a file, in the way of a file), for the
    command's one-line error to word with the option it was given with (errors.path_error)."""
    if not stat.S_ISDIR(os.stat(path).st_mode):  # os.stat raises for a missing path, naming it
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
