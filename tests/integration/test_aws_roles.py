"""Credentials as AWS users run them, against a real STS and a policy-enforcing S3 (moto's server, on
loopback): an assumed role with an external id, its renewal before expiry, the pod's web identity (IRSA),
session tokens from a Secret, and the least-privilege IAM policy of docs/storage-providers.md, action by action."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from capture_export.api import RetentionPolicySpec, S3ExporterSpec, S3ExporterStatus
from capture_export.export import ExporterId
from capture_export.export.cycle import CycleOutcome, ExporterWorker
from capture_export.retention.cycle import ExporterRef, RetentionWorker
from capture_export.seed import generate_records
from capture_export.status.conditions import get_condition
from capture_export.store import SQLiteStore

from .aws_support import ACCOUNT, REGION, Keys, MotoAws, allow, trust_user

REPO = Path(__file__).resolve().parents[2]
BUCKET = "capture-exports"
PREFIX = "llm-usage"
EXPORTER = ExporterId("default", "usage")


class WallClock:
    """Real time plus an offset the test moves forward: STS issues sessions in real time, the worker judges
    their age on this clock."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def monotonic(self) -> float:
        return self.now().timestamp()

    def sleep(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def spec(aws: MotoAws, **fields: Any) -> S3ExporterSpec:
    return S3ExporterSpec.model_validate({"bucket": BUCKET, "region": REGION, "endpoint": aws.endpoint,
                                          "prefix": PREFIX, "limit": 50, **fields})


def worker(store: SQLiteStore, secrets: dict[tuple[str, str], dict[str, str]], clock: Any = None) -> ExporterWorker:
    return ExporterWorker(EXPORTER, open_store=lambda s, ns: store, secrets=_Secrets(secrets), clock=clock)


class _Secrets:
    """A SecretSource over a dict the test may change (a rotation)."""

    def __init__(self, data: dict[tuple[str, str], dict[str, str]]) -> None:
        self.data = data

    def get(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.data.get((namespace, name))


def condition(outcome: CycleOutcome, type_: str) -> tuple[str, str, str]:
    found = get_condition(outcome.status.conditions, type_)
    assert found is not None
    return found.status, found.reason, found.message


def documented_policy(name: str, bucket: str = BUCKET, prefix: str = PREFIX) -> dict[str, Any]:
    """The IAM policy docs/storage-providers.md gives (``<!-- policy: name -->`` then a json block), for this
    bucket."""
    text = (REPO / "docs" / "storage-providers.md").read_text()
    match = re.search(rf"<!-- policy: {name} -->\s*```json\n(.*?)```", text, re.DOTALL)
    assert match, f"docs/storage-providers.md has no {name} policy"
    return json.loads(match.group(1).replace("capture-exports", bucket).replace("llm-usage", prefix))


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "store.sqlite")
    store.append(generate_records(120, seed=15))
    yield store
    store.close()


def exported_keys(aws: MotoAws) -> list[str]:
    listed = aws.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    return [item["Key"] for item in listed.get("Contents", [])]


# -- 1. assume a role ------------------------------------------------------------------------------------


def _role_setup(aws: MotoAws, external_id: str | None = "ext-3f1c9a7e") -> tuple[Keys, str]:
    """A base user that may only assume roles, and a role trusting it (with an external id) that may
    export: the bucket accepts the exports only when the role is really used."""
    aws.create_bucket(BUCKET)
    base = aws.user("operator", allow("sts:AssumeRole"))
    role = aws.role("exporter", trust_user("operator", external_id=external_id), documented_policy("exporter"))
    aws.enforce()
    return base, role


def test_exports_as_the_assumed_role_with_its_external_id(aws: MotoAws, store: SQLiteStore) -> None:
    base, role = _role_setup(aws)
    exporter = worker(store, {("default", "s3"): base.secret()})
    outcome = exporter.cycle(spec(aws, secretRef={"name": "s3"}, roleArn=role, externalId="ext-3f1c9a7e"),
                             S3ExporterStatus(), generation=1)
    assert outcome.status.cursor == "120", outcome.status.conditions
    status, reason, message = condition(outcome, "CredentialsValid")
    assert (status, reason) == ("True", "Verified")
    assert role in message and "capture-export-default-usage" in message and "external id" in message
    assert "ext-3f1c9a7e" not in outcome.status.model_dump_json()  # the external id is not published
    # STS issued a session for that role, under the default session name.
    assert [s.session_name for s in aws.sessions(role)] == ["capture-export-default-usage"]
    assert len([k for k in exported_keys(aws) if k.endswith(".cbor.zstd")]) == 3
    # The base user alone may not write the bucket: the objects came through the role.
    with pytest.raises(Exception, match="AccessDenied"):
        aws.client("s3", base).put_object(Bucket=BUCKET, Key=f"{PREFIX}/direct", Body=b"x")


def test_wrong_external_id_is_assume_role_denied_and_recovers_when_fixed(aws: MotoAws, store: SQLiteStore) -> None:
    base, role = _role_setup(aws)
    exporter = worker(store, {("default", "s3"): base.secret()})
    wrong = spec(aws, secretRef={"name": "s3"}, roleArn=role, externalId="not-the-right-one", sessionName="usage")
    outcome = exporter.cycle(wrong, S3ExporterStatus(), generation=1)
    status, reason, message = condition(outcome, "CredentialsValid")
    assert (status, reason) == ("False", "AssumeRoleDenied"), message
    assert role in message and "external" in message.lower()
    assert "not-the-right-one" not in outcome.status.model_dump_json()
    assert outcome.status.cursor == "0" and exported_keys(aws) == []
    assert condition(outcome, "Ready")[0] == "False" and 0 < outcome.due_in <= 5
    fixed = exporter.cycle(spec(aws, secretRef={"name": "s3"}, roleArn=role, externalId="ext-3f1c9a7e",
                                sessionName="usage"), outcome.status, generation=2)
    assert fixed.status.cursor == "120"
    assert condition(fixed, "CredentialsValid")[:2] == ("True", "Verified")
    assert [s.session_name for s in aws.sessions(role)] == ["usage"]


def test_a_base_identity_without_sts_assume_role_is_denied(aws: MotoAws, store: SQLiteStore) -> None:
    aws.create_bucket(BUCKET)
    base = aws.user("operator", allow("s3:ListAllMyBuckets"))
    role = aws.role("exporter", trust_user("operator"), documented_policy("exporter"))
    aws.enforce()
    outcome = worker(store, {("default", "s3"): base.secret()}).cycle(
        spec(aws, secretRef={"name": "s3"}, roleArn=role), S3ExporterStatus(), generation=1)
    assert condition(outcome, "CredentialsValid")[:2] == ("False", "AssumeRoleDenied")
    assert outcome.status.cursor == "0"


def test_the_session_is_renewed_before_it_expires(aws: MotoAws, tmp_path: Path) -> None:
    base, role = _role_setup(aws)
    store = SQLiteStore(tmp_path / "store.sqlite")
    clock = WallClock()
    exporter = worker(store, {("default", "s3"): base.secret()}, clock=clock)
    short = spec(aws, secretRef={"name": "s3"}, roleArn=role, externalId="ext-3f1c9a7e", roleDurationSeconds=900)
    status = S3ExporterStatus()
    store.append(generate_records(10, seed=1))
    status = exporter.cycle(short, status, generation=1).status
    assert status.cursor == "10" and len(aws.sessions(role)) == 1
    signing = exporter.engine.objects.session.get_credentials()  # type: ignore[union-attr]
    first_key = signing.get_frozen_credentials().access_key

    # 200 s of 900 left: inside the renewal window (a quarter), outside the mandatory one (a sixth)
    clock.offset = timedelta(seconds=700)
    store.append(generate_records(10, seed=2))
    status = exporter.cycle(short, status, generation=1).status
    assert status.cursor == "20"
    sessions = aws.sessions(role)
    assert len(sessions) == 2, "the session was not renewed before it expired"
    assert signing.get_frozen_credentials().access_key == sessions[1].access_key_id != first_key

    clock.offset = timedelta(seconds=900)  # past the first session's expiry; the new one is young: no storm
    store.append(generate_records(10, seed=3))
    status = exporter.cycle(short, status, generation=1).status
    assert status.cursor == "30" and len(aws.sessions(role)) == 2
    store.close()


# -- 2. the pod's web identity (IRSA) ---------------------------------------------------------------------


def _irsa_env(aws: MotoAws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, role: str) -> None:
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6Y2FwdHVyZS1leHBvcnQifQ.c2ln")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", role)
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "irsa-pod")


IRSA_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.example"},
    "Action": "sts:AssumeRoleWithWebIdentity"}]}


def test_irsa_web_identity_from_the_environment_is_honoured(aws: MotoAws, store: SQLiteStore, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # moto checks signatures only for signed calls; AssumeRoleWithWebIdentity is unsigned, so enforcement
    # stays off here and the test asserts which identity signed instead.
    aws.create_bucket(BUCKET)
    irsa = aws.role("irsa", IRSA_TRUST, documented_policy("exporter"))
    _irsa_env(aws, monkeypatch, tmp_path, irsa)
    exporter = worker(store, {})
    outcome = exporter.cycle(spec(aws), S3ExporterStatus(), generation=1)  # no secretRef
    assert outcome.status.cursor == "120", outcome.status.conditions
    assert "default credentials" in condition(outcome, "CredentialsValid")[2]
    sessions = aws.sessions(irsa)
    assert [s.session_name for s in sessions] == ["irsa-pod"]
    signing = exporter.engine.objects.session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
    assert signing.access_key == sessions[0].access_key_id and signing.token == sessions[0].session_token


def test_a_role_is_assumed_on_top_of_the_web_identity(aws: MotoAws, store: SQLiteStore, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    aws.create_bucket(BUCKET)
    irsa = aws.role("irsa", IRSA_TRUST, allow("sts:AssumeRole"))
    target = aws.role("cross-account-writer", {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}, documented_policy("exporter"))
    _irsa_env(aws, monkeypatch, tmp_path, irsa)
    exporter = worker(store, {})
    outcome = exporter.cycle(spec(aws, roleArn=target), S3ExporterStatus(), generation=1)
    assert outcome.status.cursor == "120", outcome.status.conditions
    assert len(aws.sessions(irsa)) == 1 and len(aws.sessions(target)) == 1
    signing = exporter.engine.objects.session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
    assert signing.access_key == aws.sessions(target)[0].access_key_id


# -- 3. session tokens from a Secret ----------------------------------------------------------------------


def test_a_session_token_in_the_secret_signs_the_requests(aws: MotoAws, store: SQLiteStore) -> None:
    base, role = _role_setup(aws, external_id=None)
    issued = aws.client("sts", base).assume_role(RoleArn=role, RoleSessionName="pasted")["Credentials"]
    temporary = Keys(issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"])
    secrets = {("default", "s3"): {"access_key_id": temporary.access_key_id,
                                   "access_secret": temporary.secret_access_key}}  # the token forgotten
    exporter = worker(store, secrets)
    outcome = exporter.cycle(spec(aws, secretRef={"name": "s3"}), S3ExporterStatus(), generation=1)
    status, reason, message = condition(outcome, "CredentialsValid")
    assert status == "False" and reason in ("InvalidCredentials", "AccessDenied"), (reason, message)
    assert outcome.status.cursor == "0"
    assert temporary.secret_access_key not in outcome.status.model_dump_json()

    secrets[("default", "s3")] = temporary.secret()  # the Secret now has session_token: rotated in place
    fixed = exporter.cycle(spec(aws, secretRef={"name": "s3"}), outcome.status, generation=1)
    assert fixed.status.cursor == "120", [c.message for c in fixed.status.conditions]
    assert "session token" in condition(fixed, "CredentialsValid")[2]
    assert temporary.session_token not in fixed.status.model_dump_json()


# -- 4. least privilege: the documented policy, and each action removed --------------------------------------


def _policy_user(aws: MotoAws, policy: dict[str, Any]) -> Keys:
    aws.create_bucket(BUCKET)
    keys = aws.user("exporter", policy)
    aws.enforce()
    return keys


def test_the_documented_policy_is_enough_for_export_restart_and_reset(aws: MotoAws, store: SQLiteStore) -> None:
    keys = _policy_user(aws, documented_policy("exporter"))
    secrets = {("default", "s3"): keys.secret()}
    first = worker(store, secrets)
    exported = first.cycle(spec(aws, secretRef={"name": "s3"}), S3ExporterStatus(), generation=1)
    first.close()  # as its process ending would: the store lock and the lease are given up
    assert exported.status.cursor == "120", exported.status.conditions
    message = condition(exported, "BucketReachable")[2]
    assert f"s3://{BUCKET}/{PREFIX}/_capture-export/probes/default/usage" in message
    # A restarted worker recovers from the checkpoint (GetObject); a reset re-exports over the same keys,
    # sweeping (ListBucket, DeleteObject) what a different limit leaves behind.
    restarted = worker(store, secrets)
    again = restarted.cycle(spec(aws, secretRef={"name": "s3"}, limit=40), S3ExporterStatus(), generation=2,
                            reset_token="1")
    assert again.result is not None and again.result.failure is None, again.status.conditions
    data = [k for k in exported_keys(aws) if k.endswith(".cbor.zstd")]
    assert len(data) == 3 and all(k.startswith(f"{PREFIX}/") for k in data)  # limit 40: 3 objects, old ones swept
    assert not [k for k in exported_keys(aws) if "/probes/" in k]


REMOVALS = {
    "s3:PutObject": ("WriteDenied", "s3:PutObject"),
    "s3:GetObject": ("ReadDenied", "s3:GetObject"),
    "s3:DeleteObject": ("DeleteDenied", "s3:DeleteObject"),
    "s3:ListBucket": ("ListDenied", "s3:ListBucket"),
}


@pytest.mark.parametrize("removed", list(REMOVALS))
def test_each_action_removed_is_named_in_the_condition(aws: MotoAws, store: SQLiteStore, removed: str) -> None:
    policy = documented_policy("exporter")
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        statement["Action"] = [a for a in actions if a != removed] or ["s3:GetBucketLocation"]
    keys = _policy_user(aws, policy)
    outcome = worker(store, {("default", "s3"): keys.secret()}).cycle(
        spec(aws, secretRef={"name": "s3"}), S3ExporterStatus(), generation=1)
    reason, permission = REMOVALS[removed]
    status, got, message = condition(outcome, "BucketReachable")
    assert (status, got) == ("False", reason), message
    assert permission in message
    assert outcome.status.cursor == "0"
    assert not [k for k in exported_keys(aws) if k.endswith(".cbor.zstd")]
    assert outcome.result is None or outcome.result.rows == 0


def test_a_write_only_policy_is_refused_naming_what_is_missing(aws: MotoAws, store: SQLiteStore) -> None:
    keys = _policy_user(aws, allow("s3:PutObject", resources=[f"arn:aws:s3:::{BUCKET}/*"]))
    exporter = worker(store, {("default", "s3"): keys.secret()})
    outcome = exporter.cycle(spec(aws, secretRef={"name": "s3"}), S3ExporterStatus(), generation=1)
    status, reason, message = condition(outcome, "BucketReachable")
    assert (status, reason) == ("False", "ReadDenied")
    assert "s3:GetObject" in message and "s3:ListBucket" in message and "s3:DeleteObject" in message
    assert "write allowed" in message
    warnings = [e for e in outcome.events if e.type == "Warning"]
    assert warnings and outcome.due_in >= 5  # backoff, not a tight loop
    again = exporter.cycle(spec(aws, secretRef={"name": "s3"}), outcome.status, generation=1)
    assert condition(again, "BucketReachable")[:2] == ("False", "ReadDenied") and again.due_in > outcome.due_in
    assert not [k for k in exported_keys(aws) if k.endswith(".cbor.zstd")]


def test_the_retention_gate_needs_only_the_readme_retention_policy(aws: MotoAws, store: SQLiteStore) -> None:
    exporter_keys = _policy_user(aws, documented_policy("exporter"))
    aws.enforce(False)
    gate_keys = aws.user("gate", documented_policy("retention"))
    aws.enforce()
    exported = worker(store, {("default", "s3"): exporter_keys.secret()}).cycle(
        spec(aws, secretRef={"name": "s3"}), S3ExporterStatus(), generation=1)
    assert exported.status.cursor == "120"
    gate = RetentionWorker(ExporterId("default", "purge"), open_store=lambda s, ns: store,
                           secrets=_Secrets({("default", "gate"): gate_keys.secret()}))
    policy = RetentionPolicySpec(max_age="1h", exporters=["usage"])
    seen = gate.observe(policy, ExporterRef("usage", spec(aws, secretRef={"name": "gate"})), "usage", store)
    assert seen.state == "Committed" and seen.cursor is not None and seen.cursor.position == 120, seen
    # and that policy alone cannot write: it is the gate's, not an exporter's
    with pytest.raises(Exception, match="AccessDenied"):
        aws.client("s3", gate_keys).put_object(Bucket=BUCKET, Key=f"{PREFIX}/x", Body=b"x")


def test_the_retention_gate_reads_checkpoints_through_the_exporters_role(aws: MotoAws, store: SQLiteStore) -> None:
    base, role = _role_setup(aws)
    secrets = {("default", "s3"): base.secret()}
    with_role = spec(aws, secretRef={"name": "s3"}, roleArn=role, externalId="ext-3f1c9a7e")
    assert worker(store, secrets).cycle(with_role, S3ExporterStatus(), generation=1).status.cursor == "120"
    gate = RetentionWorker(ExporterId("default", "purge"), open_store=lambda s, ns: store, secrets=_Secrets(secrets))
    policy = RetentionPolicySpec(max_age="1h", exporters=["usage"])
    seen = gate.observe(policy, ExporterRef("usage", with_role), "usage", store)
    assert seen.state == "Committed" and seen.cursor is not None and seen.cursor.position == 120, seen
    assert len(aws.sessions(role)) == 2  # the exporter's session and the gate's own
    # A role STS refuses closes the gate, naming why.
    denied = gate.observe(policy, ExporterRef("usage", with_role.model_copy(update={"external_id": "wrong-id"})),
                          "usage", store)
    assert denied.state == "Unreadable" and "AssumeRoleDenied" in denied.detail and "wrong-id" not in denied.detail


# -- 6. SSE-KMS (SeaweedFS has no KMS; moto's S3 records it) ------------------------------------------------


def test_sse_kms_is_requested_on_data_checkpoint_and_probe(aws: MotoAws, store: SQLiteStore) -> None:
    aws.create_bucket(BUCKET)
    key_id = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    sse = {"algorithm": "aws:kms", "kmsKeyId": key_id}
    assert aws.admin is not None
    outcome = worker(store, {("default", "s3"): aws.admin.secret()}).cycle(
        spec(aws, secretRef={"name": "s3"}, serverSideEncryption=sse), S3ExporterStatus(), generation=1)
    assert outcome.status.cursor == "120", outcome.status.conditions
    assert "aws:kms" in condition(outcome, "BucketReachable")[2]
    s3 = aws.client("s3")
    keys = exported_keys(aws)
    assert any(k.endswith(".json") for k in keys) and any(k.endswith(".cbor.zstd") for k in keys)
    for key in keys:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert key_id in head["SSEKMSKeyId"], key
