"""Canary secrets and the search for them in everything the product writes.

A canary is a distinctive secret value (``cAnArY`` + a label + random hex) planted where a careless user
or a hostile tenant would put a real one: a Secret value with a trailing newline, the userinfo of an
endpoint, the password of a DSN. After a run, :class:`Outputs` holds every output the product produced
(stdout, stderr, logs at debug level, the state file, statuses, Events, annotations, metrics, bucket
objects, file names) and :func:`assert_no_canary` searches each for the canary in every form an output
could carry it: plain, ``repr`` of text and bytes, JSON- and backslash-escaped, URL-encoded, base64 (all
three alignments, standard and URL-safe) and hex, case-insensitively.

What is *not* an output: the input the user wrote (the manifest file, a Secret's data, the ``spec`` a user
applied and kopf's copy of it in the ``last-handled-configuration`` annotation). The product cannot keep a
user from reading back what they wrote; it must never copy it anywhere else.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import re
import secrets
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

__all__ = ["CANARY_TAG", "LogCapture", "Outputs", "assert_no_canary", "canary", "capture_logs", "forms_of",
           "leaks_in", "tree_of"]

CANARY_TAG = "cAnArY"
KOPF_DIFF_BASE = "capture.dev/last-handled-configuration"


def canary(label: str) -> str:
    """A fresh canary: letters and digits only, so that every escaping leaves it whole."""
    return f"{CANARY_TAG}{label}{secrets.token_hex(6)}"


def _base64_forms(value: bytes) -> Iterator[str]:
    """The part of base64(x + value + y) that depends on ``value`` alone, for each of the three alignments."""
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + value).decode()
            start = (shift * 4 + 2) // 3  # characters that also carry the padding bytes
            end = (len(value) + shift) // 3 * 4  # complete groups only: the rest depends on what follows
            core = encoded[start:end]
            if len(core) >= 8:
                yield core


def forms_of(secret: str) -> dict[str, str]:
    """Every form of ``secret`` an output could hold, by name (lower-cased: the search ignores case)."""
    core = max(re.findall(r"[A-Za-z0-9]+", secret), key=len)
    found: dict[str, str] = {
        "plain": secret,
        "core": core,
        "repr": repr(secret),
        "repr-bytes": repr(secret.encode()),
        "json": json.dumps(secret),
        "escaped": secret.encode("unicode_escape").decode(),
        "double-escaped": secret.encode("unicode_escape").decode().replace("\\", "\\\\"),
        "url": urllib.parse.quote(secret, safe=""),
        "url-plus": urllib.parse.quote_plus(secret),
        "hex": secret.encode().hex(),
        "core-hex": core.encode().hex(),
    }
    for index, form in enumerate(_base64_forms(secret.encode())):
        found[f"base64-{index}"] = form
    for index, form in enumerate(_base64_forms(core.encode())):
        found[f"core-base64-{index}"] = form
    # Whitespace-only differences are found through "core"; drop forms that are shorter than it.
    unique: dict[str, str] = {}
    for name, form in found.items():
        if len(form.strip()) >= len(core) and form.lower() not in unique.values():
            unique[name] = form.lower()
    return unique


def leaks_in(text: str | bytes, secret: str) -> list[str]:
    """The forms of ``secret`` found in ``text``, each with an excerpt around it."""
    haystack = text.decode("latin-1") if isinstance(text, bytes) else text
    lowered = haystack.lower()
    hits = []
    for name, form in forms_of(secret).items():
        at = lowered.find(form)
        if at >= 0:
            excerpt = haystack[max(0, at - 60): at + len(form) + 60]
            hits.append(f"{name}: …{excerpt!r}…")
    return hits


def _expanded(data: bytes) -> Iterator[bytes]:
    """``data``, and what it decompresses to when it is a zstd or gzip object."""
    yield data
    if data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
            yield reader.read()
        except zstandard.ZstdError:
            pass
    if data[:2] == b"\x1f\x8b":
        with suppress(OSError, EOFError):
            yield gzip.decompress(data)


@dataclass
class Outputs:
    """Everything a run produced, by where it was found."""

    items: dict[str, str | bytes] = field(default_factory=dict)

    def add(self, where: str, content: str | bytes | None) -> None:
        if content is None:
            return
        if where in self.items:
            where = f"{where} #{sum(1 for k in self.items if k.startswith(where))}"
        self.items[where] = content

    def add_json(self, where: str, value: object) -> None:
        self.add(where, json.dumps(value, default=str, ensure_ascii=False))

    def add_tree(self, root: Path, *, skip: Iterable[Path] = ()) -> None:
        """Every file and folder name under ``root``, and the content of every file but those in ``skip``
        (the user's own input)."""
        skipped = {p.resolve() for p in skip}
        self.add(f"file names under {root}", "\n".join(tree_of(root)))
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.resolve() not in skipped:
                self.add(f"file {path.relative_to(root)}", path.read_bytes())

    def add_bucket(self, client: object, bucket: str) -> None:
        """Every object in ``bucket`` (raw, and decompressed), through a boto3 client."""
        paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        for page in paginator.paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                key = item["Key"]
                self.add(f"object key s3://{bucket}/{key}", key)
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
                for index, data in enumerate(_expanded(body)):
                    self.add(f"object s3://{bucket}/{key}" + (" (decompressed)" if index else ""), data)

    def text(self, where: str) -> str:
        content = self.items[where]
        return content.decode(errors="replace") if isinstance(content, bytes) else content


def tree_of(root: Path) -> list[str]:
    return [str(path.relative_to(root)) for path in sorted(root.rglob("*"))]


def assert_no_canary(outputs: Outputs, *canaries: str) -> None:
    found = []
    for where, content in outputs.items.items():
        for secret in canaries:
            found.extend(f"{where}: {hit}" for hit in leaks_in(content, secret))
    assert not found, "a secret leaked:\n" + "\n".join(found[:40])


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback (most recent call last)" not in text, text[-3000:]


# -- logs --------------------------------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Every log record of the process, at DEBUG, formatted with its traceback (what ``--debug`` prints)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot even be formatted is a finding of its own
            self.lines.append(f"UNFORMATTABLE {record.name}: {record.msg!r} {record.args!r} ({exc!r})")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def capture_logs() -> Iterator[LogCapture]:
    """Capture every logger at DEBUG, as ``capture-export operator --debug`` runs."""
    root = logging.getLogger()
    handler = LogCapture()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
