"""The operator's own calls to the Kubernetes API (kopf makes the rest): read a Secret, patch a status,
list a namespace's S3Exporters, post an Event, ask whether this identity may do something (the startup
RBAC check).

The calls are made with the official ``kubernetes`` client, which blocks: callers run them on threads
(the status writer on a small pool of its own, apart from the export cycles, so that a long backfill
never delays a status write). Events go through kopf's poster (``kopf.event``), which posts them in the
background with retries.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import kopf
import kubernetes.client
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from ..api import GROUP, VERSION
from ..api.vocabulary import Domain, Reason
from ..export.model import ExportFailure
from ..status.exporter import Event

__all__ = ["ApiSecrets", "KubeApi", "KubeApiError", "kopf_event"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class KubeApiError(RuntimeError):
    """A Kubernetes API call failed for a reason other than "not found"."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubeApi:
    """The few API calls the operator makes itself (kopf makes the rest): read a Secret, patch a status, list
    a namespace's S3Exporters (for a RetentionPolicy's gate).

    Credentials come from ``configuration`` when given (tests, or an explicit kubeconfig); otherwise the
    login handler loads them in-cluster or from ``$KUBECONFIG`` exactly as kopf does, so that kopf and
    these calls always talk to the same API server with the same identity.
    """

    def __init__(self, configuration: kubernetes.client.Configuration | None = None, *,
                 request_timeout: tuple[float, float] = (10.0, 30.0), connections: int | None = None) -> None:
        self.configuration = configuration
        # The most calls made at once (from as many threads): the connections the client keeps. None: the
        # client's default (5 per CPU); fewer than the callers, and it closes connections as fast as it opens them.
        self.connections = connections
        # (connect, read) seconds on every call: without them a dropped connection (a request sent, no
        # answer ever) holds the call until TCP gives up, ~15 minutes of no status writes.
        self.request_timeout = request_timeout
        self._client: kubernetes.client.ApiClient | None = None

    def login(self, *, logger: Any, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
        """The ``@kopf.on.login`` handler's body: kopf's connection and ours, from one source."""
        if self.configuration is None:
            info = kopf.login_via_client(logger=logger, settings=settings)
            self.configuration = kubernetes.client.Configuration.get_default_copy()
            self._client = None
            return info
        config = self.configuration
        header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
        parts = (header or "").split(" ", 1)
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] or None)
        return kopf.ConnectionInfo(
            server=config.host,
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            username=config.username or None,
            password=config.password or None,
            scheme=scheme,
            token=token,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
        )

    @property
    def client(self) -> kubernetes.client.ApiClient:
        if self._client is None:
            if self.configuration is None:
                raise KubeApiError("not logged in to the Kubernetes API yet")
            if self.connections is not None:
                self.configuration.connection_pool_maxsize = self.connections
            self._client = kubernetes.client.ApiClient(self.configuration)
        return self._client

    def _call(self, what: str, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every call of ours goes through here: with the request timeout, its failures as KubeApiError."""
        try:
            return method(*args, _request_timeout=self.request_timeout, **kwargs)
        except ApiException as exc:
            raise KubeApiError(f"{what} failed: {exc.status} {exc.reason}", exc.status) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(f"{what} failed: {exc.__class__.__name__}") from None

    def _read(self, what: str, method: Callable[..., T], name: str, namespace: str) -> T | None:
        """A namespaced object, or None when it does not exist."""
        try:
            return self._call(f"reading {what} {namespace}/{name}", method, name, namespace)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data, or None when it does not exist."""
        secret = self._read("Secret", kubernetes.client.CoreV1Api(self.client).read_namespaced_secret, name, namespace)
        if secret is None:
            return None
        data: dict[str, str] = {}
        for key, value in (secret.data or {}).items():
            try:
                data[key] = base64.b64decode(value or "", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue  # not text: treated as a missing key, which the condition names
        return data

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data, or None when it does not exist (a caBundleRef's CA certificates)."""
        config_map = self._read("ConfigMap", kubernetes.client.CoreV1Api(self.client).read_namespaced_config_map,
                                name, namespace)
        return None if config_map is None else dict(config_map.data or {})

    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch ``status``; False when the resource is gone."""
        try:
            self._call(f"patching {plural} {namespace}/{name} status",
                       kubernetes.client.CustomObjectsApi(self.client).patch_namespaced_custom_object_status,
                       GROUP, VERSION, namespace, plural, name, {"status": dict(status)})
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def list_objects(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        """Every object of one of our kinds in ``namespace`` (raw bodies, status included)."""
        listed = self._call(f"listing {plural} in {namespace}",
                            kubernetes.client.CustomObjectsApi(self.client).list_namespaced_custom_object,
                            GROUP, VERSION, namespace, plural)
        return list(listed.get("items") or [])

    def access_allowed(self, verb: str, resource: str, *, group: str = "", subresource: str = "",
                       namespace: str = "") -> bool | None:
        """May this identity do ``verb`` on ``resource`` (in ``namespace``; "" is all namespaces)? Asked with a
        SelfSubjectAccessReview; None when the API server gives no answer (no such API, an error)."""
        attributes = kubernetes.client.V1ResourceAttributes(verb=verb, resource=resource, group=group,
                                                           subresource=subresource, namespace=namespace)
        review = kubernetes.client.V1SelfSubjectAccessReview(
            spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes))
        try:
            answer = self._call("SelfSubjectAccessReview", kubernetes.client.AuthorizationV1Api(
                self.client).create_self_subject_access_review, review)
        except (KubeApiError, ValueError) as exc:
            log.warning("cannot check RBAC (SelfSubjectAccessReview): %s", getattr(exc, "status", None) or exc)
            return None
        allowed = answer.status.allowed if answer is not None and answer.status is not None else None
        return allowed if isinstance(allowed, bool) else None

    def check_served(self, plurals: Sequence[str], namespaces: Sequence[str]) -> None:
        """List one item of each of ``plurals`` where the operator watches them (every namespace when
        ``namespaces`` is empty): raises KubeApiError unless the API server, the CRDs and the RBAC all
        work. Namespace patterns (kopf's globs) cannot be listed one by one: the group's discovery
        stands in for them."""
        api = kubernetes.client.CustomObjectsApi(self.client)
        what = f"listing {GROUP} resources"
        patterns = [ns for ns in namespaces if set(ns) & set("*?[!")]
        if patterns:
            self._call(what, api.get_api_resources, GROUP, VERSION)
        for plural in plurals:
            if not namespaces:
                self._call(what, api.list_cluster_custom_object, GROUP, VERSION, plural, limit=1)
            for namespace in namespaces:
                if namespace not in patterns:
                    self._call(what, api.list_namespaced_custom_object, GROUP, VERSION, namespace, plural, limit=1)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class ApiSecrets:
    """The export cycle's SecretSource (and ConfigMapSource, for caBundleRef), over the API (called from
    worker threads, so blocking is fine)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def get(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return self.api.read_secret(namespace, name)
        except KubeApiError as exc:
            raise ExportFailure(Reason.SECRET_UNREADABLE, str(exc), domain=Domain.CREDENTIALS,
                                transient=True) from None

    def get_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return self.api.read_config_map(namespace, name)
        except KubeApiError as exc:
            raise ExportFailure(Reason.CA_BUNDLE_NOT_FOUND, str(exc), domain=Domain.BUCKET, transient=True) from None


def kopf_event(body: Mapping[str, Any], event: Event) -> None:
    kopf.event(body, type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]
