"""Issue 10, item 3: a forged or foreign checkpoint. A cursor above any id the store ever assigned is
refused (``CursorAheadOfStore``), a negative or malformed one is ``CheckpointCorrupt``, never a traceback;
either way nothing is written, and a reset is the way forward.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from capture_export.local_s3 import LocalS3

from .identity_support import HostileExporter, assert_no_traceback, failed_reasons, seed_postgres, seed_sqlite

FAR_AHEAD = "1000000000000"


@pytest.fixture
def exported(s3_server: LocalS3, bucket: str, tmp_path: Path, request: pytest.FixtureRequest) -> HostileExporter:
    """An exporter that exported 1000 records, on SQLite unless parametrised (indirectly) "postgresql"."""
    postgresql = getattr(request, "param", "sqlite") == "postgresql"
    store: Any = request.getfixturevalue("pg_dsn") if postgresql else tmp_path / "store.sqlite"
    seed = seed_postgres if postgresql else seed_sqlite
    seed(store, 1000, seed=3)
    exporter = HostileExporter(s3_server, bucket, tmp_path, str(store), limit=200)
    result = exporter.run_once()
    assert result.returncode == 0, result.stdout + result.stderr
    seed(store, 200, seed=4)  # the gateway goes on writing
    return exporter


def _forge_state(exporter: HostileExporter, **fields: Any) -> None:
    state = json.loads(exporter.state.read_text())
    state["S3Exporter/default/usage"].update(fields)
    exporter.state.write_text(json.dumps(state))


@pytest.mark.parametrize("where", ["checkpoint", "state file"])
@pytest.mark.parametrize("exported", ["sqlite", "postgresql"], indirect=True)
def test_cursor_far_ahead_of_the_store_is_refused(exported: HostileExporter, where: str) -> None:
    if where == "checkpoint":
        checkpoint = exported.checkpoint()
        assert checkpoint is not None
        exported.put_checkpoint({**checkpoint, "cursor": FAR_AHEAD, "highWater": FAR_AHEAD})
    else:
        _forge_state(exported, cursor=FAR_AHEAD)
    before = exported.snapshot()

    refused = exported.run_once()
    assert refused.returncode != 0, refused.stdout
    assert_no_traceback(refused)
    reasons = failed_reasons(exported.status())
    assert "CursorAheadOfStore" in reasons, exported.status()
    assert FAR_AHEAD in reasons["CursorAheadOfStore"]  # the message says which cursor and why
    assert exported.snapshot() == before

    # The way forward: a reset re-exports from the beginning, exactly once.
    exported.reset()
    fixed = exported.run_once()
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    audit = exported.verify()
    assert audit.returncode == 0, audit.stdout
    assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param({"cursor": "-5"}, id="negative cursor"),
        pytest.param({"cursor": -5, "highWater": -5}, id="negative number"),
        pytest.param({"cursor": "9" * 30, "highWater": "9" * 30}, id="beyond 64 bits"),
        pytest.param({"epoch": -1}, id="negative epoch"),
        pytest.param({"cursor": 1.5}, id="fractional cursor"),
        pytest.param({"cursor": True}, id="boolean cursor"),
        pytest.param({"epoch": "one"}, id="epoch not a number"),
    ],
)
def test_malformed_checkpoint_is_checkpoint_corrupt(exported: HostileExporter, forge: dict[str, Any]) -> None:
    checkpoint = exported.checkpoint()
    assert checkpoint is not None
    exported.put_checkpoint({**checkpoint, **forge})
    exported.state.unlink()  # only the bucket knows the cursor now
    before = exported.snapshot()

    refused = exported.run_once()
    assert refused.returncode != 0, refused.stdout
    assert_no_traceback(refused)
    assert "CheckpointCorrupt" in failed_reasons(exported.status()), exported.status()
    assert exported.snapshot() == before


@pytest.mark.parametrize("body", [b"[1, 2]", b"\xff\xfe not json", b"null", b'"cursor"'])
def test_checkpoint_that_is_not_a_json_object_is_checkpoint_corrupt(exported: HostileExporter, body: bytes) -> None:
    exported.put_checkpoint(body)
    exported.state.unlink()
    before = exported.snapshot()
    refused = exported.run_once()
    assert refused.returncode != 0, refused.stdout
    assert_no_traceback(refused)
    assert "CheckpointCorrupt" in failed_reasons(exported.status()), exported.status()
    assert exported.snapshot() == before


@pytest.mark.parametrize("cursor", ["-5", "12abc", "9" * 30])
def test_malformed_cursor_in_the_state_file_is_checkpoint_corrupt(exported: HostileExporter, cursor: str) -> None:
    _forge_state(exported, cursor=cursor)
    before = exported.snapshot()
    refused = exported.run_once()
    assert refused.returncode != 0, refused.stdout
    assert_no_traceback(refused)
    assert "CheckpointCorrupt" in refused.stdout + refused.stderr
    assert exported.snapshot() == before
