"""The S3Exporter kind: spec (what the user asks for) and status (what the operator reports)."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator

from .common import ApiModel, Condition, SecretRef, StoreRef

__all__ = ["HISTORY_LENGTH", "ExportTotals", "RunRecord", "S3ExporterSpec", "S3ExporterStatus"]

HISTORY_LENGTH = 10
MAX_LIMIT = 10_000

BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
ENDPOINT_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
# Empty, or not starting or ending with "/".
PREFIX_PATTERN = r"^([^/](.*[^/])?)?$"

DESTINATION_IMMUTABLE = {
    "rule": (
        "self.bucket == oldSelf.bucket && self.prefix == oldSelf.prefix"
        " && (has(self.endpoint) ? self.endpoint : '') == (has(oldSelf.endpoint) ? oldSelf.endpoint : '')"
    ),
    "message": "bucket, endpoint and prefix are immutable: create a new S3Exporter to move the export",
}


class S3ExporterSpec(ApiModel):
    """Where and how often to export capture records."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [DESTINATION_IMMUTABLE]})

    bucket: Annotated[
        str,
        Field(
            min_length=3,
            max_length=63,
            pattern=BUCKET_PATTERN,
            description="Bucket to write to (S3 naming rules: 3-63 lowercase letters, digits, dots, hyphens). "
            "Immutable.",
        ),
    ]
    region: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            description="Bucket region. Required even for non-AWS services, whose SDK signs with it.",
        ),
    ]
    endpoint: Annotated[
        str | None,
        Field(
            max_length=2048,
            pattern=ENDPOINT_PATTERN,
            description="S3-compatible API URL for MinIO, GCS, B2, R2, SeaweedFS (path-style addressing). "
            "Omit for Amazon S3. Immutable.",
        ),
    ] = None
    secret_ref: Annotated[
        SecretRef | None,
        Field(
            description="Secret with access_key_id, access_secret and optional session_token, re-read every "
            "cycle. Omit to use the pod's default AWS credentials (environment, IRSA).",
        ),
    ] = None
    prefix: Annotated[
        str,
        Field(max_length=512, pattern=PREFIX_PATTERN, description="Key prefix; must not start or end with '/'. "
              "Immutable."),
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

    @field_validator("bucket")
    @classmethod
    def _bucket_not_ip(cls, value: str) -> str:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            pass
        else:
            raise ValueError("bucket must not be formatted as an IP address")
        if ".." in value:
            raise ValueError("bucket must not contain two adjacent periods")
        return value


Outcome = Literal["Succeeded", "Failed", "NothingToDo", "Stopped"]


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


class ExportTotals(ApiModel):
    rows: Annotated[int, Field(description="Records exported since creation or the last reset.")] = 0
    objects: Annotated[int, Field(description="Objects written.")] = 0
    bytes: Annotated[int, Field(description="Compressed bytes written.")] = 0


class S3ExporterStatus(ApiModel):
    """What the operator observed and did."""

    observed_generation: Annotated[int | None, Field(description="Last spec generation acted on.")] = None
    conditions: Annotated[list[Condition], Field(description="Ready, BucketReachable, CredentialsValid, "
                                                 "StoreReachable, UpToDate.")] = []
    cursor: Annotated[str, Field(pattern=r"^[0-9]+$", description="Highest record id exported and "
                                 "committed (data and checkpoint objects written).")] = "0"
    epoch: Annotated[int, Field(ge=0, description="Number of resets; a reset re-exports from the start.")] = 0
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
