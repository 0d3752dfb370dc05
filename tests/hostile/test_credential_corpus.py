"""Credential headers never reach the bucket, whatever encoding and shape a gateway wrote them in.

A corpus of foreign rows, each carrying a canary credential in one encoding or shape a gateway really
writes (header names as indefinite-length or byte strings, mixed case, the wider list of credential
headers, ``[name, value]`` pairs, HAR-style ``[{name, value}]`` lists, ``Headers``/``request_headers``
keys, ``?key=``/``api_key=`` in ``path`` and in URL fields, ``Authorization:`` lines in raw bodies, rows
that set our own rows' marker columns), is exported from SQLite and from PostgreSQL in every format
(cbor-zstd, JSON Lines plain/gzip/zstd, Parquet) and every mode (as stored, privacy mode, redactions, a
filter). No canary may appear in any object, in any form; everything else of the records must.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from capture_export.local_s3 import LocalS3
from capture_export.store.records import timestamp_micros
from tests.support.trust import (
    ExporterCase,
    GatewayDB,
    PostgresGateway,
    Raw,
    SQLiteGateway,
    bstr,
    bucket_objects,
    bucket_records,
    build,
    find_leaks,
    good_record,
    run_export,
    state_of,
    text_chunks,
    timestamp_us,
    write_exporters,
)

FORMATS = {
    "cbor-zstd": {},
    "jsonl": {"format": "jsonl"},
    "jsonl-gzip": {"format": "jsonl", "compression": "gzip"},
    "jsonl-zstd": {"format": "jsonl", "compression": "zstd"},
    "parquet": {"format": "parquet"},
}
MODES = {
    "stored": {},
    "privacy": {"privacyMode": True},
    "redact": {"redactFields": ["capture.response.body", "identity.login_name"]},
    "filter": {"filter": {"models": ["gpt-4o"]}},
}


def canary(label: str) -> str:
    return f"cnry{label.replace('-', '')[:12]}{secrets.token_hex(6)}"


@dataclass
class CorpusRow:
    name: str
    canary: str
    record: dict[str, Any]  # may hold Raw parts
    # Strings that must still be in the record exported as stored: what stripping must leave alone.
    kept: list[str] = field(default_factory=list)
    insert: str = "plain"  # plain | stripped-flag (SQLite) | copied-columns


def _with_request_headers(n: int, headers: Any, **more: Any) -> dict[str, Any]:
    record = good_record(n, **more)
    record["capture"]["request"]["headers"] = headers
    return record


def corpus() -> list[CorpusRow]:
    rows: list[CorpusRow] = []

    def add(name: str, make: Callable[[int, str], dict[str, Any]], kept: list[str] | None = None,
            insert: str = "plain") -> None:
        secret = canary(name)
        rows.append(CorpusRow(name, secret, make(len(rows) + 2, secret), kept or [], insert))

    def header(name_item: Any, value: Any = None, keep: str = "keep-me") -> Callable[[int, str], dict[str, Any]]:
        return lambda n, c: _with_request_headers(
            n, {name_item: value(c) if callable(value) else f"Bearer {c}", "x-request-id": f"req-{n}-{keep}"})

    add("indefinite-name", header(Raw(text_chunks("Au", "thorization"))), ["keep-me"])
    add("indefinite-name-mixed-case", header(Raw(text_chunks("x-Api", "-KEY")), lambda c: c), ["keep-me"])
    add("byte-string-name", header(Raw(bstr(b"Authorization"))), ["keep-me"])
    add("byte-string-name-api-key", header(Raw(bstr(b"api-key")), lambda c: c), ["keep-me"])
    add("byte-string-value", header("authorization", lambda c: Raw(bstr(f"Bearer {c}".encode()))), ["keep-me"])
    add("mixed-case", header("AuThOrIzAtIoN", lambda c: f"Basic {c}"), ["keep-me"])
    add("padded-name", header(" Authorization ", lambda c: f"Bearer {c}"), ["keep-me"])
    add("wsgi-name", header("HTTP_AUTHORIZATION", lambda c: f"Bearer {c}"), ["keep-me"])
    add("x-goog-api-key", header("x-goog-api-key", lambda c: c), ["keep-me"])
    add("ocp-apim-subscription-key", header("Ocp-Apim-Subscription-Key", lambda c: c), ["keep-me"])
    add("x-auth-token", header("X-Auth-Token", lambda c: c), ["keep-me"])
    add("x-amz-security-token", header("X-Amz-Security-Token", lambda c: c), ["keep-me"])
    add("proxy-authorization", header("Proxy-Authorization", lambda c: f"Basic {c}"), ["keep-me"])
    add("cookie", header("Cookie", lambda c: f"session={c}"), ["keep-me"])
    add("go-style-value-list", header("Authorization", lambda c: [f"Bearer {c}"]), ["keep-me"])
    add("name-value-pairs", lambda n, c: _with_request_headers(
        n, [["Authorization", f"Bearer {c}"], ["accept", "keep-pairs"]]), ["keep-pairs"])
    add("har-list", lambda n, c: _with_request_headers(
        n, [{"name": "authorization", "value": f"Bearer {c}"}, {"name": "accept", "value": "keep-har"}]), ["keep-har"])
    add("har-list-indefinite-name", lambda n, c: _with_request_headers(
        n, [{"name": Raw(text_chunks("X-API", "-Key")), "value": c}, {"name": "accept", "value": "keep-har2"}]),
        ["keep-har2"])

    def capital_headers(n: int, c: str) -> dict[str, Any]:
        record = good_record(n)
        record["capture"]["request"] = {"Headers": {"Authorization": f"Bearer {c}", "Accept": "keep-Headers"},
                                        "body": record["capture"]["request"]["body"]}
        return record

    add("Headers-key", capital_headers, ["keep-Headers"])

    def request_headers_key(n: int, c: str) -> dict[str, Any]:
        record = good_record(n)
        record["capture"]["request_headers"] = {"x-api-key": c, "accept": "keep-request_headers"}
        record["capture"]["extra_headers"] = {"Authorization": f"Bearer {c}"}
        return record

    add("request_headers-key", request_headers_key, ["keep-request_headers"])

    def top_level_headers(n: int, c: str) -> dict[str, Any]:
        return {**good_record(n), "headers": {"authorization": f"Bearer {c}", "accept": "keep-top"}}

    add("top-level-headers", top_level_headers, ["keep-top"])

    def tool_headers(n: int, c: str) -> dict[str, Any]:
        record = good_record(n)
        record["capture"]["tool_use"] = [{"id": "t1", "name": "http_get",
                                          "input": {"url": "https://x.test/", "headers": {"X-Api-Key": c}}}]
        return record

    add("nested-tool-headers", tool_headers)
    add("path-key", lambda n, c: good_record(n, path=f"/v1beta/models/gemini-1.5-pro:generateContent?alt=sse&key={c}"),
        ["/v1beta/models/gemini-1.5-pro:generateContent", "alt=sse"])
    add("path-api_key", lambda n, c: good_record(n, path=f"/v1/chat/completions?api_key={c}&user=keep-path"),
        ["/v1/chat/completions", "user=keep-path"])

    def url_field(n: int, c: str) -> dict[str, Any]:
        record = good_record(n)
        record["capture"]["request"]["url"] = f"https://generativelanguage.googleapis.com/v1beta/models?key={c}"
        record["capture"]["upstream_url"] = f"https://api.example.test/v1/chat?access_token={c}&keep=url"
        return record

    add("url-fields", url_field, ["generativelanguage.googleapis.com/v1beta/models", "keep=url"])

    def raw_body(n: int, c: str) -> dict[str, Any]:
        record = good_record(n)
        record["capture"]["request"]["raw_body"] = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer "
            + c.encode() + b"\r\nContent-Type: application/json\r\n\r\n{\"model\": \"keep-raw\"}")
        record["capture"]["response"]["raw_body"] = b"HTTP/1.1 200 OK\nset-cookie: s=" + c.encode() + b"\n\n{}"
        return record

    add("raw-body-lines", raw_body, ["keep-raw"])
    # Whatever marks the rows capture-export appended itself, a writer that sets it must not be trusted.
    add("stripped-flag", header("Authorization"), ["keep-me"], insert="stripped-flag")
    add("copied-columns", header("Authorization"), ["keep-me"], insert="copied-columns")
    return rows


def _insert(db: GatewayDB, rows: list[CorpusRow], own_id: int) -> dict[int, CorpusRow]:
    by_id: dict[int, CorpusRow] = {}
    for row in rows:
        body = build(row.record)
        ts_us = timestamp_micros(row.record["timestamp"])  # the row's time is its record's (store contract)
        if row.insert == "stripped-flag":
            record_id = db.insert_with(ts_us, body, {"stripped": 1})
        elif row.insert == "copied-columns":
            record_id = db.insert_copying_row(own_id, ts_us, body)
        else:
            (record_id,) = db.insert([(ts_us, body)])
        by_id[record_id] = row
    return by_id


def _walk_strings(node: Any) -> str:
    """Every key and value of a decoded record as one string (JSON Lines' ``$base64`` values decoded)."""
    if isinstance(node, dict) and set(node) == {"$base64"}:
        return base64.b64decode(node["$base64"]).decode("utf-8", "replace")
    if isinstance(node, dict):
        return " ".join(f"{_walk_strings(k)} {_walk_strings(v)}" for k, v in node.items())
    if isinstance(node, list | tuple):
        return " ".join(_walk_strings(v) for v in node)
    if isinstance(node, bytes):
        return node.decode("utf-8", "replace")
    return str(node)


def _export_corpus(db: GatewayDB, fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    own_canary = canary("own-append")
    own = _with_request_headers(1, {"Authorization": f"Bearer {own_canary}", "x-request-id": "req-1-keep-me"})
    own_id = db.append_own([own])
    assert own_id == 1
    rows = corpus()
    if db.kind != "sqlite":
        rows = [row for row in rows if row.insert != "stripped-flag"]
    by_id = _insert(db, rows, own_id)
    # One record the filter excludes (another model), with nothing secret in it.
    (excluded,) = db.insert([(timestamp_us(99), build(good_record(99, model="claude-sonnet-4")))])

    cases = [ExporterCase(f"{fmt}-{mode}", f"{fmt}-{mode}", {**FORMATS[fmt], **spec}) for mode, spec in MODES.items()]
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, cases)
    run = run_export(manifest, db, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr

    canaries = [own_canary, *(row.canary for row in rows)]
    for case in cases:
        objects = bucket_objects(s3_server, bucket, case.prefix)
        records = bucket_records(s3_server, bucket, case.prefix)
        exported = sorted(int(r["id"]) for r in records)
        expected = sorted([own_id, *by_id] + ([] if case.name.endswith("filter") else [excluded]))
        assert exported == expected, (case.name, state_of(tmp_path, case.name)["lastRun"])
        leaks = find_leaks(objects, canaries)
        sources = {"own-append" if c == own_canary else next(r.name for r in rows if r.canary == c) for _, c in leaks}
        assert not leaks, f"{case.name}: credentials exported from {sorted(sources)}"
        if case.name.endswith("stored"):
            by_record = {int(r["id"]): _walk_strings(r) for r in records}
            for record_id, row in by_id.items():
                for kept in row.kept:
                    assert kept in by_record[record_id], (case.name, row.name, kept)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_no_credential_of_the_corpus_reaches_the_bucket_sqlite(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    _export_corpus(SQLiteGateway(tmp_path / "store.sqlite"), fmt, s3_server, bucket, tmp_path)


@pytest.mark.postgres
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_no_credential_of_the_corpus_reaches_the_bucket_postgres(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path, pg_dsn: str
) -> None:
    _export_corpus(PostgresGateway(pg_dsn), fmt, s3_server, bucket, tmp_path)


@pytest.mark.parametrize("fmt", ["cbor-zstd", "jsonl", "parquet"])
def test_strip_headers_adds_header_names_for_own_and_foreign_rows(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    own, foreign = canary("own-my-token"), canary("foreign-my-token")
    db.append_own([_with_request_headers(1, {"X-My-Token": own, "x-request-id": "req-1-keep-me"})])
    db.insert([(timestamp_us(2), build(_with_request_headers(2, {"x-my-token": foreign, "x-request-id": "req-2"})))])
    spec = {**FORMATS[fmt], "stripHeaders": ["X-My-Token"]}
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, [ExporterCase("usage", "llm", spec)])
    run = run_export(manifest, db, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    records = bucket_records(s3_server, bucket, "llm")
    assert [int(r["id"]) for r in records] == [1, 2]
    assert "req-1-keep-me" in _walk_strings(records[0])
    assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [own, foreign])


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_byte_string_keys_inside_a_record_do_not_wedge_json_or_parquet(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    record = good_record(1)
    record["capture"]["request"]["body"] = {Raw(bstr(b"prompt_id")): "p-1", "model": "gpt-4o"}
    db.insert([(timestamp_us(1), build(record)), (timestamp_us(2), build(good_record(2)))])
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", FORMATS[fmt])])
    run = run_export(manifest, db, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    records = bucket_records(s3_server, bucket, "llm")
    assert [int(r["id"]) for r in records] == [1, 2]
    assert "prompt_id" in _walk_strings(records[0]) and "p-1" in _walk_strings(records[0])
