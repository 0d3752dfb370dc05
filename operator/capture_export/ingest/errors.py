"""Why the ingest server refuses a request: each error knows its HTTP status and says what was wrong."""

from __future__ import annotations

from typing import Any

__all__ = ["BadInput", "IngestRefused", "Overloaded", "StoreUnavailable", "TooLarge", "Unauthorized",
           "UnsupportedMediaType"]


class IngestRefused(Exception):
    """A refused request: nothing of it is stored."""

    status = 400
    retry_after: int | None = None

    def body(self) -> dict[str, Any]:
        return {"error": str(self)}


class BadInput(IngestRefused):
    """Malformed input: names the first bad record (0-based index in the request) and the field."""

    status = 400

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None) -> None:
        where = []
        if index is not None:
            where.append(f"record {index}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.message = message
        self.index = index
        self.field = field

    def __reduce__(self) -> Any:  # crosses from a parsing process intact
        return (_bad_input, (self.message, self.index, self.field))

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": str(self)}
        if self.index is not None:
            out["index"] = self.index
        if self.field:
            out["field"] = self.field
        return out


class TooLarge(IngestRefused):
    status = 413


class UnsupportedMediaType(IngestRefused):
    status = 415


class Unauthorized(IngestRefused):
    status = 401


class Overloaded(IngestRefused):
    """More records are waiting to be committed than the server takes: the client should retry later."""

    status = 503
    retry_after = 1


class StoreUnavailable(IngestRefused):
    """The store could not be opened or written; nothing of the request was committed."""

    status = 503
    retry_after = 5


def _bad_input(message: str, index: int | None, field: str | None) -> BadInput:
    return BadInput(message, index=index, field=field)
