"""Where object-store credentials come from: the one place that turns a resource's ``secretRef`` into
``Credentials``.

Every caller (the export cycle, the retention gate, ``capture-export verify``, the demo) resolves through
:class:`CredentialResolver`, so that new sources (assume-role, web identity) land here only. A resource
without ``secretRef`` gets ``None``: the SDK's default chain (environment, IRSA). ``capture-export cat``
and ``verify --bucket`` take them from the environment (:func:`credentials_from_environment`).

The Secret holds ``access_key_id``, ``access_secret`` and optionally ``session_token``; it is re-read on
every resolve, so a rotation takes effect at the next cycle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ..api.vocabulary import Domain, Reason
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
    """The credentials cannot be had (no such Secret, a key missing): never transient, someone must fix it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message, transient=False, domain=Domain.CREDENTIALS)


def credentials_from_secret(namespace: str, name: str, data: Mapping[str, str] | None) -> Credentials:
    """The credentials in one Secret's data (None: the Secret does not exist)."""
    if data is None:
        raise CredentialsError(Reason.SECRET_NOT_FOUND, f"Secret {namespace}/{name} not found")
    for key in (ACCESS_KEY_ID, ACCESS_SECRET):
        if not data.get(key):
            raise CredentialsError(Reason.SECRET_KEY_MISSING, f"Secret {namespace}/{name} has no key {key!r}")
    return Credentials(data[ACCESS_KEY_ID], data[ACCESS_SECRET], data.get(SESSION_TOKEN) or None)


def credentials_from_environment(environ: Mapping[str, str] | None = None) -> Credentials | None:
    """``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), or None for the SDK's
    own chain when they are not both set."""
    environ = os.environ if environ is None else environ
    key_id = environ.get("AWS_ACCESS_KEY_ID")
    secret = environ.get("AWS_SECRET_ACCESS_KEY")
    if not (key_id and secret):
        return None
    return Credentials(key_id, secret, environ.get("AWS_SESSION_TOKEN"))


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
