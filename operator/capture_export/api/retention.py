"""The RetentionPolicy kind: purge old records from a capture store, only once they are exported.

Spec rules that span fields are CEL rules in the CRD (``x-kubernetes-validations``), each mirrored by a
pydantic validator with the same message, so standalone mode refuses exactly what ``kubectl apply``
refuses.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .common import CONDITIONS_LIST, DNS_SUBDOMAIN, ApiModel, Condition, StoreRef, cel_rule, cel_validations, rule_error
from .vocabulary import GateExporterState, GateMode, PurgeOutcome

__all__ = [
    "DURATION_PATTERN",
    "GATE_EXPORTERS_LISTED",
    "RETENTION_HISTORY_LENGTH",
    "ExporterSelector",
    "GateExporter",
    "GateStatus",
    "PurgeInProgress",
    "RetentionPolicySpec",
    "RetentionPolicyStatus",
    "RetentionRun",
    "RetentionTotals",
    "SoftDelete",
    "parse_duration",
]

RETENTION_HISTORY_LENGTH = 10
# status.gate lists this many gating exporters at most (a selector may match any number; all are weighed).
GATE_EXPORTERS_LISTED = 64
MAX_BATCH_SIZE = 100_000

# One to four <digits><unit> groups: "720h", "30d", "90m", "1d12h", "45s".
DURATION_PATTERN = r"^([0-9]{1,6}[dhms]){1,4}$"
_DURATION_PART = re.compile(r"([0-9]+)([dhms])")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"  # optional DNS-subdomain prefix
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def parse_duration(text: str) -> timedelta:
    """``"720h"``, ``"30d"``, ``"90m"``, ``"1d12h"`` -> timedelta. Raises ValueError on anything else."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 720h, 30d, 90m or 1d12h")
    return timedelta(seconds=sum(int(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(text)))


# CEL rules (the API server evaluates them; the validators below mirror each one, message for message).
EXPORTERS_XOR_SELECTOR = cel_rule("!(has(self.exporters) && has(self.exporterSelector))",
                                  "set exporters or exporterSelector, not both", "exporterSelector")
GATE_NAMED = cel_rule(
    "(has(self.requireExport) && !self.requireExport) || has(self.exporters) || has(self.exporterSelector)",
    "requireExport is true: name the gating S3Exporters with exporters or exporterSelector", "exporters")
MAX_AGE_POSITIVE = cel_rule("self.maxAge.matches('[1-9]')", "must be longer than zero", "maxAge")


LABEL_KEYS_VALID = {
    "rule": "self.all(k, k.matches('" + _LABEL_KEY.replace("\\", "\\\\") + "') && size(k) <= 316)",
    "message": "keys must be label keys ([prefix/]name)",
}


class ExporterSelector(ApiModel):
    """A label selector over S3Exporters in the policy's namespace (``matchLabels`` only)."""

    match_labels: Annotated[
        dict[str, Annotated[str, Field(max_length=63, pattern=_LABEL_VALUE)]],
        Field(
            min_length=1,
            max_length=32,
            json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_VALID]},
            description="S3Exporters whose labels include all of these gate the purge.",
        ),
    ]

    @field_validator("match_labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if len(key) > 316 or not re.fullmatch(_LABEL_KEY, key):
                raise ValueError(LABEL_KEYS_VALID["message"])
        return value


class SoftDelete(ApiModel):
    """Hide purged records first, and remove them for good only after a grace period."""

    grace_period: Annotated[
        str,
        Field(
            max_length=32,
            pattern=DURATION_PATTERN,
            description="How long soft-deleted records stay restorable (`capture-export restore`) before they "
            "are removed, e.g. 24h or 7d.",
        ),
    ]

    @field_validator("grace_period")
    @classmethod
    def _valid_grace(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def grace(self) -> timedelta:
        return parse_duration(self.grace_period)


class RetentionPolicySpec(ApiModel):
    """Which records to purge from a capture store, and which exports must hold them first."""

    model_config = ConfigDict(
        json_schema_extra=cel_validations(EXPORTERS_XOR_SELECTOR, GATE_NAMED, MAX_AGE_POSITIVE)
    )

    max_age: Annotated[
        str,
        Field(
            max_length=32,
            pattern=DURATION_PATTERN,
            description="Records older than this (by their own timestamp) are purged, e.g. 720h, 30d or 90m.",
        ),
    ]
    store: Annotated[
        StoreRef | None, Field(description="Capture store to purge; omit for the operator's default store.")
    ] = None
    require_export: Annotated[
        bool,
        Field(
            description="Purge only records every gating S3Exporter has committed to its bucket (default). "
            "false purges by age alone, exported or not.",
        ),
    ] = True
    exporters: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]] | None,
        Field(
            min_length=1,
            max_length=64,
            json_schema_extra={"x-kubernetes-list-type": "set"},
            description="Names of the S3Exporters (same namespace) that must have exported a record before it "
            "is purged.",
        ),
    ] = None
    exporter_selector: Annotated[
        ExporterSelector | None,
        Field(description="Or: the S3Exporters (same namespace) matching these labels gate the purge."),
    ] = None
    every: Annotated[int, Field(ge=1, le=31_536_000, description="Seconds between purge runs.")] = 3600
    batch_size: Annotated[
        int,
        Field(ge=1, le=MAX_BATCH_SIZE, description="Most records deleted per transaction (short transactions "
              "keep the gateway writing)."),
    ] = 5000
    dry_run: Annotated[
        bool, Field(description="Report what would be purged without deleting anything.")
    ] = False
    soft_delete: Annotated[
        SoftDelete | None,
        Field(description="Mark and hide records first; remove them after gracePeriod."),
    ] = None

    @field_validator("max_age")
    @classmethod
    def _valid_max_age(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("exporters")
    @classmethod
    def _unique_exporters(cls, value: list[str] | None) -> list[str] | None:
        # The CRD says it with x-kubernetes-list-type: set.
        if value is not None and len(set(value)) != len(value):
            raise ValueError("names must be unique")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RetentionPolicySpec:
        # Mirrors the CEL rules, naming their fields.
        if self.exporters is not None and self.exporter_selector is not None:
            raise rule_error(EXPORTERS_XOR_SELECTOR)
        if self.require_export and self.exporters is None and self.exporter_selector is None:
            raise rule_error(GATE_NAMED)
        if not re.search("[1-9]", self.max_age):
            raise rule_error(MAX_AGE_POSITIVE)
        return self

    @property
    def max_age_delta(self) -> timedelta:
        return parse_duration(self.max_age)


# -- status ----------------------------------------------------------------------------------------

# The enums' values, the CRD's enums (in their order); the type checker sees the str that a StrEnum is.
if TYPE_CHECKING:
    RetentionOutcome = str
    ExporterGateState = str
else:
    RetentionOutcome = Literal[tuple(o.value for o in PurgeOutcome)]
    ExporterGateState = Literal[tuple(s.value for s in GateExporterState)]


class GateExporter(ApiModel):
    """One gating exporter as the gate last saw it, read from its checkpoint object in its bucket."""

    name: Annotated[str, Field(description="The S3Exporter's name.")]
    state: Annotated[
        ExporterGateState,
        Field(description="Committed (a checkpoint was read), NeverRun (no checkpoint), Reset (re-exporting "
              "from the start), NotFound, Unreadable (the bucket or Secret failed), StoreMismatch (exports "
              "another store), AheadOfStore (its cursor is past the store's last id)."),
    ]
    cursor: Annotated[
        str | None, Field(pattern=r"^[0-9]+$", description="Its committed cursor (a record id).")
    ] = None
    epoch: Annotated[int | None, Field(description="Its checkpoint epoch (number of resets).")] = None
    message: Annotated[str, Field(description="Detail; never holds a secret.")] = ""


class GateStatus(ApiModel):
    """The purge gate: records at or below ``bound`` and older than ``cutoff`` may be purged."""

    open: Annotated[bool, Field(description="Whether any record may be purged by export.")]
    mode: Annotated[
        Literal[tuple(m.value for m in GateMode)],  # type: ignore[valid-type]
        Field(description="RequireExport, or AgeOnly when requireExport is false (unexported records are "
              "purged too)."),
    ]
    bound: Annotated[str, Field(pattern=r"^[0-9]+$", description="Highest record id that may be purged.")] = "0"
    cutoff: Annotated[datetime | None, Field(description="Records with timestamps before this are old enough.")] = None
    limiting_exporter: Annotated[
        str | None, Field(description="The exporter that sets (or closes) the bound.")
    ] = None
    reason: Annotated[str, Field(description="CamelCase reason for the bound.")] = ""
    message: Annotated[str, Field(description="Why the bound is what it is.")] = ""
    exporters: Annotated[
        list[GateExporter],
        Field(max_length=GATE_EXPORTERS_LISTED,
              description="The gating exporters, at most 64: the limiting one first, then those holding the gate "
              "shut, then the lowest cursors (exporterCount counts them all)."),
    ] = []
    exporter_count: Annotated[
        int | None, Field(ge=0, description="How many S3Exporters gate the purge (all weighed, at most 64 listed).")
    ] = None


class RetentionRun(ApiModel):
    """One purge run."""

    start: Annotated[datetime, Field(description="When the run started.")]
    end: Annotated[datetime | None, Field(description="When the run ended.")] = None
    duration_seconds: Annotated[float, Field(description="Run duration in seconds.")] = 0.0
    outcome: Annotated[
        RetentionOutcome,
        Field(description="Succeeded, NothingToDo, GateClosed, DryRun, Stopped (time budget or shutdown; "
              "resumes at once) or Failed."),
    ]
    purged: Annotated[int, Field(description="Records removed for good by this run.")] = 0
    soft_deleted: Annotated[int, Field(description="Records marked and hidden by this run (softDelete).")] = 0
    would_purge: Annotated[
        int | None, Field(description="With dryRun: records this run would have purged or soft-deleted.")
    ] = None
    bound: Annotated[str | None, Field(pattern=r"^[0-9]+$", description="The gate's bound for this run.")] = None
    cutoff: Annotated[datetime | None, Field(description="Records older than this were eligible.")] = None
    limiting_exporter: Annotated[str | None, Field(description="The exporter that set the bound.")] = None
    chunks: Annotated[int, Field(description="Delete transactions this run made.")] = 0
    longest_chunk_seconds: Annotated[
        float, Field(description="Longest single delete transaction (how long writers could wait).")
    ] = 0.0
    reason: Annotated[str | None, Field(description="CamelCase failure or gate reason.")] = None
    error: Annotated[str | None, Field(description="What went wrong, when failed; never holds a secret.")] = None


class RetentionTotals(ApiModel):
    purged: Annotated[int, Field(description="Records removed for good since creation.")] = 0
    soft_deleted: Annotated[int, Field(description="Records soft-deleted since creation.")] = 0
    runs: Annotated[int, Field(description="Purge runs since creation.")] = 0


class PurgeInProgress(ApiModel):
    """A purge that goes on over several runs (the operator cuts a long purge into runs of 60 s at most)."""

    started: Annotated[datetime, Field(description="When the first of its runs started.")]
    purged: Annotated[int, Field(description="Records removed for good so far.")] = 0
    soft_deleted: Annotated[int, Field(description="Records soft-deleted so far.")] = 0
    remaining: Annotated[
        int | None, Field(description="Records still to purge or soft-delete, as counted after the last run.")
    ] = None
    rate_per_second: Annotated[float, Field(description="Records purged or soft-deleted per second so far.")] = 0.0
    updated: Annotated[datetime | None, Field(description="When the last of its runs ended.")] = None


class RetentionPolicyStatus(ApiModel):
    """What the operator observed and did."""

    observed_generation: Annotated[int | None, Field(description="Last spec generation acted on.")] = None
    conditions: Annotated[
        list[Condition], Field(json_schema_extra=CONDITIONS_LIST,
                               description="Ready, GateOpen (naming the limiting exporter), StoreReachable.")
    ] = []
    gate: Annotated[GateStatus | None, Field(description="The purge gate as last evaluated.")] = None
    last_run: Annotated[RetentionRun | None, Field(description="The most recent run.")] = None
    last_purge: Annotated[datetime | None, Field(description="When records were last purged.")] = None
    totals: Annotated[RetentionTotals, Field(description="Totals since creation.")] = RetentionTotals()
    soft_deleted_pending: Annotated[
        int | None, Field(description="Soft-deleted records still restorable (awaiting their grace period).")
    ] = None
    history: Annotated[
        list[RetentionRun],
        Field(max_length=RETENTION_HISTORY_LENGTH, description="The last 10 runs, newest first."),
    ] = []
    purge_in_progress: Annotated[
        PurgeInProgress | None,
        Field(description="While a long purge goes on (its last run ended Stopped): how far it has got. Cleared "
              "when a run finishes."),
    ] = None
