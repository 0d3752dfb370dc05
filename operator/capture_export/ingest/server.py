"""The ingest server: gateways POST records over HTTP; a 2xx means they are committed to the store.

Routes (every POST needs ``Authorization: Bearer <token>``):

* ``POST /v1/records``  native schema-v2 records (native.py)
* ``POST /v1/litellm``  LiteLLM ``generic_api`` payloads (litellm.py)
* ``POST /v1/traces``   OpenTelemetry GenAI spans over OTLP/HTTP (otlp.py), answered the OTLP way
* ``GET /healthz``      liveness; ``GET /metrics`` Prometheus (standalone only; inside the operator its
  metrics are on the operator's port)

A request goes: token check, body read within ``max_body_bytes`` (413 past it); then, in a parsing
process (parsing.py), ``Content-Encoding`` undone (gzip, deflate, zstd) within ``max_decoded_bytes``,
parsed and checked (400 naming the first bad record and field, 413 past ``max_records``) and encoded as
the store keeps records (credential headers stripped); then committed with other requests in one
transaction (writer.py). The answer comes after the commit: ``200 {"received": n, "new": a,
"duplicates": d}``. Nothing of a refused request is stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from aiohttp import web

from ..store import IngestStore
from .auth import TokenFile
from .errors import IngestRefused, Overloaded, StoreUnavailable, TooLarge, Unauthorized
from .metrics import IngestMetrics
from .parsing import PARSERS, IngestLimits, Parse, Parsed, Row, prepare, prepare_by_name, start_parsing_process, warm
from .writer import GroupCommitter

__all__ = ["BodyBudget", "IngestLimits", "IngestServer", "OtlpSource", "Outcome", "Parsed", "Source",
           "default_sources", "serve", "store_opener"]

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    received: int
    new: int
    ignored: int = 0

    @property
    def duplicates(self) -> int:
        return self.received - self.new


@dataclass(frozen=True)
class Source:
    """One kind of input: how to parse a body, and how to answer."""

    name: str
    path: str
    parse: Parse
    allow_empty: bool = False  # an empty batch is fine (OTLP), else 400

    def ok(self, request: web.Request, parsed: Parsed, outcome: Outcome) -> web.Response:
        body: dict[str, Any] = {"received": outcome.received, "new": outcome.new, "duplicates": outcome.duplicates}
        if outcome.ignored:
            body["ignored"] = outcome.ignored
        return web.json_response(body)

    def refused(self, request: web.Request, error: IngestRefused) -> web.Response:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="capture-export ingest"'
        return web.json_response(error.body(), status=error.status, headers=headers)


class OtlpSource(Source):
    """OTLP/HTTP answers: an ExportTraceServiceResponse (partial success) or a google.rpc.Status, in the
    request's encoding."""

    def ok(self, request: web.Request, parsed: Parsed, outcome: Outcome) -> web.Response:
        from .otlp import JSON_TYPES, export_response

        as_json = request.content_type in JSON_TYPES
        body = export_response(parsed.extra.get("rejected", 0), parsed.extra.get("error", ""), as_json=as_json)
        return web.Response(body=body, content_type="application/json" if as_json else "application/x-protobuf")

    def refused(self, request: web.Request, error: IngestRefused) -> web.Response:
        from .otlp import JSON_TYPES, status_body

        headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="capture-export ingest"'
        as_json = request.content_type in JSON_TYPES
        content_type = "application/json" if as_json else "application/x-protobuf"
        return web.Response(body=status_body(error.status, str(error), as_json=as_json), status=error.status,
                            headers=headers, content_type=content_type)


# -- bodies ---------------------------------------------------------------------------------------------

class BodyBudget:
    """The bytes of request bodies held at once (being received, or waiting for and in a parsing
    process): each request is bounded by ``max_body_bytes``, but a thousand slow clients each sending
    16 MiB were not. Past ``limit`` a request is refused (503, Retry-After) unless it is the only one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int, already: int) -> None:
        if self.held > already and self.held + size > self.limit:
            raise Overloaded(f"{self.held} bytes of request bodies are being received or parsed; retry shortly")
        self.held += size


async def _read_body(request: web.Request, limit: int, budget: BodyBudget, taken: list[int]) -> bytes:
    """The body, within ``limit``; what it holds of ``budget`` is added to ``taken[0]`` as it arrives."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body of {request.content_length} bytes is larger than the limit of {limit}")
    # The chunks as they arrive, joined once (a growing buffer would copy the body twice more).
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body larger than the limit of {limit} bytes")
        budget.take(len(chunk), taken[0])
        taken[0] += len(chunk)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# -- the server ----------------------------------------------------------------------------------------

class IngestServer:
    """The aiohttp application and its group-commit writer. Start and stop it inside a running loop."""

    def __init__(
        self,
        open_store: Callable[[], IngestStore],
        tokens: TokenFile,
        *,
        limits: IngestLimits | None = None,
        metrics: IngestMetrics | None = None,
        serve_metrics: bool = False,
    ) -> None:
        self.limits = limits or IngestLimits()
        self.tokens = tokens
        self.metrics = metrics or IngestMetrics()
        self.serve_metrics = serve_metrics
        self.sources = default_sources()
        self.bodies = BodyBudget(self.limits.max_inflight_bytes)
        self.writer = GroupCommitter(open_store, max_pending_records=self.limits.max_pending_records,
                                     max_pending_bytes=self.limits.max_pending_bytes,
                                     max_group_records=self.limits.max_group_records,
                                     on_commit=lambda *_: self.metrics.commits.inc())
        self._parsers: ProcessPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        for source in self.sources:
            app.router.add_post(source.path, self._handler(source))
        app.router.add_get("/healthz", self._healthz)
        if self.serve_metrics:
            app.router.add_get("/metrics", self._metrics)
        return app

    def _start_parsers(self) -> None:
        if self.limits.parse_workers > 0:
            # spawn, not fork: the operator's process has threads (kopf, export cycles) a fork would copy
            # mid-flight.
            self._parsers = ProcessPoolExecutor(self.limits.parse_workers, mp_context=get_context("spawn"),
                                                initializer=start_parsing_process, initargs=(os.getpid(),))

    async def start(self, host: str = "0.0.0.0", port: int = 8090) -> int:
        self._start_parsers()
        if self._parsers is not None:  # take requests only once the processes have imported what they need
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._parsers, warm)
                                   for _ in range(self.limits.parse_workers)))
        # auto_decompress off: Content-Encoding is undone here, within the decoded-size limit.
        self._runner = web.AppRunner(self.app(), access_log=None, auto_decompress=False, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=512)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio.Server private
        sockets = server.sockets if isinstance(server, asyncio.Server) else ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("ingest server listening on %s:%s", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop taking requests, let those in flight commit and answer, then close the store."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.to_thread(self.writer.close)
        if self._parsers is not None:
            self._parsers.shutdown(wait=False, cancel_futures=True)
            self._parsers = None

    # -- handlers --

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pending_records": self.writer.pending_records})

    async def _metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _handler(self, source: Source) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            started = time.monotonic()
            received = 0
            taken = [0]  # of self.bodies, given back once the body is parsed (or the request ends)
            try:
                if not self.tokens.allows(request.headers.get("Authorization")):
                    raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
                body = await _read_body(request, self.limits.max_body_bytes, self.bodies, taken)
                encoding = request.headers.get("Content-Encoding", "")
                content_type = request.content_type
                try:
                    ignored, extra, rows = await self._prepare(source, body, encoding, content_type)
                finally:
                    del body
                    self.bodies.held -= taken[0]
                    taken[0] = 0
                received = len(rows)
                self.metrics.pending.set(self.writer.pending_records + received)
                new = await self.writer.commit(rows) if rows else 0
                outcome = Outcome(received, new, ignored)
                response = source.ok(request, Parsed([], ignored, extra), outcome)
                self.metrics.duplicates.labels(source.name).inc(outcome.duplicates)
                if ignored:
                    self.metrics.ignored.labels(source.name).inc(ignored)
            except IngestRefused as refusal:
                response = source.refused(request, refusal)
            except Exception:
                log.exception("ingest: request to %s failed", source.path)
                response = source.refused(request, StoreUnavailable("internal error; nothing was stored"))
            finally:  # refused while reading, or the client went away (the task is cancelled)
                self.bodies.held -= taken[0]
            code = str(response.status)
            self.metrics.requests.labels(source.name, code).inc()
            if received:
                self.metrics.records.labels(source.name, code).inc(received)
            self.metrics.latency.labels(source.name).observe(time.monotonic() - started)
            self.metrics.pending.set(self.writer.pending_records)
            return response

        return handle

    async def _prepare(self, source: Source, body: bytes, encoding: str,
                       content_type: str) -> tuple[int, dict[str, Any], list[Row]]:
        if self._parsers is None:
            return prepare(source.parse, source.allow_empty, body, encoding, content_type, self.limits)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._parsers, prepare_by_name, source.name, body, encoding,
                                              content_type, self.limits)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): start new ones; the client retries this request.
            log.warning("ingest: a parsing process died; starting new ones")
            broken, self._parsers = self._parsers, None
            if broken is not None:
                # Not cancel_futures: CPython 3.11's pool, breaking while one of its futures is cancelled,
                # leaves the other requests' futures pending for ever (export/pool.py says more).
                broken.shutdown(wait=False)
            self._start_parsers()
            raise StoreUnavailable("a parsing process died; nothing was stored, retry") from None


def default_sources() -> list[Source]:
    routes: dict[str, tuple[str, type[Source]]] = {
        "records": ("/v1/records", Source), "litellm": ("/v1/litellm", Source), "otlp": ("/v1/traces", OtlpSource),
    }
    return [routes[name][1](name, routes[name][0], parse, allow_empty)
            for name, (parse, allow_empty) in PARSERS.items()]


def store_opener(url: str) -> Callable[[], IngestStore]:
    """Open the store the ingest server writes to (created when missing: the ingest server is a writer)."""

    def open_store() -> IngestStore:
        from ..store import open_store_url

        store = open_store_url(url, create=True)
        if not isinstance(store, IngestStore) or not callable(store.append_unique):
            store.close()
            raise StoreUnavailable(f"{store!r} cannot take ingested records (no insert-or-ignore by capture_id)")
        return store

    return open_store


async def serve(url: str, host: str, port: int, tokens: TokenFile, limits: IngestLimits,
                stop: asyncio.Event, *, announce: Callable[[int], None] | None = None) -> None:
    """Run a standalone ingest server (``capture-export ingest``) until ``stop`` is set."""
    server = IngestServer(store_opener(url), tokens, limits=limits, serve_metrics=True)
    bound = await server.start(host, port)
    if announce is not None:
        announce(bound)
    try:
        await stop.wait()
    finally:
        await server.stop()
