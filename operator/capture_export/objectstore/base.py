"""The object-store seam: the few operations export and retention need, and how failures are classed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Credentials", "ObjectInfo", "ObjectStore", "ObjectStoreError", "S3Location", "scrub"]


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
        return f"Credentials(access_key_id={self.access_key_id[:4]}…)"

    def secrets(self) -> list[str]:
        return [s for s in (self.secret_access_key, self.session_token) if s]


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


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
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None: ...

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such key."""
        ...

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in key order, optionally starting after a key."""
        ...

    def delete(self, key: str) -> None: ...

    def check(self) -> None:
        """Connection test: the bucket exists and these credentials may use it."""
        ...
