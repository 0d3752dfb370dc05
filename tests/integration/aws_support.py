"""Real local servers for the credential, permission and TLS tests: moto's server (STS, IAM and an S3
that enforces IAM policies once auth is on), SeaweedFS with restricted identities or serving TLS, and a
throwaway certificate authority."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ACCOUNT = "123456789012"
REGION = "us-east-1"


# -- moto: STS, IAM and a policy-enforcing S3 -----------------------------------------------------------


@dataclass
class Keys:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def secret(self) -> dict[str, str]:
        data = {"access_key_id": self.access_key_id, "access_secret": self.secret_access_key}
        if self.session_token:
            data["session_token"] = self.session_token
        return data


class MotoAws:
    """moto's server on a loopback port. With :meth:`enforce` on, every request must be signed by a known
    key (an IAM user's, or an assumed role's with its session token) and be allowed by that identity's
    IAM policies, the role trust policies (``sts:ExternalId`` conditions included) are checked: AWS's
    answers (AccessDenied, InvalidAccessKeyId, InvalidToken) for the same mistakes."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.admin: Keys | None = None

    def enforce(self, on: bool = True) -> None:
        # moto reads a number of requests that stay unauthenticated; 0 means every one is checked.
        answer = requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf", timeout=10)
        answer.raise_for_status()

    def reset(self) -> None:
        """Forget every user, role, session and bucket; an ``admin`` user allowed everything signs the
        test's own inspection requests (so they pass once enforcement is on)."""
        self.enforce(False)
        requests.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()
        self.admin = None
        self.admin = self.user("admin", {"Version": "2012-10-17",
                                         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})

    def client(self, service: str, keys: Keys | None = None) -> Any:
        keys = keys or self.admin or Keys("AKIAADMINADMINADMIN0", "admin-secret")
        return boto3.session.Session().client(
            service, endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key, aws_session_token=keys.session_token)

    def create_bucket(self, name: str) -> None:
        self.client("s3").create_bucket(Bucket=name)

    def user(self, name: str, policy: dict[str, Any] | None = None) -> Keys:
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if policy is not None:
            iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])

    def role(self, name: str, trust: dict[str, Any], policy: dict[str, Any] | None = None) -> str:
        iam = self.client("iam")
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        if policy is not None:
            iam.put_role_policy(RoleName=name, PolicyName="policy", PolicyDocument=json.dumps(policy))
        return str(arn)

    def sessions(self, role_arn: str) -> list[Any]:
        """The sessions STS issued for a role, oldest first (moto runs in this process)."""
        from moto.sts.models import sts_backends

        return [r for r in sts_backends[ACCOUNT]["aws"].assumed_roles if r.role_arn == role_arn]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoAws]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield MotoAws(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def aws(moto_server: MotoAws, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoAws]:
    """A fresh moto (no users, roles or buckets), STS at its endpoint, no AWS credentials or config from
    the machine leaking into the default chain."""
    moto_server.reset()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server.endpoint)
    yield moto_server
    moto_server.enforce(False)


def trust_user(user: str, *, external_id: str | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/{user}"},
                                 "Action": "sts:AssumeRole"}
    if external_id:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return {"Version": "2012-10-17", "Statement": [statement]}


def allow(*actions: str, resources: list[str] | None = None) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": list(actions),
                                                    "Resource": resources or ["*"]}]}


# -- a throwaway certificate authority ------------------------------------------------------------------


@dataclass
class Tls:
    ca_pem: str
    certificate: Path
    key: Path


def make_tls(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Tls:
    """A self-signed CA and a server certificate it signed for ``hosts``, as PEM files in ``directory``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capture-export test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key_path = directory / "server.crt", directory / "server.key"
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Tls(ca.public_bytes(serialization.Encoding.PEM).decode(), certificate, key_path)
