"""The operator under exactly the chart's RBAC (rendered with the Helm SDK, applied as is), with a
ServiceAccount token from the TokenRequest API: it works cluster-wide and namespaced, and a grant missing
one verb stops it at startup with an error naming what is missing, instead of a silent hang."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from capture_export.handlers import OperatorConfig
from capture_export.handlers.permissions import MissingPermissions
from capture_export.handlers.settings import check_rbac
from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore
from tests.support.chart_rendering import CHART_DIR
from tests.support.operator_fixtures import SECRET
from tests.support.operator_harness import Kube, OperatorThread, operator_config, wait_for
from tests.support.records import make_record

from .apiserver import TempApiServer
from .conftest import clean_namespace, create_namespace
from .rbac import ChartRbac, install_rbac, remove_cluster_rbac, without_verb

_releases = itertools.count(1)


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture
def installed(apiserver: TempApiServer, chart: helm.Chart) -> Iterator[Callable[..., ChartRbac]]:
    """Install the chart's RBAC for a fresh release (its own namespace); removed after the test."""
    done: list[ChartRbac] = []

    def install(values: dict[str, Any], **kwargs: Any) -> ChartRbac:
        n = next(_releases)
        rbac = install_rbac(apiserver, chart, values, release=f"rbac{n}", namespace=f"rbac{n}-system", **kwargs)
        done.append(rbac)
        return rbac

    yield install
    for rbac in done:
        remove_cluster_rbac(apiserver, rbac)


def run_as_chart(apiserver: TempApiServer, rbac: ChartRbac, store: Path) -> OperatorThread:
    config = operator_config(apiserver, store, namespaces=rbac.watched_namespaces,
                             kube=apiserver.configuration(token=rbac.token))
    return OperatorThread(config)


def exporter_in(apiserver: TempApiServer, namespace: str, s3_server: LocalS3, bucket: str) -> Kube:
    kube = Kube(apiserver, namespace)
    kube.create_secret(SECRET, {"access_key_id": s3_server.access_key_id,
                                "access_secret": s3_server.secret_access_key})
    kube.apply_exporter("usage", {"bucket": bucket, "region": "us-east-1", "endpoint": s3_server.endpoint,
                                  "secretRef": {"name": SECRET}, "prefix": namespace, "limit": 100})
    return kube


def forbidden_calls(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log lines of API calls the grant refused (kopf retries a 403 and logs each attempt)."""
    return [r.getMessage() for r in caplog.records if "Forbidden" in r.getMessage() or " 403" in r.getMessage()]


def test_cluster_wide_rbac_is_enough(apiserver: TempApiServer, installed: Callable[..., ChartRbac], namespace: str,
                                     s3_server: LocalS3, bucket: str, sqlite_store: SQLiteStore,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sqlite_store.append(make_record(i) for i in range(40))
    rbac = installed({})  # the chart's defaults: watch.allNamespaces
    assert rbac.watched_namespaces == ()
    assert {obj["kind"] for obj in rbac.objects} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    kube = exporter_in(apiserver, namespace, s3_server, bucket)
    operator = run_as_chart(apiserver, rbac, sqlite_store.path).start()
    try:
        kube.wait_condition("usage", "Ready", "True", timeout=60)
        kube.wait_status("usage", lambda s: s.get("cursor") == "40", what="exported under the chart's RBAC")
        kube.annotate("usage", **{"capture.dev/run-now": "1"})  # patch on the resource, as kopf does
        kube.wait_status("usage", lambda s: s.get("lastRunNow") == "1", what="run-now")
        kube.delete("usage")  # the finalizer is removed with the same grant
        wait_for(lambda: kube.get("usage") is None, what="finalizer removed, object gone")
    finally:
        operator.stop()
        kube.close()
    assert operator.error is None
    assert forbidden_calls(caplog) == []


def test_namespaced_rbac_is_enough_and_serves_only_its_namespaces(
    apiserver: TempApiServer, installed: Callable[..., ChartRbac], s3_server: LocalS3, bucket: str,
    sqlite_store: SQLiteStore, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    sqlite_store.append(make_record(i) for i in range(25))
    n = next(_releases)
    team_a, team_b, elsewhere = f"team-a-{n}", f"team-b-{n}", f"elsewhere-{n}"
    rbac = installed({"watch": {"allNamespaces": False, "namespaces": [team_a, team_b]}})
    assert rbac.watched_namespaces == (team_a, team_b)
    assert {obj["kind"] for obj in rbac.objects} == {"ServiceAccount", "Role", "RoleBinding"}  # nothing cluster-wide
    create_namespace(apiserver, elsewhere)
    kubes = [exporter_in(apiserver, ns, s3_server, bucket) for ns in (team_a, team_b, elsewhere)]
    operator = run_as_chart(apiserver, rbac, sqlite_store.path).start()
    try:
        for kube in kubes[:2]:
            kube.wait_condition("usage", "Ready", "True", timeout=60)
            kube.wait_status("usage", lambda s: s.get("cursor") == "25", what=f"{kube.namespace} exported")
        ignored = kubes[2].get("usage")
        assert ignored is not None and "finalizers" not in ignored["metadata"] and "status" not in ignored
    finally:
        operator.stop()
        for kube in kubes:
            kube.close()
        for ns in (team_a, team_b, elsewhere):
            clean_namespace(apiserver, ns)
    assert operator.error is None
    assert forbidden_calls(caplog) == []


MISSING_ONE_VERB = [
    ("s3exporters", "list", "list s3exporters.capture.dev"),
    ("s3exporters", "watch", "watch s3exporters.capture.dev"),
    ("s3exporters", "patch", "patch s3exporters.capture.dev"),
    ("s3exporters/status", "patch", "patch s3exporters.capture.dev/status"),
    ("retentionpolicies", "watch", "watch retentionpolicies.capture.dev"),
    ("retentionpolicies/status", "patch", "patch retentionpolicies.capture.dev/status"),
    ("secrets", "get", "get secrets"),
    ("events", "create", "create events"),
    ("customresourcedefinitions", "watch", "watch customresourcedefinitions.apiextensions.k8s.io"),
]


@pytest.mark.parametrize(("resource", "verb", "named"), MISSING_ONE_VERB, ids=[f"{v}-{r}" for r, v, _ in
                                                                                 MISSING_ONE_VERB])
def test_the_startup_check_names_a_missing_verb(
    apiserver: TempApiServer, installed: Callable[..., ChartRbac], resource: str, verb: str, named: str,
) -> None:
    rbac = installed({}, edit=without_verb("ClusterRole", resource, verb))
    with pytest.raises(MissingPermissions) as refused:
        check_rbac(OperatorConfig(namespaces=rbac.watched_namespaces, kube=apiserver.configuration(token=rbac.token)))
    assert f"{named} (all namespaces)" in str(refused.value)


def test_the_startup_check_names_the_namespace_a_verb_is_missing_in(
    apiserver: TempApiServer, installed: Callable[..., ChartRbac],
) -> None:
    n = next(_releases)
    short = f"short-{n}"
    rbac = installed({"watch": {"allNamespaces": False, "namespaces": [f"ok-{n}", short]}},
                     edit=lambda obj: without_verb("Role", "secrets", "get")(obj)
                     if obj["metadata"].get("namespace") == short else obj)
    with pytest.raises(MissingPermissions) as refused:
        check_rbac(OperatorConfig(namespaces=rbac.watched_namespaces, kube=apiserver.configuration(token=rbac.token)))
    message = str(refused.value)
    assert f"get secrets in namespace {short}" in message  # the chart grants configmaps in the same rule
    assert f"ok-{n}" not in message


def test_the_operator_exits_at_once_naming_a_missing_verb(
    apiserver: TempApiServer, installed: Callable[..., ChartRbac], sqlite_store: SQLiteStore, tmp_path: Path,
) -> None:
    """`capture-export operator` as the chart's pod runs it, its kubeconfig the ServiceAccount's token."""
    rbac = installed({}, edit=without_verb("ClusterRole", "s3exporters", "watch"))
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig", token=rbac.token)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "capture_export.cli", "operator", "--all-namespaces", "--store",
             str(sqlite_store.path), "--liveness-port", "0", "--metrics-port", "0"],
            env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the operator hung with a missing verb: {exc.stderr!r}") from None
    assert result.returncode == 1, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (
        "capture-export operator: not started: the operator's RBAC is missing 2 permission(s): watch "
        "s3exporters.capture.dev (all namespaces); watch retentionpolicies.capture.dev (all namespaces). Grant "
        "them (the Helm chart's rbac.create does, for the namespaces in watch.namespaces or all of them)"), last_line
