"""The export engine and the exporter cycle against a real S3 server (SeaweedFS) and a real SQLite store."""

from __future__ import annotations

import cbor2
import zstandard

from capture_export.api import S3ExporterSpec, S3ExporterStatus
from capture_export.audit import decode_object, verify_export
from capture_export.export import Cursor, ExportEngine, ExporterId
from capture_export.export.cycle import ExporterWorker
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore
from capture_export.seed import generate_records
from capture_export.status.conditions import get_condition
from capture_export.store import SQLiteStore, with_id
from capture_export.store.records import timestamp_micros

EXPORTER = ExporterId("default", "usage")


def spec_for(s3: LocalS3, bucket: str, **overrides: object) -> S3ExporterSpec:
    fields = {"bucket": bucket, "region": "us-east-1", "endpoint": s3.endpoint, "prefix": "llm", "limit": 250,
              "secretRef": {"name": "s3-creds"}}
    fields.update(overrides)
    return S3ExporterSpec.model_validate(fields)


class Secrets(dict):
    def get(self, namespace: str, name: str):  # type: ignore[override]
        return dict.get(self, (namespace, name))


def secrets_for(s3: LocalS3, secret: str | None = None) -> Secrets:
    return Secrets({("default", "s3-creds"): {"access_key_id": s3.access_key_id,
                                              "access_secret": secret or s3.secret_access_key}})


def data_keys(objects: S3ObjectStore, prefix: str = "llm/") -> list[str]:
    return [info.key for info in objects.list(prefix) if info.key.endswith(".cbor.zstd")]


def test_exported_records_equal_the_store_field_by_field(
    s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, sqlite_store: SQLiteStore
) -> None:
    sqlite_store.append(generate_records(1200, seed=7))
    engine = ExportEngine(spec_for(s3_server, bucket), EXPORTER, sqlite_store, object_store)
    result = engine.run(Cursor())
    assert (result.outcome, result.rows, result.objects, result.backlog) == ("Succeeded", 1200, 5, 0)

    exported = {}
    for key in data_keys(object_store):
        # Read exactly as the Aperture docs tell users: zstd, then the CBOR sequence with cbor2.
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(object_store.get(key))
        decoder = cbor2.CBORDecoder(__import__("io").BytesIO(raw))
        while decoder.fp.tell() < len(raw):
            record = decoder.decode()
            exported[record["id"]] = record
    stored = {row.id: cbor2.loads(with_id(row.id, row.body)) for row in sqlite_store.read_batch(0, 10_000)}
    assert exported.keys() == stored.keys()
    for record_id, record in stored.items():
        assert exported[record_id] == record, f"record {record_id} differs"
    sample = exported[1]
    assert sample["ver"] == 2 and sample["timestamp"].tzinfo is not None
    assert {"id", "ver", "timestamp", "identity", "model", "api_type", "usage", "duration_ms", "capture_id",
            "session_id", "path", "status_code", "capture"} <= set(sample)


def test_keys_sort_in_export_order(
    s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, sqlite_store: SQLiteStore
) -> None:
    sqlite_store.append(generate_records(1000, seed=1))
    ExportEngine(spec_for(s3_server, bucket, limit=99), EXPORTER, sqlite_store, object_store).run(Cursor())
    keys = data_keys(object_store)
    firsts = [next(decode_object(object_store.get(k)))["id"] for k in keys]
    assert firsts == sorted(firsts) and len(keys) == 11


def test_retried_batch_overwrites_its_own_object(
    s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, sqlite_store: SQLiteStore
) -> None:
    sqlite_store.append(generate_records(600, seed=2))
    spec = spec_for(s3_server, bucket)
    ExportEngine(spec, EXPORTER, sqlite_store, object_store).run(Cursor())
    keys_before = data_keys(object_store)
    # As if the run had died before any checkpoint: a new worker with no state starts from 0 again.
    object_store.delete("llm/_capture-export/checkpoints/default/usage.json")
    again = ExportEngine(spec, EXPORTER, sqlite_store, object_store)
    result = again.run(again.recover(None))
    assert result.rows == 600
    assert data_keys(object_store) == keys_before
    report = verify_export(sqlite_store, object_store, "llm")
    assert report.ok and report.exported_records == 600, report.summary()


def test_credential_headers_never_reach_an_export(
    s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, sqlite_store: SQLiteStore
) -> None:
    records = list(generate_records(2000, seed=3))
    sqlite_store.append(records)
    # A foreign writer that does not strip: raw CBOR straight into the table.
    foreign = dict(records[0])
    foreign["capture"] = {"request": {"headers": {"Authorization": "Bearer sk-live-123", "X-API-KEY": "k-456"}},
                          "response": {"headers": [["set-cookie", "sid=789"]]}}
    sqlite_store._conn.execute("INSERT INTO captures (ts_us, body) VALUES (?, ?)",
                               (timestamp_micros(foreign["timestamp"]), cbor2.dumps(dict(foreign))))
    ExportEngine(spec_for(s3_server, bucket, limit=1000), EXPORTER, sqlite_store, object_store).run(Cursor())
    everything = b"".join(
        zstandard.ZstdDecompressor().decompressobj().decompress(object_store.get(k)) for k in data_keys(object_store)
    ).lower()
    for needle in (b"sk-live-123", b"k-456", b"sid=789", b"authorization", b"x-api-key", b"cookie"):
        assert needle not in everything, needle
    assert verify_export(sqlite_store, object_store, "llm").exported_records == 2001


def _cursor(status: S3ExporterStatus) -> str:
    return status.cursor


def test_wrong_credentials_clear_error_cursor_kept_then_recovers(
    s3_server: LocalS3, bucket: str, sqlite_store: SQLiteStore
) -> None:
    sqlite_store.append(generate_records(300, seed=4))
    spec = spec_for(s3_server, bucket)
    secrets = secrets_for(s3_server, secret="not-the-secret")
    worker = ExporterWorker(EXPORTER, open_store=lambda s, ns: sqlite_store, secrets=secrets)
    outcome = worker.cycle(spec, S3ExporterStatus(), generation=1)
    condition = get_condition(outcome.status.conditions, "CredentialsValid")
    assert condition is not None and condition.status == "False" and condition.reason in ("InvalidCredentials",
                                                                                           "AccessDenied")
    assert "not-the-secret" not in outcome.status.model_dump_json()
    assert get_condition(outcome.status.conditions, "Ready").status == "False"
    assert outcome.status.cursor == "0" and 0 < outcome.due_in < spec.every
    assert any(e.type == "Warning" for e in outcome.events)

    secrets[("default", "s3-creds")]["access_secret"] = s3_server.secret_access_key  # rotated / fixed
    fixed = worker.cycle(spec, outcome.status, generation=1)
    assert fixed.status.cursor == "300"
    assert get_condition(fixed.status.conditions, "CredentialsValid").status == "True"
    assert get_condition(fixed.status.conditions, "Ready").status == "True"


def test_missing_bucket_clear_error_then_recovers_once_created(
    s3_server: LocalS3, sqlite_store: SQLiteStore
) -> None:
    sqlite_store.append(generate_records(100, seed=5))
    spec = spec_for(s3_server, "bucket-created-later")
    worker = ExporterWorker(EXPORTER, open_store=lambda s, ns: sqlite_store, secrets=secrets_for(s3_server))
    outcome = worker.cycle(spec, S3ExporterStatus(), generation=1)
    condition = get_condition(outcome.status.conditions, "BucketReachable")
    assert (condition.status, condition.reason) == ("False", "BucketNotFound")
    assert "bucket-created-later" in condition.message and outcome.status.cursor == "0"

    s3_server.create_bucket("bucket-created-later")
    fixed = worker.cycle(spec, outcome.status, generation=1)
    assert fixed.status.cursor == "100"
    assert get_condition(fixed.status.conditions, "BucketReachable").status == "True"


def test_unreachable_endpoint_clear_error_then_recovers(
    s3_server: LocalS3, bucket: str, sqlite_store: SQLiteStore
) -> None:
    sqlite_store.append(generate_records(100, seed=6))
    worker = ExporterWorker(EXPORTER, open_store=lambda s, ns: sqlite_store, secrets=secrets_for(s3_server))
    unreachable = spec_for(s3_server, bucket).model_copy(update={"endpoint": "http://127.0.0.1:9"})
    worker.engine = None
    outcome = _cycle_fast(worker, unreachable)
    condition = get_condition(outcome.status.conditions, "BucketReachable")
    assert (condition.status, condition.reason) == ("False", "EndpointUnreachable")
    assert "127.0.0.1:9" in condition.message and outcome.status.cursor == "0"

    fixed = worker.cycle(spec_for(s3_server, bucket), outcome.status, generation=1)
    assert fixed.status.cursor == "100"


def _cycle_fast(worker: ExporterWorker, spec: S3ExporterSpec):
    """A cycle whose retries don't wait (the classification is what is under test)."""

    class NoSleepClock:
        from capture_export.clock import SystemClock as _S

        _system = _S()

        def now(self):
            return self._system.now()

        def monotonic(self) -> float:
            return self._system.monotonic()

        def sleep(self, seconds: float) -> None:
            pass

    worker.clock = NoSleepClock()
    return worker.cycle(spec, S3ExporterStatus(), generation=1)


def test_connection_uses_path_style_addressing(s3_server: LocalS3, bucket: str, credentials: Credentials) -> None:
    objects = S3ObjectStore(S3Location(bucket, "us-east-1", s3_server.endpoint), credentials)
    objects.check()  # virtual-host style would resolve <bucket>.127.0.0.1 and fail
    objects.put("a/b", b"x")
    assert objects.get("a/b") == b"x" and objects.get("missing") is None
