"""A way forward past a malformed row that loses nothing and leaks nothing.

The gateway wrote malformed rows between good ones. With the default ``onCorruptRecord: Hold`` the
export stops before the first one; the operator switches the exporter to ``Quarantine``: the malformed
rows are moved aside into a quarantine table (which retention never purges), the export goes past them,
status counts them and an Event names each; the bucket holds exactly the good records and ``verify`` finds
nothing missing. ``capture-export quarantine list|show|release`` lets the operator see them (``show``
never prints a credential) and put a corrected record back, which is then exported like any other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cbor2
import pytest

from capture_export.local_s3 import LocalS3
from tests.support.cli import run_cli
from tests.support.trust import (
    ExporterCase,
    GatewayDB,
    PostgresGateway,
    Raw,
    SQLiteGateway,
    bucket_objects,
    bucket_records,
    build,
    find_leaks,
    good_record,
    head,
    run_export,
    state_of,
    text,
    timestamp_us,
    write_exporters,
)

CANARY = "cnryQuarantined4b9e1f27c35d"


def _short_map_with_credential(n: int) -> bytes:
    record = good_record(n)
    record["capture"]["request"]["headers"]["Authorization"] = f"Bearer {CANARY}"
    return head(5, len(record) + 1) + build(record)[1:]  # claims one pair more than it holds


def _invalid_utf8(n: int) -> bytes:
    return build({**good_record(n), "model": Raw(head(3, 8) + b"gpt-\xff\xfe4o"), "session_id": f"sess-{CANARY}"})


def _rows(kind: str) -> tuple[list[tuple[int, bytes | str]], set[int]]:
    """Rows 1..9 as the gateway writes them; the ids of the malformed ones."""
    bad: dict[int, bytes | str] = {4: _short_map_with_credential(4), 6: _invalid_utf8(6),
                                   8: build({**good_record(8), "id": 3}) + text(CANARY)}
    if kind == "sqlite":
        bad[8] = json.dumps({"ver": 2, "model": "gpt-4o", "session_id": CANARY})  # TEXT, not BLOB
    rows = [(timestamp_us(n), bad.get(n, build(good_record(n)))) for n in range(1, 10)]
    return rows, set(bad)


def _gateway(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> GatewayDB:
    if kind == "sqlite":
        return SQLiteGateway(tmp_path / "store.sqlite")
    return PostgresGateway(request.getfixturevalue("pg_dsn"))


def _quarantine(db: GatewayDB, tmp_path: Path, *args: str) -> tuple[int, str]:
    result = run_cli("quarantine", *args, "--store", db.url, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert CANARY not in output, output
    return result.returncode, output


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_quarantine_moves_malformed_rows_aside_and_the_export_goes_past_them(
    kind: str, s3_server: LocalS3, bucket: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = _gateway(kind, tmp_path, request)
    rows, bad = _rows(kind)
    assert db.insert(rows) == list(range(1, 10))
    good = [n for n in range(1, 10) if n not in bad]

    # Hold (the default) stops before row 4.
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket, [ExporterCase("usage", "llm", {})])
    held = run_export(manifest, db, tmp_path)
    assert held.returncode == 1 and state_of(tmp_path, "usage")["cursor"] == "3", held.stdout + held.stderr

    # The operator chooses Quarantine: the export goes past every malformed row.
    policy = {"apiVersion": "capture.dev/v1alpha1", "kind": "RetentionPolicy",
              "metadata": {"name": "keep-1d", "namespace": "default"},
              "spec": {"maxAge": "1d", "exporters": ["usage"], "every": 3600}}
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", {"onCorruptRecord": "Quarantine"})])
    run = run_export(manifest, db, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Traceback" not in output and CANARY not in output, output
    for record_id in bad:
        assert re.search(rf"Warning RecordQuarantined: .*record {record_id}\b", output), output
    status = state_of(tmp_path, "usage")
    assert status["quarantined"] == len(bad), status
    assert status["cursor"] == "9" and CANARY not in json.dumps(status)

    records = bucket_records(s3_server, bucket, "llm")
    assert records == [{"id": n, **cbor2.loads(build(good_record(n)))} for n in good]
    assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY])
    verify = run_cli("verify", "-f", manifest, "--store", db.url, cwd=tmp_path)
    assert verify.returncode == 0 and "missing: 0" in verify.stdout and "duplicated: 0" in verify.stdout, \
        verify.stdout + verify.stderr

    # Retention purges what was exported and never touches the quarantine.
    manifest_with_policy = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                                           [ExporterCase("usage", "llm", {"onCorruptRecord": "Quarantine"})],
                                           more=[policy])
    purge = run_export(manifest_with_policy, db, tmp_path)
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert db.query("SELECT COUNT(*) FROM captures") == [(0,)]

    code, listing = _quarantine(db, tmp_path, "list")
    assert code == 0, listing
    listed = {int(m) for m in re.findall(r"^\s*(\d+)\s", listing, re.MULTILINE)}
    assert listed == bad, listing

    code, shown = _quarantine(db, tmp_path, "show", "4")
    assert code == 0 and "4" in shown and re.search("map|pairs|end of", shown, re.IGNORECASE), shown

    # Released as it is, it would fail the check again: refused.
    code, refused = _quarantine(db, tmp_path, "release", "4")
    assert code != 0 and "4" in refused, refused

    # The operator corrects it and releases it: it goes back as a new record and is exported.
    fixed = tmp_path / "fixed.cbor"
    fixed.write_bytes(build(good_record(4)))
    code, released = _quarantine(db, tmp_path, "release", "4", "--body", str(fixed))
    assert code == 0, released
    new_id = int(re.findall(r"\b(\d+)\b", released)[-1])
    assert new_id > 9, released
    code, listing = _quarantine(db, tmp_path, "list")
    assert {int(m) for m in re.findall(r"^\s*(\d+)\s", listing, re.MULTILINE)} == bad - {4}, listing

    again = run_export(manifest, db, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    released_record = [r for r in bucket_records(s3_server, bucket, "llm") if r["id"] == new_id]
    assert released_record == [{"id": new_id, **cbor2.loads(build(good_record(4)))}]
    assert not find_leaks(bucket_objects(s3_server, bucket, "llm"), [CANARY])


def test_on_corrupt_record_takes_hold_or_quarantine_only(tmp_path: Path, s3_server: LocalS3, bucket: str) -> None:
    db = SQLiteGateway(tmp_path / "store.sqlite")
    db.insert([(timestamp_us(1), build(good_record(1))), (timestamp_us(2), _short_map_with_credential(2))])
    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", {"onCorruptRecord": "Skip"})])
    refused = run_export(manifest, db, tmp_path)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "spec.onCorruptRecord" in output, output
    assert "Hold" in output and "Quarantine" in output, output
    assert not bucket_objects(s3_server, bucket, "llm")

    manifest = write_exporters(tmp_path / "exporter.yaml", s3_server, bucket,
                               [ExporterCase("usage", "llm", {"onCorruptRecord": "Hold"})])
    held = run_export(manifest, db, tmp_path)
    assert held.returncode == 1 and state_of(tmp_path, "usage")["lastRun"]["reason"] == "CorruptRecord", \
        held.stdout + held.stderr
    assert [r["id"] for r in bucket_records(s3_server, bucket, "llm")] == [1]
