"""Shared API pieces: the base model, references to Secrets and stores, and the Condition type."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict, JsonValue

from .vocabulary import Truth

__all__ = [
    "CONDITIONS_LIST",
    "GROUP",
    "VERSION",
    "ApiModel",
    "CaBundleRef",
    "Condition",
    "ConditionStatus",
    "KeyRef",
    "PostgresStoreRef",
    "SQLiteStoreRef",
    "SecretKeyRef",
    "SecretRef",
    "ServerSideEncryptionSpec",
    "StoreRef",
    "cel_rule",
    "cel_validations",
    "rule_error",
]

GROUP = "capture.dev"
VERSION = "v1alpha1"

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A file path: any characters but control characters (a newline or an escape sequence in a path is a
# mistake, and would be echoed into every message naming the path).
PATH_PATTERN = r"^[^\x00-\x1f\x7f]+$"
# Conditions are a list keyed by type (server-side apply merges them by type, as for built-in kinds).
CONDITIONS_LIST = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


def cel_rule(rule: str, message: str, field: str | None = None) -> dict[str, str]:
    """A CEL validation rule of the CRD (``x-kubernetes-validations``). ``field``: the camelCase path, from
    the rule's node, of the field it is about (the API server then names that field, as pydantic does)."""
    entry = {"rule": rule, "message": message}
    if field is not None:
        entry["fieldPath"] = f".{field}"
    return entry


def cel_validations(*rules: Mapping[str, str]) -> JsonDict:
    """A model's ``json_schema_extra`` carrying these CEL rules."""
    entries: list[JsonValue] = []
    for rule in rules:
        entry: JsonDict = dict(rule)
        entries.append(entry)
    return {"x-kubernetes-validations": entries}


def rule_error(rule: dict[str, str]) -> ValueError:
    """The pydantic refusal that mirrors a CEL rule: its message, after the field it names (the API's
    manifest reader turns ``field: message`` of a spec-level rule into ``spec.field: message``)."""
    field = rule.get("fieldPath", "").lstrip(".")
    return ValueError(f"{field}: {rule['message']}" if field else rule["message"])


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=True
    )


class SecretRef(ApiModel):
    """A Secret in the resource's namespace holding ``access_key_id``, ``access_secret`` and optionally
    ``session_token``."""

    name: Annotated[
        str,
        Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Secret."),
    ]


class SecretKeyRef(ApiModel):
    """One key of a Secret in the resource's namespace."""

    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Secret.")
    ]
    key: Annotated[str, Field(min_length=1, max_length=253, description="Key within the Secret.")] = "dsn"


class KeyRef(ApiModel):
    """One key of a Secret or ConfigMap in the resource's namespace."""

    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the object.")
    ]
    key: Annotated[str, Field(min_length=1, max_length=253, description="Key within it.")] = "ca.crt"


CA_BUNDLE_ONE_SOURCE = {
    "rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)",
    "message": "caBundleRef: set exactly one of secretKeyRef and configMapKeyRef",
}


class CaBundleRef(ApiModel):
    """PEM CA certificates to trust for the endpoint's TLS, from a Secret or a ConfigMap key (read every
    cycle, like the credentials)."""

    model_config = ConfigDict(json_schema_extra=cel_validations(CA_BUNDLE_ONE_SOURCE))

    secret_key_ref: Annotated[KeyRef | None, Field(description="A Secret key holding PEM certificates "
                                                   "(key default ca.crt).")] = None
    config_map_key_ref: Annotated[KeyRef | None, Field(description="A ConfigMap key holding PEM certificates "
                                                       "(key default ca.crt).")] = None

    @model_validator(mode="after")
    def _one_source(self) -> CaBundleRef:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError(CA_BUNDLE_ONE_SOURCE["message"])
        return self


SSE_KMS_KEY_RULE = {
    "rule": "!has(self.kmsKeyId) || self.algorithm == 'aws:kms'",
    "message": "serverSideEncryption: kmsKeyId needs algorithm aws:kms",
}


class ServerSideEncryptionSpec(ApiModel):
    """Server-side encryption requested on every object the exporter writes (data, checkpoint, probe)."""

    model_config = ConfigDict(json_schema_extra=cel_validations(SSE_KMS_KEY_RULE))

    algorithm: Annotated[
        Literal["AES256", "aws:kms"],
        Field(description="AES256 (SSE-S3, keys managed by the service) or aws:kms (SSE-KMS)."),
    ]
    kms_key_id: Annotated[
        str | None,
        Field(min_length=1, max_length=2048, pattern=r"^[A-Za-z0-9:/_.+=@-]+$",
              description="With aws:kms: the KMS key id, alias (alias/name) or ARN; omit for the account's "
              "aws/s3 key. The exporter then needs kms:GenerateDataKey on it (and kms:Decrypt to read "
              "checkpoints back)."),
    ] = None

    @model_validator(mode="after")
    def _kms_key_with_kms(self) -> ServerSideEncryptionSpec:
        if self.kms_key_id is not None and self.algorithm != "aws:kms":
            raise ValueError(SSE_KMS_KEY_RULE["message"])
        return self


class SQLiteStoreRef(ApiModel):
    path: Annotated[str, Field(min_length=1, max_length=4096, pattern=PATH_PATTERN,
                               description="Path of the SQLite capture store file (no control characters). The "
                               "operator accepts only paths inside the directories it is configured to allow.")]


class PostgresStoreRef(ApiModel):
    secret_ref: Annotated[
        SecretKeyRef,
        Field(description="Secret key holding a PostgreSQL connection string (DSN)."),
    ]


class StoreRef(ApiModel):
    """Which capture store to read. Omit it to use the operator's default store."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.sqlite) && has(self.postgres))",
                    "message": "set at most one of sqlite and postgres",
                }
            ]
        }
    )

    sqlite: Annotated[SQLiteStoreRef | None, Field(description="A SQLite store file.")] = None
    postgres: Annotated[PostgresStoreRef | None, Field(description="A PostgreSQL store.")] = None

    @model_validator(mode="after")
    def _one_kind(self) -> StoreRef:
        if sum(getattr(self, name) is not None for name in type(self).model_fields) > 1:
            raise ValueError("set at most one of sqlite and postgres")
        return self


if TYPE_CHECKING:
    ConditionStatus = str  # one of Truth's values: the type checker sees the str that a StrEnum is
else:
    ConditionStatus = Literal[tuple(t.value for t in Truth)]  # the CRD's enum, from the one list


class Condition(ApiModel):
    """A condition, as the Kubernetes API conventions define it."""

    type: Annotated[str, Field(description="Condition type, e.g. Ready.")]
    status: Annotated[ConditionStatus, Field(description="True, False or Unknown.")]
    reason: Annotated[str, Field(description="CamelCase reason for the last transition.")]
    message: Annotated[str, Field(description="Human-readable detail; never holds a secret.")] = ""
    last_transition_time: Annotated[
        datetime, Field(description="When status last changed.")
    ]
    observed_generation: Annotated[
        int | None, Field(description="The spec generation this condition was set for.")
    ] = None
