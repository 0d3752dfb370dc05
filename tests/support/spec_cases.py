"""The good and bad specs every place that judges a spec is checked against, in two tables.

``CASES`` (tests/hostile) is judged by the pydantic models (standalone mode and the operator's handlers) and
by the generated CRD's OpenAPI schema and CEL rules evaluated offline (tests/support/cel.py). Each must give
the same verdict, and a refusal must name ``field``, so that ``kubectl apply`` and ``capture-export run``
can never disagree. A case with ``old`` is an update from ``old`` to ``spec`` (the transition rules: the
destination and the key layout are immutable). ``field`` is None for a spec every place accepts; else it is
the path a refusal names, e.g. ``spec.bucket`` (a refusal of ``spec.redactFields[0]`` names
``spec.redactFields``).

``API_SERVER_CASES`` and ``TRANSITION_CASES`` (tests/kube/test_specs.py) are asked of a real kube-apiserver,
the models are checked against the same cases, and every CEL rule and pattern of the CRDs must have a refused
case there. Their specs are given over a base (``full_spec``) and say who refuses them:

* ``"both"``: the API server refuses it (``message`` is in its answer) and so do the models;
* ``"operator"``: only the models refuse it (the schema cannot say it): the operator sets
  ``Ready=False, InvalidSpec``;
* ``"none"``: a good spec, accepted by both.

Both tables build on the same bases (``REQUIRED_EXPORTER``, ``POLICY_BASE``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ABSENT", "API_SERVER_CASES", "CASES", "RETENTION_CASES", "S3EXPORTER_CASES", "TRANSITION_CASES",
           "ApiServerCase", "SpecCase", "TransitionCase", "exporter", "policy"]

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


# The fields an S3Exporter must have; the field-named table adds a prefix to its base.
REQUIRED_EXPORTER: dict[str, Any] = {"bucket": "capture-exports", "region": "us-east-1"}
EXPORTER_BASE: dict[str, Any] = {**REQUIRED_EXPORTER, "prefix": "llm"}
POLICY_BASE: dict[str, Any] = {"maxAge": "30d", "exporters": ["usage"]}
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


# --------------------------------------------------------------------------------------------------
# The table asked of a real API server (tests/kube): every CEL rule and pattern has a refused case here.
# _x builds an S3Exporter case, _p a RetentionPolicy case.

API_SERVER_ROLE = "arn:aws:iam::123456789012:role/capture-export"


@dataclass(frozen=True)
class ApiServerCase:
    """A spec over its kind's base and who refuses it (the table asked of a real API server)."""

    id: str
    kind: Literal["S3Exporter", "RetentionPolicy"]
    spec: dict[str, Any]
    refused_by: Literal["both", "operator", "none"]
    message: str = ""  # in the API server's refusal (for "both")
    replace_base: bool = False  # spec is the whole spec, not merged over the kind's base

    @property
    def full_spec(self) -> dict[str, Any]:
        base = {} if self.replace_base else REQUIRED_EXPORTER if self.kind == "S3Exporter" else POLICY_BASE
        return {key: value for key, value in {**base, **self.spec}.items() if value is not None}


def _x(id: str, spec: dict[str, Any], refused_by: Literal["both", "operator", "none"] = "both",
       message: str = "", **kw: Any) -> ApiServerCase:
    return ApiServerCase(id, "S3Exporter", spec, refused_by, message, **kw)


def _p(id: str, spec: dict[str, Any], refused_by: Literal["both", "operator", "none"] = "both",
       message: str = "", **kw: Any) -> ApiServerCase:
    return ApiServerCase(id, "RetentionPolicy", spec, refused_by, message, **kw)


API_SERVER_CASES: list[ApiServerCase] = [
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
    _x("external-id-with-space", {"roleArn": API_SERVER_ROLE, "externalId": "a b"}, message="spec.externalId"),
    _x("session-name-with-slash", {"roleArn": API_SERVER_ROLE, "sessionName": "a/b"}, message="spec.sessionName"),
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
    base: dict[str, Any] = dataclasses.field(default_factory=lambda: {
        **REQUIRED_EXPORTER, "prefix": "exports", "endpoint": "http://127.0.0.1:8333"})


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
