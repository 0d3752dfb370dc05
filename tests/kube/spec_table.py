"""Good and bad specs, each with who refuses it: the real API server (OpenAPI schema, patterns, CEL) and the
pydantic models the operator validates with. test_specs.py checks both against this one table, so the CRD
and the models cannot drift apart unnoticed.

The wider table (``tests/support/spec_cases.py``) is judged offline (tests/hostile); this one
keeps a case for every rule and pattern, asked of the real API server.

``refused_by``:
* ``"both"``: the API server refuses it (``message`` is in its answer) and so do the models;
* ``"operator"``: only the models refuse it (the schema cannot say it): the operator sets
  ``Ready=False, InvalidSpec``;
* ``"none"``: a good spec, accepted by both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EXPORTER_BASE", "POLICY_BASE", "SPEC_CASES", "TRANSITION_CASES", "SpecCase"]

EXPORTER_BASE: dict[str, Any] = {"bucket": "capture-exports", "region": "us-east-1"}
POLICY_BASE: dict[str, Any] = {"maxAge": "30d", "exporters": ["usage"]}
ROLE_ARN = "arn:aws:iam::123456789012:role/capture-export"


@dataclass(frozen=True)
class SpecCase:
    id: str
    kind: Literal["S3Exporter", "RetentionPolicy"]
    spec: dict[str, Any]
    refused_by: Literal["both", "operator", "none"]
    message: str = ""  # in the API server's refusal (for "both")
    replace_base: bool = False  # spec is the whole spec, not merged over the kind's base

    @property
    def full_spec(self) -> dict[str, Any]:
        base = {} if self.replace_base else EXPORTER_BASE if self.kind == "S3Exporter" else POLICY_BASE
        return {key: value for key, value in {**base, **self.spec}.items() if value is not None}


def _x(id: str, spec: dict[str, Any], refused_by: Literal["both", "operator", "none"] = "both",
       message: str = "", **kw: Any) -> SpecCase:
    return SpecCase(id, "S3Exporter", spec, refused_by, message, **kw)


def _p(id: str, spec: dict[str, Any], refused_by: Literal["both", "operator", "none"] = "both",
       message: str = "", **kw: Any) -> SpecCase:
    return SpecCase(id, "RetentionPolicy", spec, refused_by, message, **kw)


SPEC_CASES: list[SpecCase] = [
    # S3Exporter: good
    _x("exporter-minimal", {}, "none"),
    _x("exporter-everything", {
        "endpoint": "http://127.0.0.1:8333", "secretRef": {"name": "s3"}, "prefix": "llm/usage", "every": 60,
        "limit": 10000, "store": {"sqlite": {"path": "/data/captures.db"}}, "suspend": True, "format": "jsonl",
        "compression": "gzip", "pathTemplate": "{prefix}/{date}/{exporter}", "hivePartitioning": True,
        "privacyMode": True, "redactFields": ["identity.login_name", "capture.*.headers"],
        "filter": {"models": ["claude-*"], "apiTypes": ["oai_completions"], "tags": ["tag:prod"],
                   "statusCodes": [200]}}, "none"),
    _x("exporter-postgres-store", {"store": {"postgres": {"secretRef": {"name": "pg", "key": "url"}}}}, "none"),
    _x("exporter-cbor-zstd-with-zstd", {"format": "cbor-zstd", "compression": "zstd"}, "none"),
    # S3Exporter: OpenAPI schema and patterns
    _x("missing-bucket", {"region": "us-east-1"}, message="spec.bucket: Required value", replace_base=True),
    _x("missing-region", {"bucket": "capture-exports"}, message="spec.region: Required value", replace_base=True),
    _x("bucket-too-short", {"bucket": "ab"}, message="spec.bucket"),
    _x("bucket-uppercase", {"bucket": "Capture"}, message="spec.bucket"),
    _x("endpoint-not-a-url", {"endpoint": "127.0.0.1:8333"}, message="spec.endpoint"),
    _x("endpoint-with-query", {"endpoint": "http://s3.example.com/?x=1"}, message="spec.endpoint"),
    _x("secret-name-invalid", {"secretRef": {"name": "Not_A_Name"}}, message="spec.secretRef.name"),
    _x("secret-ref-without-name", {"secretRef": {}}, message="spec.secretRef.name: Required value"),
    _x("prefix-leading-slash", {"prefix": "/abs"}, message="spec.prefix"),
    _x("prefix-trailing-slash", {"prefix": "abs/"}, message="spec.prefix"),
    _x("every-zero", {"every": 0}, message="spec.every"),
    _x("limit-over-10000", {"limit": 10001}, message="spec.limit"),
    _x("limit-zero", {"limit": 0}, message="spec.limit"),
    _x("format-unknown", {"format": "csv"}, message="spec.format"),
    _x("compression-unknown", {"format": "jsonl", "compression": "brotli"}, message="spec.compression"),
    _x("path-template-unknown-variable", {"pathTemplate": "{prefix}/{week}"}, message="spec.pathTemplate"),
    _x("redact-field-bad-path", {"redactFields": ["a..b"]}, message="spec.redactFields[0]"),
    _x("filter-status-code-out-of-range", {"filter": {"statusCodes": [700]}}, message="spec.filter.statusCodes[0]"),
    _x("filter-empty-models", {"filter": {"models": []}}, message="spec.filter.models"),
    _x("postgres-secret-name-invalid", {"store": {"postgres": {"secretRef": {"name": "pg_dsn"}}}},
       message="spec.store.postgres.secretRef.name"),
    _x("sqlite-path-empty", {"store": {"sqlite": {"path": ""}}}, message="spec.store.sqlite.path"),
    _x("unknown-field-limits", {"limits": 5}, message='unknown field "spec.limits"'),
    _x("every-not-an-integer", {"every": "hourly"}, message="spec.every"),
    # S3Exporter: CEL rules
    _x("store-sqlite-and-postgres", {"store": {"sqlite": {"path": "/a"}, "postgres": {"secretRef": {"name": "pg"}}}},
       message="set at most one of sqlite and postgres"),
    _x("path-template-outside-prefix", {"prefix": "exports", "pathTemplate": "{date}"},
       message="must start with {prefix}/ when prefix is set"),
    _x("cbor-with-gzip", {"format": "cbor-zstd", "compression": "gzip"},
       message="format cbor-zstd is always zstd"),
    # S3Exporter: credentials, encryption and TLS
    _x("role-arn-not-an-arn", {"roleArn": "capture-export-role"}, message="spec.roleArn"),
    _x("external-id-with-space", {"roleArn": ROLE_ARN, "externalId": "a b"}, message="spec.externalId"),
    _x("session-name-with-slash", {"roleArn": ROLE_ARN, "sessionName": "a/b"}, message="spec.sessionName"),
    _x("external-id-without-role", {"externalId": "tenant-7"},
       message="externalId and sessionName apply to an assumed role: set roleArn"),
    _x("skip-verify-on-http", {"endpoint": "http://s3.example.com", "insecureSkipTLSVerify": True},
       message="insecureSkipTLSVerify applies to an https:// endpoint only"),
    _x("ca-bundle-on-http", {"endpoint": "http://s3.example.com", "caBundleRef": {"secretKeyRef": {"name": "ca"}}},
       message="caBundleRef applies to an https:// endpoint (or Amazon S3), not to http://"),
    _x("ca-bundle-from-both", {"caBundleRef": {"secretKeyRef": {"name": "ca"}, "configMapKeyRef": {"name": "ca"}}},
       message="set exactly one of secretKeyRef and configMapKeyRef"),
    _x("ca-bundle-secret-name-invalid", {"caBundleRef": {"secretKeyRef": {"name": "CA_Bundle"}}},
       message="spec.caBundleRef.secretKeyRef.name"),
    _x("ca-bundle-configmap-name-invalid", {"caBundleRef": {"configMapKeyRef": {"name": "CA_Bundle"}}},
       message="spec.caBundleRef.configMapKeyRef.name"),
    _x("kms-key-with-aes256", {"serverSideEncryption": {"algorithm": "AES256", "kmsKeyId": "alias/exports"}},
       message="kmsKeyId needs algorithm aws:kms"),
    _x("kms-key-with-space", {"serverSideEncryption": {"algorithm": "aws:kms", "kmsKeyId": "alias/a b"}},
       message="spec.serverSideEncryption.kmsKeyId"),
    _x("strip-header-with-space", {"stripHeaders": ["x api key"]}, message="spec.stripHeaders[0]"),
    # S3Exporter: what the models alone used to refuse (now CEL rules too)
    _x("bucket-ip-address", {"bucket": "192.168.1.1"}, message="must not be formatted as an IP address"),
    _x("bucket-adjacent-periods", {"bucket": "a..b"}, message="must not contain two adjacent periods"),
    _x("endpoint-user-info", {"endpoint": "http://admin:hunter2@127.0.0.1:8333"}, message="must not hold user info"),
    _x("prefix-dot-dot", {"prefix": "exports/../other"}, message="must not hold a '.', '..' or '_capture-export'"),
    _x("path-template-control-folder", {"pathTemplate": "{prefix}/_capture-export"},
       message="must not hold a '.', '..' or '_capture-export'"),
    _x("path-template-prefix-not-first", {"pathTemplate": "{date}/{prefix}"},
       message="{prefix} may only appear at the start"),
    _x("hive-doubled", {"pathTemplate": "{prefix}/year={year}", "hivePartitioning": True},
       message="write {year}, not year={year}"),
    _x("redact-field-unknown-head", {"redactFields": ["secrets.key"]}, message="each path must start with one of"),
    # RetentionPolicy: good
    _p("policy-minimal", {}, "none"),
    _p("policy-age-only", {"maxAge": "1d12h", "requireExport": False}, "none", replace_base=True),
    _p("policy-selector-soft-delete", {"maxAge": "90m", "exporterSelector": {"matchLabels": {
        "capture.dev/gate": "true", "tier": ""}}, "softDelete": {"gracePeriod": "0s"}, "dryRun": True}, "none",
       replace_base=True),
    # RetentionPolicy: OpenAPI schema and patterns
    _p("max-age-missing", {"exporters": ["usage"]}, message="spec.maxAge: Required value", replace_base=True),
    _p("max-age-words", {"maxAge": "30 days"}, message="spec.maxAge"),
    _p("max-age-years", {"maxAge": "1y"}, message="spec.maxAge"),
    _p("batch-size-zero", {"batchSize": 0}, message="spec.batchSize"),
    _p("batch-size-over-100000", {"batchSize": 100_001}, message="spec.batchSize"),
    _p("policy-every-zero", {"every": 0}, message="spec.every"),
    _p("exporters-empty", {"exporters": []}, message="spec.exporters"),
    _p("exporters-duplicate", {"exporters": ["a", "a"]}, message="spec.exporters[1]: Duplicate value"),
    _p("exporters-bad-name", {"exporters": ["Bad_Name"]}, message="spec.exporters[0]"),
    _p("match-labels-empty", {"exporters": None, "exporterSelector": {"matchLabels": {}}},
       message="spec.exporterSelector.matchLabels"),
    _p("match-labels-bad-value", {"exporters": None, "exporterSelector": {"matchLabels": {"tier": "-x"}}},
       message="spec.exporterSelector.matchLabels.tier"),
    _p("grace-period-missing", {"softDelete": {}}, message="spec.softDelete.gracePeriod: Required value"),
    _p("grace-period-words", {"softDelete": {"gracePeriod": "a week"}}, message="spec.softDelete.gracePeriod"),
    _p("policy-postgres-secret-name-invalid", {"store": {"postgres": {"secretRef": {"name": "PG"}}}},
       message="spec.store.postgres.secretRef.name"),
    _p("policy-sqlite-path-control-character", {"store": {"sqlite": {"path": "/data/a\x1b[2J"}}},
       message="spec.store.sqlite.path"),
    _p("policy-unknown-field", {"maxage": "1d"}, message='unknown field "spec.maxage"'),
    # RetentionPolicy: CEL rules
    _p("gate-not-named", {"maxAge": "30d"}, message="requireExport is true: name the gating S3Exporters",
       replace_base=True),
    _p("exporters-and-selector", {"exporterSelector": {"matchLabels": {"a": "b"}}},
       message="set exporters or exporterSelector, not both"),
    _p("max-age-zero", {"maxAge": "0h"}, message="must be longer than zero"),
    _p("max-age-zero-compound", {"maxAge": "0d0h", "requireExport": False}, message="must be longer than zero",
       replace_base=True),
    _p("match-labels-bad-key", {"exporters": None, "exporterSelector": {"matchLabels": {"-bad": "x"}}},
       message="keys must be label keys"),
    _p("policy-store-sqlite-and-postgres", {"store": {"sqlite": {"path": "/a"}, "postgres": {
        "secretRef": {"name": "pg"}}}}, message="set at most one of sqlite and postgres"),
]


@dataclass(frozen=True)
class TransitionCase:
    """A change to an existing S3Exporter's spec: refused by a CEL transition rule (``oldSelf``), or not."""

    id: str
    change: dict[str, Any]
    message: str = ""  # empty: the change is accepted
    base: dict[str, Any] = field(default_factory=lambda: {**EXPORTER_BASE, "prefix": "exports",
                                                          "endpoint": "http://127.0.0.1:8333"})


TRANSITION_CASES: list[TransitionCase] = [
    TransitionCase("bucket", {"bucket": "elsewhere"}, "bucket, endpoint and prefix are immutable"),
    TransitionCase("prefix", {"prefix": "moved"}, "bucket, endpoint and prefix are immutable"),
    TransitionCase("endpoint", {"endpoint": "http://127.0.0.1:9000"}, "bucket, endpoint and prefix are immutable"),
    TransitionCase("endpoint-removed", {"endpoint": None}, "bucket, endpoint and prefix are immutable"),
    TransitionCase("path-template", {"pathTemplate": "{prefix}/{date}"}, "pathTemplate and hivePartitioning"),
    TransitionCase("hive-partitioning", {"hivePartitioning": True}, "pathTemplate and hivePartitioning"),
    TransitionCase("limit-and-every", {"limit": 50, "every": 60}),
    TransitionCase("suspend", {"suspend": True}),
]
