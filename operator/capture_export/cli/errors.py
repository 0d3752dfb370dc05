"""What a failed command prints: one line naming what failed and why, never a traceback that could quote
a credential."""

from __future__ import annotations

import argparse
import contextlib
import os

__all__ = ["error_line"]


def error_line(exc: BaseException, args: argparse.Namespace) -> tuple[str, int] | None:
    """One line naming what failed and why, and the exit code, for the ordinary failures of a command (a
    manifest, a file, the capture store, the bucket); None for anything else, a bug, whose traceback helps.
    Passwords of the store DSN and the AWS secret key from the environment are masked."""
    from ..api.manifests import InvalidManifest
    from ..api.vocabulary import Reason
    from ..objectstore import ObjectStoreError
    from ..redact import redact
    from ..store import StoreError, StoreRefused

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
