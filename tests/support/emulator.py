"""kmock's KubernetesEmulator, taught the few API-server behaviours kopf and our status writes rely on.

kmock 0.8 stores objects as plain dicts. This subclass takes over every write so that, as a real API
server does, it stamps ``uid``, ``resourceVersion``, ``generation`` (bumped on spec changes only),
``creationTimestamp`` and ``namespace``; answers create with 201 and honours ``generateName``; answers
409 on a stale ``resourceVersion`` or an existing name and 422 on a failed JSON-patch ``test``; keeps
``/status`` writes to the status and main-resource writes away from it; turns a Secret's ``stringData``
into ``data``; treats a no-op patch as a no-op (no new version, no watch event); and keeps only the last
versions of each object (so that long benchmarks do not grow the history without bound).

List and watch follow the API server's contract too: a list carries the current ``resourceVersion``; a
watch from a version streams only the events after it (from a short event history), and a watch from
none starts with the existing objects. The watch subscribes to the event bus under the write lock before
it replays anything: kmock's own replays every object on every watch (so kopf handled stale duplicates
and its JSON patches failed) and subscribes only afterwards (so it lost what was created in between).
Get and discovery are kmock's own.

Custom resources go through their CRD (``crds/``) as through the API server's admission: unknown fields
and non-nullable nulls are pruned (refused with ``?fieldValidation=Strict``), defaults filled in, the
result validated against the structural schema and its CEL rules (``x-kubernetes-validations``,
transition rules against the stored object) and refused with 422 ``Invalid`` naming each field; the
operator's status writes included. Deleting an object that has finalizers bumps its ``generation``
with its ``deletionTimestamp``, as the API server does. And
:attr:`ClusterEmulator.faults` makes it answer a share of requests with 429 (``Retry-After``) or 500, so
that the operator's retries run.
"""

from __future__ import annotations

import base64
import collections
import copy
import datetime
import itertools
import random
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import yaml
from kmock import KubernetesEmulator, KubernetesError, ResourceInfo, action, resource
from kmock._internal import dicts

from . import cel
from .structural import CustomResourceSchema, RuleEvaluator

__all__ = ["ApiFaults", "ClusterEmulator", "cel_rule_failures", "crd_schemas"]

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def cel_rule_failures(schema: Mapping[str, Any], obj: Any, old: Any) -> list[str]:
    """The CRD's CEL rules (``x-kubernetes-validations``) that ``obj`` breaks, evaluated with the CEL library
    of tests/support/cel.py; ``old`` is the stored object on an update (transition rules), None on create."""
    failures = []
    for part in ("spec", "status"):
        node = (schema.get("properties") or {}).get(part)
        if node is None or obj.get(part) is None:
            continue
        previous = None if old is None else old.get(part)
        failures += [f"{failure.path}: Invalid value: {failure.message}"
                     for failure in cel.rule_failures(node, obj[part], previous, path=part)]
    return failures


def crd_schemas(crd_dir: Path = CRD_DIR, cel_failures: RuleEvaluator | None = cel_rule_failures
                ) -> dict[tuple[str, str, str], CustomResourceSchema]:
    """(group, version, plural) -> the admission of that served version, for every CRD in ``crd_dir``."""
    schemas = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                key = (crd["spec"]["group"], version["name"], crd["spec"]["names"]["plural"])
                schemas[key] = CustomResourceSchema(version["schema"]["openAPIV3Schema"], cel_failures=cel_failures)
    return schemas


@dataclass
class ApiFaults:
    """Answer a share of the requests the operator makes with 429 (Retry-After) or 500, as a loaded or
    restarting API server does. Watches are spared unless ``watches``; only the listed methods fail."""

    rate: float = 0.3
    statuses: tuple[int, ...] = (429, 500)
    methods: frozenset[str] = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
    watches: bool = False
    seed: int = 14
    injected: collections.Counter[int] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def draw(self, method: str, watch: bool) -> int | None:
        if method not in self.methods or (watch and not self.watches) or self._random.random() >= self.rate:
            return None
        status = self._random.choice(self.statuses)
        self.injected[status] += 1
        return status

_HISTORY = 2  # versions kept per object
_EVENT_HISTORY = 100_000  # watch events kept for watches that resume from a resourceVersion


@attrs.define(kw_only=True)
class ClusterEmulator(KubernetesEmulator):
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_version: int = attrs.field(default=0, init=False)
    _events: Any = attrs.field(factory=lambda: collections.deque(maxlen=_EVENT_HISTORY), init=False)
    schemas: dict[tuple[str, str, str], CustomResourceSchema] = attrs.field(factory=crd_schemas)
    faults: ApiFaults | None = None  # set it (and back to None) while the emulator runs
    # SelfSubjectAccessReviews: None stores and echoes them, without an answer (the operator then skips its
    # RBAC check); a set of (verb, plural) pairs answers each review, denying those and allowing the rest.
    denied_access: frozenset[tuple[str, str]] | None = None

    def declare(self, group_version_plural: str, *, kind: str, namespaced: bool = True,
                status: bool = False, **extra: Any) -> None:
        verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
        self.resources[group_version_plural] = ResourceInfo(
            kind=kind, namespaced=namespaced, verbs=verbs, subresources={"status"} if status else set(), **extra
        )

    def _has_status(self, res: Any) -> bool:
        return res in self.resources and "status" in self.resources[res].subresources

    def _next_version(self) -> str:
        self._last_version = next(self._versions)
        return str(self._last_version)

    # -- dispatch -------------------------------------------------------------------------------------

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        # kmock's generic dispatch matches each request against every request it has kept: keep few, and
        # serve every object verb but watch here, so that a long benchmark does not slow down.
        if len(self._requests) > 1000:
            del self._requests[:-100]
        faults = self.faults
        if faults is not None and request.resource is not None:
            status = faults.draw(request.method, request.action == action.WATCH)
            if status is not None:
                return _fault(status)
        if request.resource is not None and request.resource.plural is not None:
            if request.resource.plural == "selfsubjectaccessreviews" and self.denied_access is not None:
                return self._review_access(request)
            if request.action == action.FETCH and request.name is not None:
                return aiohttp.web.json_response(await self._fetch(request))
            if request.action == action.LIST:
                return aiohttp.web.json_response(await self._serve_list(request))
            if request.action == action.CREATE:
                return await self._create(request)
            if request.name is not None and (request.action == action.UPDATE or request.method == "PUT"):
                return await self._update(request)
            if request.name is not None and request.action == action.DELETE:
                return await self._delete(request)
        return await super()._handle(request)

    def _review_access(self, request: Any) -> aiohttp.web.StreamResponse:
        review = copy.deepcopy(request.data or {})
        attributes = (review.get("spec") or {}).get("resourceAttributes") or {}
        denied = (attributes.get("verb"), attributes.get("resource")) in (self.denied_access or ())
        review["status"] = {"allowed": not denied}
        return aiohttp.web.json_response(review, status=201)

    async def _publish(self, res: Any, type_: str, obj: dict[str, Any]) -> None:
        event = {"type": type_, "object": copy.deepcopy(obj)}
        self._events.append((int(obj["metadata"]["resourceVersion"]), res, event))
        await self._buses[res].put(event)

    def _store(self, key: Any, obj: dict[str, Any] | None) -> None:
        history = self._objects[key].history
        history.append(obj)
        if len(history) > _HISTORY:
            del history[:-_HISTORY]

    # -- admission ----------------------------------------------------------------------------------

    def _admit(self, request: Any, res: Any, obj: dict[str, Any],
               old: dict[str, Any] | None = None) -> dict[str, Any]:
        """``obj`` as the API server would store it (pruned, defaulted), or 422 naming what is invalid."""
        schema = self.schemas.get((res.group, res.version, res.plural))
        if schema is None:
            return obj
        strict = request.params.get("fieldValidation", "") == "Strict"
        admission = schema.admit(obj, old, strict=strict)
        if admission.errors:
            kind = self.resources[res].kind if res in self.resources else res.plural
            name = (obj.get("metadata") or {}).get("name", "")
            raise KubernetesError(422, "Invalid", f'{kind}.{res.group} "{name}" is invalid: '
                                  f"[{', '.join(admission.errors)}]",
                                  {"name": name, "group": res.group, "kind": kind,
                                   "causes": [{"reason": "FieldValueInvalid", "message": error,
                                               "field": error.split(":", 1)[0]} for error in admission.errors]})
        return admission.obj

    # -- list and watch ---------------------------------------------------------------------------------

    def _matches(self, request: Any, res: Any, namespace: str | None, name: str | None) -> bool:
        return (res == request.resource and (request.namespace is None or namespace == request.namespace)
                and (request.name is None or name == request.name))

    async def _fetch(self, request: Any) -> dict[str, Any]:
        key = (resource(request.resource), request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise KubernetesError(404, "NotFound", f"{request.resource.plural} {request.name!r} not found")
            return copy.deepcopy(self._objects[key].raw)

    async def _serve_list(self, request: Any) -> Any:
        if request.resource not in self._get_resources():
            raise KubernetesError(404, "NotFound", f"the server could not find the resource {request.resource}")
        async with self._lock:
            items = [copy.deepcopy(obj.raw) for (res, namespace, name), obj in self._objects.items()
                     if not obj.deleted and self._matches(request, res, namespace, name)]
            version = str(self._last_version)
        return {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        yield b""  # start streaming at once, even when nothing happens
        bus = self._buses[request.resource]
        since = request.params.get("resourceVersion", "")
        async with self._lock:
            marker = await bus.mark()
            if since.isdigit() and int(since) > 0:
                if self._events and self._events[0][0] > int(since) + 1 and len(self._events) == _EVENT_HISTORY:
                    raise KubernetesError(410, "Expired", f"too old resource version: {since}")
                replay = [event for version, res, event in self._events if version > int(since)
                          and self._matches(request, res, event["object"]["metadata"].get("namespace"),
                                            event["object"]["metadata"].get("name"))]
            else:
                replay = [{"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                          for (res, namespace, name), obj in self._objects.items()
                          if not obj.deleted and self._matches(request, res, namespace, name)]
        try:
            for event in replay:
                yield event
            async for event in bus.stream(since=marker):
                meta = event["object"]["metadata"]
                if self._matches(request, request.resource, meta.get("namespace"), meta.get("name")):
                    yield event
        finally:
            await bus.unmark(marker)

    # -- create ---------------------------------------------------------------------------------------

    async def _create(self, request: Any) -> aiohttp.web.StreamResponse:
        res = resource(request.resource)
        obj = copy.deepcopy(request.data or {})
        meta = obj.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace")
        if namespace:
            meta["namespace"] = namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise KubernetesError(422, "Invalid", "metadata.name or metadata.generateName is required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        key = (res, namespace, meta["name"])
        async with self._lock:
            if key in self._objects and not self._objects[key].deleted:
                raise KubernetesError(409, "AlreadyExists", f"{res.plural} {meta['name']!r} already exists")
            if self._has_status(res):
                obj.pop("status", None)
            obj = self._admit(request, res, obj)
            meta = obj["metadata"]
            meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_version(), generation=1,
                        creationTimestamp=_now())
            _string_data(res, obj)
            if key in self._objects:
                self._store(key, obj)
            else:
                self._objects[key] = obj
            await self._publish(res, "ADDED", obj)
        return aiohttp.web.json_response(obj, status=201)

    # -- update (PATCH and PUT) -----------------------------------------------------------------------

    async def _update(self, request: Any) -> aiohttp.web.StreamResponse:
        res = resource(request.resource)
        key = (res, request.namespace, request.name)
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise KubernetesError(404, "NotFound", f"{res.plural} {request.name!r} not found")
            current = copy.deepcopy(self._objects[key].raw)
            data = request.data
            if isinstance(data, dict):
                sent = (data.get("metadata") or {}).get("resourceVersion")
                if sent and sent != current["metadata"]["resourceVersion"]:
                    raise KubernetesError(409, "Conflict", "the object has been modified; please apply your "
                                          "changes to the latest version and try again")
            if request.method == "PUT":
                new = copy.deepcopy(data)
            elif content_type == "application/json-patch+json":
                try:
                    new = jsonpatch.apply_patch(current, data, in_place=False)
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                    raise KubernetesError(422, "Invalid", f"the JSON patch cannot be applied: {exc}") from None
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                new = dict(dicts.merge_patch_dict(current, data or {}))
            else:
                raise KubernetesError(415, "UnsupportedMediaType", f"unsupported patch type {content_type}")
            if request.subresource == "status":
                updated = copy.deepcopy(current)
                if new.get("status") is None:
                    updated.pop("status", None)
                else:
                    updated["status"] = new["status"]
                new = updated
            elif self._has_status(res):
                new.pop("status", None)
                if "status" in current:
                    new["status"] = current["status"]
            _string_data(res, new)
            new = self._admit(request, res, new, current)
            meta = new.setdefault("metadata", {})
            for field in ("uid", "creationTimestamp", "namespace", "name", "generation", "resourceVersion"):
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
            if current.get("metadata", {}).get("deletionTimestamp"):
                meta["deletionTimestamp"] = current["metadata"]["deletionTimestamp"]
            if new == current:
                return aiohttp.web.json_response(current)
            if _content(new) != _content(current):
                meta["generation"] = int(meta.get("generation", 1)) + 1
            meta["resourceVersion"] = self._next_version()
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                self._store(key, None)
                await self._publish(res, "DELETED", new)
            else:
                self._store(key, new)
                await self._publish(res, "MODIFIED", new)
        return aiohttp.web.json_response(new)

    # -- delete ---------------------------------------------------------------------------------------

    async def _delete(self, request: Any) -> aiohttp.web.StreamResponse:
        res = resource(request.resource)
        key = (res, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise KubernetesError(404, "NotFound", f"{res.plural} {request.name!r} not found")
            obj = copy.deepcopy(self._objects[key].raw)
            meta = obj["metadata"]
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = _now()
                    meta["generation"] = int(meta.get("generation", 1)) + 1  # as the API server does
                    meta["resourceVersion"] = self._next_version()
                    self._store(key, obj)
                    await self._publish(res, "MODIFIED", obj)
            else:
                meta["resourceVersion"] = self._next_version()
                self._store(key, None)
                await self._publish(res, "DELETED", obj)
        return aiohttp.web.json_response(obj)


def _fault(status: int) -> aiohttp.web.StreamResponse:
    reason = {429: "TooManyRequests", 500: "InternalError"}.get(status, "InternalError")
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": status,
            "reason": reason, "message": f"injected fault: {reason}", "details": {"retryAfterSeconds": 1}}
    return aiohttp.web.json_response(body, status=status, headers={"Retry-After": "1"} if status == 429 else {})


def _string_data(res: Any, obj: dict[str, Any]) -> None:
    """A Secret's ``stringData`` is write-only: the API server merges it into ``data``."""
    if res == resource("v1/secrets") and "stringData" in obj:
        data = obj.setdefault("data", None) or {}
        for key, value in (obj.pop("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What bumps ``generation``: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
