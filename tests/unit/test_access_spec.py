"""The access fields of an S3Exporter (roleArn, externalId, sessionName, serverSideEncryption, caBundleRef,
insecureSkipTLSVerify): what the models (mirrors of the CRD's CEL rules) refuse, and how S3 and STS
failures are classed into condition reasons."""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import pytest
from pydantic import ValidationError

from capture_export.api import S3ExporterSpec
from capture_export.api.crd import openapi_schema
from capture_export.objectstore import CredentialResolver, S3Location, classify
from capture_export.objectstore.credentials import default_session_name

ROLE = "arn:aws:iam::444455556666:role/capture-export-writer"
LOCATION = S3Location("exports", "us-east-1", "https://s3.internal:9000")


def spec(**fields: Any) -> S3ExporterSpec:
    return S3ExporterSpec.model_validate({"bucket": "exports", "region": "us-east-1", **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"externalId": "abc-123"}, "externalId and sessionName apply to an assumed role: set roleArn"),
        ({"sessionName": "mine"}, "set roleArn"),
        ({"roleArn": "arn:aws:iam::1234:role/x"}, "pattern"),
        ({"roleArn": "arn:aws:s3:::bucket"}, "pattern"),
        ({"roleArn": ROLE, "externalId": "has space"}, "pattern"),
        ({"roleArn": ROLE, "roleDurationSeconds": 600}, "greater than or equal to 900"),
        ({"roleArn": ROLE, "roleDurationSeconds": 50_000}, "less than or equal to 43200"),
        ({"serverSideEncryption": {"algorithm": "AES256", "kmsKeyId": "alias/x"}}, "kmsKeyId needs algorithm aws:kms"),
        ({"serverSideEncryption": {"algorithm": "DES"}}, "AES256"),
        ({"caBundleRef": {}}, "exactly one of secretKeyRef and configMapKeyRef"),
        ({"caBundleRef": {"secretKeyRef": {"name": "a"}, "configMapKeyRef": {"name": "b"}}}, "exactly one"),
        ({"insecureSkipTLSVerify": True}, "insecureSkipTLSVerify applies to an https:// endpoint only"),
        ({"endpoint": "http://minio:9000", "insecureSkipTLSVerify": True}, "https:// endpoint only"),
        ({"endpoint": "https://minio:9000", "insecureSkipTLSVerify": True,
          "caBundleRef": {"configMapKeyRef": {"name": "ca"}}}, "not together with caBundleRef"),
        ({"endpoint": "http://minio:9000", "caBundleRef": {"configMapKeyRef": {"name": "ca"}}},
         "caBundleRef applies to an https:// endpoint"),
    ],
)
def test_invalid_access_specs_name_the_rule(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


def test_valid_access_specs() -> None:
    full = spec(endpoint="https://minio:9000", roleArn=ROLE, externalId="3f1c9a7e-capture-export",
                sessionName="usage", roleDurationSeconds=900,
                serverSideEncryption={"algorithm": "aws:kms", "kmsKeyId": "alias/capture-exports"},
                caBundleRef={"configMapKeyRef": {"name": "internal-ca"}})
    assert full.ca_bundle_ref is not None and full.ca_bundle_ref.config_map_key_ref.key == "ca.crt"  # type: ignore[union-attr]
    assert spec(endpoint="https://minio:9000", insecureSkipTLSVerify=True).insecure_skip_tls_verify
    assert not spec().insecure_skip_tls_verify  # never on unless set
    assert spec(roleArn="arn:aws-cn:iam::444455556666:role/path/to/role").role_arn


def test_every_access_field_is_described_in_the_crd() -> None:
    properties = openapi_schema(S3ExporterSpec)["properties"]
    for name in ("roleArn", "externalId", "sessionName", "roleDurationSeconds", "serverSideEncryption",
                 "caBundleRef", "insecureSkipTLSVerify"):
        assert properties[name].get("description"), name
    assert properties["insecureSkipTLSVerify"]["default"] is False


def test_the_resolver_builds_the_default_session_name_and_keeps_the_external_id_out_of_repr() -> None:
    access = CredentialResolver(_NoSecrets()).access("team-a", "usage", spec(roleArn=ROLE, externalId="ext-secret"))
    assert access.role is not None and access.role.session_name == "capture-export-team-a-usage"
    assert "ext-secret" not in repr(access) and "ext-secret" in access.secrets()
    assert len(default_session_name("n" * 63, "x" * 253)) == 64


class _NoSecrets:
    def get(self, namespace: str, name: str) -> None:
        return None


def _client_error(code: str, operation: str, status: int = 403, message: str = "m") -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": message},
                                            "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@pytest.mark.parametrize(
    ("code", "operation", "reason", "domain"),
    [
        ("ExpiredToken", "PutObject", "ExpiredToken", "Credentials"),  # S3: a Secret's session token expired
        ("ExpiredTokenException", "AssumeRole", "ExpiredToken", "Credentials"),  # base token expired at STS
        ("AccessDenied", "AssumeRole", "AssumeRoleDenied", "Credentials"),
        ("InvalidClientTokenId", "AssumeRole", "InvalidCredentials", "Credentials"),
        ("ValidationError", "AssumeRole", "AssumeRoleFailed", "Credentials"),
        ("InvalidIdentityToken", "AssumeRoleWithWebIdentity", "WebIdentityRejected", "Credentials"),
        ("AccessDenied", "PutObject", "AccessDenied", "Credentials"),
    ],
)
def test_s3_and_sts_failures_are_classed(code: str, operation: str, reason: str, domain: str) -> None:
    status = 400 if code == "ValidationError" else 403
    failure = classify(_client_error(code, operation, status, message="token FAKE-SECRET-VALUE"), LOCATION,
                       ["FAKE-SECRET-VALUE"], role=ROLE)
    assert (failure.reason, failure.domain, failure.transient) == (reason, domain, False)
    assert "FAKE-SECRET-VALUE" not in failure.message
    if operation == "AssumeRole" and reason == "AssumeRoleDenied":
        assert ROLE in failure.message and "externalId" in failure.message


def test_an_untrusted_certificate_is_its_own_reason() -> None:
    error = botocore.exceptions.SSLError(endpoint_url="https://s3.internal:9000", error="CERTIFICATE_VERIFY_FAILED")
    failure = classify(error, LOCATION, [])
    assert (failure.reason, failure.domain, failure.transient) == ("TLSVerificationFailed", "Bucket", False)


def test_the_standalone_runner_reads_configmaps_for_ca_bundles() -> None:
    from pathlib import Path

    from capture_export.api.manifests import load_manifests

    example = Path(__file__).resolve().parents[2] / "examples" / "exporter-aws-role.yaml"
    manifests = load_manifests([example])
    (private,) = [r for r in manifests.of_kind("S3Exporter") if r.name == "usage-private"]
    pem = CredentialResolver(manifests).ca_bundle("default", private.spec.ca_bundle_ref)
    assert pem is not None and pem.startswith("-----BEGIN CERTIFICATE-----")


CEL_CASES = [
    ({"externalId": "abc-123"}, "set roleArn"),
    ({"sessionName": "mine"}, "set roleArn"),
    ({"serverSideEncryption": {"algorithm": "AES256", "kmsKeyId": "alias/x"}}, "kmsKeyId needs algorithm aws:kms"),
    ({"caBundleRef": {}}, "exactly one of secretKeyRef and configMapKeyRef"),
    ({"insecureSkipTLSVerify": True}, "https:// endpoint only"),
    ({"endpoint": "https://minio:9000", "insecureSkipTLSVerify": True,
      "caBundleRef": {"configMapKeyRef": {"name": "ca"}}}, "not together with caBundleRef"),
    ({"endpoint": "http://minio:9000", "caBundleRef": {"configMapKeyRef": {"name": "ca"}}},
     "caBundleRef applies to an https:// endpoint"),
]


@pytest.mark.parametrize(("fields", "message"), CEL_CASES)
def test_the_crds_cel_rules_refuse_what_the_models_refuse(fields: dict[str, Any], message: str) -> None:
    from pathlib import Path

    import yaml

    from tests.support.cel import crd_schema, rule_failures, uncompilable_rules

    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "s3exporters.capture.dev.yaml").read_text())
    schema = crd_schema(crd)
    assert uncompilable_rules(schema) == []
    spec_schema = schema["properties"]["spec"]
    base = {"bucket": "exports", "region": "us-east-1"}
    assert rule_failures(spec_schema, {**base, "endpoint": "https://minio:9000", "roleArn": ROLE,
                                       "externalId": "abc-123", "insecureSkipTLSVerify": True}) == []
    failures = rule_failures(spec_schema, {**base, **fields})
    assert any(message in failure.message for failure in failures), failures
