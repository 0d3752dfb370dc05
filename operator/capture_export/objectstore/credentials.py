"""Where object-store credentials come from: the one place that turns a resource's ``secretRef``,
``roleArn`` and TLS trust into what a botocore client signs and verifies with.

Every caller (the export cycle, the retention gate, ``capture-export verify``, the demo) resolves through
:class:`CredentialResolver`. A resource without ``secretRef`` gets ``None`` base credentials: the SDK's
default chain (environment, web identity / IRSA from ``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``,
EKS Pod Identity). ``capture-export cat`` and ``verify --bucket`` take them from the environment
(:func:`credentials_from_environment`).

The Secret holds ``access_key_id``, ``access_secret`` and optionally ``session_token``; it is re-read on
every resolve, so a rotation takes effect at the next cycle; so is the CA bundle (``caBundleRef``). A
value holding a control character (the trailing newline of ``echo token | base64``) is refused as
``SecretValueInvalid``, naming the Secret and the key but never the value: sent on, it ends up in an HTTP
header that the client library refuses with an error message quoting it. :func:`secret_value` applies
the same rules to any key (a store's DSN).

With ``roleArn``, :func:`botocore_session` assumes the role on top of the base credentials with botocore's
own refreshable credentials: the first request assumes it, and a request made when a quarter of the
session's lifetime (at most 15 minutes) is left renews it. The session's lifetime is measured on the
worker's clock from the moment STS answered, so a skewed pod clock does not renew too late.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import botocore.credentials
import botocore.session
from botocore.config import Config

from ..api.vocabulary import Domain, Reason
from ..redact import control_characters
from .base import AssumeRole, Credentials, ObjectStoreError, S3Access, ServerSideEncryption

if TYPE_CHECKING:
    from ..api import CaBundleRef, KeyRef, S3ExporterSpec, SecretRef

__all__ = [
    "ACCESS_KEY_ID",
    "ACCESS_SECRET",
    "SESSION_TOKEN",
    "ConfigMapSource",
    "CredentialResolver",
    "CredentialsError",
    "SecretSource",
    "botocore_session",
    "credentials_from_environment",
    "credentials_from_secret",
    "default_session_name",
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


class ConfigMapSource(Protocol):
    def get_config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """A ConfigMap's data, or None when it does not exist."""
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


def default_session_name(namespace: str, name: str) -> str:
    """``capture-export-<namespace>-<name>``, cut to STS's 64 characters (CloudTrail shows it)."""
    return re.sub(r"[^\w+=,.@-]", "-", f"capture-export-{namespace}-{name}")[:64]


_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


class CredentialResolver:
    """Resolves a resource's ``secretRef`` (in its namespace) through a SecretSource: the Kubernetes API
    in the operator, the manifests' Secrets in the standalone runner and the CLI. ``access`` resolves
    everything a client needs for one S3Exporter spec (credentials, role, encryption, TLS trust); a
    ``caBundleRef`` to a ConfigMap needs a source that also reads ConfigMaps (ConfigMapSource).

    Raises CredentialsError when the Secret is missing or incomplete; a SecretSource may raise its own
    failures (the API unreachable) through it."""

    def __init__(self, secrets: SecretSource) -> None:
        self.secrets = secrets

    def resolve(self, namespace: str, secret_ref: SecretRef | None) -> Credentials | None:
        if secret_ref is None:
            return None
        name = secret_ref.name
        return credentials_from_secret(namespace, name, self.secrets.get(namespace, name))

    def access(self, namespace: str, name: str, spec: S3ExporterSpec) -> S3Access:
        """How the S3Exporter ``namespace/name`` reaches its bucket, read afresh (Secrets, CA bundle)."""
        role = None
        if spec.role_arn:
            role = AssumeRole(spec.role_arn, spec.session_name or default_session_name(namespace, name),
                              spec.external_id, spec.role_duration_seconds)
        sse = spec.server_side_encryption
        encryption = ServerSideEncryption(sse.algorithm, sse.kms_key_id) if sse is not None else None
        return S3Access(
            credentials=self.resolve(namespace, spec.secret_ref),
            role=role,
            encryption=encryption,
            ca_bundle=self.ca_bundle(namespace, spec.ca_bundle_ref),
            verify_tls=not spec.insecure_skip_tls_verify,
        )

    def ca_bundle(self, namespace: str, ref: CaBundleRef | None) -> str | None:
        """The PEM text a ``caBundleRef`` points at; ObjectStoreError (BucketReachable) when it is missing
        or holds no certificate."""
        if ref is None:
            return None
        key_ref: KeyRef | None
        if ref.secret_key_ref is not None:
            kind, key_ref = "Secret", ref.secret_key_ref
            data = self.secrets.get(namespace, key_ref.name)
        else:
            kind, key_ref = "ConfigMap", ref.config_map_key_ref
            assert key_ref is not None
            read = getattr(self.secrets, "get_config_map", None)
            if read is None:
                raise ObjectStoreError(Reason.CA_BUNDLE_NOT_FOUND, "caBundleRef: ConfigMaps cannot be read here",
                                       transient=False, domain=Domain.BUCKET)
            data = read(namespace, key_ref.name)
        where = f"{kind} {namespace}/{key_ref.name}"
        if data is None:
            raise ObjectStoreError(Reason.CA_BUNDLE_NOT_FOUND, f"caBundleRef: {where} not found", transient=False,
                                   domain=Domain.BUCKET)
        pem = data.get(key_ref.key)
        if not pem:
            raise ObjectStoreError(Reason.CA_BUNDLE_NOT_FOUND, f"caBundleRef: {where} has no key {key_ref.key!r}",
                                   transient=False, domain=Domain.BUCKET)
        if _PEM_CERTIFICATE not in pem:
            raise ObjectStoreError(Reason.CA_BUNDLE_INVALID, f"caBundleRef: {where} key {key_ref.key!r} holds no "
                                   "PEM certificate (-----BEGIN CERTIFICATE-----)", transient=False,
                                   domain=Domain.BUCKET)
        return pem


# -- sessions: base credentials, and a role assumed on top ------------------------------------------------


class _StaticProvider(botocore.credentials.CredentialProvider):  # type: ignore[misc]  # botocore is untyped
    """Hands botocore one credentials object (static keys, or the assumed role's refreshable ones)."""

    METHOD = "capture-export"

    def __init__(self, credentials: botocore.credentials.Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> botocore.credentials.Credentials:
        return self._credentials


class _RoleCredentials(botocore.credentials.DeferredRefreshableCredentials):  # type: ignore[misc]  # untyped
    """botocore's refreshable credentials, with refresh windows scaled to the session's lifetime: the
    defaults (renew within 15 min of expiry, must renew within 10) would renew a 15-minute session on
    every request."""

    def __init__(self, refresh_using: Callable[[], dict[str, Any]], lifetime: int,
                 time_fetcher: Callable[[], datetime]) -> None:
        super().__init__(refresh_using=refresh_using, method="assume-role", time_fetcher=time_fetcher)
        self._advisory_refresh_timeout = min(15 * 60, lifetime // 4)
        self._mandatory_refresh_timeout = min(10 * 60, lifetime // 6)


# botocore's service descriptions (S3's alone is megabytes of JSON), loaded once for every session: each
# session would otherwise load and keep its own copy, ~12 MiB per S3 client, and there is a client per
# bucket and credentials. The loader only reads and caches; sessions are built under the S3 store's lock.
_shared_loader: Any = None


def _session() -> botocore.session.Session:
    global _shared_loader
    session = botocore.session.Session()
    if _shared_loader is None:
        _shared_loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _shared_loader)
    return session


def botocore_session(access: S3Access, *, region: str, now: Callable[[], datetime] | None = None,
                     sts_config: Config | None = None) -> botocore.session.Session:
    """A botocore session signing with ``access``: its base credentials (or the default chain), and its role
    assumed on top when it has one. ``now`` is the clock that times the role's renewals."""
    base = _session()
    if access.credentials is not None:
        c = access.credentials
        base.set_credentials(c.access_key_id, c.secret_access_key, c.session_token)
    if access.role is None:
        return base
    clock = now or (lambda: datetime.now(UTC))
    # AWS_ENDPOINT_URL_STS (a VPC endpoint, or a local STS in tests) is honoured by botocore here.
    sts = base.create_client("sts", region_name=region, config=sts_config)
    role = access.role

    def assume() -> dict[str, Any]:
        arguments: dict[str, Any] = {"RoleArn": role.role_arn, "RoleSessionName": role.session_name,
                                     "DurationSeconds": role.duration_seconds}
        if role.external_id:
            arguments["ExternalId"] = role.external_id
        answered = clock()
        issued = sts.assume_role(**arguments)["Credentials"]
        expiration = issued["Expiration"]
        lifetime = float(role.duration_seconds)
        if isinstance(expiration, datetime):
            lifetime = min(lifetime, (expiration - datetime.now(UTC)).total_seconds())
        return {
            "access_key": issued["AccessKeyId"],
            "secret_key": issued["SecretAccessKey"],
            "token": issued["SessionToken"],
            "expiry_time": (answered + timedelta(seconds=lifetime)).isoformat(),
        }

    credentials = _RoleCredentials(assume, role.duration_seconds, clock)
    session = _session()
    session.register_component("credential_provider",
                               botocore.credentials.CredentialResolver([_StaticProvider(credentials)]))
    return session
