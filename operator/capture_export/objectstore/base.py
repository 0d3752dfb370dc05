"""The object-store seam: the few operations export and retention need, and how failures are classed."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..redact import scrub as _scrub

__all__ = [
    "PRECONDITION_FAILED",
    "AssumeRole",
    "Credentials",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreError",
    "S3Access",
    "S3Location",
    "ServerSideEncryption",
    "StoredObject",
    "scrub",
]


@dataclass(frozen=True)
class S3Location:
    bucket: str
    region: str
    endpoint: str | None = None


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print secrets, not even in a traceback
        return "Credentials(***)"

    def secrets(self) -> list[str]:
        """Every value to keep out of text (the key id too: users treat it as a secret)."""
        return [s for s in (self.access_key_id, self.secret_access_key, self.session_token) if s]


@dataclass(frozen=True)
class AssumeRole:
    """An IAM role to assume (STS AssumeRole) on top of the base credentials."""

    role_arn: str
    session_name: str
    external_id: str | None = None
    duration_seconds: int = 3600

    def __repr__(self) -> str:  # the external id is a shared secret of sorts: keep it out of logs
        return f"AssumeRole(role_arn={self.role_arn!r}, session_name={self.session_name!r})"


@dataclass(frozen=True)
class ServerSideEncryption:
    """``x-amz-server-side-encryption`` (AES256 or aws:kms) and the KMS key, sent with every PUT."""

    algorithm: str
    kms_key_id: str | None = None

    def put_arguments(self) -> dict[str, str]:
        arguments = {"ServerSideEncryption": self.algorithm}
        if self.kms_key_id:
            arguments["SSEKMSKeyId"] = self.kms_key_id
        return arguments

    def describe(self) -> str:
        return self.algorithm + (f" (key {self.kms_key_id})" if self.kms_key_id else "")


@dataclass(frozen=True)
class S3Access:
    """How to reach and write a bucket: the base credentials (None: the SDK's default chain, which
    covers IRSA / web identity and EKS Pod Identity), an optional role assumed on top, server-side
    encryption for every PUT, and TLS trust (a PEM CA bundle, or verification switched off).

    Hashable and compared by value: a worker builds a new client, and tests the connection again, exactly
    when any of it changed (a rotated Secret, another role, another CA)."""

    credentials: Credentials | None = None
    role: AssumeRole | None = None
    encryption: ServerSideEncryption | None = None
    ca_bundle: str | None = None
    verify_tls: bool = True

    def secrets(self) -> list[str]:
        found = self.credentials.secrets() if self.credentials else []
        if self.role is not None and self.role.external_id:
            found.append(self.role.external_id)
        return found


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str = ""


@dataclass(frozen=True)
class StoredObject:
    """An object's bytes with its ETag and user metadata (``x-amz-meta-*``, keys in lower case)."""

    data: bytes
    etag: str
    metadata: Mapping[str, str]


# The reason of an ObjectStoreError raised when a conditional write's precondition failed (HTTP 412).
PRECONDITION_FAILED = "PreconditionFailed"


class ObjectStoreError(RuntimeError):
    """An object-store failure, classed by ``reason`` (a CamelCase condition reason).

    ``transient`` failures (unreachable endpoint, throttling, 5xx) are worth retrying with backoff;
    the others need someone to fix the bucket, the credentials or the permissions.
    """

    def __init__(self, reason: str, message: str, *, transient: bool, domain: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient
        # Which condition this failure speaks to: Domain.BUCKET or Domain.CREDENTIALS (api/vocabulary.py).
        self.domain = domain


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` without any of ``secrets`` in any escaped form, nor URL userinfo or DSN passwords."""
    return _scrub(text, secrets)


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        """Write an object (with the store's server-side encryption, when it has one); ``metadata`` becomes
        its user metadata (lower-case ASCII keys and values)."""
        ...

    def put_conditional(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False,
                        content_type: str = "application/octet-stream") -> str:
        """Write an object only if it does not exist yet (``if_none_match``) or still has the ETag
        ``if_match``; return its new ETag. Raises ObjectStoreError with reason PRECONDITION_FAILED when the
        precondition does not hold. A server that ignores the conditions simply writes (see
        export/ownership.py, which finds that out once)."""
        ...

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such key."""
        ...

    def fetch(self, key: str) -> StoredObject | None:
        """The object's bytes, ETag and user metadata in one request, or None when there is no such key."""
        ...

    def head(self, key: str) -> StoredObject | None:
        """The object's ETag and user metadata (``data`` empty), or None when there is no such key."""
        ...

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in key order, optionally starting after a key."""
        ...

    def delete(self, key: str) -> None: ...

    def check(self) -> None:
        """Connection test: the bucket exists and these credentials may use it."""
        ...
