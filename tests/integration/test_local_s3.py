"""LocalS3 uses only a server it started itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from capture_export import local_s3
from capture_export.local_s3 import LocalS3, PortInUse


def test_a_port_asked_for_that_is_taken_is_refused_before_anything_starts(tmp_path: Path,
                                                                          s3_server: LocalS3) -> None:
    with pytest.raises(PortInUse, match=f"port {s3_server.port} on 127.0.0.1 is already in use"):
        LocalS3(tmp_path / "second", port=s3_server.port).start()
    assert not (tmp_path / "second").exists()


def test_a_server_that_answers_but_is_not_ours_is_never_used(
    tmp_path: Path, s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race the port check cannot close: the port is taken between the check and SeaweedFS's bind.
    # SeaweedFS then either exits or runs on without its S3 port while the other server answers there.
    monkeypatch.setattr(local_s3, "port_in_use", lambda port, host="127.0.0.1": False)
    second = LocalS3(tmp_path / "second", port=s3_server.port)
    with pytest.raises(RuntimeError, match=f"another process answers on port {s3_server.port}|exited early"):
        second.start()
    assert not second.running, "the SeaweedFS that could not bind is stopped"
    s3_server.client().list_buckets()  # the other server is left alone


def test_ownership_is_the_listening_socket_of_the_process() -> None:
    if local_s3._listening_inodes(1) is None:
        pytest.skip("no /proc/net/tcp here: the ownership check cannot tell, and LocalS3 relies on the port check")
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        port = mine.getsockname()[1]
        listening = local_s3._listening_inodes(port)
        assert listening and listening <= local_s3._socket_inodes_of(os.getpid())
    other = subprocess.Popen([sys.executable, "-c", "import socket, sys, time; s = socket.socket(); "
                              "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
                              "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        port = int(other.stdout.readline())
        listening = local_s3._listening_inodes(port)
        assert listening, "the other process listens"
        assert not listening & local_s3._socket_inodes_of(os.getpid())
        assert listening <= local_s3._socket_inodes_of(other.pid)
    finally:
        other.kill()
        other.wait()
