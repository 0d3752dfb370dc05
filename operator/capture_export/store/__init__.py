"""Capture stores: where the gateway writes records and the operator reads, exports and purges them."""

from __future__ import annotations

from .base import (
    RETENTION_METHODS,
    CaptureStore,
    ExpiredChunk,
    IngestStore,
    QuarantinedRecord,
    QuarantineStore,
    RecordReader,
    RetentionStore,
    StoredRecord,
    StoreError,
    StoreLock,
    StoreNotFound,
)
from .opener import (
    StoreOpener,
    StoreRefused,
    check_store_location,
    check_store_url,
    describe_store,
    open_store_url,
    store_identity,
)
from .records import CREDENTIAL_HEADERS, SCHEMA_VERSION, CorruptRecord, decode_sequence, with_id
from .sqlite import SQLiteStore

__all__ = [
    "CREDENTIAL_HEADERS",
    "RETENTION_METHODS",
    "SCHEMA_VERSION",
    "CaptureStore",
    "CorruptRecord",
    "ExpiredChunk",
    "IngestStore",
    "QuarantineStore",
    "QuarantinedRecord",
    "RecordReader",
    "RetentionStore",
    "SQLiteStore",
    "StoreError",
    "StoreLock",
    "StoreNotFound",
    "StoreOpener",
    "StoreRefused",
    "StoredRecord",
    "check_store_location",
    "check_store_url",
    "decode_sequence",
    "describe_store",
    "open_store_url",
    "store_identity",
    "with_id",
]

