"""The chart's ingest server: in the operator pod with SQLite, its own Deployment of several replicas
with PostgreSQL; a Service for gateways; tokens from a Secret; limits from values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from tests.support.chart_rendering import CHART_DIR, KUBE_VERSIONS, SCENARIOS, refused, render
from tests.support.pod_security import restricted_violations

POSTGRES = {"store": {"type": "postgres", "postgres": {"existingSecret": "capture-store"}}}
SEPARATE = {**POSTGRES, "ingest": {"enabled": True, "token": {"token": "s3cr3t-token"},
                                   "deployment": {"enabled": True, "replicas": 3}}}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def _by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_ingest_off_by_default(chart: helm.Chart) -> None:
    rendered = render(chart)
    assert "capture-export-ingest" not in _by_name(rendered.objects, "Service")
    (container,) = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--ingest-port" not in container["args"]


def test_with_sqlite_the_ingest_server_runs_in_the_operator_pod(chart: helm.Chart) -> None:
    from capture_export.cli import build_parser

    rendered = render(chart, SCENARIOS["ingest-in-operator-pod"])
    deployment = rendered.one("Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = build_parser().parse_args(container["args"])  # the real CLI takes the chart's arguments
    assert args.ingest_port == 8090 and args.ingest_token_file == "/etc/capture-export/ingest/token"
    assert args.max_records == 2000
    assert {"name": "ingest", "containerPort": 8090, "protocol": "TCP"} in container["ports"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "ingest-token")
    assert mount["mountPath"] == "/etc/capture-export/ingest" and mount["readOnly"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "ingest-token")
    assert volume["secret"]["secretName"] == "ingest-tokens"
    service = _by_name(rendered.objects, "Service")["capture-export-ingest"]
    assert service["spec"]["ports"][0]["targetPort"] == "ingest"
    assert _selects(service["spec"]["selector"], pod["metadata"]["labels"])
    assert not [s for s in rendered.of_kind("Secret") if "ingest" in s["metadata"]["name"]]


def test_with_postgres_the_ingest_server_can_scale_out_on_its_own(chart: helm.Chart) -> None:
    from capture_export.cli import build_parser

    rendered = render(chart, SEPARATE)
    deployments = _by_name(rendered.objects, "Deployment")
    operator, ingest = deployments["capture-export"], deployments["capture-export-ingest"]
    assert operator["spec"]["replicas"] == 1 and ingest["spec"]["replicas"] == 3
    (op_container,) = operator["spec"]["template"]["spec"]["containers"]
    assert "--ingest-port" not in op_container["args"]
    (container,) = ingest["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "ingest" and args.listen == "0.0.0.0:8090"
    env = {e["name"]: e for e in container["env"]}
    assert env["CAPTURE_EXPORT_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "capture-store", "key": "dsn"}
    ingest_labels = ingest["spec"]["template"]["metadata"]["labels"]
    # Neither Deployment selects the other's pods; the Service selects only the ingest pods.
    assert not _selects(operator["spec"]["selector"]["matchLabels"], ingest_labels)
    assert not _selects(ingest["spec"]["selector"]["matchLabels"], operator["spec"]["template"]["metadata"]["labels"])
    service = _by_name(rendered.objects, "Service")["capture-export-ingest"]
    assert _selects(service["spec"]["selector"], ingest_labels)
    assert not _selects(service["spec"]["selector"], operator["spec"]["template"]["metadata"]["labels"])
    secret = _by_name(rendered.objects, "Secret")["capture-export-ingest-token"]
    assert secret["stringData"] == {"token": "s3cr3t-token"}
    spec = ingest["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert restricted_violations(spec, spec["containers"]) == []
    for obj in rendered.objects:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize(("values", "where"), [
    ({"ingest": {"enabled": True}}, "/ingest/token"),
    ({"ingest": {"enabled": True, "token": {"token": "t"}, "deployment": {"enabled": True}}}, "/store/type"),
    ({**POSTGRES, "ingest": {"enabled": True, "token": {"token": "t"}, "deployment": {"replicas": 0}}},
     "/ingest/deployment/replicas"),
    ({"ingest": {"enabled": True, "token": {"token": "t"}, "limits": {"maxRecords": 0}}}, "/ingest/limits/maxRecords"),
    ({"ingest": {"enabled": True, "token": {"token": "t"}, "port": 70000}}, "/ingest/port"),
])
def test_bad_ingest_values_are_refused(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    assert where in refused(chart, values)


def test_every_ingest_limit_value_reaches_the_server(chart: helm.Chart) -> None:
    from capture_export.cli import build_parser

    limits = {"maxBodyBytes": 1001, "maxDecodedBytes": 1002, "maxRecords": 1003, "maxPendingRecords": 1004,
              "maxPendingBytes": 1005, "maxInflightBytes": 1006, "maxValues": 1007}
    rendered = render(chart, {**SEPARATE, "ingest": {**SEPARATE["ingest"], "limits": limits}})
    (container,) = _by_name(rendered.objects, "Deployment")["capture-export-ingest"]["spec"]["template"]["spec"][
        "containers"]
    args = build_parser().parse_args(container["args"])
    assert [args.max_body_bytes, args.max_decoded_bytes, args.max_records, args.max_pending_records,
            args.max_pending_bytes, args.max_inflight_bytes, args.max_values] == list(limits.values())
