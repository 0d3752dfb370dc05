"""The API: pydantic models of each kind's spec and status, the one source of truth for the CRDs.

The names below load on first use, each from its module. The vocabulary (api/vocabulary.py: plain enums)
is imported by nearly every module, the capture store and the batch code of the encode workers included;
importing it runs this package first, which must not build the models then: pydantic and the models cost
~0.25 s of CPU at every start of a process that never validates one (tests/unit/test_import_costs.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_names import names_loaded_on_use

if TYPE_CHECKING:
    from .common import (
        GROUP,
        VERSION,
        ApiModel,
        CaBundleRef,
        Condition,
        KeyRef,
        SecretRef,
        ServerSideEncryptionSpec,
        StoreRef,
    )
    from .crd import KindInfo, crd_for, render_crd_yaml, write_crds
    from .kinds import KINDS, RETENTIONPOLICY, S3EXPORTER
    from .retention import RetentionPolicySpec, RetentionPolicyStatus
    from .s3exporter import ExportTotals, RunRecord, S3ExporterSpec, S3ExporterStatus

__all__ = [
    "GROUP",
    "KINDS",
    "RETENTIONPOLICY",
    "S3EXPORTER",
    "VERSION",
    "ApiModel",
    "CaBundleRef",
    "Condition",
    "ExportTotals",
    "KeyRef",
    "KindInfo",
    "RetentionPolicySpec",
    "RetentionPolicyStatus",
    "RunRecord",
    "S3ExporterSpec",
    "S3ExporterStatus",
    "SecretRef",
    "ServerSideEncryptionSpec",
    "StoreRef",
    "crd_for",
    "render_crd_yaml",
    "write_crds",
]

_HOMES = {
    "GROUP": "common",
    "VERSION": "common",
    "ApiModel": "common",
    "CaBundleRef": "common",
    "Condition": "common",
    "KeyRef": "common",
    "SecretRef": "common",
    "ServerSideEncryptionSpec": "common",
    "StoreRef": "common",
    "KindInfo": "crd",
    "crd_for": "crd",
    "render_crd_yaml": "crd",
    "write_crds": "crd",
    "KINDS": "kinds",
    "RETENTIONPOLICY": "kinds",
    "S3EXPORTER": "kinds",
    "RetentionPolicySpec": "retention",
    "RetentionPolicyStatus": "retention",
    "ExportTotals": "s3exporter",
    "RunRecord": "s3exporter",
    "S3ExporterSpec": "s3exporter",
    "S3ExporterStatus": "s3exporter",
}

__getattr__ = names_loaded_on_use(__name__, _HOMES)
