"""The words the operator writes into status, Events and metrics: condition types, reasons, failure
domains, run outcomes, the gate's modes and exporter states. One home for each, so a typo is a
NameError and a newcomer finds them all here. Values are ``StrEnum`` members: they compare equal to,
and serialise as, the plain strings on the wire (which must never change: users alert on them)."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConditionType",
    "Domain",
    "EventType",
    "ExportOutcome",
    "GateExporterState",
    "GateMode",
    "PurgeOutcome",
    "Reason",
    "Truth",
]


class ConditionType(StrEnum):
    READY = "Ready"
    # S3Exporter: one condition per failure domain, and whether it has caught up.
    CREDENTIALS_VALID = "CredentialsValid"
    STORE_REACHABLE = "StoreReachable"  # RetentionPolicy too
    BUCKET_REACHABLE = "BucketReachable"
    UP_TO_DATE = "UpToDate"
    # RetentionPolicy
    GATE_OPEN = "GateOpen"


class Truth(StrEnum):
    """A condition's ``status``."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class Domain(StrEnum):
    """What an export failure speaks to (``ExportFailure.domain``): each but Format has its condition."""

    BUCKET = "Bucket"
    CREDENTIALS = "Credentials"
    STORE = "Store"
    FORMAT = "Format"  # the format cannot be written here (a missing package, records it cannot encode)
    STATE = "State"  # the standalone runner's state file cannot be written
    INTERNAL = "Internal"  # an exception nobody foresaw


class ExportOutcome(StrEnum):
    """An export run's outcome (``RunRecord.outcome``), in the CRD's order."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    NOTHING_TO_DO = "NothingToDo"
    STOPPED = "Stopped"


class PurgeOutcome(StrEnum):
    """A retention run's outcome (``RetentionRun.outcome``), in the CRD's order."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    NOTHING_TO_DO = "NothingToDo"
    GATE_CLOSED = "GateClosed"
    DRY_RUN = "DryRun"
    STOPPED = "Stopped"


class GateMode(StrEnum):
    REQUIRE_EXPORT = "RequireExport"
    AGE_ONLY = "AgeOnly"


class GateExporterState(StrEnum):
    """How the gate judged one gating exporter (``status.gate.exporters[].state``), in the CRD's order."""

    COMMITTED = "Committed"
    NEVER_RUN = "NeverRun"
    RESET = "Reset"
    NOT_FOUND = "NotFound"
    UNREADABLE = "Unreadable"
    STORE_MISMATCH = "StoreMismatch"
    AHEAD_OF_STORE = "AheadOfStore"


class Reason(StrEnum):
    """CamelCase reasons of conditions, Events and failed runs (the object store's own classification of
    S3 error codes stays in objectstore/s3.py)."""

    # condition states
    PENDING = "Pending"
    READY = "Ready"
    VERIFIED = "Verified"
    REACHABLE = "Reachable"
    CAUGHT_UP = "CaughtUp"
    BACKLOG_REMAINING = "BacklogRemaining"
    # specs the handlers hold
    INVALID_SPEC = "InvalidSpec"
    DESTINATION_IMMUTABLE = "DestinationImmutable"
    SUSPENDED = "Suspended"
    # export failures
    STORE_UNAVAILABLE = "StoreUnavailable"
    STORE_DSN_INVALID = "StoreDsnInvalid"  # a store.postgres DSN (or --store) that is not one libpq accepts
    DEFAULT_STORE_NOT_ALLOWED = "DefaultStoreNotAllowed"  # the namespace may not use the default store
    STORE_PATH_NOT_ALLOWED = "StorePathNotAllowed"  # store.sqlite.path outside the allowed directories
    INTERNAL_ERROR = "InternalError"  # an exception nobody foresaw: contained, named by its class
    STATE_NOT_WRITABLE = "StateNotWritable"  # the standalone runner's state file cannot be written
    CORRUPT_RECORD = "CorruptRecord"
    ENCODE_FAILED = "EncodeFailed"
    FORMAT_UNAVAILABLE = "FormatUnavailable"
    CHECKPOINT_CORRUPT = "CheckpointCorrupt"
    # exactly once under careless handling (README "What exactly-once assumes")
    STORE_NOT_FOUND = "StoreNotFound"  # RetentionPolicy too
    STORE_MISMATCH = "StoreMismatch"
    CHECKPOINT_MISSING = "CheckpointMissing"
    SAVED_CURSOR_AHEAD = "SavedCursorAhead"  # an Event: the saved cursor was past the checkpoint; it went back
    DESTINATION_IN_USE = "DestinationInUse"
    FOREIGN_OBJECTS = "ForeignObjects"  # an Event: objects in the destination the sweep left alone
    THROTTLED = "Throttled"
    # credentials
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    SECRET_UNREADABLE = "SecretUnreadable"
    SECRET_VALUE_INVALID = "SecretValueInvalid"  # a control character (a trailing newline) in a value
    EXPIRED_TOKEN = "ExpiredToken"  # the session token (from the Secret, or an assumed role's) has expired
    ASSUME_ROLE_DENIED = "AssumeRoleDenied"  # STS refused AssumeRole (trust policy, external id, permission)
    ASSUME_ROLE_FAILED = "AssumeRoleFailed"  # STS answered otherwise (bad duration, throttled, unreachable)
    WEB_IDENTITY_REJECTED = "WebIdentityRejected"  # STS refused the pod's web identity token (IRSA)
    # TLS to the endpoint
    TLS_VERIFICATION_FAILED = "TLSVerificationFailed"
    CA_BUNDLE_NOT_FOUND = "CABundleNotFound"
    CA_BUNDLE_INVALID = "CABundleInvalid"
    # the connection test: which S3 permission the probe found missing
    WRITE_DENIED = "WriteDenied"  # s3:PutObject
    READ_DENIED = "ReadDenied"  # s3:GetObject
    LIST_DENIED = "ListDenied"  # s3:ListBucket
    DELETE_DENIED = "DeleteDenied"  # s3:DeleteObject
    # export Events
    EXPORT_FAILED = "ExportFailed"
    RECORD_QUARANTINED = "RecordQuarantined"
    CURSOR_RESET = "CursorReset"
    # retention: the store, the gate, the purge
    STORE_UNSUPPORTED = "StoreUnsupported"
    EXPORT_NOT_REQUIRED = "ExportNotRequired"
    NO_EXPORTERS_SELECTED = "NoExportersSelected"
    EXPORT_CONFIRMED = "ExportConfirmed"
    COMMITTED = "Committed"
    EXPORTER_NOT_FOUND = "ExporterNotFound"
    EXPORTER_STORE_MISMATCH = "ExporterStoreMismatch"
    CHECKPOINT_UNREADABLE = "CheckpointUnreadable"
    EXPORTER_NEVER_RUN = "ExporterNeverRun"
    CURSOR_AHEAD_OF_STORE = "CursorAheadOfStore"
    EXPORTER_RESET = "ExporterReset"
    PURGE_FAILED = "PurgeFailed"
    PURGED = "Purged"
    PURGING_UNEXPORTED = "PurgingUnexported"
