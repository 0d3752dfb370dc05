"""Malformed store rows a buggy gateway writes: each something a reader cannot take as one record, most of
them carrying ``CANARY`` (a credential or a value that must never reach a bucket). Used by the hostile
tier (end to end) and the unit tests of the foreign-row check."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.support.trust import AsText, Raw, bstr, build, good_record, head, text

__all__ = ["CANARY", "MALFORMED"]

CANARY = "cnryMalformedRow7d41c09e5b2a"


def _fields(n: int, **overrides: Any) -> dict[Any, Any]:
    return good_record(n, **overrides)


def _with_credential(n: int) -> dict[Any, Any]:
    record = good_record(n)
    record["capture"]["request"]["headers"]["Authorization"] = f"Bearer {CANARY}"
    return record


# Each builds the body of row n. Every one is something a reader cannot take as one record.
MALFORMED: dict[str, Callable[[int], bytes | str]] = {
    # The example: the map head claims 3 pairs, 2 follow; the next record becomes its third pair.
    "map-claims-more-pairs": lambda n: bytes.fromhex("a3") + text("ver") + b"\x02" + text("model") + text("gpt-4o"),
    "map-claims-more-pairs-with-credential": lambda n: head(5, len(_with_credential(n)) + 1)
    + build(_with_credential(n))[1:],
    "trailing-item": lambda n: build(_fields(n)) + text(f"trailing {CANARY}"),
    "two-maps": lambda n: build(_fields(n)) + build({"model": CANARY, "ver": 2}),
    "stored-id-key": lambda n: build({"id": 1, **_fields(n, model=CANARY)}),
    "duplicate-top-level-key": lambda n: build({**_fields(n), Raw(text("capture")): _with_credential(n)["capture"],
                                                "capture": _fields(n)["capture"]}),
    "invalid-utf8-value": lambda n: build({**_fields(n), "model": Raw(head(3, 8) + b"gpt-\xff\xfe4o")}),
    "invalid-utf8-key": lambda n: build({**_fields(n), Raw(head(3, 5) + b"mod\xc3e"): CANARY}),
    "invalid-utf8-nested": lambda n: build({**_fields(n), "capture": {"request": {"body": {
        "messages": [{"role": "user", "content": Raw(head(3, 4) + b"\xed\xa0\x80x")}]}}}}),
    "date-after-9999": lambda n: build({**_fields(n), "timestamp": Raw(b"\xc1" + head(0, 253_402_300_800))}),
    "date-before-year-1": lambda n: build({**_fields(n), "timestamp": Raw(b"\xc1" + head(1, 62_135_596_800 + 86_400))}),
    "date-not-a-number": lambda n: build({**_fields(n), "timestamp": Raw(b"\xc1\xf9\x7e\x00")}),
    "date-string-invalid": lambda n: build({**_fields(n), "timestamp": Raw(b"\xc0" + text("2026-13-45T99:00:00Z"))}),
    "byte-string-top-level-key": lambda n: build({**_fields(n), Raw(bstr(b"session")): CANARY}),
    "integer-top-level-key": lambda n: build({**_fields(n), 7: CANARY}),
    "array-not-map": lambda n: build([_fields(n)["model"], CANARY]),
    "empty": lambda n: b"",
    "truncated": lambda n: build(_with_credential(n))[:-7],
    "break-out-of-place": lambda n: head(5, 1) + text("ver") + b"\xff",
    "reserved-additional-info": lambda n: build({**_fields(n), "duration_ms": Raw(b"\x1c")}),
    "indefinite-text-never-ends": lambda n: build({**_fields(n)})[:-1] + b"\x7f" + text(CANARY),
    # The gateway's driver bound a str: SQLite stores TEXT, not BLOB; or it stored CBOR bytes as TEXT, which
    # sqlite3 cannot even read back as text (invalid UTF-8).
    "text-not-blob": lambda n: json.dumps({"ver": 2, "model": CANARY}),
    "text-not-blob-invalid-utf8": lambda n: AsText(build(_with_credential(n)) + b"\xff"),
}
