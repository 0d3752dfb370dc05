"""A gateway writes the store directly and puts conversation content in privacy mode's blind spots.

Privacy mode keeps, of a request or response, its headers, its ``raw_content_type`` and the values that
describe the exchange (numbers, flags, dates), and drops every text, list, map and byte string it does not
know. A writer that keeps content in a type that is none of those (a CBOR set of prompts, text under a tag
no reader knows) or under ``raw_content_type`` as a map, must not get that content past privacy mode in
any format: the exported records keep the describing values and nothing of the canary.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest

from capture_export.local_s3 import LocalS3
from tests.support.trust import (
    BASE_TIME,
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

FORMATS = {
    "cbor-zstd": {},
    "jsonl.zst": {"format": "jsonl", "compression": "zstd"},
}
CANARY = "cnryOddPrivacy7f3c19d2ab60"


def _odd_capture(n: int) -> dict[str, Any]:
    capture = good_record(n)["capture"]
    request, response = dict(capture["request"]), dict(capture["response"])
    # What describes the exchange, and stays: a number, a flag, a date.
    request.update({"attempt": 2, "streamed": False, "sent_at": BASE_TIME + timedelta(seconds=n)})
    request["prompt_variants"] = {f"{CANARY} set {n}"}  # CBOR tag 258: decoded as a Python set
    response["transcript"] = cbor2.CBORTag(4242, f"{CANARY} tagged {n}")  # a tag no reader knows
    request["raw_content_type"] = {"messages": [f"{CANARY} raw content type {n}"]}
    return {**capture, "request": request, "response": response}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_privacy_mode_drops_content_in_odd_types(fmt: str, s3_server: LocalS3, bucket: str,
                                                 tmp_path: Path) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    rows: list[tuple[int, bytes | str]] = [(timestamp_us(n), build(good_record(n, capture=_odd_capture(n))))
                                           for n in range(1, 4)]
    db.insert(rows)
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("private", "llm", {**FORMATS[fmt], "privacyMode": True})])
    run = run_export(manifest, db, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY]) == []
    records = bucket_records(s3_server, bucket, "llm")
    assert [record["id"] for record in records] == [1, 2, 3]
    request = records[0]["capture"]["request"]
    assert request["attempt"] == 2 and request["streamed"] is False and "sent_at" in request, request
    assert not {"prompt_variants", "raw_content_type"} & set(request), request
    assert "transcript" not in records[0]["capture"]["response"], records[0]
