"""The S3Exporter kind: spec (what the user asks for) and status (what the operator reports).

The spec's connection fields (bucket, region, endpoint, credentials, role, TLS) are checked here; the key
layout's in keys.py and the record content's (format, filter, privacy) in content.py."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ..export.format_names import FORMAT_CHOICES
from .common import (
    CONDITIONS_LIST,
    ApiModel,
    CaBundleRef,
    Condition,
    SecretRef,
    ServerSideEncryptionSpec,
    StoreRef,
    cel_rule,
    cel_validations,
    rule_error,
)
from .content import (
    COMPRESSION_RULE,
    HEADER_NAME_PATTERN,
    REDACT_PATH_PATTERN,
    REDACT_RULES,
    REDACTABLE_FIELDS,
    Compression,
    ExportFilter,
    Format,
    check_redact_paths,
)
from .keys import (
    CONTROL_SEGMENT,
    DEFAULT_PATH_TEMPLATE,
    HIVE_RULE,
    LAYOUT_IMMUTABLE,
    PATH_TEMPLATE_PATTERN,
    PATH_TEMPLATE_RULES,
    PREFIX_PATTERN,
    PREFIX_RULES,
    TEMPLATE_RULES,
    TEMPLATE_VARIABLES,
    TIME_VARIABLES,
    check_prefix,
    parse_path_template,
)
from .vocabulary import ExportOutcome

__all__ = [
    "CONTROL_SEGMENT",
    "DEFAULT_PATH_TEMPLATE",
    "HISTORY_LENGTH",
    "REDACTABLE_FIELDS",
    "TEMPLATE_VARIABLES",
    "TIME_VARIABLES",
    "ExportFilter",
    "ExportTotals",
    "RunRecord",
    "S3ExporterSpec",
    "S3ExporterStatus",
    "parse_path_template",
]

HISTORY_LENGTH = 10
MAX_LIMIT = 10_000

BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
# The bucket rules the pattern cannot say (RE2 has no look-ahead): CEL rules on the field, mirrored below.
BUCKET_RULES = [
    cel_rule("!self.matches('^[0-9]+(\\\\.[0-9]+){3}$')", "must not be formatted as an IP address"),
    cel_rule("!self.contains('..')", "must not contain two adjacent periods"),
]
_IP_SHAPED = re.compile(r"^[0-9]+(\.[0-9]+){3}$")
# A host label as botocore accepts a region (an invalid one made the client fail to build): "us-east-1",
# "auto" (R2), "us-west-004" (B2), "europe-west1" (GCS), "fsn1" (Hetzner).
REGION_PATTERN = r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
# http(s)://host[:port][/path], and no userinfo (user:password@) in the authority: credentials belong in
# the Secret, and a URL is echoed in every message, Event and the destination annotation.
ENDPOINT_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@")
ENDPOINT_RULES = [
    cel_rule("!self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')",
             "must not hold user info (user:password@): put credentials in the Secret that secretRef names"),
]
ROLE_ARN_PATTERN = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9+=,.@:/_-]+$"
SESSION_NAME_PATTERN = r"^[A-Za-z0-9+=,.@_-]+$"
MIN_ROLE_SECONDS, MAX_ROLE_SECONDS = 900, 43_200

ROLE_FIELDS_NEED_ROLE = {
    "rule": "has(self.roleArn) || (!has(self.externalId) && !has(self.sessionName))",
    "message": "externalId and sessionName apply to an assumed role: set roleArn",
}
TLS_SKIP_NEEDS_HTTPS = {
    "rule": "!self.insecureSkipTLSVerify || (has(self.endpoint) && self.endpoint.startsWith('https://') "
            "&& !has(self.caBundleRef))",
    "message": "insecureSkipTLSVerify applies to an https:// endpoint only, and not together with caBundleRef",
}
CA_BUNDLE_NEEDS_TLS = {
    "rule": "!has(self.caBundleRef) || !has(self.endpoint) || self.endpoint.startsWith('https://')",
    "message": "caBundleRef applies to an https:// endpoint (or Amazon S3), not to http://",
}

DESTINATION_IMMUTABLE = {
    "rule": (
        "self.bucket == oldSelf.bucket && self.prefix == oldSelf.prefix"
        " && (has(self.endpoint) ? self.endpoint : '') == (has(oldSelf.endpoint) ? oldSelf.endpoint : '')"
    ),
    "message": "bucket, endpoint and prefix are immutable: create a new S3Exporter to move the export",
}
# An endpoint of null counts as absent (has() is false for a null field), so null -> absent is no move.

CorruptRecordAction = Literal["Hold", "Quarantine"]


class S3ExporterSpec(ApiModel):
    """Where and how often to export capture records."""

    model_config = ConfigDict(json_schema_extra=cel_validations(
        DESTINATION_IMMUTABLE, LAYOUT_IMMUTABLE, PATH_TEMPLATE_RULES, HIVE_RULE, COMPRESSION_RULE,
        ROLE_FIELDS_NEED_ROLE, TLS_SKIP_NEEDS_HTTPS, CA_BUNDLE_NEEDS_TLS,
    ))

    bucket: Annotated[
        str,
        Field(
            min_length=3,
            max_length=63,
            pattern=BUCKET_PATTERN,
            json_schema_extra={"x-kubernetes-validations": BUCKET_RULES},
            description="Bucket to write to (S3 naming rules: 3-63 lowercase letters, digits, dots, hyphens; not "
            "shaped like an IP address). Immutable.",
        ),
    ]
    region: Annotated[
        str,
        Field(
            min_length=1,
            max_length=63,
            pattern=REGION_PATTERN,
            description="Bucket region (letters, digits and '-', e.g. us-east-1 or auto). Required even for "
            "non-AWS services, whose SDK signs with it.",
        ),
    ]
    endpoint: Annotated[
        str | None,
        Field(
            max_length=2048,
            json_schema_extra={"pattern": ENDPOINT_PATTERN, "x-kubernetes-validations": ENDPOINT_RULES},
            description="S3-compatible API URL for MinIO, GCS, B2, R2, SeaweedFS (path-style addressing), without "
            "user info (credentials go in the Secret). Omit for Amazon S3. Immutable.",
        ),
    ] = None
    secret_ref: Annotated[
        SecretRef | None,
        Field(
            description="Secret with access_key_id, access_secret and optional session_token, re-read every "
            "cycle. Omit to use the pod's default AWS credentials (environment, IRSA web identity, EKS Pod "
            "Identity).",
        ),
    ] = None
    role_arn: Annotated[
        str | None,
        Field(max_length=2048, pattern=ROLE_ARN_PATTERN,
              description="IAM role to assume (STS AssumeRole) with the base credentials (secretRef, or the "
              "pod's own identity); the session is renewed before it expires. STS failures set "
              "CredentialsValid=False (AssumeRoleDenied, ...)."),
    ] = None
    external_id: Annotated[
        str | None,
        Field(min_length=2, max_length=1224, pattern=EXTERNAL_ID_PATTERN,
              description="External id the role's trust policy requires (sts:ExternalId); needs roleArn."),
    ] = None
    session_name: Annotated[
        str | None,
        Field(min_length=2, max_length=64, pattern=SESSION_NAME_PATTERN,
              description="Role session name, shown in CloudTrail; default capture-export-<namespace>-<name> "
              "(cut to 64 characters). Needs roleArn."),
    ] = None
    role_duration_seconds: Annotated[
        int,
        Field(ge=MIN_ROLE_SECONDS, le=MAX_ROLE_SECONDS,
              description="Lifetime asked for each assumed-role session (900-43200 s, at most the role's "
              "maximum session duration); renewed when a quarter of it (at most 15 min) is left."),
    ] = 3600
    server_side_encryption: Annotated[
        ServerSideEncryptionSpec | None,
        Field(description="Server-side encryption of every object written (data, checkpoint, connection "
              "probe): AES256, or aws:kms with an optional kmsKeyId. Omit for the bucket's default."),
    ] = None
    ca_bundle_ref: Annotated[
        CaBundleRef | None,
        Field(description="CA certificates (PEM) to trust for the endpoint, from a Secret or ConfigMap key: "
              "for private endpoints with their own CA."),
    ] = None
    insecure_skip_tls_verify: Annotated[
        bool,
        Field(alias="insecureSkipTLSVerify",
              description="Do not verify the https:// endpoint's certificate (tests only; anyone on the path "
              "can read and alter the export). Off unless set: an untrusted certificate otherwise fails the "
              "connection test with TLSVerificationFailed."),
    ] = False
    prefix: Annotated[
        str,
        Field(max_length=512, json_schema_extra={"pattern": PREFIX_PATTERN, "x-kubernetes-validations": PREFIX_RULES},
              description="Key prefix: '/'-separated segments of letters, digits and '._=+-' (not '.', '..' nor "
              "'_capture-export'); must not start or end with '/'. Immutable."),
    ] = ""
    every: Annotated[
        int, Field(ge=1, le=31_536_000, description="Seconds between export cycles while caught up.")
    ] = 3600
    limit: Annotated[
        int, Field(ge=1, le=MAX_LIMIT, description="Maximum records per exported object (at most 10000).")
    ] = 1000
    store: Annotated[
        StoreRef | None, Field(description="Capture store to read; omit for the operator's default store.")
    ] = None
    suspend: Annotated[bool, Field(description="Pause exporting without deleting the resource.")] = False
    format: Annotated[
        Format,
        Field(description="Object format: cbor-zstd (a zstd-compressed CBOR sequence, as Aperture), jsonl "
              "(JSON Lines) or parquet (needs the operator's parquet extra, pyarrow)."),
    ] = "cbor-zstd"
    compression: Annotated[
        Compression | None,
        Field(description="jsonl: none (.jsonl, the default), gzip (.jsonl.gz) or zstd (.jsonl.zst); parquet: "
              "the column codec (default zstd). cbor-zstd is always zstd."),
    ] = None
    path_template: Annotated[
        str,
        Field(min_length=1, max_length=512, json_schema_extra={"pattern": PATH_TEMPLATE_PATTERN,
                                                               "x-kubernetes-validations": TEMPLATE_RULES},
              description="Folder of each data object: {prefix}, {date} (2026-11-24), {year}, {month}, {day}, "
              "{hour}, {exporter}, {namespace}; dates are the records' own (UTC) and a batch never spans two "
              "folders. Must start with {prefix} when prefix is set; no leading or trailing '/'. Immutable."),
    ] = DEFAULT_PATH_TEMPLATE
    hive_partitioning: Annotated[
        bool,
        Field(description="Write the time variables Hive-style (year=2026/month=11/day=24, date=2026-11-24) "
              "for partition discovery in DuckDB, Athena, Spark. Immutable."),
    ] = False
    privacy_mode: Annotated[
        bool,
        Field(description="Drop prompt and completion content, tool payloads and raw bodies; keep usage, cost, "
              "timing, identity, model and metadata (as OpenRouter's privacy mode)."),
    ] = False
    redact_fields: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256, pattern=REDACT_PATH_PATTERN)]],
        Field(max_length=64, json_schema_extra={"x-kubernetes-validations": REDACT_RULES},
              description="More fields to drop, by dotted path, e.g. "
              "capture.request.body.metadata or identity.login_name; lists are walked element by element and "
              "'*' matches any key."),
    ] = []
    filter: Annotated[
        ExportFilter | None,
        Field(description="Export only the records matching it; the others still advance the cursor."),
    ] = None
    strip_headers: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128, pattern=HEADER_NAME_PATTERN)]],
        Field(max_length=64, description="More header names to strip from every record, beside the built-in "
              "credential headers (authorization, cookie, x-api-key, x-goog-api-key, …); compared "
              "case-insensitively, '_' and '-' alike."),
    ] = []
    on_corrupt_record: Annotated[
        CorruptRecordAction,
        Field(description="A record that fails the check of rows capture-export did not write itself "
              "(malformed CBOR, trailing bytes, a stored id, invalid UTF-8, a date readers cannot "
              "represent), or a row it wrote that the export cannot read (no CBOR reader decodes it): Hold "
              "(the default) stops the export before it, with a CorruptRecord condition "
              "naming the record, until it is fixed in the store; Quarantine moves it into the store's "
              "quarantine (capture-export quarantine list|show|release), counts it in status.quarantined, "
              "posts an Event and exports past it. Either way its bytes never reach the bucket."),
    ] = "Hold"

    @field_validator("bucket")
    @classmethod
    def _bucket_not_ip(cls, value: str) -> str:
        # Mirrors BUCKET_RULES: shaped like an IPv4 address (999.1.1.1 too, as the CEL rule says).
        if _IP_SHAPED.match(value):
            raise ValueError(BUCKET_RULES[0]["message"])
        if ".." in value:
            raise ValueError(BUCKET_RULES[1]["message"])
        return value

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str | None) -> str | None:
        # Never quote the value in a message: it may hold a password.
        if value is None:
            return value
        if _USERINFO.match(value):
            raise ValueError(ENDPOINT_RULES[0]["message"])
        if not re.match(ENDPOINT_PATTERN, value):
            raise ValueError("must be an http:// or https:// URL: a host, an optional port and path, no spaces, no "
                             "query or fragment")
        return value

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        return check_prefix(value)

    @field_validator("path_template")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        parse_path_template(value)
        return value

    @field_validator("redact_fields")
    @classmethod
    def _valid_redactions(cls, value: list[str]) -> list[str]:
        return check_redact_paths(value)

    @model_validator(mode="after")
    def _access_rules(self) -> S3ExporterSpec:
        # Mirrors the CEL rules ROLE_FIELDS_NEED_ROLE, TLS_SKIP_NEEDS_HTTPS and CA_BUNDLE_NEEDS_TLS.
        if self.role_arn is None and (self.external_id is not None or self.session_name is not None):
            raise ValueError(ROLE_FIELDS_NEED_ROLE["message"])
        https = self.endpoint is not None and self.endpoint.startswith("https://")
        if self.insecure_skip_tls_verify and (not https or self.ca_bundle_ref is not None):
            raise ValueError(TLS_SKIP_NEEDS_HTTPS["message"])
        if self.ca_bundle_ref is not None and self.endpoint is not None and not https:
            raise ValueError(CA_BUNDLE_NEEDS_TLS["message"])
        return self

    @model_validator(mode="after")
    def _template_under_prefix(self) -> S3ExporterSpec:
        # Mirrors the CEL rules PATH_TEMPLATE_RULES, HIVE_RULE and COMPRESSION_RULE, naming their fields.
        template = self.path_template
        if self.prefix and template != "{prefix}" and not template.startswith("{prefix}/"):
            raise rule_error(PATH_TEMPLATE_RULES)
        if self.hive_partitioning and re.search(r"=\{(?:" + "|".join(TIME_VARIABLES) + r")\}", template):
            raise rule_error(HIVE_RULE)
        if self.compression is not None and self.compression not in FORMAT_CHOICES[self.format].compressions:
            raise rule_error(COMPRESSION_RULE)
        return self


# ExportOutcome's values, the CRD's enum; the type checker sees the str that a StrEnum is.
if TYPE_CHECKING:
    Outcome = str
else:
    Outcome = Literal[tuple(o.value for o in ExportOutcome)]


class RunRecord(ApiModel):
    """One export run: a drain of the backlog, one or many objects."""

    start: Annotated[datetime, Field(description="When the run started.")]
    end: Annotated[datetime | None, Field(description="When the run ended.")] = None
    duration_seconds: Annotated[float, Field(description="Run duration in seconds.")] = 0.0
    rows: Annotated[int, Field(description="Records exported by this run.")] = 0
    bytes: Annotated[int, Field(description="Compressed bytes written by this run.")] = 0
    objects: Annotated[int, Field(description="Objects written by this run.")] = 0
    object_key: Annotated[str | None, Field(description="Key of the last object written.")] = None
    cursor: Annotated[str | None, Field(description="Cursor after the run (a record id).")] = None
    outcome: Annotated[Outcome, Field(description="Succeeded, Failed, NothingToDo or Stopped.")]
    reason: Annotated[str | None, Field(description="CamelCase failure class, when failed.")] = None
    error: Annotated[str | None, Field(description="What went wrong, when failed; never holds a secret.")] = None
    filtered: Annotated[int, Field(description="Records this run passed over because spec.filter excluded "
                                   "them (they advance the cursor too).")] = 0
    quarantined: Annotated[int, Field(description="Records this run moved to the store's quarantine "
                                      "(onCorruptRecord: Quarantine).")] = 0


class ExportTotals(ApiModel):
    rows: Annotated[int, Field(description="Records exported since creation or the last reset.")] = 0
    objects: Annotated[int, Field(description="Objects written.")] = 0
    bytes: Annotated[int, Field(description="Compressed bytes written.")] = 0
    filtered: Annotated[int, Field(description="Records excluded by spec.filter (handled, not exported).")] = 0


class S3ExporterStatus(ApiModel):
    """What the operator observed and did."""

    observed_generation: Annotated[int | None, Field(description="Last spec generation acted on.")] = None
    conditions: Annotated[list[Condition], Field(json_schema_extra=CONDITIONS_LIST,
                                                 description="Ready, BucketReachable, CredentialsValid, "
                                                 "StoreReachable, UpToDate.")] = []
    cursor: Annotated[str, Field(pattern=r"^[0-9]+$", description="Highest record id exported and "
                                 "committed (data and checkpoint objects written).")] = "0"
    epoch: Annotated[int, Field(ge=0, description="Number of resets; a reset re-exports from the start.")] = 0
    store_id: Annotated[str | None, Field(max_length=64, description="Identity of the capture store the cursor "
                                          "belongs to (its capture_export_meta store_id): the exporter refuses "
                                          "another store (StoreMismatch).")] = None
    backlog: Annotated[int | None, Field(description="Records waiting to be exported.")] = None
    last_run: Annotated[RunRecord | None, Field(description="The most recent run.")] = None
    last_successful_export: Annotated[
        datetime | None, Field(description="When records were last exported successfully.")
    ] = None
    totals: Annotated[ExportTotals, Field(description="Totals since creation or the last reset.")] = ExportTotals()
    history: Annotated[
        list[RunRecord], Field(max_length=HISTORY_LENGTH, description="The last 10 runs, newest first.")
    ] = []
    last_reset: Annotated[str | None, Field(description="Value of the capture.dev/reset-cursor annotation "
                                            "last acted on.")] = None
    last_run_now: Annotated[str | None, Field(description="Value of the capture.dev/run-now annotation "
                                              "last acted on.")] = None
    quarantined: Annotated[int, Field(ge=0, description="Records this exporter moved to the store's "
                                      "quarantine since it was created (onCorruptRecord: Quarantine); "
                                      "see capture-export quarantine list.")] = 0
