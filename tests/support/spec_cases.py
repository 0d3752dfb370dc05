"""One table of good and bad specs, for every place that judges a spec: the pydantic models (standalone
mode and the operator's handlers), the generated CRD's OpenAPI schema and CEL rules evaluated offline
(tests/support/cel.py), and a real kube-apiserver. Each place must give the same verdict, and a refusal
must name ``field``, so that ``kubectl apply`` and ``capture-export run`` can never disagree.

A case with ``old`` is an update from ``old`` to ``spec`` (the transition rules: the destination and the
key layout are immutable). ``field`` is None for a spec every place accepts; else it is the path a
refusal names, e.g. ``spec.bucket`` (a refusal of ``spec.redactFields[0]`` names ``spec.redactFields``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ABSENT", "CASES", "RETENTION_CASES", "S3EXPORTER_CASES", "SpecCase", "exporter", "policy"]

ABSENT: Any = object()  # in exporter(**changes)/policy(**changes): leave the field out


@dataclass(frozen=True)
class SpecCase:
    id: str
    kind: str  # S3Exporter or RetentionPolicy
    spec: dict[str, Any]
    field: str | None = None  # None: accepted everywhere; else the field every refusal names
    old: dict[str, Any] | None = None  # an update from this spec

    @property
    def accepted(self) -> bool:
        return self.field is None

    def __str__(self) -> str:
        return self.id


def _spec(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    spec = dict(base)
    for key, value in changes.items():
        if value is ABSENT:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


EXPORTER_BASE = {"bucket": "capture-exports", "region": "us-east-1", "prefix": "llm"}
POLICY_BASE = {"maxAge": "30d", "exporters": ["usage"]}
ROLE = "arn:aws:iam::444455556666:role/capture-export-writer"


def exporter(**changes: Any) -> dict[str, Any]:
    """A valid S3Exporter spec with ``changes`` (camelCase keys; ABSENT removes one)."""
    return _spec(EXPORTER_BASE, changes)


def policy(**changes: Any) -> dict[str, Any]:
    return _spec(POLICY_BASE, changes)


def _good(id_: str, spec: dict[str, Any], old: dict[str, Any] | None = None) -> SpecCase:
    return SpecCase(id_, "S3Exporter", spec, None, old)


def _bad(id_: str, field: str, spec: dict[str, Any], old: dict[str, Any] | None = None) -> SpecCase:
    return SpecCase(id_, "S3Exporter", spec, field, old)


S3EXPORTER_CASES: list[SpecCase] = [
    # -- accepted ------------------------------------------------------------------------------------
    _good("minimal", {"bucket": "capture-exports", "region": "us-east-1"}),
    _good("everything", exporter(endpoint="https://minio.example:9000/s3", secretRef={"name": "s3-creds"},
                                 every=60, limit=10_000, suspend=False, store={"sqlite": {"path": "/data/s.sqlite"}},
                                 format="jsonl", compression="gzip", pathTemplate="{prefix}/{date}",
                                 privacyMode=True, redactFields=["identity.login_name", "capture.*.headers"],
                                 filter={"models": ["gpt-*"], "statusCodes": [200]})),
    _good("bucket-with-dots", exporter(bucket="capture.exports.example")),
    _good("bucket-with-digits-only-groups", exporter(bucket="2026.capture")),
    _good("region-auto", exporter(region="auto")),
    _good("region-b2", exporter(region="us-west-004")),
    _good("region-gcs", exporter(region="europe-west1")),
    _good("endpoint-null", exporter(endpoint=None)),
    _good("endpoint-with-at-in-path", exporter(endpoint="https://minio.example/tenants/@team")),
    _good("compression-null-default-format", exporter(compression=None)),
    _good("compression-zstd-default-format", exporter(compression="zstd")),
    _good("prefix-empty", exporter(prefix="")),
    _good("prefix-nested", exporter(prefix="team-a/llm_usage/v1.2")),
    _good("prefix-with-equals", exporter(prefix="source=gateway")),
    _good("template-hive", exporter(pathTemplate="{prefix}/{year}/{month}/{day}", hivePartitioning=True)),
    _good("template-literal-equals", exporter(pathTemplate="{prefix}/year={year}")),
    _good("template-no-prefix", exporter(prefix="", pathTemplate="{namespace}/{exporter}/{date}")),
    _good("template-dot-in-segment", exporter(pathTemplate="{prefix}/v1.2/{date}")),
    _good("store-empty", exporter(store={})),
    _good("store-sqlite-null-postgres", exporter(store={"sqlite": None, "postgres": {"secretRef": {"name": "db"}}})),
    _good("redact-star", exporter(redactFields=["capture.request.headers.*"])),
    _good("access-everything", exporter(endpoint="https://minio.example:9000", roleArn=ROLE,
                                        externalId="3f1c9a7e-capture-export", sessionName="usage",
                                        roleDurationSeconds=900, caBundleRef={"configMapKeyRef": {"name": "ca"}},
                                        serverSideEncryption={"algorithm": "aws:kms", "kmsKeyId": "alias/exports"})),
    _good("tls-skip-https", exporter(endpoint="https://minio.example:9000", insecureSkipTLSVerify=True)),
    _good("ca-bundle-amazon", exporter(caBundleRef={"secretKeyRef": {"name": "ca"}})),
    _good("sse-aes256", exporter(serverSideEncryption={"algorithm": "AES256"})),
    _good("role-fields-null", exporter(externalId=None, sessionName=None, caBundleRef=None)),
    # -- refused -------------------------------------------------------------------------------------
    _bad("bucket-ip", "spec.bucket", exporter(bucket="192.168.5.4")),
    _bad("bucket-ip-shaped", "spec.bucket", exporter(bucket="999.1.1.1")),
    _bad("bucket-double-dot", "spec.bucket", exporter(bucket="capture..exports")),
    _bad("bucket-upper-case", "spec.bucket", exporter(bucket="Capture-Exports")),
    _bad("bucket-too-short", "spec.bucket", exporter(bucket="ab")),
    _bad("region-missing", "spec.region", exporter(region=ABSENT)),
    _bad("region-space", "spec.region", exporter(region="us east 1")),
    _bad("region-slash", "spec.region", exporter(region="../../etc")),
    _bad("region-trailing-dash", "spec.region", exporter(region="us-east-")),
    _bad("endpoint-userinfo", "spec.endpoint", exporter(endpoint="http://admin:hunter2@127.0.0.1:9")),
    _bad("endpoint-user-only", "spec.endpoint", exporter(endpoint="https://token@127.0.0.1:9/")),
    _bad("endpoint-ftp", "spec.endpoint", exporter(endpoint="ftp://127.0.0.1:9")),
    _bad("endpoint-space", "spec.endpoint", exporter(endpoint="http://127.0.0.1 :9")),
    _bad("prefix-trailing-slash", "spec.prefix", exporter(prefix="llm/")),
    _bad("prefix-dot-dot", "spec.prefix", exporter(prefix="llm/../other")),
    _bad("prefix-dot", "spec.prefix", exporter(prefix="./llm")),
    _bad("prefix-control-folder", "spec.prefix", exporter(prefix="llm/_capture-export")),
    _bad("prefix-backslash", "spec.prefix", exporter(prefix="llm\\other")),
    _bad("prefix-nul", "spec.prefix", exporter(prefix="llm\x00x")),
    _bad("prefix-escape", "spec.prefix", exporter(prefix="llm\x1b[31m")),
    _bad("prefix-empty-segment", "spec.prefix", exporter(prefix="llm//x")),
    _bad("every-bool", "spec.every", exporter(every=True)),
    _bad("every-string", "spec.every", exporter(every="3600")),
    _bad("every-zero", "spec.every", exporter(every=0)),
    _bad("limit-too-big", "spec.limit", exporter(limit=20_000)),
    _bad("limit-float", "spec.limit", exporter(limit=10.5)),
    _bad("suspend-string", "spec.suspend", exporter(suspend="yes")),
    _bad("unknown-field", "spec.colour", exporter(colour="blue")),
    _bad("template-dot-dot", "spec.pathTemplate", exporter(pathTemplate="{prefix}/../{date}")),
    _bad("template-dot", "spec.pathTemplate", exporter(pathTemplate="{prefix}/./{date}")),
    _bad("template-control-folder", "spec.pathTemplate", exporter(pathTemplate="{prefix}/_capture-export")),
    _bad("template-prefix-not-first", "spec.pathTemplate", exporter(prefix="", pathTemplate="{date}/{prefix}")),
    _bad("template-prefix-twice", "spec.pathTemplate", exporter(pathTemplate="{prefix}/{prefix}")),
    _bad("template-not-under-prefix", "spec.pathTemplate", exporter(pathTemplate="{date}")),
    _bad("template-unknown-variable", "spec.pathTemplate", exporter(pathTemplate="{prefix}/{tenant}")),
    _bad("template-hive-doubled", "spec.pathTemplate",
         exporter(pathTemplate="{prefix}/year={year}/{month}", hivePartitioning=True)),
    _bad("redact-id", "spec.redactFields", exporter(redactFields=["id"])),
    _bad("redact-timestamp", "spec.redactFields", exporter(redactFields=["timestamp.nanos"])),
    _bad("redact-unknown-head", "spec.redactFields", exporter(redactFields=["model", "secrets.key"])),
    _bad("compression-gzip-default-format", "spec.compression", exporter(compression="gzip")),
    _bad("compression-none-cbor", "spec.compression", exporter(format="cbor-zstd", compression="none")),
    _bad("format-unknown", "spec.format", exporter(format="csv")),
    _bad("store-both", "spec.store", exporter(store={"sqlite": {"path": "/a.sqlite"},
                                                     "postgres": {"secretRef": {"name": "db"}}})),
    _bad("store-sqlite-path-empty", "spec.store.sqlite.path", exporter(store={"sqlite": {"path": ""}})),
    _bad("store-sqlite-path-newline", "spec.store.sqlite.path", exporter(store={"sqlite": {"path": "/a\n.sqlite"}})),
    _bad("secret-ref-bad-name", "spec.secretRef.name", exporter(secretRef={"name": "../creds"})),
    _bad("external-id-without-role", "spec", exporter(externalId="3f1c9a7e")),
    _bad("session-name-without-role", "spec", exporter(sessionName="usage")),
    _bad("role-arn-not-iam", "spec.roleArn", exporter(roleArn="arn:aws:s3:::capture-exports")),
    _bad("tls-skip-http", "spec", exporter(endpoint="http://127.0.0.1:9", insecureSkipTLSVerify=True)),
    _bad("tls-skip-with-ca-bundle", "spec", exporter(endpoint="https://minio.example", insecureSkipTLSVerify=True,
                                                     caBundleRef={"configMapKeyRef": {"name": "ca"}})),
    _bad("ca-bundle-http", "spec", exporter(endpoint="http://127.0.0.1:9",
                                            caBundleRef={"secretKeyRef": {"name": "ca"}})),
    _bad("ca-bundle-both", "spec.caBundleRef", exporter(caBundleRef={"secretKeyRef": {"name": "a"},
                                                                     "configMapKeyRef": {"name": "b"}})),
    _bad("ca-bundle-neither", "spec.caBundleRef", exporter(caBundleRef={})),
    _bad("sse-kms-key-with-aes256", "spec.serverSideEncryption",
         exporter(serverSideEncryption={"algorithm": "AES256", "kmsKeyId": "alias/exports"})),
    # -- updates ---------------------------------------------------------------------------------------
    _good("update-limit", exporter(limit=500), old=exporter(limit=100)),
    _good("update-endpoint-null-to-absent", exporter(endpoint=ABSENT), old=exporter(endpoint=None)),
    _good("update-endpoint-absent-to-null", exporter(endpoint=None), old=exporter()),
    _good("update-compression-null-to-zstd", exporter(compression="zstd"), old=exporter(compression=None)),
    _good("update-suspend", exporter(suspend=True), old=exporter()),
    _bad("update-bucket", "spec", exporter(bucket="elsewhere"), old=exporter()),
    _bad("update-prefix", "spec", exporter(prefix="other"), old=exporter()),
    _bad("update-endpoint-added", "spec", exporter(endpoint="https://minio.example"), old=exporter()),
    _bad("update-endpoint-removed", "spec", exporter(endpoint=ABSENT), old=exporter(endpoint="https://minio.example")),
    _bad("update-template", "spec", exporter(pathTemplate="{prefix}/{date}"), old=exporter()),
    _bad("update-hive", "spec", exporter(pathTemplate="{prefix}/{year}", hivePartitioning=True),
         old=exporter(pathTemplate="{prefix}/{year}")),
]


def _good_policy(id_: str, spec: dict[str, Any]) -> SpecCase:
    return SpecCase(id_, "RetentionPolicy", spec)


def _bad_policy(id_: str, field: str, spec: dict[str, Any]) -> SpecCase:
    return SpecCase(id_, "RetentionPolicy", spec, field)


RETENTION_CASES: list[SpecCase] = [
    _good_policy("minimal", policy()),
    _good_policy("selector", policy(exporters=ABSENT, exporterSelector={"matchLabels": {"app": "usage"}})),
    _good_policy("age-only", {"maxAge": "720h", "requireExport": False}),
    _good_policy("soft-delete", policy(softDelete={"gracePeriod": "24h"}, dryRun=True, batchSize=100)),
    _good_policy("store-null", policy(store=None)),
    _bad_policy("max-age-zero", "spec.maxAge", policy(maxAge="0d")),
    _bad_policy("max-age-words", "spec.maxAge", policy(maxAge="thirty days")),
    _bad_policy("exporters-and-selector", "spec.exporterSelector",
                policy(exporterSelector={"matchLabels": {"app": "usage"}})),
    _bad_policy("gate-unnamed", "spec.exporters", {"maxAge": "30d"}),
    _bad_policy("exporters-duplicate", "spec.exporters", policy(exporters=["usage", "usage"])),
    _bad_policy("exporters-bad-name", "spec.exporters", policy(exporters=["Usage!"])),
    _bad_policy("selector-bad-key", "spec.exporterSelector.matchLabels",
                policy(exporters=ABSENT, exporterSelector={"matchLabels": {"bad key!": "x"}})),
    _bad_policy("every-bool", "spec.every", policy(every=True)),
    _bad_policy("batch-size-too-big", "spec.batchSize", policy(batchSize=1_000_000)),
    _bad_policy("require-export-string", "spec.requireExport", policy(requireExport="false")),
    _bad_policy("store-sqlite-path-escape", "spec.store.sqlite.path", policy(store={"sqlite": {"path": "/a\x1b[2J"}})),
]

CASES: list[SpecCase] = S3EXPORTER_CASES + RETENTION_CASES


def case_ids() -> Iterator[str]:
    for case in CASES:
        yield f"{case.kind}-{case.id}"
