"""Formats, path templates and their validation: encoders, readers, the key layout, the spec fields."""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import cbor2
import pytest
import yaml
import zstandard
from pydantic import ValidationError

from capture_export.api import S3ExporterSpec
from capture_export.audit import decode_object
from capture_export.export.format_names import FORMAT_NAMES
from capture_export.export.formats import (
    DATA_EXTENSIONS,
    FORMATS,
    ZSTD_ONE_SHOT_BYTES,
    CborZstdEncoder,
    JsonLinesEncoder,
    ParquetEncoder,
    encoder_for,
    json_bytes,
    parquet_schema,
    record_ids,
    to_json_line,
    zstd_frame,
)
from capture_export.export.layout import ObjectLayout
from capture_export.seed import generate_records
from capture_export.store.records import encode_body, with_id
from tests.support.records import make_record
from tests.support.trust import cbor_sequence

ROOT = Path(__file__).resolve().parents[2]


def exported(records: list[dict]) -> list[dict]:
    """Records as the engine hands them to an encoder: stored, then id spliced in, then decoded."""
    return [cbor2.loads(with_id(i, encode_body(r)[1])) for i, r in enumerate(records, start=1)]


def spec(**fields: object) -> S3ExporterSpec:
    return S3ExporterSpec.model_validate({"bucket": "exports", "region": "us-east-1", **fields})


# -- the spec -------------------------------------------------------------------------------------------


def test_defaults_keep_the_aperture_format_and_flat_keys() -> None:
    s = spec()
    assert (s.format, s.compression, s.path_template, s.hive_partitioning) == ("cbor-zstd", None, "{prefix}", False)
    assert (s.privacy_mode, s.redact_fields, s.filter) == (False, [], None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pathTemplate": "{prefix}/{apiKeyName}"}, r"pathTemplate[\s\S]*unknown variable \{apiKeyName\}"),
        ({"pathTemplate": "{prefix}/{date}/"}, "must not start or end with '/'"),
        ({"pathTemplate": "/{prefix}"}, "must not start or end with '/'"),
        ({"pathTemplate": "{prefix}//{date}"}, "empty segment"),
        ({"pathTemplate": "{prefix}/../{date}"}, "'..' segment"),
        ({"pathTemplate": "{prefix}/_capture-export"}, "'_capture-export' segment"),
        ({"pathTemplate": "{prefix}/{date"}, "unbalanced"),
        ({"pathTemplate": "{prefix}/a b"}, "literal text"),
        ({"pathTemplate": "{date}/{prefix}", "prefix": ""}, r"\{prefix\} may only appear at the start"),
        ({"pathTemplate": "{date}", "prefix": "llm"}, r"must start with \{prefix\}/ when prefix is set"),
        ({"pathTemplate": "{prefix}x/{date}", "prefix": "llm"}, r"must start with \{prefix\}/"),
        ({"pathTemplate": "{prefix}/year={year}", "hivePartitioning": True}, "write {year}, not year={year}"),
        ({"format": "avro"}, "format"),
        ({"compression": "gzip"}, "cbor-zstd is always zstd"),
        ({"format": "jsonl", "compression": "brotli"}, "compression"),
        ({"redactFields": ["id"]}, r"redactFields[\s\S]*must start with one of"),
        ({"redactFields": ["timestamp"]}, "id, ver and timestamp are always exported"),
        ({"redactFields": ["capture..body"]}, "redactFields"),
        ({"filter": {"models": []}}, r"filter.models[\s\S]*at least 1 item"),
        ({"filter": {"statusCodes": [42]}}, r"filter.statusCodes[\s\S]*greater than or equal to 100"),
        ({"filter": {"model": ["gpt-4o"]}}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_new_fields_are_refused_naming_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"pathTemplate": "{prefix}/{date}", "prefix": "llm"},
        {"pathTemplate": "{prefix}", "prefix": "llm"},
        {"pathTemplate": "{exporter}/{namespace}/{year}/{month}/{day}/{hour}"},
        {"pathTemplate": "archive/{date}", "prefix": ""},
        {"pathTemplate": "{prefix}/year={year}/m{month}", "prefix": "llm"},
        {"format": "jsonl", "compression": "gzip"},
        {"format": "parquet", "compression": "none"},
        {"format": "cbor-zstd", "compression": "zstd"},
        {"redactFields": ["capture.request.body.metadata", "identity.login_name", "capture.*.headers.x-forwarded-for"]},
        {"filter": {"models": ["claude-*"], "apiTypes": ["ant_messages"], "tags": ["tag:prod"], "statusCodes": [200]}},
    ],
)
def test_valid_new_fields_are_accepted(fields: dict) -> None:
    spec(**fields)


def test_crd_carries_the_template_pattern_and_cel_mirrors() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "s3exporters.capture.dev.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    import re

    pattern = re.compile(schema["properties"]["pathTemplate"]["pattern"])
    assert pattern.match("{prefix}/{year}/{month}/{day}") and pattern.match("{prefix}")
    assert not pattern.match("{prefix}/{apiKeyName}") and not pattern.match("{prefix}/") and not pattern.match("/a")
    rules = " ".join(rule["rule"] for rule in schema["x-kubernetes-validations"])
    assert "oldSelf.pathTemplate" in rules and "startsWith('{prefix}/')" in rules and "self.compression" in rules
    assert schema["properties"]["format"]["enum"] == ["cbor-zstd", "jsonl", "parquet"]


# -- the key layout -------------------------------------------------------------------------------------


def micros(*args: int) -> int:
    return (datetime(*args, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_default_layout_is_unchanged() -> None:
    layout = ObjectLayout("llm", "default", "usage")
    assert layout.data_key(1, 1000, micros(2026, 11, 24)) == "llm/00000000000000000001-00000000000000001000.cbor.zstd"
    assert layout.data_prefix() == "llm/" and not layout.time_partitioned
    assert layout.checkpoint_key() == "llm/_capture-export/checkpoints/default/usage.json"


@pytest.mark.parametrize(
    ("prefix", "template", "hive", "folder", "listing"),
    [
        ("llm", "{prefix}/{date}", False, "llm/2026-11-24/", "llm/"),
        ("", "{prefix}/{date}", False, "2026-11-24/", ""),
        ("llm", "{prefix}/{year}/{month}/{day}", True, "llm/year=2026/month=11/day=24/", "llm/"),
        ("llm", "{prefix}/{date}", True, "llm/date=2026-11-24/", "llm/"),
        ("a/b", "{prefix}/{exporter}/{namespace}/{year}/{hour}", False, "a/b/usage/team-a/2026/07/",
         "a/b/usage/team-a/"),
        ("", "archive/{exporter}", False, "archive/usage/", "archive/usage/"),
        ("", "archive-{year}/{exporter}", False, "archive-2026/usage/", ""),
    ],
)
def test_templates_render_from_the_records_time(prefix, template, hive, folder, listing) -> None:
    layout = ObjectLayout(prefix, "team-a", "usage", ".jsonl", template, hive)
    key = layout.data_key(7, 9, micros(2026, 11, 24, 7, 30))
    assert key == f"{folder}00000000000000000007-00000000000000000009.jsonl"
    assert layout.data_prefix() == listing and key.startswith(listing)
    assert layout.is_data_key(key) and layout.is_data_key(key.replace(".jsonl", ".parquet"))
    assert not layout.is_data_key("elsewhere/" + key) and not layout.is_data_key(key + ".tmp")
    # The checkpoint never depends on dates or the template.
    assert layout.checkpoint_key() == ObjectLayout(prefix, "team-a", "usage").checkpoint_key()


def test_partition_spans_are_exact_at_the_boundaries() -> None:
    day = ObjectLayout("", "ns", "n", template="{date}")
    last_of_day = micros(2026, 11, 24) + 86_400_000_000 - 1
    assert day.data_dir(last_of_day) == "2026-11-24/" and day.data_dir(last_of_day + 1) == "2026-11-25/"
    assert day.partition_span(last_of_day) == (micros(2026, 11, 24), micros(2026, 11, 25))
    month = ObjectLayout("", "ns", "n", template="{year}/{month}")
    assert month.partition_span(micros(2026, 12, 31, 23)) == (micros(2026, 12, 1), micros(2027, 1, 1))
    hour = ObjectLayout("", "ns", "n", template="{date}/{hour}")
    assert hour.partition_span(micros(2026, 11, 24, 7, 59)) == (micros(2026, 11, 24, 7), micros(2026, 11, 24, 8))
    year = ObjectLayout("", "ns", "n", template="{year}")
    assert year.partition_span(micros(2026, 6, 1)) == (micros(2026, 1, 1), micros(2027, 1, 1))


def test_every_format_extension_is_a_data_extension() -> None:
    extensions = {encoder_for("cbor-zstd").extension, encoder_for("parquet").extension}
    extensions |= {encoder_for("jsonl", c).extension for c in ("none", "gzip", "zstd")}
    assert extensions == set(DATA_EXTENSIONS)


def test_every_format_name_has_its_encoder_and_reader() -> None:
    # The spec's enum comes from format_names.py, the encoders from formats.py: a name without an entry
    # would pass the CRD and fail every run.
    assert tuple(FORMATS) == FORMAT_NAMES
    for info in FORMATS.values():
        assert set(info.extensions) == set(info.content_types) == set(info.compressions)
        assert info.default_compression in info.compressions


# -- encoders and readers -------------------------------------------------------------------------------


def test_cbor_zstd_reads_as_aperture_documents() -> None:
    records = exported([make_record(i) for i in range(5)])
    payload = CborZstdEncoder().encode_records(records)
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    decoder = cbor2.CBORDecoder(io.BytesIO(raw))
    assert [decoder.decode() for _ in records] == records


def _frame_piece_by_piece(pieces: list[bytes], level: int = 3) -> bytes:
    """A zstd frame as the encoder wrote it before its contexts were kept and its pieces fed in runs: a new
    compressor per batch, one call per piece."""
    frame = zstandard.ZstdCompressor(level=level, write_content_size=True).compressobj(size=sum(map(len, pieces)))
    return b"".join([*(frame.compress(piece) for piece in pieces), frame.flush()])


def _batch_pieces(count: int, seed: int) -> list[bytes]:
    """A batch as the default path hands it to the encoder: per record, the new map head and the rest."""
    pieces = []
    for record_id, record in enumerate(generate_records(count, seed=seed), start=1):
        data = with_id(record_id, encode_body(record)[1])
        pieces += [data[:9], data[9:]]
    return pieces


def _frame_in_one_call(pieces: list[bytes], level: int = 3) -> bytes:
    """A zstd frame of a batch small enough to be joined: its pieces joined, compressed in one call."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(b"".join(pieces))


def _read_as_aperture_says(frame: bytes, size: int) -> bytes:
    """The frame read as the Aperture seed tells its users (and as ``decode_object`` does): one frame whose
    header records the content size, nothing after it."""
    assert zstandard.get_frame_parameters(frame).content_size == size
    reader = zstandard.ZstdDecompressor().decompressobj()
    data = reader.decompress(frame)
    assert reader.eof and not reader.unused_data
    assert len(data) == size
    return data


def _exactly(total: int, block: bytes = bytes(range(256)) * 4096) -> list[bytes]:
    """Pieces of exactly ``total`` bytes (a megabyte each but the last)."""
    return [block[: min(len(block), total - start)] for start in range(0, total, len(block))]


_SMALL_SHAPES = {"one record": lambda: _batch_pieces(1, seed=3), "a batch": lambda: _batch_pieces(300, seed=4),
                 "pieces larger than a feed": lambda: [bytes(range(256)) * 3000, b"x" * 700_000, b"tail"],
                 "empty pieces": lambda: [b"", b"\xa1\x62id\x01", b"", b""], "no piece": list,
                 "exactly the threshold": lambda: _exactly(ZSTD_ONE_SHOT_BYTES)}


@pytest.mark.parametrize("shape", list(_SMALL_SHAPES))
def test_a_batch_up_to_the_threshold_is_one_frame_compressed_in_one_call(shape: str) -> None:
    """A batch of at most ``ZSTD_ONE_SHOT_BYTES`` is joined and compressed in one call (the faster path): the
    same bytes batch after batch (the encoder reuses its compression contexts) and at every level, one frame
    with its content size, which reads back as the pieces one after the other."""
    pieces = _SMALL_SHAPES[shape]()
    size = sum(map(len, pieces))
    assert size <= ZSTD_ONE_SHOT_BYTES
    for _ in range(3):
        frame = CborZstdEncoder().encode(pieces)
        assert frame == _frame_in_one_call(pieces)
        assert _read_as_aperture_says(frame, size) == b"".join(pieces)
    for level in (1, 9):
        assert zstd_frame(pieces, level) == _frame_in_one_call(pieces, level)
        assert zstd_frame(pieces, level, keep_context=False) == _frame_in_one_call(pieces, level)
    if shape == "a batch":
        # What the one call buys is not the frame of the pieces fed in runs (that frame is a little larger).
        assert zstd_frame(pieces) != _frame_piece_by_piece(pieces)
        records = cbor_sequence(_read_as_aperture_says(zstd_frame(pieces), size))
        assert [record["id"] for record in records] == list(range(1, 301))
        assert records == cbor_sequence(b"".join(pieces))


@pytest.mark.parametrize("shape", ["one byte over", "a large batch"])
def test_a_batch_over_the_threshold_is_streamed_as_it_always_was(shape: str) -> None:
    """Above ``ZSTD_ONE_SHOT_BYTES`` the pieces are streamed in runs (no copy of the whole batch): the frame is
    byte for byte what the encoder always wrote for them (a new context, one call per piece), batch after
    batch, with its content size."""
    pieces = (_exactly(ZSTD_ONE_SHOT_BYTES + 1) if shape == "one byte over"
              else _batch_pieces(30, seed=5) * 2 + _exactly(ZSTD_ONE_SHOT_BYTES) + _batch_pieces(30, seed=6))
    size = sum(map(len, pieces))
    assert size > ZSTD_ONE_SHOT_BYTES
    expected = _frame_piece_by_piece(pieces)
    for _ in range(2):
        frame = CborZstdEncoder().encode(pieces)
        assert frame == expected
        assert _read_as_aperture_says(frame, size) == b"".join(pieces)
    assert zstd_frame(pieces, keep_context=False) == expected


def test_json_lines_compressed_with_zstd_never_holds_a_second_copy_of_its_text() -> None:
    """A JSON Lines batch's lines are fed to zstd in runs, never joined first: the encode worker keeps
    ``BATCH_REUSE_BYTES`` of freed memory for its next batch, and a joined copy of a ``limit: 1000`` batch's text
    (~4 MB) took its peak above that, so every batch gave its memory back and faulted it in again (2.7 minor page
    faults per record instead of 0.02: tests/integration/test_pool_memory_reuse.py). The frame is the one the
    lines fed one by one make."""
    lines = [JsonLinesEncoder.line(record) for record in generate_records(1000, seed=9)]
    text_bytes = sum(map(len, lines))
    assert 2_000_000 < text_bytes <= ZSTD_ONE_SHOT_BYTES  # a batch the default format would join
    encoder = JsonLinesEncoder("zstd")
    encoder.encode_lines(lines[:10])  # zstd's contexts and tables, once
    tracemalloc.start()
    try:
        payload = encoder.encode_lines(lines)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < text_bytes / 2, f"compressing {text_bytes:,} bytes of JSON held {peak:,} bytes at its peak"
    assert payload == _frame_piece_by_piece(lines)
    assert _read_as_aperture_says(payload, text_bytes) == b"".join(lines)


def test_cbor_zstd_batches_encoded_at_once_on_many_threads_hold_their_own_records() -> None:
    batches = [_batch_pieces(40, seed=seed) for seed in range(12)]
    with ThreadPoolExecutor(max_workers=6) as threads:
        payloads = list(threads.map(CborZstdEncoder().encode, batches * 3))
    for payload, pieces in zip(payloads, batches * 3, strict=True):
        assert zstandard.ZstdDecompressor().decompress(payload) == b"".join(pieces)
        assert payload == _frame_in_one_call(pieces)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_json_lines_conventions_and_round_trip(compression: str) -> None:
    records = exported([make_record(i) for i in range(3)])
    encoder = JsonLinesEncoder(compression)
    payload = encoder.encode_records(records)
    raw = {"none": lambda b: b, "gzip": gzip.decompress,
           "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}[compression](payload)
    lines = raw.decode().splitlines()
    first = json.loads(lines[0])
    assert list(first)[:3] == ["id", "ver", "timestamp"] and first["id"] == 1
    assert first["timestamp"] == "2026-11-24T12:00:00.000000Z"
    assert first["capture"]["response"]["raw_body"] == {"$base64": "AAAAAAAAAAA="}
    back = list(decode_object(payload, "x/00000000000000000001-00000000000000000003" + encoder.extension))
    assert [r["id"] for r in back] == [1, 2, 3] and back[0] == first
    assert encoder.encode([with_id(1, encode_body(make_record(0))[1])]) == encoder.encode_records(records[:1])


def test_json_lines_survive_what_json_lacks() -> None:
    record = {"id": 1, "nan": float("nan"), "tag": cbor2.CBORTag(99, "x"), "when": datetime(2026, 1, 2, tzinfo=UTC)}
    line = to_json_line(record)
    assert json.loads(line) == {"id": 1, "nan": None, "tag": {"$tag": 99, "value": "x"},
                                "when": "2026-01-02T00:00:00.000000Z"}


def test_json_is_written_the_same_whatever_keys_a_map_has() -> None:
    """Text keys (every record our append stores) take orjson's fast way; keys a foreign writer may use
    (numbers, null, booleans) and integers beyond 64 bits take the slower ways;
    each writes the bytes it always wrote (the literals: the JSON the encoder wrote before the fast way)."""
    text_keys = {"a": {"b": [1, 2.5, None, True, float("nan")]}, "t": datetime(2026, 1, 2, tzinfo=UTC),
                 "r": b"\x00\xff"}
    assert json_bytes(text_keys) == (b'{"a":{"b":[1,2.5,null,true,null]},"t":"2026-01-02T00:00:00.000000Z",'
                                     b'"r":{"$base64":"AP8="}}')
    assert json_bytes({"a": {1: "x", 2.5: "y", None: "z", False: "w"}}) == (
        b'{"a":{"1":"x","2.5":"y","null":"z","false":"w"}}')
    assert json_bytes({"n": 2**70, 3: "x"}) == b'{"n":1180591620717411303424,"3":"x"}'


@pytest.mark.parametrize("when", [
    datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC),  # stored as written: kept as its text
    datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC),  # stored without microseconds
    datetime(2026, 11, 24, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),  # another offset: to UTC
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a year before 1000
    cbor2.CBORTag(0, "2026-11-24T12:00:00.123456+00:00"),  # a foreign writer's string
])
def test_json_lines_write_every_timestamp_as_utc_with_microseconds(when: object) -> None:
    """Rows are decoded for JSON with their timestamps straight to text: the same text as a decoded record's."""
    record = {"id": 1, "timestamp": when, "nested": [{"at": when}], "keys": {when: 1}}
    stored = cbor2.dumps(record, timezone=UTC)
    decoded = cbor2.loads(stored)
    line = JsonLinesEncoder().encode([stored])
    assert line == to_json_line(decoded).encode() + b"\n"
    written = json.loads(line)["timestamp"]
    assert written == decoded["timestamp"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_json_lines_refuse_an_impossible_stored_timestamp() -> None:
    stored = cbor2.dumps({"id": 1, "timestamp": cbor2.CBORTag(0, "2026-02-30T12:00:00.000000Z")})
    with pytest.raises(cbor2.CBORDecodeError):
        JsonLinesEncoder().encode([stored])


def test_parquet_schema_is_fixed_whatever_the_batch_holds() -> None:
    import pyarrow.parquet as pq

    encoder = ParquetEncoder()
    full = exported(list(generate_records(300, seed=3)))
    sparse = exported([{"timestamp": datetime(2026, 11, 24, tzinfo=UTC), "model": "m", "ver": 2}])
    schemas = [pq.read_schema(io.BytesIO(encoder.encode_records(batch))) for batch in (full, sparse)]
    assert schemas[0] == schemas[1] == parquet_schema()
    assert schemas[0].metadata[b"capture_export.schema"] == b"1"
    assert [f.name for f in schemas[0]][:3] == ["id", "ver", "timestamp"]


def test_parquet_round_trips_every_field_including_raw_bodies_and_unknown_ones() -> None:
    records = exported(list(generate_records(400, seed=5)))
    records[0]["usage"]["audio_tokens"] = 12  # unknown nested field
    records[1]["gateway"] = {"region": "eu"}  # unknown top-level field
    records[2]["status_code"] = "200"  # a value of an unexpected type
    payload = ParquetEncoder().encode_records(records)
    back = list(decode_object(payload, "k/00000000000000000001-00000000000000000400.parquet"))
    assert back == records
    assert any("raw_body" in r["capture"].get("request", {}) for r in records)
    assert record_ids(payload, "x.parquet") == list(range(1, 401))


def test_parquet_needs_pyarrow_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from capture_export.export.formats import FormatUnavailable

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: object, **kwargs: object):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(FormatUnavailable, match=r"capture-export\[parquet\]"):
        encoder_for("parquet")


def _typed(value: object) -> object:
    """A value with the type of every leaf kept, so that True and 1, 1 and 1.0, b"x" and "x" differ."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return (type(value).__name__, value)


@pytest.mark.parametrize(("path", "value"), [
    ("timestamp", "2026-11-24"), ("ver", "2"), ("ver", 2**40), ("ver", True), ("model", 5),
    ("api_type", ["x"]), ("duration_ms", 1.5), ("duration_ms", 2**70), ("status_code", 200.0),
    ("identity", "alice"), ("identity.login_name", ["alice"]), ("identity.node_id", 7),
    ("identity.tags", "tag:prod"), ("identity.tags", [1, "a"]), ("identity.extra_field", "x"), ("usage", [1, 2]),
    ("usage.input_tokens", 1.5), ("usage.input_tokens", 2.0), ("usage.output_tokens", True),
    ("usage.cached_tokens", "3"), ("usage.reasoning_tokens", 2**64), ("estimated_cost", 0.5),
    ("estimated_cost.total", True), ("estimated_cost.input", "0.1"), ("estimated_cost.currency", 1),
    ("capture", "just text"), ("capture.request", "text"), ("capture.response.raw_body", "not bytes"),
    ("capture.request.raw_body", b"\x00\xff"), ("gateway", {"region": "eu"}),
    # bytes where text belongs (a foreign writer's): back as bytes, not as their JSON form {"$base64": ...}
    ("model", b"gpt-4o"), ("capture_id", b"\x9f\x00\x10id"), ("identity.login_name", b"\xff"),
    ("estimated_cost.currency", b"USD"), ("gateway", {"blob": b"\x00\x01"}),
])
def test_parquet_keeps_a_value_its_typed_column_cannot_hold_exactly(path: str, value: object) -> None:
    """A value of an unexpected type (a foreign writer's, a schema drift) is never coerced into a typed
    column (1.5 truncated to 1, "tag" split into characters, True read as 1.0, bytes as text): it comes back
    exactly as written, from the ``extra`` column, and its neighbours keep their typed columns."""
    records = exported(list(generate_records(4, seed=7)))
    target = records[2]
    *parents, leaf = path.split(".")
    for name in parents:
        target = target[name]
    target[leaf] = value
    payload = ParquetEncoder().encode_records(records)
    back = list(decode_object(payload, "k/00000000000000000001-00000000000000000004.parquet"))
    assert [_typed(record) for record in back] == [_typed(record) for record in records]


@pytest.mark.parametrize(("column", "field"), [("model", None), ("identity", "login_name"),
                                               ("estimated_cost", "currency")])
def test_parquet_never_reads_bytes_as_text_in_a_string_column(column: str, field: str | None) -> None:
    """Bytes where text belongs stay out of the typed column (in ``extra``), rather than decoded as text."""
    import pyarrow.parquet as pq

    records = exported(list(generate_records(4, seed=7)))
    if field is None:
        records[2][column] = b"gpt"
    else:
        records[2][column][field] = b"gpt"
    table = pq.read_table(io.BytesIO(ParquetEncoder().encode_records(records)))
    typed = table.column(column)[2].as_py()
    assert (typed if field is None else typed[field]) is None
    assert column in json.loads(table.column("extra")[2].as_py())


def test_parquet_reads_an_explicit_null_as_a_missing_field_as_documented() -> None:
    """docs/formats.md: an explicit null and a missing field are the same NULL in Parquet (as SQL sees both),
    and reading the object back leaves both out; the neighbours' values are untouched."""
    import pyarrow.parquet as pq

    records = exported([make_record(i) for i in range(3)])
    records[1]["model"] = None
    records[1]["usage"]["input_tokens"] = None
    del records[2]["estimated_cost"]
    payload = ParquetEncoder().encode_records(records)
    table = pq.read_table(io.BytesIO(payload))
    assert table.column("model").to_pylist() == ["gpt-4o", None, "gpt-4o"]
    assert table.column("extra").to_pylist() == [None, None, None]
    back = list(decode_object(payload, "k/00000000000000000001-00000000000000000003.parquet"))
    assert "model" not in back[1] and "input_tokens" not in back[1]["usage"] and "estimated_cost" not in back[2]
    assert back[0] == records[0] and back[1]["usage"]["output_tokens"] == records[1]["usage"]["output_tokens"]


@pytest.mark.parametrize("fmt", ["cbor-zstd", "jsonl", "parquet"])
def test_a_capture_id_json_has_no_type_for_reads_back_as_the_stores_own(fmt: str, tmp_path: Path) -> None:
    """``verify`` compares each exported record's capture_id with the store's: one a foreign writer stored as
    bytes or as a UUID (tag 37) is the same id after a trip through JSON Lines or Parquet; another id
    is still told apart."""
    import uuid

    from capture_export.export.provenance import compare_with_store
    from capture_export.store import SQLiteStore

    ids = [b"\x9f\x00\x10binary", b"utf8-id", uuid.UUID("12345678-1234-5678-1234-567812345678"), "cap-3"]
    stored = [make_record(n, capture_id=capture_id) for n, capture_id in enumerate(ids)]
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        store.append(stored)
        payload = encoder_for(fmt).encode_records(exported(stored))
        key = "k/00000000000000000001-00000000000000000004" + FORMATS[fmt].extensions[FORMATS[fmt].default_compression]
        back = list(decode_object(payload, key))
        check = compare_with_store(back, store)
        assert (check.same, check.differing, check.absent) == ([1, 2, 3, 4], [], [])
        back[1]["capture_id"] = {"$base64": "b3RoZXI="}  # another id, in the JSON form
        back[3]["capture_id"] = "cap-other"
        assert compare_with_store(back, store).differing == [2, 4]
    finally:
        store.close()
