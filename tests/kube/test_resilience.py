"""The operator keeps up through a kube-apiserver restart and a watch whose resourceVersion has expired
(410 Gone): a spec change made while it was cut off is acted on once it is back, none is missed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.faultproxy import FaultProxy
from tests.support.operator_harness import Kube, OperatorThread
from tests.support.records import make_record

from .apiserver import TempApiServer

EXPIRED_WATCH = "Restarting the watch-stream for s3exporters"  # kopf's words on a 410 Gone in the stream


@pytest.fixture
def operator_route(apiserver: TempApiServer) -> Iterator[FaultProxy]:
    """The operator's way to the API server, which the test can cut (TLS passes through untouched)."""
    with FaultProxy(apiserver.port) as proxy:
        yield proxy


def test_a_spec_change_made_during_an_api_server_restart_is_not_missed(
    apiserver: TempApiServer, kube: Kube, operator_route: FaultProxy, start_operator: Callable[..., OperatorThread],
    exporter_spec: Callable[..., dict], s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="kopf._cogs.clients.watching")
    sqlite_store.append(make_record(i) for i in range(50))
    operator = start_operator(kube=apiserver.configuration(host=f"https://127.0.0.1:{operator_route.port}"))
    kube.apply_exporter("usage", exporter_spec(every=3600, limit=100))
    kube.wait_status("usage", lambda s: s.get("cursor") == "50", timeout=60, what="first export")
    kube.wait_condition("usage", "Ready", "True")

    operator_route.outage()
    # Once the operator is cut off, a write elsewhere moves etcd's revision past the last one its watch has
    # seen, so the restarted API server's fresh watch cache starts after it: the resumed watch gets 410.
    kube.core.create_namespaced_config_map(kube.namespace, {"metadata": {"name": "tick"}})
    apiserver.restart_apiserver()
    kube.patch("usage", {"spec": {"limit": 7, "every": 1}})
    sqlite_store.append(make_record(i) for i in range(50, 71))
    operator_route.restore()

    status = kube.wait_status("usage", lambda s: s.get("observedGeneration") == 2 and s.get("cursor") == "71",
                              timeout=60, what="the change made while cut off acted on")
    kube.wait_condition("usage", "Ready", "True")
    assert EXPIRED_WATCH in caplog.text, "the resumed watch was expected to expire (410 Gone)"
    new_keys = [info.key for info in object_store.list("exports/") if info.key.endswith(".cbor.zstd")][1:]
    assert len(new_keys) == 3  # 21 records at the new limit of 7
    assert status["totals"]["rows"] == 71
    assert operator.error is None and not operator.stop_flag.is_set()
