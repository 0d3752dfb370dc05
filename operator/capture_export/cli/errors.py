"""What a failed command prints: one line naming what failed and why, never a traceback that could quote
a credential."""

from __future__ import annotations

import argparse
import contextlib
import os

__all__ = ["PATH_OPTIONS", "error_line", "none_in_files", "path_error", "usage_error"]

# The options that name a file or a directory, by their argparse dest (the same in every command), and
# how the line names each: a path that cannot be used is said with the option it was given with.
PATH_OPTIONS = {"file": "-f", "body": "--body", "state": "--state", "store": "--store", "source": "",
                "token_file": "--token-file", "ingest_token_file": "--ingest-token-file", "dir": "--dir",
                "workdir": "--workdir", "sqlite_dir": "--sqlite-dir"}
DIRECTORY_OPTIONS = frozenset({"dir", "workdir", "sqlite_dir"})


def error_line(exc: BaseException, args: argparse.Namespace) -> tuple[str, int] | None:
    """One line naming what failed and why, and the exit code, for the ordinary failures of a command (a
    manifest, a file, the capture store, the bucket); None for anything else, a bug, whose traceback helps.
    Exit code 2 when what was given cannot be used (a manifest, a path option, a store the spec may not
    use), 1 when the work failed (the store, the bucket, a file while working).
    Passwords of the store DSN and the AWS secret key from the environment are masked."""
    from ..api.manifests import InvalidManifest
    from ..api.vocabulary import Reason
    from ..objectstore import ObjectStoreError
    from ..redact import redact
    from ..store import StoreError, StoreRefused

    if isinstance(exc, InvalidManifest):
        text, code = f"invalid manifest: {_with_option(str(exc), args)}", 2
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
    elif isinstance(exc, OSError):  # a file that cannot be read or written: its option, its name, why
        text, code = path_error(exc, args)
    else:
        return None
    for secret in _known_secrets(args):
        text = text.replace(secret, "***")
    return f"error: {' '.join(text.split())}", code


def usage_error(text: str) -> int:
    """A mistake in what was asked that argparse cannot see (two sources, no source, nothing to run): one
    line on stderr, the exit code 2 as argparse's own."""
    import sys

    print(f"error: {text}", file=sys.stderr)
    return 2


def none_in_files(args: argparse.Namespace, kinds: str) -> int:
    """``-f secret.yaml: no S3Exporter in it`` (usage_error): the files given hold none of ``kinds``, or none
    named ``--exporter``."""
    files = [value for value in args.file or () if isinstance(value, str)]
    named = f" named {args.exporter}" if getattr(args, "exporter", None) else ""
    return usage_error(f"-f {', '.join(files)}: no {kinds}{named} in {'it' if len(files) == 1 else 'them'}")


def path_error(exc: OSError, args: argparse.Namespace) -> tuple[str, int]:
    """``--body fixed.cbor: no such file``, and exit code 2, when the path is (or is in, or is on the way to)
    one given with a path option; else the path and why, exit code 1 (a failure while working)."""
    from ..path_errors import why_unusable

    if exc.filename is None:
        return exc.strerror or exc.__class__.__name__, 1
    failed = os.fsdecode(exc.filename)
    for dest, flag in PATH_OPTIONS.items():
        given = getattr(args, dest, None)
        for value in given if isinstance(given, list) else [given]:
            if not isinstance(value, str):
                continue
            why = why_unusable(exc, directory=dest in DIRECTORY_OPTIONS, given=value)
            named = f"{flag} {value}".lstrip()
            if failed == value or (_is_under(value, failed) and why.endswith("is not a directory")):
                return f"{named}: {why}", 2  # the path, or a file on the way to it (--state a-file/state.json)
            if _is_under(value, failed) or _is_under(failed, value):  # a directory on the way, a file of -f DIR
                return f"{named}: {failed}: {why}", 2
    return f"{failed}: {why_unusable(exc)}", 1


def _is_under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def _with_option(problem: str, args: argparse.Namespace) -> str:
    """A manifest problem of a file given with -f as such (``-f empty.yaml: empty, no manifest in it``)."""
    files = getattr(args, "file", None) or []
    given = [files] if isinstance(files, str) else [value for value in files if isinstance(value, str)]
    return next((f"-f {problem}" for value in given if problem.startswith(f"{value}: ")), problem)


def _known_secrets(args: argparse.Namespace) -> list[str]:
    from urllib.parse import urlsplit

    found = [os.environ.get("AWS_SECRET_ACCESS_KEY", ""), os.environ.get("AWS_SESSION_TOKEN", "")]
    store = getattr(args, "store", None) or ""
    if "://" in store:
        with contextlib.suppress(ValueError):
            found.append(urlsplit(store).password or "")
    found += [part.partition("=")[2] for part in store.split() if part.startswith("password=")]
    return [secret for secret in found if len(secret) >= 4]
