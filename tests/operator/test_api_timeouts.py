"""Every call the operator makes to the Kubernetes API itself gives up within its request timeout.

The API server here is a TCP port that accepts connections and never answers: what a connection dropped
by the network looks like from the client's side. Without a timeout each call would wait ~15 minutes
(until TCP gives up), holding a status write, a retention cycle or the operator's start."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from capture_export.handlers.kube import KubeApi, KubeApiError
from capture_export.handlers.settings import OperatorConfig, check_rbac

TIMEOUT = (0.5, 0.5)  # (connect, read) seconds
# A GET the client may retry (urllib3 retries idempotent requests 3 times): four timeouts and change.
GIVE_UP_WITHIN = 6.0


class SilentServer:
    """Accepts every connection, reads what is sent, never answers a byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def silent_api() -> Iterator[kubernetes.client.Configuration]:
    server = SilentServer()
    yield kubernetes.client.Configuration(host=f"http://127.0.0.1:{server.port}")
    server.close()


def within(seconds: float, call: Callable[[], Any]) -> tuple[object, float]:
    """Run ``call`` on a thread; its result or exception and how long it took, or fail after ``seconds``."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    elapsed = time.monotonic() - started
    if worker.is_alive():
        pytest.fail(f"still waiting for an answer after {elapsed:.1f}s")
    return outcome[0], elapsed


CALLS: dict[str, Callable[[KubeApi], Any]] = {
    "read_secret": lambda api: api.read_secret("default", "s3-credentials"),
    "read_config_map": lambda api: api.read_config_map("default", "ca-bundle"),
    "patch_status": lambda api: api.patch_status("s3exporters", "default", "usage", {"backlog": 1}),
    "list_objects": lambda api: api.list_objects("s3exporters", "default"),
    "check_served": lambda api: api.check_served(["s3exporters"], ["default"]),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_call_on_a_silent_connection_fails_within_its_timeout(
        silent_api: kubernetes.client.Configuration, call: str) -> None:
    api = KubeApi(silent_api, request_timeout=TIMEOUT)
    try:
        outcome, _ = within(GIVE_UP_WITHIN, lambda: CALLS[call](api))
    finally:
        api.close()
    assert isinstance(outcome, KubeApiError), outcome


def test_a_permission_check_on_a_silent_connection_gives_no_answer_within_its_timeout(
        silent_api: kubernetes.client.Configuration) -> None:
    api = KubeApi(silent_api, request_timeout=TIMEOUT)
    try:
        outcome, _ = within(GIVE_UP_WITHIN, lambda: api.access_allowed("get", "secrets", namespace="default"))
    finally:
        api.close()
    assert outcome is None  # "could not check", as when the API server has no SelfSubjectAccessReview


def test_the_startup_rbac_check_uses_the_configured_timeout(
        silent_api: kubernetes.client.Configuration, tmp_path: Path) -> None:
    """The RBAC check at startup asks one question per permission: each must end within the operator's
    ``api_timeout``, or a dropped connection holds the operator's start."""
    config = OperatorConfig(kube=silent_api, namespaces=["default"], api_timeout=TIMEOUT)
    outcome, elapsed = within(GIVE_UP_WITHIN, lambda: check_rbac(config))
    assert outcome is None, outcome  # could not check: starts anyway, says so in the log
    assert elapsed < GIVE_UP_WITHIN
