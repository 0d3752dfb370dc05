"""LocalS3 uses only a server it started itself (issue 18, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capture_export import local_s3
from capture_export.local_s3 import LocalS3, NotOurServer, PortInUse


def test_a_port_asked_for_that_is_taken_is_refused_before_anything_starts(tmp_path: Path,
                                                                          s3_server: LocalS3) -> None:
    with pytest.raises(PortInUse, match=f"port {s3_server.port} on 127.0.0.1 is already in use"):
        LocalS3(tmp_path / "second", port=s3_server.port).start()
    assert not (tmp_path / "second").exists()


def test_a_server_that_answers_but_is_not_ours_is_never_used(
    tmp_path: Path, s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race the port check cannot close: the port is taken between the check and SeaweedFS's bind.
    monkeypatch.setattr(local_s3, "port_in_use", lambda port, host="127.0.0.1": False)
    second = LocalS3(tmp_path / "second", port=s3_server.port)
    with pytest.raises(NotOurServer, match=f"another process answers on port {s3_server.port}"):
        second.start()
    assert not second.running, "the SeaweedFS that could not bind is stopped"
    s3_server.client().list_buckets()  # the other server is left alone
