"""Capture stores: where the gateway writes records and the operator reads, exports and purges them."""

from __future__ import annotations

from .base import CaptureStore, ExpiredChunk, StoredRecord, StoreError
from .opener import StoreOpener, open_store_url
from .records import CREDENTIAL_HEADERS, SCHEMA_VERSION, CorruptRecord, decode_sequence, with_id
from .sqlite import SQLiteStore

__all__ = [
    "CREDENTIAL_HEADERS",
    "SCHEMA_VERSION",
    "CaptureStore",
    "CorruptRecord",
    "ExpiredChunk",
    "SQLiteStore",
    "StoreError",
    "StoreOpener",
    "StoredRecord",
    "decode_sequence",
    "open_store_url",
    "with_id",
]

