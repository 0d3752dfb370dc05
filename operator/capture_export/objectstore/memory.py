"""A tiny in-memory object store: the unit-test seam for the object-store protocol."""

from __future__ import annotations

from collections.abc import Iterator

from .base import ObjectInfo, ObjectStoreError

__all__ = ["MemoryObjectStore"]


class MemoryObjectStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0
        self.fail_next: list[ObjectStoreError] = []

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self._maybe_fail()
        self.puts += 1
        self.objects[key] = bytes(data)

    def get(self, key: str) -> bytes | None:
        self._maybe_fail()
        return self.objects.get(key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self._maybe_fail()
        for key in sorted(self.objects):
            if key.startswith(prefix) and (start_after is None or key > start_after):
                yield ObjectInfo(key, len(self.objects[key]))

    def delete(self, key: str) -> None:
        self._maybe_fail()
        self.objects.pop(key, None)

    def check(self) -> None:
        self._maybe_fail()
