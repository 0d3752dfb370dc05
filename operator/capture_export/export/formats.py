"""Batch encodings. The default is one zstd frame holding a CBOR sequence (RFC 8742)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import zstandard

__all__ = ["BatchEncoder", "CborZstdEncoder"]


class BatchEncoder(Protocol):
    extension: str
    content_type: str

    def encode(self, records: Sequence[bytes]) -> bytes:
        """Encode a batch of CBOR-encoded records (each holding its ``id``) into one object."""
        ...


class CborZstdEncoder:
    extension = ".cbor.zstd"
    content_type = "application/zstd"

    def __init__(self, level: int = 3) -> None:
        self.level = level

    def encode(self, records: Sequence[bytes]) -> bytes:
        # A compressor is cheap to make and not safe to share across threads.
        return zstandard.ZstdCompressor(level=self.level, write_content_size=True).compress(b"".join(records))
