"""The connection test, server-side encryption and TLS against SeaweedFS: identities restricted to some
actions (a bucket readable but not writable, a write-only one), SSE-S3 on every object, and S3 over HTTPS
with a throwaway CA given through caBundleRef."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capture_export.api import S3ExporterSpec, S3ExporterStatus
from capture_export.api.manifests import ManifestSet
from capture_export.export import ExporterId
from capture_export.export.cycle import CycleOutcome, ExporterWorker
from capture_export.local_s3 import LocalS3
from capture_export.seed import generate_records
from capture_export.status.conditions import get_condition
from capture_export.store import SQLiteStore

from .aws_support import Tls, make_tls

EXPORTER = ExporterId("default", "usage")
BUCKET = "probe-bucket"
PROBE = f"s3://{BUCKET}/llm/_capture-export/probes/default/usage"

IDENTITIES = [
    {"name": "reader", "credentials": [{"accessKey": "reader-key", "secretKey": "reader-secret"}],
     "actions": ["Read", "List"]},
    {"name": "write-only", "credentials": [{"accessKey": "writer-key", "secretKey": "writer-secret"}],
     "actions": ["Write"]},
    {"name": "exporter", "credentials": [{"accessKey": "exporter-key", "secretKey": "exporter-secret"}],
     "actions": [f"Read:{BUCKET}", f"Write:{BUCKET}", f"List:{BUCKET}"]},
]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[LocalS3]:
    """SeaweedFS with restricted identities beside the admin, serving S3 over HTTP and HTTPS."""
    with LocalS3(tmp_path_factory.mktemp("seaweedfs-identities"), identities=IDENTITIES,
                 tls=(tls.certificate, tls.key)) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "store.sqlite")
    store.append(generate_records(60, seed=21))
    yield store
    store.close()


def keys_for(server: LocalS3, identity: str | None) -> dict[str, str]:
    if identity is None:
        return {"access_key_id": server.access_key_id, "access_secret": server.secret_access_key}
    found = next(i for i in IDENTITIES if i["name"] == identity)
    credentials = found["credentials"][0]  # type: ignore[index]
    return {"access_key_id": credentials["accessKey"], "access_secret": credentials["secretKey"]}


def cycle(server: LocalS3, store: SQLiteStore, identity: str | None = None, *, endpoint: str | None = None,
          manifests: ManifestSet | None = None, status: S3ExporterStatus | None = None,
          worker: ExporterWorker | None = None, **fields: Any) -> tuple[CycleOutcome, ExporterWorker]:
    manifests = manifests or ManifestSet()
    manifests.secrets[("default", "s3")] = keys_for(server, identity)
    spec = S3ExporterSpec.model_validate({"bucket": BUCKET, "region": "us-east-1", "prefix": "llm", "limit": 25,
                                          "endpoint": endpoint or server.endpoint, "secretRef": {"name": "s3"},
                                          **fields})
    worker = worker or ExporterWorker(EXPORTER, open_store=lambda s, ns: store, secrets=manifests)
    return worker.cycle(spec, status or S3ExporterStatus(), generation=1), worker


def condition(outcome: CycleOutcome, type_: str) -> tuple[str, str, str]:
    found = get_condition(outcome.status.conditions, type_)
    assert found is not None
    return found.status, found.reason, found.message


def keys_under(server: LocalS3, prefix: str = "llm/") -> list[str]:
    listed = server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


@pytest.fixture(autouse=True)
def empty_bucket(seaweed: LocalS3) -> None:
    client = seaweed.client()
    for key in keys_under(seaweed, ""):
        client.delete_object(Bucket=BUCKET, Key=key)


# -- 5. the connection test -----------------------------------------------------------------------------


def test_the_connection_test_says_what_it_tested_and_leaves_nothing(seaweed: LocalS3, store: SQLiteStore) -> None:
    outcome, _ = cycle(seaweed, store, "exporter")
    assert outcome.status.cursor == "60"
    status, reason, message = condition(outcome, "BucketReachable")
    assert (status, reason) == ("True", "Verified")
    assert message.startswith("connection test passed: wrote, read, listed and deleted") and PROBE in message
    assert not [k for k in keys_under(seaweed) if "/probes/" in k]


def test_a_bucket_readable_but_not_writable_is_write_denied(seaweed: LocalS3, store: SQLiteStore) -> None:
    manifests = ManifestSet()
    outcome, worker = cycle(seaweed, store, "reader", manifests=manifests)
    status, reason, message = condition(outcome, "BucketReachable")
    assert (status, reason) == ("False", "WriteDenied"), message
    assert PROBE in message and "s3:PutObject" in message
    assert condition(outcome, "Ready")[0] == "False"
    assert outcome.status.cursor == "0" and keys_under(seaweed) == []
    # Granted write access (the Secret now holds another identity's keys): recovers by itself.
    fixed, _ = cycle(seaweed, store, "exporter", manifests=manifests, status=outcome.status, worker=worker)
    assert fixed.status.cursor == "60" and condition(fixed, "BucketReachable")[:2] == ("True", "Verified")


def test_a_write_only_identity_is_refused_naming_the_missing_permissions(seaweed: LocalS3,
                                                                        store: SQLiteStore) -> None:
    outcome, _ = cycle(seaweed, store, "write-only")
    status, reason, message = condition(outcome, "BucketReachable")
    assert (status, reason) == ("False", "ReadDenied"), message
    assert "s3:GetObject" in message and "s3:ListBucket" in message and "write" in message
    assert outcome.status.cursor == "0"
    assert not [k for k in keys_under(seaweed) if not k.endswith("/probes/default/usage")]  # no data written
    assert not [k for k in keys_under(seaweed) if "/probes/" in k]  # (Write deletes its probe too)


def test_the_connection_is_tested_again_after_a_credential_change(seaweed: LocalS3, store: SQLiteStore) -> None:
    manifests = ManifestSet()
    outcome, worker = cycle(seaweed, store, "exporter", manifests=manifests)
    assert condition(outcome, "BucketReachable")[0] == "True"
    store.append(generate_records(10, seed=22))
    rotated, _ = cycle(seaweed, store, "reader", manifests=manifests, status=outcome.status, worker=worker)
    assert condition(rotated, "BucketReachable")[:2] == ("False", "WriteDenied")
    assert rotated.status.cursor == "60"


# -- 6. encryption and TLS ------------------------------------------------------------------------------


def test_sse_s3_is_applied_to_data_and_checkpoint_objects(seaweed: LocalS3, store: SQLiteStore) -> None:
    outcome, _ = cycle(seaweed, store, serverSideEncryption={"algorithm": "AES256"})
    assert outcome.status.cursor == "60", outcome.status.conditions
    assert "server-side encryption AES256" in condition(outcome, "BucketReachable")[2]
    client = seaweed.client()
    keys = keys_under(seaweed)
    assert len([k for k in keys if k.endswith(".cbor.zstd")]) == 3 and any(k.endswith(".json") for k in keys)
    for key in keys:
        assert client.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption") == "AES256", key


def test_without_sse_objects_are_not_reported_encrypted(seaweed: LocalS3, store: SQLiteStore) -> None:
    cycle(seaweed, store)
    client = seaweed.client()
    for key in keys_under(seaweed):
        assert client.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption") is None, key


def test_tls_with_a_private_ca_from_a_secret_or_a_configmap(seaweed: LocalS3, store: SQLiteStore, tls: Tls) -> None:
    manifests = ManifestSet()
    manifests.secrets[("default", "ca")] = {"ca.crt": tls.ca_pem}
    manifests.config_maps[("default", "internal-ca")] = {"bundle.pem": tls.ca_pem}
    outcome, worker = cycle(seaweed, store, endpoint=seaweed.https_endpoint, manifests=manifests,
                            caBundleRef={"secretKeyRef": {"name": "ca"}})
    assert outcome.status.cursor == "60", outcome.status.conditions
    store.append(generate_records(10, seed=23))
    again, _ = cycle(seaweed, store, endpoint=seaweed.https_endpoint, manifests=manifests, status=outcome.status,
                     worker=worker, caBundleRef={"configMapKeyRef": {"name": "internal-ca", "key": "bundle.pem"}})
    assert again.status.cursor == "70", again.status.conditions
    assert condition(again, "BucketReachable")[:2] == ("True", "Verified")


def test_an_untrusted_certificate_is_refused_not_skipped(seaweed: LocalS3, store: SQLiteStore, tls: Tls) -> None:
    outcome, worker = cycle(seaweed, store, endpoint=seaweed.https_endpoint)
    status, reason, message = condition(outcome, "BucketReachable")
    assert (status, reason) == ("False", "TLSVerificationFailed") and "caBundleRef" in message
    assert outcome.status.cursor == "0" and keys_under(seaweed) == []
    # Only an explicit insecureSkipTLSVerify turns verification off.
    skipped, _ = cycle(seaweed, store, endpoint=seaweed.https_endpoint, status=outcome.status, worker=worker,
                       insecureSkipTLSVerify=True)
    assert skipped.status.cursor == "60"
    assert "NOT verified" in condition(skipped, "BucketReachable")[2]


def test_a_missing_or_empty_ca_bundle_is_named(seaweed: LocalS3, store: SQLiteStore) -> None:
    manifests = ManifestSet()
    missing, worker = cycle(seaweed, store, endpoint=seaweed.https_endpoint, manifests=manifests,
                            caBundleRef={"configMapKeyRef": {"name": "internal-ca"}})
    status, reason, message = condition(missing, "BucketReachable")
    assert (status, reason) == ("False", "CABundleNotFound") and "ConfigMap default/internal-ca" in message
    manifests.config_maps[("default", "internal-ca")] = {"ca.crt": "not a certificate"}
    invalid, _ = cycle(seaweed, store, endpoint=seaweed.https_endpoint, manifests=manifests, worker=worker,
                       status=missing.status, caBundleRef={"configMapKeyRef": {"name": "internal-ca"}})
    assert condition(invalid, "BucketReachable")[:2] == ("False", "CABundleInvalid")
    assert invalid.status.cursor == "0"


# -- 3. session tokens that expire: SeaweedFS's own STS ----------------------------------------------------

SESSION_SECONDS = 30  # long enough for one cycle on a loaded machine (load 15 took >10 s), short enough to wait out
STS_ROLE = "arn:aws:iam::000000000000:role/Exporter"


@pytest.fixture(scope="module")
def seaweed_sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """SeaweedFS whose STS serves AssumeRole with sessions of SESSION_SECONDS, enforced on S3 requests."""
    allow_all = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]},
        {"Effect": "Allow", "Action": ["sts:ValidateSession"], "Resource": ["*"]}]}
    iam = {
        "sts": {"tokenDuration": f"{SESSION_SECONDS}s", "maxSessionLength": "1h", "issuer": "capture-export-tests",
                "signingKey": "Y2FwdHVyZS1leHBvcnQtdGVzdHMtc2lnbmluZy1rZXktMzI="},
        "policy": {"defaultEffect": "Deny", "storeType": "memory"},
        "roles": [{"roleName": "Exporter", "roleArn": STS_ROLE, "attachedPolicies": ["ReadWrite"],
                   "trustPolicy": {"Version": "2012-10-17", "Statement": [
                       {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["sts:AssumeRole"]}]}}],
        "policies": [{"name": "ReadWrite", "document": allow_all}],
    }
    with LocalS3(tmp_path_factory.mktemp("seaweedfs-sts"), iam_config=iam) as server:
        server.create_bucket(BUCKET)
        yield server


def _temporary_keys(server: LocalS3) -> dict[str, str]:
    """What `aws sts assume-role` prints, as a user would paste it into the Secret."""
    import boto3

    sts = boto3.session.Session().client("sts", endpoint_url=server.endpoint, region_name="us-east-1",
                                         aws_access_key_id=server.access_key_id,
                                         aws_secret_access_key=server.secret_access_key)
    issued = sts.assume_role(RoleArn=STS_ROLE, RoleSessionName="pasted")["Credentials"]
    return {"access_key_id": issued["AccessKeyId"], "access_secret": issued["SecretAccessKey"],
            "session_token": issued["SessionToken"]}


def test_an_expired_session_token_stops_the_export_until_the_secret_is_rotated(seaweed_sts: LocalS3,
                                                                                store: SQLiteStore) -> None:
    import time

    manifests = ManifestSet()
    issued_at = time.monotonic()
    manifests.secrets[("default", "s3")] = _temporary_keys(seaweed_sts)
    spec = S3ExporterSpec.model_validate({"bucket": BUCKET, "region": "us-east-1", "prefix": "llm", "limit": 25,
                                          "endpoint": seaweed_sts.endpoint, "secretRef": {"name": "s3"}})
    worker = ExporterWorker(EXPORTER, open_store=lambda s, ns: store, secrets=manifests)
    fresh = worker.cycle(spec, S3ExporterStatus(), generation=1)
    assert fresh.status.cursor == "60", fresh.status.conditions
    assert "session token" in condition(fresh, "CredentialsValid")[2]

    time.sleep(max(0.0, issued_at + SESSION_SECONDS + 1.5 - time.monotonic()))
    store.append(generate_records(10, seed=24))
    expired = worker.cycle(spec, fresh.status, generation=1)
    status, reason, message = condition(expired, "CredentialsValid")
    # AWS answers ExpiredToken (classed as reason ExpiredToken); SeaweedFS says it no longer knows the key.
    assert status == "False" and reason in ("ExpiredToken", "InvalidCredentials"), message
    assert "session" in message and "Secret" in message
    assert expired.status.cursor == "60" and condition(expired, "Ready")[0] == "False"
    token = manifests.secrets[("default", "s3")]["session_token"]
    assert token not in expired.status.model_dump_json() and all(token not in e.message for e in expired.events)

    manifests.secrets[("default", "s3")] = _temporary_keys(seaweed_sts)  # rotated
    rotated = worker.cycle(spec, expired.status, generation=1)
    assert rotated.status.cursor == "70" and condition(rotated, "CredentialsValid")[:2] == ("True", "Verified")
