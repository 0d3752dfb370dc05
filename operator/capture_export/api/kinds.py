"""The kinds the operator serves: each one's names, spec and status models, and the columns `kubectl get`
shows (the CRDs are generated from these: api/crd.py)."""

from __future__ import annotations

from .crd import KindInfo
from .retention import RetentionPolicySpec, RetentionPolicyStatus
from .s3exporter import S3ExporterSpec, S3ExporterStatus

__all__ = ["KINDS", "RETENTIONPOLICY", "S3EXPORTER"]

S3EXPORTER = KindInfo(
    kind="S3Exporter",
    plural="s3exporters",
    singular="s3exporter",
    spec=S3ExporterSpec,
    status=S3ExporterStatus,
    description="Exports LLM capture records from a capture store to an S3-compatible bucket, exactly once.",
    short_names=("s3x",),
    printer_columns=(
        {"name": "Bucket", "type": "string", "jsonPath": ".spec.bucket"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Exported", "type": "integer", "jsonPath": ".status.totals.rows"},
        {"name": "Backlog", "type": "integer", "jsonPath": ".status.backlog"},
        {"name": "Last Export", "type": "date", "jsonPath": ".status.lastSuccessfulExport"},
        {"name": "Reason", "type": "string", "priority": 1,
         "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)

RETENTIONPOLICY = KindInfo(
    kind="RetentionPolicy",
    plural="retentionpolicies",
    singular="retentionpolicy",
    spec=RetentionPolicySpec,
    status=RetentionPolicyStatus,
    description="Purges capture records older than maxAge from a capture store, only once every gating "
    "S3Exporter has committed them to its bucket.",
    short_names=("rp",),
    printer_columns=(
        {"name": "Max Age", "type": "string", "jsonPath": ".spec.maxAge"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Gate", "type": "string", "jsonPath": '.status.conditions[?(@.type=="GateOpen")].status'},
        {"name": "Limited By", "type": "string", "jsonPath": ".status.gate.limitingExporter"},
        {"name": "Bound", "type": "string", "jsonPath": ".status.gate.bound"},
        {"name": "Purged", "type": "integer", "jsonPath": ".status.totals.purged"},
        {"name": "Remaining", "type": "integer", "jsonPath": ".status.purgeInProgress.remaining"},
        {"name": "Last Purge", "type": "date", "jsonPath": ".status.lastPurge"},
        {"name": "Reason", "type": "string", "priority": 1,
         "jsonPath": '.status.conditions[?(@.type=="GateOpen")].reason'},
        {"name": "Require Export", "type": "boolean", "priority": 1, "jsonPath": ".spec.requireExport"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)

# Every kind the operator serves; later kinds append themselves here.
KINDS: list[KindInfo] = [S3EXPORTER, RETENTIONPOLICY]
