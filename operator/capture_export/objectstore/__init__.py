"""The object-store seam (put, get, list, delete, check) and its botocore implementation."""

from __future__ import annotations

from .base import (
    PRECONDITION_FAILED,
    AssumeRole,
    Credentials,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    S3Access,
    S3Location,
    ServerSideEncryption,
    StoredObject,
    scrub,
)
from .credentials import CredentialResolver, CredentialsError, SecretSource, credentials_from_secret
from .memory import MemoryObjectStore
from .s3 import S3ObjectStore, classify

__all__ = [
    "PRECONDITION_FAILED",
    "AssumeRole",
    "CredentialResolver",
    "Credentials",
    "CredentialsError",
    "MemoryObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreError",
    "S3Access",
    "S3Location",
    "S3ObjectStore",
    "SecretSource",
    "ServerSideEncryption",
    "StoredObject",
    "classify",
    "credentials_from_secret",
    "scrub",
]
