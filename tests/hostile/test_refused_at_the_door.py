"""Bad input is refused at the door, the same way everywhere.

One table of good and bad specs (tests/support/spec_cases.py) is judged by the pydantic models (what
``capture-export run`` and the operator's handlers use) and by the generated CRD as the API server would
judge it (OpenAPI schema, list types, CEL rules evaluated with a CEL library): the verdicts must agree and
every refusal must name the field. Then the refusals are driven end to end: standalone, each exits 2 naming
the field, prints no traceback and writes nothing; in the operator, each sets ``Ready=False InvalidSpec``
naming the field and exports nothing. Manifest-level gaps of the standalone runner (names, Secret
documents, duplicates) come last.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from capture_export.api import GROUP, KINDS, VERSION
from capture_export.api.manifests import InvalidManifest, parse_spec
from capture_export.cli import main as cli
from capture_export.handlers.s3exporter import DESTINATION, destination_of, judge
from capture_export.local_s3 import LocalS3
from capture_export.store import SQLiteStore
from tests.support.cel import crd_schema, rule_failures, uncompilable_rules
from tests.support.operator_fixtures import (  # noqa: F401 (fixtures)
    admit_invalid_specs,
    cluster_fixture,
    kube_fixture,
    start_operator_fixture,
)
from tests.support.operator_harness import EmulatedCluster, Kube, OperatorThread, wait_for
from tests.support.records import make_record
from tests.support.spec_cases import CASES, S3EXPORTER_CASES, SpecCase, exporter

from .canary_support import assert_no_traceback, tree_of
from .door_support import CRD_DIR, ApiServerOffline, names_field
from .runs_support import exporter_document, secret_document, write_manifest

API_SERVER = ApiServerOffline()


def pydantic_refusals(case: SpecCase) -> list[str]:
    """What the pydantic models (and, for an update, the operator's destination check) refuse."""
    try:
        parsed = parse_spec(case.kind, case.spec)
    except InvalidManifest as exc:
        return str(exc).split("; ")
    if case.old is not None and case.kind == "S3Exporter":
        recorded = destination_of(parse_spec(case.kind, case.old))  # type: ignore[arg-type]
        _, hold = judge(case.spec, {DESTINATION: json.dumps(recorded)})
        if hold is not None and hold.reason == "DestinationImmutable":
            return [f"spec: {hold.message}"]
    assert parsed is not None
    return []


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kind}-{c.id}")
def test_the_pydantic_models_judge_each_spec_as_the_table_says(case: SpecCase) -> None:
    refusals = pydantic_refusals(case)
    if case.accepted:
        assert refusals == []
    else:
        assert refusals, "accepted"
        assert names_field(refusals, case.field), refusals  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kind}-{c.id}")
def test_the_crd_judges_each_spec_as_the_table_says(case: SpecCase) -> None:
    refusals = API_SERVER.refusals(case.kind, case.spec, old=case.old)
    if case.accepted:
        assert refusals == []
    else:
        assert refusals, "accepted"
        assert names_field(refusals, case.field), refusals  # type: ignore[arg-type]


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_every_cel_rule_of_the_crds_compiles(info: Any) -> None:
    crd = yaml.safe_load((CRD_DIR / f"{info.plural}.{GROUP}.yaml").read_text())
    assert uncompilable_rules(crd_schema(crd)) == []


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_conditions_are_a_list_map_keyed_by_type(info: Any) -> None:
    crd = yaml.safe_load((CRD_DIR / f"{info.plural}.{GROUP}.yaml").read_text())
    conditions = crd_schema(crd)["properties"]["status"]["properties"]["conditions"]
    assert conditions.get("x-kubernetes-list-type") == "map"
    assert conditions.get("x-kubernetes-list-map-keys") == ["type"]
    assert "type" in conditions["items"].get("required", [])


def test_every_cel_rule_has_a_case_that_breaks_it() -> None:
    """No CEL rule without a bad spec in the table that trips it: a rule no case breaks is untested."""
    tripped: set[str] = set()
    for case in CASES:
        schema = API_SERVER.schemas[case.kind]["properties"]["spec"]
        tripped |= {failure.rule for failure in rule_failures(schema, case.spec, old=case.old)}
    rules = []
    for kind, schema in API_SERVER.schemas.items():
        pending = [schema["properties"]["spec"]]
        while pending:
            node = pending.pop()
            rules += [(kind, entry["rule"]) for entry in node.get("x-kubernetes-validations") or []]
            pending += list((node.get("properties") or {}).values())
            pending += [node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict)]
    untested = [f"{kind}: {rule}" for kind, rule in rules if rule not in tripped]
    assert untested == []


# -- standalone: exit 2, the field named, nothing written ------------------------------------------------


REFUSED_ON_CREATE = [case for case in CASES if not case.accepted and case.old is None]


# Where a spec that is wrongly accepted would export to: a loopback port nothing listens on.
NOWHERE = "http://127.0.0.1:9"


def _document(case: SpecCase, name: str = "bad") -> dict[str, Any]:
    spec = {"endpoint": NOWHERE, **case.spec} if case.kind == "S3Exporter" else case.spec
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": case.kind, "metadata": {"name": name, "namespace": "default"},
            "spec": spec}


@pytest.mark.parametrize("case", REFUSED_ON_CREATE, ids=lambda c: f"{c.kind}-{c.id}")
def test_standalone_refuses_each_bad_spec_naming_the_field_and_writes_nothing(
    case: SpecCase, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write_manifest(tmp_path / "bad.yaml", _document(case))
    code = cli(["run", "--once", "-f", str(manifest), "--state", str(tmp_path / "state" / "state.json"),
                "--store", str(tmp_path / "store" / "store.sqlite")])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert f"{case.kind} default/bad" in err and names_field(
        err.split("default/bad: ", 1)[-1].split("; "), case.field or "")
    assert_no_traceback(out, err)
    assert tree_of(tmp_path) == ["bad.yaml"]


def test_standalone_refusal_in_a_subprocess_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    from .runs_support import run_cli

    case = next(c for c in S3EXPORTER_CASES if c.id == "prefix-escape")
    manifest = write_manifest(tmp_path / "bad.yaml", _document(case))
    result = run_cli("run", "--once", "-f", manifest, "--state", "state.json", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "spec.prefix" in result.stderr and "\x1b" not in result.stderr
    assert tree_of(tmp_path) == ["bad.yaml"]


# -- standalone: the manifest around the spec (item 8) ---------------------------------------------------


def _manifest_cases() -> list[tuple[str, str, list[dict[str, Any]]]]:
    good = exporter(secretRef={"name": "s3-creds"}, endpoint=NOWHERE)
    secret = secret_document("s3-creds", string_data={"access_key_id": "k", "access_secret": "s"})

    def exporter_named(name: Any, namespace: Any = "default") -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "S3Exporter",
                "metadata": {"name": name, "namespace": namespace}, "spec": good}

    def with_secret(**fields: Any) -> dict[str, Any]:
        doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": "default"}}
        doc.update(fields)
        return doc

    return [
        ("name-path", "metadata.name", [secret, exporter_named("../../..")]),
        ("name-ansi", "metadata.name", [secret, exporter_named("usage\x1b[31m")]),
        ("name-long", "metadata.name", [secret, exporter_named("a" * 2000)]),
        ("name-upper", "metadata.name", [secret, exporter_named("Usage")]),
        ("name-number", "metadata.name", [secret, exporter_named(12345)]),
        ("namespace-path", "metadata.namespace", [secret, exporter_named("usage", "../etc")]),
        ("namespace-dots", "metadata.namespace", [secret, exporter_named("usage", "team.a")]),
        ("secret-name-path", "metadata.name", [{**secret, "metadata": {"name": "../s3"}}, exporter_named("usage")]),
        ("secret-data-string", "data", [with_secret(data="hello"), exporter_named("usage")]),
        ("secret-data-list", "data", [with_secret(data=["a"]), exporter_named("usage")]),
        ("secret-string-data-list", "stringData", [with_secret(stringData=["a"]), exporter_named("usage")]),
        ("secret-string-data-null", "stringData.access_secret",
         [with_secret(stringData={"access_key_id": "k", "access_secret": None}), exporter_named("usage")]),
        ("secret-string-data-number", "stringData.access_key_id",
         [with_secret(stringData={"access_key_id": 12345, "access_secret": "s"}), exporter_named("usage")]),
        ("secret-data-not-base64", "data.access_key_id",
         [with_secret(data={"access_key_id": "!!!", "access_secret": "cw=="}), exporter_named("usage")]),
        ("secret-duplicate", "defined twice", [secret, secret, exporter_named("usage")]),
        ("metadata-not-a-mapping", "metadata", [{**exporter_named("usage"), "metadata": "usage"}]),
        ("labels-not-a-mapping", "metadata.labels",
         [secret, {**exporter_named("usage"), "metadata": {"name": "usage", "labels": ["a"]}}]),
        ("annotations-number", "metadata.annotations",
         [secret, {**exporter_named("usage"), "metadata": {"name": "usage", "annotations": {"a": 1}}}]),
    ]


@pytest.mark.parametrize(("what", "documents"), [(c[1], c[2]) for c in _manifest_cases()],
                         ids=[c[0] for c in _manifest_cases()])
def test_standalone_refuses_bad_manifests_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, documents: list[dict[str, Any]],
) -> None:
    manifest = write_manifest(tmp_path / "bad.yaml", *documents)
    code = cli(["run", "--once", "-f", str(manifest), "--state", str(tmp_path / "state.json"),
                "--store", str(tmp_path / "store.sqlite")])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert what in err and "bad.yaml" in err, err
    assert "\x1b" not in err and len(err) < 1000, err
    assert_no_traceback(out, err)
    assert tree_of(tmp_path) == ["bad.yaml"]


def test_null_secret_value_is_not_the_string_none(
    s3_server: LocalS3, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """``session_token: null`` was the session token "None" (and every request failed); a null optional
    key is refused at the door like any other null."""
    secret = secret_document("s3-creds", string_data={"access_key_id": s3_server.access_key_id,
                                                      "access_secret": s3_server.secret_access_key,
                                                      "session_token": None})
    manifest = write_manifest(tmp_path / "m.yaml", secret, exporter_document("usage", {
        "bucket": bucket, "region": "us-east-1", "endpoint": s3_server.endpoint, "secretRef": {"name": "s3-creds"}}))
    code = cli(["run", "--once", "-f", str(manifest), "--state", str(tmp_path / "s.json"),
                "--store", str(tmp_path / "store.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and "stringData.session_token" in err


# -- the operator: Ready=False InvalidSpec naming the field, nothing exported ----------------------------


def test_operator_refuses_each_bad_spec_naming_the_field_and_exports_nothing(
    cluster: EmulatedCluster, kube: Kube, start_operator: Callable[..., OperatorThread], s3_server: LocalS3,
    bucket: str, sqlite_store: SQLiteStore,
) -> None:
    """As through a CRD without its schema (an old or hand-made one): the operator refuses on its own."""
    admit_invalid_specs(cluster)
    sqlite_store.append(make_record(i) for i in range(10))
    kube.create_secret("s3-creds", {"access_key_id": s3_server.access_key_id,
                                    "access_secret": s3_server.secret_access_key})
    start_operator()
    exporters = [c for c in REFUSED_ON_CREATE if c.kind == "S3Exporter" and c.field != "spec.bucket"]
    policies = [c for c in REFUSED_ON_CREATE if c.kind == "RetentionPolicy"]
    for case in exporters:
        # Where the case is not about them, the real bucket, endpoint and Secret: were the spec wrongly
        # accepted, it would export there, and the test would see it.
        spec = {**case.spec, "bucket": bucket, "endpoint": case.spec.get("endpoint", s3_server.endpoint),
                "secretRef": case.spec.get("secretRef", {"name": "s3-creds"})}
        kube.apply_exporter(case.id, spec)
    for case in policies:
        body = _document(case, name=case.id)
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, "default", "retentionpolicies", body)

    def refused(plural: str, name: str) -> dict[str, Any] | None:
        obj = kube.custom.get_namespaced_custom_object(GROUP, VERSION, "default", plural, name)
        ready = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)
        return ready if ready and ready["status"] == "False" and ready["reason"] == "InvalidSpec" else None

    wrong = []
    for plural, cases in (("s3exporters", exporters), ("retentionpolicies", policies)):
        for case in cases:
            try:
                ready = wait_for(lambda p=plural, c=case: refused(p, c.id), timeout=20, what=f"{case.id} refused")
            except AssertionError as exc:
                wrong.append(f"{case.kind}/{case.id}: {exc}")
                continue
            if not names_field(ready["message"].split("not exporting: ", 1)[-1].split("not purging: ", 1)[-1]
                               .split("; "), case.field or ""):
                wrong.append(f"{case.kind}/{case.id}: {ready['message']!r} does not name {case.field}")
    assert wrong == []
    listed = s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert listed == []
    assert sqlite_store.count() == 10
