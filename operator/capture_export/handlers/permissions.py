"""The RBAC the operator needs, checked once at startup.

Without this, a Role or ClusterRole missing one verb shows up late and quietly: kopf retries a 403 on its
list or watch for about a minute per attempt and serves nothing meanwhile, and a missing ``patch`` on
``/status`` only surfaces as log lines while every resource looks stuck. So at startup the operator asks the
API server (SelfSubjectAccessReview, which every authenticated identity may create) whether it may do each
thing it does, in each namespace it serves, and refuses to start with one message naming every missing
permission and where.

The list below is what the code really calls: kopf lists, watches and patches (finalizer, bookkeeping
annotations) both kinds and posts core Events; the status writer patches ``/status``; the export reads
Secrets (and ConfigMaps, for a caBundleRef); serving all namespaces, kopf also lists and watches
CustomResourceDefinitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..api import GROUP
from .kube import KubeApi

__all__ = ["MissingPermissions", "Permission", "check_permissions", "missing_permissions", "required_permissions"]


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""

    def __str__(self) -> str:
        name = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{self.verb} {name}/{self.subresource}" if self.subresource else f"{self.verb} {name}"


class MissingPermissions(RuntimeError):
    """The operator's identity may not do what the operator does."""


_KINDS = ("s3exporters", "retentionpolicies")
NAMESPACED: tuple[Permission, ...] = (
    *(Permission(verb, plural, GROUP) for plural in _KINDS for verb in ("list", "watch", "patch")),
    *(Permission("patch", plural, GROUP, "status") for plural in _KINDS),
    Permission("get", "secrets"),
    Permission("get", "configmaps"),  # an S3Exporter's caBundleRef.configMapKeyRef
    Permission("create", "events"),
)
CLUSTER_WIDE: tuple[Permission, ...] = (
    Permission("list", "customresourcedefinitions", "apiextensions.k8s.io"),
    Permission("watch", "customresourcedefinitions", "apiextensions.k8s.io"),
)


def required_permissions(namespaces: Sequence[str]) -> list[tuple[Permission, str]]:
    """(permission, namespace) pairs; namespace "" means all namespaces (serving the whole cluster)."""
    if not namespaces:
        return [(permission, "") for permission in (*NAMESPACED, *CLUSTER_WIDE)]
    return [(permission, namespace) for namespace in namespaces for permission in NAMESPACED]


def missing_permissions(api: KubeApi, namespaces: Sequence[str]) -> list[str] | None:
    """What is missing, as "verb resource in namespace X" / "(all namespaces)"; None when the API server
    could not answer (no SelfSubjectAccessReview API, as in a test emulator): nothing is claimed then."""
    missing = []
    for permission, namespace in required_permissions(namespaces):
        allowed = api.access_allowed(permission.verb, permission.resource, group=permission.group,
                                     subresource=permission.subresource, namespace=namespace)
        if allowed is None:
            return None
        if not allowed:
            missing.append(f"{permission} {f'in namespace {namespace}' if namespace else '(all namespaces)'}")
    return missing


def check_permissions(api: KubeApi, namespaces: Sequence[str]) -> bool:
    """Raise :class:`MissingPermissions` naming every missing permission; False when it could not check."""
    missing = missing_permissions(api, namespaces)
    if missing is None:
        return False
    if missing:
        raise MissingPermissions(
            f"the operator's RBAC is missing {len(missing)} permission(s): {'; '.join(missing)}. Grant them "
            "(the Helm chart's rbac.create does, for the namespaces in watch.namespaces or all of them)")
    return True
