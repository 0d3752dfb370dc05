"""The PostgreSQL store against a real server: the protocol, the safe horizon, schema and reconnects."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from capture_export.api import S3ExporterSpec, S3ExporterStatus
from capture_export.audit import verify_export
from capture_export.export import ExporterId
from capture_export.export.cycle import ExporterWorker
from capture_export.local_s3 import LocalS3
from capture_export.objectstore import S3ObjectStore
from capture_export.store import StoreError, StoreOpener, open_store_url
from capture_export.store.base import ExpiredChunk
from capture_export.store.postgres import PostgresStore
from capture_export.store.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from capture_export.store.records import encode_body
from tests.support.pg import TempPostgres
from tests.support.records import make_record
from tests.support.retention import BODY
from tests.support.store_retention import HOUR, RETENTION_CONTRACT

INSERT = "INSERT INTO captures (ts_us, body) VALUES (%s, %s) RETURNING id"


def gateway_insert(conn: psycopg.Connection, n: int) -> int:
    """What a foreign writer (the gateway) does: a plain INSERT, the id drawn by the identity."""
    ts, body = encode_body(make_record(n))
    row = conn.execute(INSERT, (ts, body)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def store(pg_dsn: str):
    s = PostgresStore(pg_dsn, persist_every=0.0)
    yield s
    s.close()


# -- the store --------------------------------------------------------------------------------------


pytestmark = pytest.mark.postgres


def test_protocol_basics(store: PostgresStore) -> None:
    assert (store.max_id(), store.count(), store.safe_horizon(), store.read_batch(0, 10)) == (0, 0, 0, [])
    last = store.append(make_record(i) for i in range(25))
    assert last == 25 and store.max_id() == 25 and store.count() == 25
    assert store.safe_horizon() == 25
    batch = store.read_batch(10, 5)
    assert [r.id for r in batch] == [11, 12, 13, 14, 15]
    assert isinstance(batch[0].body, bytes) and batch[0].timestamp_us == encode_body(make_record(10))[0]
    assert batch[0].body == encode_body(make_record(10))[1]
    assert [r.id for r in store.read_batch(20, 100, horizon=22)] == [21, 22]
    assert store.backlog(20) == 5 and store.backlog(20, horizon=22) == 2 and store.backlog(30) == 0
    assert list(store.ids()) == list(range(1, 26))
    assert store.append_encoded([]) == 25


def test_an_open_writer_holds_the_horizon_below_its_id(store: PostgresStore, pg_dsn: str) -> None:
    store.append(make_record(i) for i in range(5))
    assert store.safe_horizon() == 5
    slow = psycopg.connect(pg_dsn)  # a gateway transaction left open
    fast = psycopg.connect(pg_dsn, autocommit=True)
    slow_id = gateway_insert(slow, 100)
    later = [gateway_insert(fast, 101 + i) for i in range(3)]
    assert (slow_id, later) == (6, [7, 8, 9])
    # A naive exporter would read 7..9 now and advance past 6 for ever.
    assert store.max_id() == 9
    assert store.safe_horizon() == 5
    assert [r.id for r in store.read_batch(0, 100)] == [1, 2, 3, 4, 5]
    assert store.backlog(5) == 0
    assert set(store.horizon_holders().values()) == {6}
    slow.commit()
    assert store.safe_horizon() == 9
    assert [r.id for r in store.read_batch(5, 100)] == [6, 7, 8, 9]
    slow.close()
    fast.close()


def test_rolled_back_and_savepoint_writers(store: PostgresStore, pg_dsn: str) -> None:
    store.append([make_record(0)])
    assert store.safe_horizon() == 1  # observed before the writer starts: its bound will be known
    writer = psycopg.connect(pg_dsn)
    writer.execute("SAVEPOINT s")
    gateway_insert(writer, 1)  # id 2, rolled back to the savepoint but the transaction goes on
    writer.execute("ROLLBACK TO SAVEPOINT s")
    other = psycopg.connect(pg_dsn, autocommit=True)
    assert gateway_insert(other, 2) == 3
    assert store.safe_horizon() == 1  # the transaction still holds the sequence: conservative, safe
    writer.rollback()
    assert store.safe_horizon() == 3
    assert [r.id for r in store.read_batch(0, 10)] == [1, 3]  # 2 is a gap for ever: no need to wait
    writer.close()
    other.close()


def test_readers_purges_and_other_tables_do_not_hold_the_horizon(store: PostgresStore, pg_dsn: str) -> None:
    store.append(make_record(i) for i in range(10))
    reader = psycopg.connect(pg_dsn)
    reader.execute("SELECT count(*) FROM captures").fetchone()
    reader.execute("SELECT last_value FROM captures_id_seq").fetchone()
    purger = psycopg.connect(pg_dsn)
    purger.execute("DELETE FROM captures WHERE id = 1")
    elsewhere = psycopg.connect(pg_dsn)
    elsewhere.execute("CREATE TABLE other (id bigint GENERATED ALWAYS AS IDENTITY, v int)")
    elsewhere.execute("INSERT INTO other (v) VALUES (1)")
    assert store.safe_horizon() == 10
    for conn in (reader, purger, elsewhere):
        conn.rollback()
        conn.close()


def test_a_prepared_transaction_holds_the_horizon(store: PostgresStore, pg_dsn: str) -> None:
    store.append([make_record(0)])
    assert store.safe_horizon() == 1
    with psycopg.connect(pg_dsn, autocommit=True) as writer:
        writer.execute("BEGIN")
        gateway_insert(writer, 1)  # id 2
        writer.execute("PREPARE TRANSACTION 'capture-2pc'")
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        gateway_insert(other, 2)  # id 3, committed
        # The prepared transaction outlives its session and still holds id 2 back.
        assert store.safe_horizon() == 1
        other.execute("COMMIT PREPARED 'capture-2pc'")
    assert store.safe_horizon() == 3
    assert [r.id for r in store.read_batch(0, 10)] == [1, 2, 3]


def test_a_restarted_store_starts_from_the_persisted_horizon(pg_dsn: str) -> None:
    first = PostgresStore(pg_dsn, persist_every=0.0)
    first.append(make_record(i) for i in range(20))
    assert first.safe_horizon() == 20
    first.close()
    writer = psycopg.connect(pg_dsn)
    gateway_insert(writer, 99)  # id 21, open before the next store starts
    fresh = PostgresStore(pg_dsn, settle_seconds=0.01)
    # Nothing is known of the open transaction but what the last store proved.
    assert fresh.safe_horizon() == 20
    writer.commit()
    assert fresh.safe_horizon() == 21
    fresh.close()
    writer.close()


def test_sequence_cache_is_kept_at_one(store: PostgresStore, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("ALTER TABLE captures ALTER COLUMN id SET CACHE 20")
    with pytest.raises(StoreError, match="CACHE 20"):
        store.safe_horizon()
    again = PostgresStore(pg_dsn)  # opening migrates it back
    assert again.safe_horizon() == 0
    again.close()


def test_newer_schema_is_refused(pg_dsn: str) -> None:
    PostgresStore(pg_dsn).close()
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("UPDATE capture_export_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        PostgresStore(pg_dsn)


def test_concurrent_opens_migrate_once(pg_dsn: str) -> None:
    errors: list[BaseException] = []

    def open_close() -> None:
        try:
            PostgresStore(pg_dsn).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_close) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_unreachable_server_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        PostgresStore("postgresql://capture:hunter2-secret@127.0.0.1:1/db", connect_timeout=2)
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1:1/db" in str(caught.value)


def test_threads_share_the_store(store: PostgresStore) -> None:
    store.append(make_record(i) for i in range(200))
    failures: list[BaseException] = []

    def hammer(offset: int) -> None:
        try:
            for i in range(30):
                assert len(store.read_batch((offset + i) % 150, 10)) == 10
                assert store.backlog(offset) == 200 - offset
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(k * 10,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_survives_a_server_restart(pg_cluster: TempPostgres, pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    store.append(make_record(i) for i in range(10))
    assert store.read_batch(0, 3)
    pg_cluster.restart("fast")
    # The pooled connection is dead; the read is retried once on a fresh one.
    assert [r.id for r in store.read_batch(0, 3)] == [1, 2, 3]
    assert store.safe_horizon() == 10
    store.close()


def test_opener_routes_dsns_and_secrets(pg_dsn: str) -> None:
    store = open_store_url(pg_dsn, create=True)  # an empty database: only a creator may open it
    assert isinstance(store, PostgresStore)
    assert "capture@" not in repr(store)
    store.close()


def test_exporter_reads_postgres_named_by_a_secret(
    pg_dsn: str, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore
) -> None:
    seeded = PostgresStore(pg_dsn)
    seeded.append(make_record(i) for i in range(2500))
    secrets = {
        ("default", "s3"): {"access_key_id": s3_server.access_key_id, "access_secret": s3_server.secret_access_key},
        ("default", "capture-db"): {"dsn": pg_dsn},
    }
    spec = S3ExporterSpec.model_validate({
        "bucket": bucket, "region": "us-east-1", "endpoint": s3_server.endpoint, "prefix": "pg", "limit": 1000,
        "secretRef": {"name": "s3"}, "store": {"postgres": {"secretRef": {"name": "capture-db", "key": "dsn"}}},
    })

    class Secrets:
        def get(self, namespace: str, name: str):
            return secrets.get((namespace, name))

    opener = StoreOpener(None, lambda ns, name: secrets.get((ns, name)))
    worker = ExporterWorker(ExporterId("default", f"pg-{uuid.uuid4().hex[:6]}"), open_store=opener, secrets=Secrets())
    outcome = worker.cycle(spec, S3ExporterStatus())
    assert outcome.result is not None and outcome.result.rows == 2500, outcome.result
    assert outcome.status.cursor == "2500" and outcome.status.backlog == 0
    report = verify_export(seeded, object_store, "pg")
    assert report.ok and report.store_records == 2500 and not report.missing and not report.duplicated
    opener.close()
    seeded.close()


# -- retention (schema version 2): the same contract as the SQLite store ------------------------------



@pytest.mark.parametrize("case", RETENTION_CONTRACT, ids=lambda case: case.__name__)
def test_retention_contract(case, store: PostgresStore) -> None:
    case(store)


def test_soft_delete_hides_from_inventory_not_from_the_export_stream(store: PostgresStore, pg_dsn: str) -> None:
    store.append_encoded([(HOUR, BODY), (HOUR, BODY), (9 * HOUR, BODY)])
    assert store.expire_chunk(10, 5 * HOUR, 10, mark_at_us=100) == ExpiredChunk(2, None)
    assert list(store.ids()) == [3] and store.count() == 1
    assert store.soft_deleted_count() == 2 and store.soft_deleted_count(99) == 0
    assert [r.id for r in store.read_batch(0, 10)] == [1, 2, 3] and store.backlog(0) == 3
    assert (store.max_id(), store.safe_horizon(), store.highest_assigned_id()) == (3, 3, 3)
    assert store.count_expired(10, 5 * HOUR) == 0
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT id FROM captures_live").fetchall() == [(3,)]


def test_expire_uses_the_partial_index(store: PostgresStore, pg_dsn: str) -> None:
    store.append_encoded([(i * 1000, BODY) for i in range(20_000)])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE captures")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id, ts_us FROM captures WHERE deleted_at_us IS NULL AND ts_us < 5000 AND id <= 100 "
            "AND (ts_us, id) > (10, 2) ORDER BY ts_us, id LIMIT 500"))
    assert "captures_live_ts_id" in plan, plan


def test_a_grace_period_purge_reads_no_record_whose_grace_period_is_not_over(
        store: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy with 1 day's grace purges beside one with 30 days' that hid many records 10 days ago: its
    chunk (and the dry run's count) must not read them all (a sequential scan of the table, or a walk of
    every hidden record, every run), so the blocks they touch do not grow with those records."""
    day = 24 * HOUR
    now_us = 100 * day
    statements: list[tuple[str, tuple]] = []
    for name in ("_rowcount", "_scalar"):
        run = getattr(store, name)
        monkeypatch.setattr(store, name, lambda sql, params=(), run=run: (statements.append((sql, params)),
                                                                          run(sql, params))[1])

    def blocks_read(hidden: int) -> int:
        store.append_encoded([(HOUR, BODY)] * (hidden - store.soft_deleted_count()))
        store.expire_chunk(2**62, 2 * HOUR, hidden, mark_at_us=now_us - 10 * day, purge_after_us=now_us + 20 * day)
        statements.clear()
        assert store.purge_soft_deleted_chunk(now_us, 5000, undated_marked_before_us=now_us - day) == 0
        assert store.soft_deleted_due_count(now_us, undated_marked_before_us=now_us - day) == 0
        total = 0
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("ANALYZE captures")
            for sql, params in statements:
                plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()[0][0]["Plan"]
                total += plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
            conn.rollback()
        return total

    small, large = blocks_read(2_000), blocks_read(20_000)
    assert store.soft_deleted_count() == 20_000
    assert large < 2 * small + 50, (small, large)


def test_a_version_5_store_gets_the_index_of_hidden_records(pg_dsn: str) -> None:
    """A store last opened by version 5 (its index of purge_after_us alone), with an undated and a dated mark:
    opened again, the hidden records get their index, and each goes when its own grace period is over."""
    PostgresStore(pg_dsn).close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX captures_hidden")
        conn.execute("CREATE INDEX captures_purge_after ON captures (purge_after_us) WHERE purge_after_us IS NOT NULL")
        conn.execute("UPDATE capture_export_meta SET value = '5' WHERE key = 'schema_version'")
        conn.execute("INSERT INTO captures (ts_us, body, deleted_at_us, purge_after_us) VALUES "
                     "(1, '\\xa0', 10, NULL), (2, '\\xa0', 10, 1000), (3, '\\xa0', NULL, NULL)")
    store = PostgresStore(pg_dsn)
    try:
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'captures'").fetchall()
            indexes = {name for (name,) in rows}
            version = conn.execute("SELECT value FROM capture_export_meta WHERE key = 'schema_version'").fetchone()
        assert "captures_hidden" in indexes and "captures_purge_after" not in indexes
        assert version == (str(PG_SCHEMA_VERSION),)
        assert store.soft_deleted_due_count(100, undated_marked_before_us=20) == 1
        assert store.purge_soft_deleted_chunk(100, 10, undated_marked_before_us=20) == 1
        assert store.purge_soft_deleted_chunk(100, 10, undated_marked_before_us=20) == 0  # id 2: until 1000
        assert store.purge_soft_deleted_chunk(1000, 10, undated_marked_before_us=20) == 1
        assert list(store.ids()) == [3]
    finally:
        store.close()


def test_migrates_a_version_1_store(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE capture_export_meta (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute("INSERT INTO capture_export_meta VALUES ('schema_version', '1')")
        conn.execute("CREATE TABLE captures (id bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY, "
                     "ts_us bigint NOT NULL, body bytea NOT NULL)")
        conn.execute("CREATE INDEX captures_ts_us ON captures (ts_us)")
        conn.execute("INSERT INTO captures (ts_us, body) VALUES (1, '\\xa0'), (2, '\\xa0')")
    store = PostgresStore(pg_dsn)
    # Rows written before the migration came from unknown writers: unsealed, the export checks them.
    assert [(r.id, r.seal) for r in store.read_batch(0, 10)] == [(1, None), (2, None)]
    assert store.expire_chunk(10, 2, 10, mark_at_us=5).count == 1
    assert list(store.ids()) == [2]
    store.close()
    again = PostgresStore(pg_dsn)  # a no-op now; the gateway's plain INSERT still works
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        version = conn.execute("SELECT value FROM capture_export_meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(PG_SCHEMA_VERSION),)
        conn.execute("INSERT INTO captures (ts_us, body) VALUES (3, '\\xa0')")
    assert list(again.ids()) == [2, 3] and again.soft_deleted_count() == 1
    again.close()


def test_gateway_keeps_writing_during_a_purge(store: PostgresStore, pg_dsn: str) -> None:
    """Short transactions: a gateway connection inserts between chunks, and nothing it adds is lost."""
    from capture_export.retention import Purger

    store.append_encoded([(HOUR, BODY)] * 20_000)
    written: list[int] = []
    done = threading.Event()

    def write() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while not done.is_set():
                written.append(int(conn.execute(INSERT, (100 * HOUR, BODY)).fetchone()[0]))  # type: ignore[index]

    writer = threading.Thread(target=write)
    writer.start()
    stats = Purger(store, batch_size=500).expire(20_000, 2 * HOUR)
    done.set()
    writer.join()
    assert stats.expired == 20_000 and stats.chunks >= 40
    assert written and list(store.ids()) == written


def test_cli_exports_then_soft_deletes_purges_and_restores_on_postgres(
    pg_dsn: str, s3_server: LocalS3, bucket: str, object_store: S3ObjectStore, tmp_path
) -> None:
    """`capture-export run -f` with an S3Exporter and a RetentionPolicy on a PostgreSQL store: export,
    soft-delete only what the bucket holds, restore with the CLI, then purge for good."""
    from datetime import UTC, datetime, timedelta

    from tests.support.cli import run_cli, write_manifest

    now = datetime.now(UTC)
    seeded = PostgresStore(pg_dsn)
    seeded.append(make_record(i, timestamp=now - (timedelta(days=40) if i % 5 < 3 else timedelta(hours=1)))
                  for i in range(500))
    manifest = write_manifest(tmp_path / "all.yaml", s3_server, bucket, limit=128)
    manifest.write_text(manifest.read_text() + """
---
apiVersion: capture.dev/v1alpha1
kind: RetentionPolicy
metadata: {name: keep-30d, namespace: default}
spec:
  maxAge: 30d
  exporters: [usage]
  batchSize: 50
  softDelete: {gracePeriod: 7d}
""")
    state = tmp_path / "state.json"
    result = run_cli("run", "--once", "-f", manifest, "--state", state, "--store", pg_dsn, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "default/usage: Succeeded: 500 records" in result.stdout and "soft-deleted 300" in result.stdout
    assert seeded.count() == 200 and seeded.soft_deleted_count() == 300
    report = verify_export(seeded, object_store, "llm")
    assert report.ok and report.exported_records == 500 and report.not_in_store == 300
    restored = run_cli("restore", "-f", manifest, "--store", pg_dsn, "--since", "1h", cwd=tmp_path)
    assert restored.returncode == 0 and "restored 300 soft-deleted records" in restored.stdout, restored.stdout
    assert seeded.count() == 500 and seeded.soft_deleted_count() == 0
    assert seeded.purge_soft_deleted_chunk(2**62, 1000, undated_marked_before_us=2**62) == 0
    seeded.close()


def test_identity_and_exporter_locks(pg_dsn: str) -> None:
    """Each store has an identity that every open sees; an exporter's lock excludes other sessions (another
    process) and, within a process, a second holder; it is released with its session."""
    one = PostgresStore(pg_dsn)
    two = PostgresStore(pg_dsn)  # another process, as far as the server can tell
    assert one.identity() == two.identity() != ""
    lock = one.lock_exporter("default/usage")
    assert lock is not None and lock.alive()
    assert two.lock_exporter("default/usage") is None
    assert one.lock_exporter("default/usage") is None  # one holder per exporter in a process too
    other = two.lock_exporter("default/other")
    assert other is not None and other.scope == lock.scope
    lock.release()
    taken = two.lock_exporter("default/usage")
    assert taken is not None
    two.close()  # its session ends: the server releases its locks
    assert not taken.alive()
    again = one.lock_exporter("default/usage")
    assert again is not None
    one.close()
    with pytest.raises(StoreError, match="holds no capture store"):
        PostgresStore(pg_dsn.replace(pg_dsn.rsplit("/", 1)[-1], "postgres"), create=False)
