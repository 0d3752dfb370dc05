"""Write a resource's status and Events to the Kubernetes API.

Status goes out as one explicit merge-patch of the ``status`` subresource per write (never through kopf's
handler results, so the status schema stays strict and nothing but the operator's own fields lands there).
Events go through kopf's poster (``kopf.event``), which posts them in the background with retries.

The calls are made with the official ``kubernetes`` client, which blocks: they run on a small thread pool
of their own, apart from the export cycles, so that a long backfill never delays a status write.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import kopf
import kubernetes.client
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from ..api import GROUP, VERSION, S3ExporterStatus
from ..export import ExportFailure
from .exporter import Event

__all__ = ["ApiSecrets", "KubeApi", "KubeApiError", "StatusWriter", "cursor_of", "kopf_event"]

log = logging.getLogger(__name__)


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
                 request_timeout: tuple[float, float] = (10.0, 30.0)) -> None:
        self.configuration = configuration
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
            self._client = kubernetes.client.ApiClient(self.configuration)
        return self._client

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data, or None when it does not exist."""
        try:
            secret = kubernetes.client.CoreV1Api(self.client).read_namespaced_secret(
                name, namespace, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeApiError(f"reading Secret {namespace}/{name} failed: {exc.status} {exc.reason}",
                               exc.status) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(f"reading Secret {namespace}/{name} failed: {exc.__class__.__name__}") from None
        data: dict[str, str] = {}
        for key, value in (secret.data or {}).items():
            try:
                data[key] = base64.b64decode(value or "", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue  # not text: treated as a missing key, which the condition names
        return data

    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch ``status``; False when the resource is gone."""
        try:
            kubernetes.client.CustomObjectsApi(self.client).patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": dict(status)},
                _request_timeout=self.request_timeout,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise KubeApiError(f"patching {plural} {namespace}/{name} status failed: {exc.status} {exc.reason}",
                               exc.status) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(f"patching {plural} {namespace}/{name} status failed: "
                               f"{exc.__class__.__name__}") from None
        return True

    def list_objects(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        """Every object of one of our kinds in ``namespace`` (raw bodies, status included)."""
        try:
            listed = kubernetes.client.CustomObjectsApi(self.client).list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, _request_timeout=self.request_timeout
            )
        except ApiException as exc:
            raise KubeApiError(f"listing {plural} in {namespace} failed: {exc.status} {exc.reason}",
                               exc.status) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(f"listing {plural} in {namespace} failed: {exc.__class__.__name__}") from None
        return list(listed.get("items") or [])

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class ApiSecrets:
    """The export cycle's SecretSource, over the API (called from worker threads, so blocking is fine)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def get(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return self.api.read_secret(namespace, name)
        except KubeApiError as exc:
            raise ExportFailure("SecretUnreadable", str(exc), domain="Credentials", transient=True) from None


def kopf_event(body: Mapping[str, Any], event: Event) -> None:
    kopf.event(body, type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]


def cursor_of(status: Mapping[str, Any] | None) -> tuple[int, int]:
    """(epoch, cursor) of a raw status, (0, 0) when absent or unreadable."""
    status = status or {}
    try:
        return int(status.get("epoch") or 0), int(status.get("cursor") or 0)
    except (TypeError, ValueError):
        return 0, 0


class StatusWriter:
    """Patches statuses and emits Events; guarantees an S3Exporter's cursor never goes backwards.

    :meth:`write_exporter` is the S3Exporter's write; :meth:`write_status` writes any other kind's."""

    def __init__(self, api: KubeApi, executor: Executor | None = None,
                 emit: Callable[[Mapping[str, Any], Event], None] = kopf_event) -> None:
        self.api = api
        self.executor = executor
        self.emit_one = emit
        self._written: dict[tuple[str, str, str], tuple[int, int]] = {}

    async def patch(self, body: Mapping[str, Any], plural: str, status: Mapping[str, Any]) -> bool:
        meta = body.get("metadata", {})
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, self.api.patch_status, plural, meta.get("namespace"), meta.get("name"), status
        )

    def emit(self, body: Mapping[str, Any], events: Sequence[Event]) -> None:
        for event in events:
            try:
                self.emit_one(body, event)
            except LookupError:  # outside an operator context (no event poster): log only
                log.info("event %s %s: %s", event.type, event.reason, event.message)

    @staticmethod
    def not_behind(status: S3ExporterStatus, floor: S3ExporterStatus) -> S3ExporterStatus:
        """``status``, with ``floor``'s (epoch, cursor) if that is newer."""
        if (status.epoch, int(status.cursor)) >= (floor.epoch, int(floor.cursor)):
            return status
        log.error("refusing to move the cursor back from %s/%s to %s/%s", floor.epoch, floor.cursor, status.epoch,
                  status.cursor)
        return status.model_copy(update={"epoch": floor.epoch, "cursor": floor.cursor})

    async def write_exporter(
        self, body: Mapping[str, Any], plural: str, status: S3ExporterStatus, events: Sequence[Event] = ()
    ) -> bool:
        """Write an S3Exporter status, never moving (epoch, cursor) below what was written or is stored."""
        meta = body.get("metadata", {})
        key = (plural, meta.get("namespace", ""), meta.get("name", ""))
        floor = max(self._written.get(key, (0, 0)), cursor_of(body.get("status")))
        if (status.epoch, int(status.cursor)) < floor:
            log.error("refusing to move %s/%s cursor back from %s to %s; keeping the newer one", key[1], key[2],
                      floor, (status.epoch, status.cursor))
            status = status.model_copy(update={"epoch": floor[0], "cursor": str(floor[1])})
        raw = status.model_dump(mode="json", by_alias=True)
        written = await self.patch(body, plural, raw)
        if written:
            self._written[key] = (status.epoch, int(status.cursor))
            self.emit(body, events)
        return written

    async def write_status(self, body: Mapping[str, Any], plural: str, status: Mapping[str, Any],
                           events: Sequence[Event] = ()) -> bool:
        """Any kind's status in one merge-patch, then its Events; False when the resource is gone."""
        written = await self.patch(body, plural, status)
        if written:
            self.emit(body, events)
        return written

    def forget(self, plural: str, namespace: str, name: str) -> None:
        self._written.pop((plural, namespace, name), None)
