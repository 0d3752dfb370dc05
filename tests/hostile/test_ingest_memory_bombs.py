"""Memory bombs at the ingest server: bodies that are small on the wire and within every byte limit, but
built so that parsing them creates tens of millions of Python objects. 32 MiB of ``[{},{},…]`` (a few
kilobytes once gzipped) became 11 million dicts, a gigabyte in a parsing process; at the 64 MiB the
server takes, two such requests at once had the pod killed for memory, failing every other client's
request in flight. Each bomb must get a 413 naming the limit, before the memory is spent, and the
server must take an honest request right after."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import cbor2
import psutil
import pytest

from capture_export.ingest import IngestLimits
from capture_export.seed import generate_records
from tests.support.ingest import RunningIngest, ingest_server

DECODED = 32 << 20  # what each bomb decodes to: half the default max_decoded_bytes
PEAK_BOUND = 300 << 20  # the parsing process's peak RSS while it refuses any of them
RECORD_HEAD = b'{"timestamp": "2026-11-24T12:00:00Z", "capture_id": "bomb", "capture": {"x": '


def _repeated(unit: bytes, size: int = DECODED) -> bytes:
    return unit * (size // len(unit))


def _cbor_record_holding(items: bytes, count: int) -> bytes:
    """One CBOR record whose ``capture`` maps "x" to an array of ``count`` items (``items``, encoded)."""
    head = cbor2.dumps({"timestamp": "2026-11-24T12:00:00Z", "capture_id": "bomb"})
    return (bytes([head[0] + 1]) + head[1:] + cbor2.dumps("capture") + b"\xa1" + cbor2.dumps("x")
            + b"\x9a" + count.to_bytes(4, "big") + items)


def _bombs() -> dict[str, tuple[str, str, bytes]]:
    empty_lists = _repeated(b"[],")
    cbor_lists = _repeated(b"\x80")
    return {
        "a JSON array of empty maps": ("/v1/records", "application/json", b"[" + _repeated(b"{},") + b"{}]"),
        "one JSON line nesting empty lists": ("/v1/records", "application/x-ndjson",
                                              RECORD_HEAD + b"[" + empty_lists + b"[]]}}\n"),
        "one record of short strings": ("/v1/records", "application/json",
                                        b"[" + RECORD_HEAD + b'["' + _repeated(b'ab","') + b'"]}}]'),
        "a LiteLLM payload answered with empty lists": (
            "/v1/litellm", "application/json",
            b'{"id": "bomb", "startTime": 1800000000.0, "response": [' + empty_lists + b"[]]}"),
        "OTLP/JSON of empty resourceSpans": ("/v1/traces", "application/json",
                                             b'{"resourceSpans": [' + _repeated(b"{},") + b"{}]}"),
        "a CBOR record of empty arrays": ("/v1/records", "application/cbor-seq",
                                          _cbor_record_holding(cbor_lists, len(cbor_lists))),
        # 0a 02 12 00: a ResourceSpans holding an empty ScopeSpans
        "OTLP protobuf of empty resourceSpans": ("/v1/traces", "application/x-protobuf",
                                                 _repeated(bytes.fromhex("0a021200"))),
    }


def _parsing_process() -> psutil.Process:
    (worker,) = [child for child in psutil.Process().children()
                 if any("spawn_main" in part for part in child.cmdline())]
    return worker


def _peak_rss(process: psutil.Process) -> int:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")


def _reset_peak_rss(process: psutil.Process) -> None:
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the RSS now


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIngest]:
    directory = tmp_path_factory.mktemp("bombs")
    with ingest_server(directory / "store.sqlite", directory, limits=IngestLimits(parse_workers=1)) as server:
        yield server


@pytest.mark.parametrize("case", list(_bombs()))
def test_a_memory_bomb_is_refused_before_the_memory_is_spent(ingest: RunningIngest, case: str) -> None:
    route, content_type, body = _bombs()[case]
    packed = zlib.compress(body, 1, wbits=31)  # gzip; level 1 is the quickest at this size
    assert len(packed) < IngestLimits().max_body_bytes and len(body) < IngestLimits().max_decoded_bytes
    worker = _parsing_process()
    _reset_peak_rss(worker)
    response = ingest.post(route, packed, content_type=content_type, headers={"Content-Encoding": "gzip"})
    peak = _peak_rss(worker)
    answer = f"{case}: {response.status_code} {response.text[:300]}; the parsing process peaked at {peak >> 20} MiB"
    assert peak < PEAK_BOUND, answer
    assert response.status_code == 413 and "--max-values" in response.text, answer
    assert _parsing_process().pid == worker.pid  # the same process: it was not killed and replaced
    # The server is none the worse: an honest request right after goes through.
    honest = json.dumps([{"timestamp": "2026-11-24T12:00:00Z", "capture_id": f"after {case}"}])
    answer = ingest.post("/v1/records", honest)
    assert answer.status_code == 200 and answer.json()["new"] == 1, answer.text


def test_ten_thousand_realistic_records_in_one_request_still_go_through(ingest: RunningIngest) -> None:
    """The bound is far above what real captures hold: the most records a request may carry, each a
    realistic capture (long prompts, many messages, tool calls, headers), as JSON Lines and as one array."""
    from capture_export.export.formats import to_json_line

    lines = [to_json_line(record) for record in generate_records(IngestLimits().max_records, seed=7)]
    body = ("\n".join(lines) + "\n").encode()
    answer = ingest.post("/v1/records", gzip.compress(body, 1), content_type="application/x-ndjson",
                         headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["received"] == len(lines)
