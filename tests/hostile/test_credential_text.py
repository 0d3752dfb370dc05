"""A gateway that writes its capture, or a part of it, as *text*: JSON text (a string holding
``{"request": {"headers": {"Authorization": …}}}``), JSON text inside JSON text, JSON in a byte string, or
a raw HTTP message as text under a key not named ``raw``. Its credentials must not reach the bucket in any
format, and everything else of the capture must.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest

from capture_export.local_s3 import LocalS3
from tests.support.ingest import RunningIngest, ingest_server
from tests.support.trust import (
    ExporterCase,
    SQLiteGateway,
    bucket_objects,
    bucket_records,
    build,
    find_leaks,
    good_record,
    run_export,
    timestamp_us,
    write_exporters,
)

FORMATS = {"cbor-zstd": {}, "jsonl": {"format": "jsonl"}, "parquet": {"format": "parquet"}}


def _canary() -> str:
    return f"sk-live-{secrets.token_hex(8)}"


def _request(n: int, secret: str) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {secret}", "x-request-id": f"keep-req-{n}"},
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"keep-prompt-{n}"}]}}


def _capture_as_json_text(n: int, secret: str) -> dict[str, Any]:
    return good_record(n, capture=json.dumps({"request": _request(n, secret), "response": {"status": 200}}))


def _request_as_json_text(n: int, secret: str) -> dict[str, Any]:
    return good_record(n, capture={"request": json.dumps(_request(n, secret)), "response": {"body": {}}})


def _headers_as_json_text(n: int, secret: str) -> dict[str, Any]:
    request = _request(n, secret)
    request["headers"] = json.dumps(request["headers"], indent=2)
    return good_record(n, capture={"request": request})


def _header_pairs_as_json_text(n: int, secret: str) -> dict[str, Any]:
    request = _request(n, secret)
    request["headers"] = json.dumps([["X-Api-Key", secret], ["x-request-id", f"keep-req-{n}"]])
    return good_record(n, capture={"request": request})


def _json_text_in_json_text(n: int, secret: str) -> dict[str, Any]:
    inner = json.dumps(_request(n, secret))
    return good_record(n, capture=json.dumps({"request": inner, "note": "keep-outer"}))


def _json_in_bytes(n: int, secret: str) -> dict[str, Any]:
    return good_record(n, capture=json.dumps({"request": _request(n, secret)}).encode())


def _escaped_name(n: int, secret: str) -> dict[str, Any]:
    # \u0041 is 'A': the name is only "Authorization" once the JSON is parsed.
    text = json.dumps({"request": _request(n, secret)}).replace('"Authorization"', '"\\u0041uthorization"')
    return good_record(n, capture=text)


def _truncated_json_text(n: int, secret: str) -> dict[str, Any]:
    # Gateways cut long bodies: what is left is no longer JSON, yet the key is in it.
    return good_record(n, capture=json.dumps({"request": _request(n, secret)})[:-3])


def _raw_http_text(n: int, secret: str) -> dict[str, Any]:
    message = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer {secret}\r\n"
               f"Content-Type: application/json\r\n\r\n{{\"model\": \"gpt-4o\", \"note\": \"keep-req-{n}\"}}")
    return good_record(n, capture=message)


SHAPES: dict[str, tuple[Callable[[int, str], dict[str, Any]], list[str]]] = {
    "capture-json-text": (_capture_as_json_text, ["keep-req-{n}", "keep-prompt-{n}"]),
    "request-json-text": (_request_as_json_text, ["keep-req-{n}", "keep-prompt-{n}"]),
    "headers-json-text": (_headers_as_json_text, ["keep-req-{n}", "keep-prompt-{n}"]),
    "header-pairs-json-text": (_header_pairs_as_json_text, ["keep-req-{n}"]),
    "json-text-in-json-text": (_json_text_in_json_text, ["keep-req-{n}", "keep-outer"]),
    "json-in-bytes": (_json_in_bytes, ["keep-req-{n}", "keep-prompt-{n}"]),
    "escaped-name": (_escaped_name, ["keep-req-{n}", "keep-prompt-{n}"]),
    "truncated-json-text": (_truncated_json_text, ["keep-req-{n}", "keep-prompt-{n}"]),
    "raw-http-text": (_raw_http_text, ["keep-req-{n}", "api.openai.com"]),
}


def _everything(node: Any) -> str:
    """Every key and value of an exported record as one string: ``$base64`` values (JSON Lines, Parquet's
    JSON columns) decoded, byte strings read as UTF-8, JSON text (Parquet's columns) read too."""
    if isinstance(node, dict) and set(node) == {"$base64"}:
        return _everything(base64.b64decode(node["$base64"]))
    if isinstance(node, dict):
        return " ".join(f"{_everything(k)} {_everything(v)}" for k, v in node.items())
    if isinstance(node, list | tuple):
        return " ".join(_everything(v) for v in node)
    if isinstance(node, bytes):
        return _everything(node.decode("utf-8", "replace"))
    if isinstance(node, str) and node.lstrip()[:1] in ("{", "["):
        try:
            return node + " " + _everything(json.loads(node))
        except ValueError:
            return node
    return str(node)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_credentials_in_text_captures_never_reach_the_bucket(
    fmt: str, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    secrets_by_id: dict[int, tuple[str, str, list[str]]] = {}
    for index, (name, (make, kept)) in enumerate(SHAPES.items()):
        n = index + 1
        secret = _canary()
        (record_id,) = db.insert([(timestamp_us(n), build(make(n, secret)))])  # a foreign row, by SQL
        secrets_by_id[record_id] = (name, secret, [k.format(n=n) for k in kept])

    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", FORMATS[fmt])])
    run = run_export(manifest, db, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr

    records = bucket_records(s3_server, bucket, "llm")
    assert sorted(int(r["id"]) for r in records) == sorted(secrets_by_id)
    leaks = find_leaks(bucket_objects(s3_server, bucket, "llm"), [s for _, s, _ in secrets_by_id.values()])
    leaked = sorted(name for name, secret, _ in secrets_by_id.values() if any(c == secret for _, c in leaks))
    assert not leaked, f"{fmt}: credentials exported from {leaked}"
    for record in records:
        name, _, kept = secrets_by_id[int(record["id"])]
        text = _everything(record)
        for part in kept:
            assert part in text, (fmt, name, part)


def test_native_ingest_strips_credentials_from_a_json_text_capture(tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    secret, raw_secret = _canary(), _canary()
    line = {"timestamp": "2026-11-24T12:00:01.000001Z", "capture_id": "c-1", "model": "gpt-4o",
            "usage": {"input_tokens": 3, "output_tokens": 4}, "status_code": 200,
            "capture": {"request": json.dumps(_request(1, secret))}}  # the ingest server wants a map here
    message = f"POST /v1/chat HTTP/1.1\r\nX-Api-Key: {raw_secret}\r\nx-request-id: keep-req-2\r\n\r\n{{}}"
    raw = {**line, "capture_id": "c-2", "capture": {"message": message}}
    server: RunningIngest
    with ingest_server(store, tmp_path) as server:
        response = server.post("/v1/records", "\n".join(json.dumps(r) for r in (line, raw)),
                               content_type="application/x-ndjson")
        assert response.status_code == 200, response.text
    conn = sqlite3.connect(store)
    try:
        bodies = [bytes(row[0]) for row in conn.execute("SELECT body FROM captures ORDER BY id")]
    finally:
        conn.close()
    assert len(bodies) == 2
    assert not any(secret.encode() in body or raw_secret.encode() in body for body in bodies)
    captures = [cbor2.loads(body)["capture"] for body in bodies]
    assert json.loads(captures[0]["request"])["headers"] == {"x-request-id": "keep-req-1"}
    assert "keep-prompt-1" in captures[0]["request"]
    assert "X-Api-Key: REDACTED" in captures[1]["message"] and "keep-req-2" in captures[1]["message"]


def _previous_version_seal(db: SQLiteGateway, body: bytes) -> bytes:
    """The seal the previous version's append wrote: the same MAC, under its credential rules' context."""
    import hashlib
    import hmac

    with db._connect() as conn:
        (key_hex,) = conn.execute("SELECT value FROM capture_export_meta WHERE key = 'seal_key'").fetchone()
    mac_key = hashlib.sha256(bytes.fromhex(key_hex) + b"capture-export seal v1 / credential rules 2").digest()
    return hmac.digest(mac_key.ljust(64, b"\0"), body, "sha256")[:16]


def test_rows_sealed_under_the_narrower_rules_of_the_previous_version_are_checked_again(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    """A store written by the previous version: its append stripped only what its rules knew, and sealed the
    rest as trusted. After an upgrade the wider rules must reach those rows too (seal.py's SEAL_CONTEXT)."""
    db = SQLiteGateway(tmp_path / "store.sqlite")
    secret = _canary()
    body = build(_capture_as_json_text(1, secret))
    db.insert_with(timestamp_us(1), body, {"seal": _previous_version_seal(db, body)})

    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", FORMATS["cbor-zstd"])])
    run = run_export(manifest, db, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(bucket_records(s3_server, bucket, "llm")) == 1
    assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [secret]), \
        "a row sealed under the previous credential rules was exported unchecked"
