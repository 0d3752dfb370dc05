"""A tiny in-memory object store: the unit-test seam for the object-store protocol."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

from ..api.vocabulary import Domain
from .base import PRECONDITION_FAILED, ObjectInfo, ObjectStoreError, StoredObject

__all__ = ["MemoryObjectStore"]


class MemoryObjectStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        # False: behave as a server that ignores If-Match / If-None-Match (writes anyway).
        self.honours_conditions = True
        self.puts = 0
        self.fail_next: list[ObjectStoreError] = []

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        self._maybe_fail()
        self.puts += 1
        self.objects[key] = bytes(data)
        self.metadata[key] = dict(metadata or {})

    @staticmethod
    def etag(data: bytes) -> str:
        return f'"{hashlib.md5(data).hexdigest()}"'  # as S3 does for a single-part upload

    def put_conditional(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False,
                        content_type: str = "application/octet-stream") -> str:
        self._maybe_fail()
        current = self.objects.get(key)
        if self.honours_conditions and ((if_none_match and current is not None) or (
                if_match is not None and (current is None or self.etag(current) != if_match))):
            raise ObjectStoreError(PRECONDITION_FAILED, f"precondition failed for {key}", transient=False,
                                   domain=Domain.BUCKET)
        self.puts += 1
        self.objects[key] = bytes(data)
        self.metadata[key] = {}
        return self.etag(data)

    def get(self, key: str) -> bytes | None:
        self._maybe_fail()
        return self.objects.get(key)

    def fetch(self, key: str) -> StoredObject | None:
        self._maybe_fail()
        data = self.objects.get(key)
        return None if data is None else StoredObject(data, self.etag(data), dict(self.metadata.get(key, {})))

    def head(self, key: str) -> StoredObject | None:
        found = self.fetch(key)
        return None if found is None else StoredObject(b"", found.etag, found.metadata)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self._maybe_fail()
        for key in sorted(self.objects):
            if key.startswith(prefix) and (start_after is None or key > start_after):
                yield ObjectInfo(key, len(self.objects[key]), self.etag(self.objects[key]))

    def delete(self, key: str) -> None:
        self._maybe_fail()
        self.objects.pop(key, None)
        self.metadata.pop(key, None)

    def check(self) -> None:
        self._maybe_fail()
