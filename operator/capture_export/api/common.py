"""Shared API pieces: the base model, references to Secrets and stores, and the Condition type."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .vocabulary import Truth

__all__ = [
    "GROUP",
    "VERSION",
    "ApiModel",
    "Condition",
    "ConditionStatus",
    "PostgresStoreRef",
    "SQLiteStoreRef",
    "SecretKeyRef",
    "SecretRef",
    "StoreRef",
]

GROUP = "capture.dev"
VERSION = "v1alpha1"

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


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


class SQLiteStoreRef(ApiModel):
    path: Annotated[str, Field(min_length=1, description="Path of the SQLite capture store file.")]


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
                    "message": "store: set at most one of sqlite and postgres",
                }
            ]
        }
    )

    sqlite: Annotated[SQLiteStoreRef | None, Field(description="A SQLite store file.")] = None
    postgres: Annotated[PostgresStoreRef | None, Field(description="A PostgreSQL store.")] = None

    @model_validator(mode="after")
    def _one_kind(self) -> StoreRef:
        if sum(getattr(self, name) is not None for name in type(self).model_fields) > 1:
            raise ValueError("store: set at most one of sqlite and postgres")
        return self


ConditionStatus = Literal[tuple(t.value for t in Truth)]  # type: ignore[valid-type]


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
