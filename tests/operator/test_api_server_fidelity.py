"""The emulated API server behaves as kube-apiserver where the operator could tell the difference: writes
go through the CRD (pruning, defaults, validation and CEL rules, for spec and status alike), deletion bumps
``generation``, and a loaded server's 429s and 500s do not keep the operator from converging."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kubernetes.client.exceptions import ApiException

from capture_export.api import GROUP, VERSION
from capture_export.objectstore import S3ObjectStore
from capture_export.store import SQLiteStore
from tests.support.emulator import ApiFaults
from tests.support.operator_harness import EmulatedCluster, Kube, OperatorThread, assert_exported_exactly_once, wait_for
from tests.support.records import make_record

PLURAL = "s3exporters"


def spec(**overrides: object) -> dict[str, object]:
    return {"bucket": "capture-exports", "region": "us-east-1", "prefix": "exports", **overrides}


def test_unknown_fields_are_pruned_and_defaults_filled_in(kube: Kube) -> None:
    created = kube.apply_exporter("usage", spec(bukcet="typo", endpoint=None))
    stored = kube.get("usage")
    assert stored is not None and created == stored
    assert "bukcet" not in stored["spec"], "the API server prunes fields the schema does not know"
    assert stored["spec"]["every"] == 3600 and stored["spec"]["limit"] == 1000, "defaults from the CRD"
    assert stored["spec"]["endpoint"] is None, "nullable: kept as null"


def test_strict_field_validation_refuses_unknown_fields(kube: Kube) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "S3Exporter", "metadata": {"name": "usage"},
            "spec": spec(bukcet="typo")}
    with pytest.raises(ApiException) as caught:
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL, body,
                                                    field_validation="Strict")
    assert caught.value.status == 422
    assert "spec.bukcet" in caught.value.body


@pytest.mark.parametrize(("change", "field"), [({"limit": 10_001}, "spec.limit"),
                                               ({"prefix": "ends/"}, "spec.prefix"),
                                               ({"bucket": "Not_A_Bucket"}, "spec.bucket")])
def test_invalid_specs_are_refused_naming_the_field(kube: Kube, change: dict[str, object], field: str) -> None:
    with pytest.raises(ApiException) as caught:
        kube.apply_exporter("usage", spec(**change))
    assert caught.value.status == 422 and field in caught.value.body
    kube.apply_exporter("usage", spec())
    with pytest.raises(ApiException) as caught:
        kube.patch("usage", {"spec": change})
    assert caught.value.status == 422 and field in caught.value.body
    assert (kube.get("usage") or {})["metadata"]["generation"] == 1, "a refused patch changes nothing"


def test_cel_rules_refuse_at_apply(kube: Kube) -> None:
    """A rule that spans fields (x-kubernetes-validations) is the API server's to enforce, as kubectl shows."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RetentionPolicy", "metadata": {"name": "retain"},
            "spec": {"maxAge": "24h", "exporters": ["usage"], "exporterSelector": {"matchLabels": {"a": "b"}}}}
    with pytest.raises(ApiException) as caught:
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, kube.namespace, "retentionpolicies", body)
    assert caught.value.status == 422
    assert "set exporters or exporterSelector, not both" in caught.value.body
    body["spec"].pop("exporterSelector")
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, kube.namespace, "retentionpolicies", body)


def test_transition_rules_see_the_stored_object(kube: Kube) -> None:
    kube.apply_exporter("usage", spec())
    with pytest.raises(ApiException) as caught:
        kube.patch("usage", {"spec": {"bucket": "another-bucket"}})
    assert caught.value.status == 422 and "immutable" in caught.value.body
    kube.patch("usage", {"spec": {"limit": 50}})  # what may change, changes
    assert (kube.get("usage") or {})["spec"]["limit"] == 50


def test_status_writes_are_validated_too(kube: Kube) -> None:
    kube.apply_exporter("usage", spec())
    good = {"type": "Ready", "status": "True", "reason": "UpToDate", "lastTransitionTime": "2026-11-24T12:00:00Z"}
    kube.patch_status("usage", {"conditions": [good]})
    for bad in ({**good, "status": "Maybe"}, {**good, "lastTransitionTime": "yesterday"}):
        with pytest.raises(ApiException) as caught:
            kube.patch_status("usage", {"conditions": [bad]})
        assert caught.value.status == 422 and "status.conditions" in caught.value.body
    assert kube.status("usage")["conditions"] == [{**good, "message": ""}], "defaults fill the message in"


def test_deletion_bumps_the_generation(kube: Kube) -> None:
    kube.apply_exporter("usage", spec())
    kube.patch("usage", {"metadata": {"finalizers": ["example.com/hold"]}})
    assert (kube.get("usage") or {})["metadata"]["generation"] == 1, "metadata changes keep the generation"
    kube.delete("usage")
    deleting = kube.get("usage") or {}
    assert deleting["metadata"]["deletionTimestamp"]
    assert deleting["metadata"]["generation"] == 2
    kube.patch("usage", {"metadata": {"finalizers": []}})
    assert kube.get("usage") is None


def test_faults_are_answered_like_a_loaded_api_server(cluster: EmulatedCluster, kube: Kube) -> None:
    cluster.faults = ApiFaults(rate=1.0, statuses=(429,))
    with pytest.raises(ApiException) as caught:
        kube.get("usage")
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"
    cluster.faults = ApiFaults(rate=1.0, statuses=(500,))
    with pytest.raises(ApiException) as caught:
        kube.apply_exporter("usage", spec())
    assert caught.value.status == 500
    cluster.faults = None
    assert kube.get("usage") is None, "a failed request changed nothing"


def test_operator_converges_while_the_api_server_throttles_and_fails(
    cluster: EmulatedCluster, kube: Kube, start_operator: Callable[..., OperatorThread],
    exporter_spec: Callable[..., dict], s3_secret: str, sqlite_store: SQLiteStore, object_store: S3ObjectStore,
) -> None:
    """A third of the operator's requests (status patches, Secret reads, finalizer patches, Events) fail
    with 429 or 500: it retries until the export is done, the status tells the truth and the finalizer
    comes off on deletion."""
    sqlite_store.append(make_record(i) for i in range(300))
    faults = ApiFaults(rate=0.3)
    cluster.faults = faults
    start_operator()
    created = None
    while created is None:  # kubectl retries too
        try:
            created = kube.apply_exporter("usage", exporter_spec())
        except ApiException as exc:
            assert exc.status in faults.statuses

    def status() -> dict[str, object]:
        try:
            return kube.status("usage")
        except ApiException:
            return {}

    wait_for(lambda: status().get("cursor") == "300" and status().get("backlog") == 0, 60,
             what="the export to finish and be reported")
    assert_exported_exactly_once(sqlite_store, object_store)
    assert faults.injected[429] > 0 and faults.injected[500] > 0, faults.injected

    def deleted() -> bool:
        try:
            kube.delete("usage")
        except ApiException as exc:
            if exc.status == 404:
                return True
        try:
            return kube.get("usage") is None
        except ApiException:
            return False

    wait_for(deleted, 60, what="the operator to remove its finalizer")
