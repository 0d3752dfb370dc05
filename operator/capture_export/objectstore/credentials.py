"""Where object-store credentials come from: the one place that turns a resource's ``secretRef`` into
``Credentials``.

Every caller (the export cycle, the retention gate, ``capture-export verify``, the demo) resolves through
:class:`CredentialResolver`, so that new sources (assume-role, web identity) land here only. A resource
without ``secretRef`` gets ``None``: the SDK's default chain (environment, IRSA). ``capture-export cat``
and ``verify --bucket`` take them from the environment (:func:`credentials_from_environment`).

The Secret holds ``access_key_id``, ``access_secret`` and optionally ``session_token``; it is re-read on
every resolve, so a rotation takes effect at the next cycle. A value holding a control character (the
trailing newline of ``echo token | base64``) is refused as ``SecretValueInvalid``, naming the Secret and
the key but never the value: sent on, it ends up in an HTTP header that the client library refuses with
an error message quoting it. :func:`secret_value` applies the same rules to any key (a store's DSN).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ..api.vocabulary import Domain, Reason
from ..redact import control_characters
from .base import Credentials, ObjectStoreError

if TYPE_CHECKING:
    from ..api import SecretRef

__all__ = [
    "ACCESS_KEY_ID",
    "ACCESS_SECRET",
    "SESSION_TOKEN",
    "CredentialResolver",
    "CredentialsError",
    "SecretSource",
    "credentials_from_environment",
    "credentials_from_secret",
    "secret_value",
]

# The keys of a credentials Secret.
ACCESS_KEY_ID = "access_key_id"
ACCESS_SECRET = "access_secret"
SESSION_TOKEN = "session_token"


class SecretSource(Protocol):
    def get(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """A Secret's decoded data, or None when it does not exist."""
        ...


class CredentialsError(ObjectStoreError):
    """The credentials cannot be had (no such Secret, a key missing, a value that cannot be sent): never
    transient, someone must fix it. ``domain`` is Credentials unless the Secret holds something else (a
    store's DSN: Store)."""

    def __init__(self, reason: str, message: str, *, domain: str = Domain.CREDENTIALS) -> None:
        super().__init__(reason, message, transient=False, domain=domain)


def _invalid_value(what: str, value: str) -> str | None:
    """Why ``value`` cannot be used, in words that never quote it; None when it can."""
    found = control_characters(value)
    if not found:
        return None
    hint = " (a trailing newline, as `echo value | base64` leaves?)" if value.rstrip("\r\n") != value else ""
    return (f"{what} holds a control character ({', '.join(found)}){hint}; write it again without one, e.g. "
            "with `kubectl create secret generic --from-literal` or `printf %s value | base64`")


def secret_value(namespace: str, name: str, data: Mapping[str, str] | None, key: str, *, required: bool = True,
                 domain: str = Domain.CREDENTIALS) -> str | None:
    """One key of one Secret's data (None: the Secret does not exist), checked: SecretNotFound,
    SecretKeyMissing (when ``required``; else None for an absent or empty key) or SecretValueInvalid."""
    if data is None:
        raise CredentialsError(Reason.SECRET_NOT_FOUND, f"Secret {namespace}/{name} not found", domain=domain)
    value = data.get(key)
    if not value:
        if required:
            raise CredentialsError(Reason.SECRET_KEY_MISSING, f"Secret {namespace}/{name} has no key {key!r}",
                                   domain=domain)
        return None
    if not isinstance(value, str):
        raise CredentialsError(Reason.SECRET_VALUE_INVALID, f"Secret {namespace}/{name} key {key!r} is not text",
                               domain=domain)
    problem = _invalid_value(f"Secret {namespace}/{name} key {key!r}", value)
    if problem is not None:
        raise CredentialsError(Reason.SECRET_VALUE_INVALID, problem, domain=domain)
    return value


def credentials_from_secret(namespace: str, name: str, data: Mapping[str, str] | None) -> Credentials:
    """The credentials in one Secret's data (None: the Secret does not exist)."""
    key_id = secret_value(namespace, name, data, ACCESS_KEY_ID)
    secret = secret_value(namespace, name, data, ACCESS_SECRET)
    token = secret_value(namespace, name, data, SESSION_TOKEN, required=False)
    assert key_id is not None and secret is not None
    return Credentials(key_id, secret, token)


def credentials_from_environment(environ: Mapping[str, str] | None = None) -> Credentials | None:
    """``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), or None for the SDK's
    own chain when they are not both set. A value with a control character is refused (CredentialsError)."""
    environ = os.environ if environ is None else environ
    key_id = environ.get("AWS_ACCESS_KEY_ID")
    secret = environ.get("AWS_SECRET_ACCESS_KEY")
    if not (key_id and secret):
        return None
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        problem = _invalid_value(f"${variable}", environ.get(variable) or "")
        if problem is not None:
            raise CredentialsError(Reason.SECRET_VALUE_INVALID, problem.split("; ")[0] + "; set it again without one")
    return Credentials(key_id, secret, environ.get("AWS_SESSION_TOKEN") or None)


class CredentialResolver:
    """Resolves a resource's ``secretRef`` (in its namespace) through a SecretSource: the Kubernetes API
    in the operator, the manifests' Secrets in the standalone runner and the CLI.

    Raises CredentialsError when the Secret is missing or incomplete; a SecretSource may raise its own
    failures (the API unreachable) through it."""

    def __init__(self, secrets: SecretSource) -> None:
        self.secrets = secrets

    def resolve(self, namespace: str, secret_ref: SecretRef | None) -> Credentials | None:
        if secret_ref is None:
            return None
        name = secret_ref.name
        return credentials_from_secret(namespace, name, self.secrets.get(namespace, name))
