"""Support for the hostile tests of rows capture-export did not write itself and of credential headers.

* CBOR built by hand (``Raw``, ``build``, ``text``, ``text_chunks`` …): what a careless or hostile gateway
  writes, byte for byte, including what cbor2 would never produce (a map header that lies about its
  size, indefinite-length header names, byte-string keys, trailing items, invalid UTF-8).
* ``GatewayDB``: the store as a foreign gateway sees it, one implementation per store kind: it creates the
  store the way an operator would (capture-export's own store class), then writes rows the way a
  gateway does: ``INSERT INTO captures (ts_us, body) VALUES (…)``, nothing else.
* The CLI driven in a subprocess (``run_export``) on a manifest with one or more exporters, and the bucket
  read back as users read it (``bucket_records``): zstd + a cbor2 sequence, JSON Lines, Parquet via
  pyarrow; and ``find_leaks``, which looks for a canary in every form it could take in an object.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import sqlite3
import subprocess
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import zstandard

from capture_export.local_s3 import LocalS3
from tests.support.cli import run_cli

__all__ = [
    "BASE_TIME",
    "EVERY_FORMAT",
    "NATIVE_PATHS",
    "AsText",
    "ExporterCase",
    "GatewayDB",
    "PostgresGateway",
    "Raw",
    "SQLiteGateway",
    "bstr",
    "bucket_objects",
    "bucket_records",
    "build",
    "find_leaks",
    "good_record",
    "head",
    "plain_bytes",
    "run_export",
    "state_of",
    "text",
    "text_chunks",
    "write_exporters",
]

BASE_TIME = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
# Every format and compression an S3Exporter can write, as its spec's fields.
EVERY_FORMAT: dict[str, dict[str, Any]] = {
    "cbor-zstd": {},
    "jsonl": {"format": "jsonl", "compression": "none"},
    "jsonl.gz": {"format": "jsonl", "compression": "gzip"},
    "jsonl.zst": {"format": "jsonl", "compression": "zstd"},
    "parquet": {"format": "parquet"},
}
# The native paths of export/_cbor_json.c as export/batch.py holds them: set each to None for the Python path.
NATIVE_PATHS = ("_native_json_line", "_native_parquet_row", "_native_privacy_prefilter", "_native_privacy_scrubbed",
                "_native_spliced_records", "_native_seals_valid")


# -- CBOR by hand -------------------------------------------------------------------------------------


def head(major: int, argument: int) -> bytes:
    """The head of a CBOR item: major type and its argument (length, count or value), shortest form."""
    if argument < 24:
        return bytes([(major << 5) | argument])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if argument < 1 << (8 * size):
            return bytes([(major << 5) | info]) + argument.to_bytes(size, "big")
    raise ValueError(argument)


def text(value: str) -> bytes:
    data = value.encode("utf-8")
    return head(3, len(data)) + data


def bstr(value: bytes) -> bytes:
    return head(2, len(value)) + value


def text_chunks(*chunks: str) -> bytes:
    """An indefinite-length text string: ``7f``, definite chunks, ``ff`` (RFC 8949 §3.2.3)."""
    return b"\x7f" + b"".join(text(chunk) for chunk in chunks) + b"\xff"


class AsText(bytes):
    """A body a gateway's driver stored as TEXT, byte for byte (SQLite: ``CAST(? AS TEXT)``), UTF-8 or not."""


@dataclass(frozen=True)
class Raw:
    """Bytes spliced into ``build``'s output as they are: a hand-made CBOR item (or a broken one)."""

    data: bytes


def build(value: Any, *, indefinite: bool = False) -> bytes:
    """CBOR of ``value`` where ``Raw`` parts (as keys or values, at any depth) are spliced in verbatim.
    Maps and lists are written with definite lengths unless ``indefinite`` (only for this level)."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, Mapping):
        body = b"".join(build(k) + build(v) for k, v in value.items())
        return b"\xbf" + body + b"\xff" if indefinite else head(5, len(value)) + body
    if isinstance(value, list):
        body = b"".join(build(item) for item in value)
        return b"\x9f" + body + b"\xff" if indefinite else head(4, len(value)) + body
    return cbor2.dumps(value, timezone=UTC)


def good_record(n: int, **overrides: Any) -> dict[str, Any]:
    """A complete, well-formed schema-v2 record (without ``id``) as a decent gateway would write it."""
    record: dict[str, Any] = {
        "ver": 2,
        "timestamp": BASE_TIME + timedelta(seconds=n),
        "identity": {"login_name": f"user{n % 3}@example.com", "node_id": f"node{n % 5}", "tags": ["tag:prod"]},
        "model": "gpt-4o",
        "api_type": "oai_completions",
        "usage": {"input_tokens": 10 + n, "output_tokens": 5, "cached_tokens": 0, "reasoning_tokens": 0},
        "duration_ms": 100 + n,
        "capture_id": f"cap-{n}",
        "session_id": f"sess-{n}",
        "path": "/v1/chat/completions",
        "status_code": 200,
        "capture": {
            "request": {"headers": {"content-type": "application/json", "x-request-id": f"req-{n}"},
                        "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"hello {n}"}]}},
            "response": {"headers": {"content-type": "application/json"},
                         "body": {"choices": [{"index": 0, "finish_reason": "stop"}]}},
        },
    }
    record.update(overrides)
    return record


def timestamp_us(n: int) -> int:
    return int((BASE_TIME + timedelta(seconds=n)).timestamp() * 1_000_000)


# -- the store, as a foreign gateway writes it -------------------------------------------------------------


class GatewayDB:
    """A capture store seen from a gateway that writes it directly. ``url`` is what ``--store`` takes."""

    kind: str
    url: str

    def insert(self, rows: Iterable[tuple[int, bytes | str]]) -> list[int]:
        """``INSERT INTO captures (ts_us, body) VALUES (…)`` for each row, in order; the ids assigned."""
        raise NotImplementedError

    def insert_with(self, ts_us: int, body: bytes, columns: Mapping[str, Any]) -> int:
        """One row with more columns set than a gateway needs (a writer that sets any column it likes)."""
        raise NotImplementedError

    def insert_copying_row(self, source_id: int, ts_us: int, body: bytes) -> int:
        """One row whose every column except ``id``, ``ts_us`` and ``body`` is copied from row
        ``source_id``: whatever marks our own rows (a flag, a seal), a writer that can read them can copy."""
        raise NotImplementedError

    def append_own(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Records appended through capture-export's own store (as ``seed`` and the ingest server do)."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def columns(self) -> list[str]:
        raise NotImplementedError


class SQLiteGateway(GatewayDB):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        from capture_export.store import SQLiteStore

        self.path = path
        self.url = str(path)
        SQLiteStore(path).close()  # created and migrated as an operator would, before the gateway starts

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def insert(self, rows: Iterable[tuple[int, bytes | str]]) -> list[int]:
        with self._connect() as conn:
            return [int(conn.execute("INSERT INTO captures (ts_us, body) VALUES (?, CAST(? AS TEXT))" if isinstance(
                row[1], AsText) else "INSERT INTO captures (ts_us, body) VALUES (?, ?)", row).lastrowid or 0)
                    for row in rows]

    def insert_with(self, ts_us: int, body: bytes, columns: Mapping[str, Any]) -> int:
        names = ", ".join(["ts_us", "body", *columns])
        marks = ", ".join("?" * (2 + len(columns)))
        with self._connect() as conn:
            cursor = conn.execute(f"INSERT INTO captures ({names}) VALUES ({marks})", (ts_us, body, *columns.values()))
            return int(cursor.lastrowid or 0)

    def columns(self) -> list[str]:
        with self._connect() as conn:
            return [row[1] for row in conn.execute("PRAGMA table_info(captures)")]

    def insert_copying_row(self, source_id: int, ts_us: int, body: bytes) -> int:
        copied = [c for c in self.columns() if c not in ("id", "ts_us", "body")]
        names = ", ".join(["ts_us", "body", *copied])
        picks = ", ".join(["?", "?", *copied])
        with self._connect() as conn:
            cursor = conn.execute(f"INSERT INTO captures ({names}) SELECT {picks} FROM captures WHERE id = ?",
                                  (ts_us, body, source_id))
            assert cursor.rowcount == 1
            return int(cursor.lastrowid or 0)

    def append_own(self, records: Sequence[Mapping[str, Any]]) -> int:
        from capture_export.store import SQLiteStore

        store = SQLiteStore(self.path)
        try:
            return store.append(records)
        finally:
            store.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connect() as conn:
            return conn.execute(sql, tuple(params)).fetchall()


class PostgresGateway(GatewayDB):
    kind = "postgres"

    def __init__(self, dsn: str) -> None:
        from capture_export.store.postgres import PostgresStore

        self.url = dsn
        PostgresStore(dsn).close()

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def insert(self, rows: Iterable[tuple[int, bytes | str]]) -> list[int]:
        with self._connect() as conn:
            return [int(conn.execute("INSERT INTO captures (ts_us, body) VALUES (%s, %s) RETURNING id",
                                     row).fetchone()[0]) for row in rows]

    def insert_with(self, ts_us: int, body: bytes, columns: Mapping[str, Any]) -> int:
        names = ", ".join(["ts_us", "body", *columns])
        marks = ", ".join(["%s"] * (2 + len(columns)))
        with self._connect() as conn:
            return int(conn.execute(f"INSERT INTO captures ({names}) VALUES ({marks}) RETURNING id",
                                    (ts_us, body, *columns.values())).fetchone()[0])

    def columns(self) -> list[str]:
        with self._connect() as conn:
            return [row[0] for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'captures' "
                "AND table_schema = current_schema() ORDER BY ordinal_position")]

    def insert_copying_row(self, source_id: int, ts_us: int, body: bytes) -> int:
        copied = [c for c in self.columns() if c not in ("id", "ts_us", "body")]
        names = ", ".join(["ts_us", "body", *copied])
        picks = ", ".join(["%s", "%s", *copied])
        with self._connect() as conn:
            row = conn.execute(f"INSERT INTO captures ({names}) SELECT {picks} FROM captures WHERE id = %s "
                               "RETURNING id", (ts_us, body, source_id)).fetchone()
            assert row is not None
            return int(row[0])

    def append_own(self, records: Sequence[Mapping[str, Any]]) -> int:
        from capture_export.store.postgres import PostgresStore

        store = PostgresStore(self.url)
        try:
            return store.append(records)
        finally:
            store.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connect() as conn:
            cursor = conn.execute(sql.replace("?", "%s"), tuple(params))
            return cursor.fetchall() if cursor.description else []


# -- the CLI ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExporterCase:
    """One S3Exporter of a manifest: its name, its prefix and the extra spec lines (YAML, 2-space indent)."""

    name: str
    prefix: str
    extra_spec: Mapping[str, Any]


def write_exporters(path: Path, s3: LocalS3, bucket: str, exporters: Sequence[ExporterCase], *,
                    limit: int = 200, more: Sequence[Mapping[str, Any]] = ()) -> Path:
    """A manifest with the S3 Secret and one S3Exporter per case, all on ``bucket``, then ``more``
    documents (e.g. a RetentionPolicy)."""
    documents = [{
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": "default"},
        "stringData": {"access_key_id": s3.access_key_id, "access_secret": s3.secret_access_key},
    }]
    for case in exporters:
        spec = {"bucket": bucket, "region": "us-east-1", "endpoint": s3.endpoint, "secretRef": {"name": "s3-creds"},
                "prefix": case.prefix, "limit": limit, "every": 3600, **case.extra_spec}
        documents.append({"apiVersion": "capture.dev/v1alpha1", "kind": "S3Exporter",
                          "metadata": {"name": case.name, "namespace": "default"}, "spec": spec})
    documents.extend(more)
    path.write_text("---\n".join(json.dumps(document) + "\n" for document in documents))  # JSON is YAML
    return path


def run_export(manifest: Path, store: GatewayDB | str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``capture-export run --once`` on the manifest against the store (or its URL), state in
    ``cwd/state.json``."""
    url = store.url if isinstance(store, GatewayDB) else str(store)
    return run_cli("run", "--once", "-f", manifest, "--store", url, "--state", cwd / "state.json", cwd=cwd,
                   timeout=300)


def state_of(cwd: Path, name: str) -> dict[str, Any]:
    return json.loads((cwd / "state.json").read_text())[f"S3Exporter/default/{name}"]


# -- the bucket, read as users read it ----------------------------------------------------------------------


def bucket_objects(s3: LocalS3, bucket: str, prefix: str) -> list[tuple[str, bytes]]:
    """Every data object under ``prefix/`` (the exporters' control folder left out), by key."""
    client = s3.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return [(key, client.get_object(Bucket=bucket, Key=key)["Body"].read())
            for key in sorted(keys) if "/_capture-export/" not in key]


def plain_bytes(key: str, data: bytes) -> bytes:
    """The object's bytes as a reader sees them once decompressed (Parquet: every value of every row)."""
    if key.endswith((".zstd", ".zst")):
        return zstandard.ZstdDecompressor().decompress(data)
    if key.endswith(".gz"):
        return gzip.decompress(data)
    if key.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(io.BytesIO(data)).to_pylist()
        return repr(rows).encode() + b"".join(v for row in rows for v in row.values() if isinstance(v, bytes))
    return data


def cbor_sequence(data: bytes) -> list[Any]:
    """Decode an RFC 8742 CBOR sequence, as the Aperture docs tell their users (cbor2)."""
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(stream)
    items = []
    while stream.tell() < len(data):
        items.append(decoder.decode())
    return items


def object_records(key: str, data: bytes) -> list[Any]:
    """The records of one data object, decoded by its format (told by the key's extension) as a user would:
    zstd + cbor2 (cbor-zstd), one ``json.loads`` per line (JSON Lines), pyarrow (Parquet). A reader error is
    raised as it is: an object users cannot read is a failure."""
    plain = plain_bytes(key, data)
    if key.endswith(".cbor.zstd"):
        return cbor_sequence(plain)
    if ".jsonl" in key:
        # JSON Lines ends a line at "\n" only: str.splitlines would also break inside a raw U+2028 or U+0085
        return [json.loads(line) for line in plain.split(b"\n") if line.strip()]
    if key.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    raise AssertionError(f"unexpected object {key}")


def bucket_records(s3: LocalS3, bucket: str, prefix: str) -> list[Any]:
    """Every record of every data object under the prefix, in key order (see ``object_records``)."""
    return [record for key, data in bucket_objects(s3, bucket, prefix) for record in object_records(key, data)]


def _forms(canary: str) -> set[bytes]:
    """The ways a canary string could appear in an object: as is, upper or lower case, URL-encoded, and
    base64-encoded at each of the three alignments (the middle of a longer base64 run)."""
    raw = canary.encode()
    forms = {raw, raw.lower(), raw.upper(), urllib.parse.quote(canary).encode()}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        # Skip the characters that depend on the padding bytes or the bytes after the canary.
        start = (pad * 8 + 5) // 6 + 1
        forms.add(encoded[start:len(encoded) - 4])
    return {form for form in forms if len(form) >= 8}


def find_leaks(objects: Iterable[tuple[str, bytes]], canaries: Iterable[str]) -> list[tuple[str, str]]:
    """``(object key, canary)`` for every canary found in any object, in any of its forms, in the object
    as stored or once decompressed (for JSON Lines also after base64-decoding the ``$base64`` values)."""
    found = []
    canaries = list(canaries)
    for key, data in objects:
        blobs = [data, plain_bytes(key, data)]
        if ".jsonl" in key:
            for line in blobs[1].split(b"\n"):
                blobs.extend(_base64_values(json.loads(line)) if line.strip() else [])
        for canary in canaries:
            if any(form in blob for blob in blobs for form in _forms(canary)):
                found.append((key, canary))
    return found


def _base64_values(node: Any) -> list[bytes]:
    if isinstance(node, dict):
        if set(node) == {"$base64"} and isinstance(node["$base64"], str):
            return [base64.b64decode(node["$base64"])]
        return [b for value in node.values() for b in _base64_values(value)]
    if isinstance(node, list):
        return [b for value in node for b in _base64_values(value)]
    return []
